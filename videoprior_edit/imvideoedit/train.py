"""The ImVideoEdit trainer: image pairs as single-frame videos, frozen Wan2.1-T2V, only the adapter learns.

Command: `videoprior-edit train-imvideoedit --data PAIRS --model wan2.1_t2v_1.3B_fp16.safetensors --text-encoder
umt5_xxl_fp16.safetensors --vae wan_2.1_vae.safetensors --output runs/ive` (or `python -m
videoprior_edit.imvideoedit.train ...`); several GPUs: `accelerate launch -m videoprior_edit.imvideoedit.train ...`
(data parallel; the paper sharded the optimizer state with DeepSpeed ZeRO-2, which also runs, but its pickle-free
checkpoints keep the adapter, step and RNG and not AdamW's moments, which start again on resume).

Per optimizer step: `batch_size` pairs (global), `micro_batch_size` per forward, gradient accumulation for the
rest. Each pair: source and target latents (VAE, cached on disk with the prompt's text embeddings before training,
so the 11 GB text encoder never shares the GPU with training), flow matching on the target only:
x_t = (1 - s) x0 + s e, loss = |v(x_t, t) - (e - x0)|^2 on the target chunk, s = shift(u), u ~ U(0, 1), t = 1000 s.
Noise and timesteps come from the sample's position in a seeded stream, so a resumed run continues exactly.
Checkpoints (`checkpoints/step-N/`: adapter tensors, optimizer and RNG states as safetensors + JSON, no pickles; see
`videoprior_edit.checkpoint`) every `save_every` steps; `--resume latest` continues from the newest.
Paper defaults: 5 epochs, global batch 16, AdamW, bf16, 480x832 (the resolution and learning rate are lost in our
copy of the paper: 480x832 is Wan2.1-T2V-1.3B's 480p and ViFeEdit's; lr 1e-5 is the usual full-module rate).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import (
    check_checkpointable,
    load_training_state,
    prune_checkpoints,
    save_training_state,
    step_checkpoints,
)
from ..errors import InputError, VPEError
from ..sampling import SamplingHook, encode_prompts
from ..sampling.condition import encode_mode, normalize_latents, pixels_from_image
from ..sampling.loop import compute_dtype
from .adapter import (
    JOINT_ROPE,
    SOURCE_LATENTS,
    SOURCE_TIMESTEPS,
    ImVideoEditAdapter,
    create_adapter,
    insert_adapter,
    remove_adapter,
    save_adapter,
)
from .editor import edit_video, source_input
from .pairs import Pair, read_pairs

ADAPTER_FILE = "imvideoedit_adapter.safetensors"
EVAL_SIGMAS = (0.25, 0.5, 0.75)


@dataclass
class TrainOptions:
    """Trainer settings (command-line flags of the same names)."""

    data: str
    model: str
    text_encoder: str
    vae: str
    output: str
    epochs: int = 5
    batch_size: int = 16
    micro_batch_size: int = 1
    lr: float = 1e-5
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    height: int = 480
    width: int = 832
    precision: str = "bf16"
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = True
    timestep_shift: float = 5.0
    save_every: int = 500
    keep_checkpoints: int = 2
    validate_every: int = 250
    val_count: int = 2
    val_steps: int = 20
    val_cfg: float = 5.0
    val_shift: float = 3.0
    resume: str | None = None
    seed: int = 0
    max_steps: int | None = None
    log_every: int = 10
    cache_dir: str | None = None
    save_dtype: str = "bf16"
    blocks: str | None = None
    gate_hidden: int | None = None
    source_timestep: str = "zero"
    source_latents: str = "clean"
    joint_rope: str = "offset"


class EditModel(nn.Module):
    """What the optimizer sees: the adapter (registered) and the frozen transformer (not registered), whose forward
    runs `[source; target]` and returns the target's prediction."""

    def __init__(self, adapter, transformer):
        super().__init__()
        self.adapter = adapter
        self.__dict__["transformer"] = transformer

    def forward(self, source, noisy, t, text, source_noise=None):
        src, t_src = source_input(self.adapter.config, source, t, source_noise)
        dtype = compute_dtype(self.transformer)
        out = self.transformer(hidden_states=torch.cat([src, noisy]).to(dtype), timestep=torch.cat([t_src, t]),
                               encoder_hidden_states=torch.cat([text, text]).to(dtype), return_dict=False)[0]
        return out.chunk(2)[1]


# ----------------------------------------------------------------------------------------------- data
def cover(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """IMAGE `(1, h, w, 3)` scaled to cover `width` x `height`, then centre-cropped to it."""
    from ..images import resize

    h0, w0 = image.shape[1:3]
    scale = max(width / w0, height / h0)
    w1, h1 = max(width, math.ceil(w0 * scale)), max(height, math.ceil(h0 * scale))
    image = resize(image, w1, h1)
    top, left = (h1 - height) // 2, (w1 - width) // 2
    return image[:, top:top + height, left:left + width]


def load_image(path: Path, width: int, height: int) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        array = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return cover(torch.from_numpy(array)[None], width, height)


def _cache_key(pair: Pair, opts: TrainOptions) -> str:
    stat = [(str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for p in (pair.source, pair.target)]
    encoders = [str(Path(opts.text_encoder).resolve()), str(Path(opts.vae).resolve()), opts.precision]
    return hashlib.sha1(json.dumps([stat, pair.prompt, opts.width, opts.height, encoders]).encode()).hexdigest()[:20]


@torch.no_grad()
def _encode_pair(vae, encoder, pair: Pair, opts: TrainOptions, device) -> dict[str, torch.Tensor]:
    """Source / target latents `(16, 1, h, w)` and the prompt's real-token embeddings `(n, text_dim)`."""
    out = {}
    for kind, path in (("source", pair.source), ("target", pair.target)):
        pixels = pixels_from_image(load_image(path, opts.width, opts.height)).unsqueeze(2)
        out[kind] = normalize_latents(vae, encode_mode(vae, pixels.to(device)).float())[0].cpu()
    out["text"] = encoder([pair.prompt])[0][: max(1, encoder.token_count(pair.prompt))].contiguous()
    encoder.clear()  # thousands of prompts: keep none in RAM
    return out


def build_cache(models, pairs: list[Pair], opts: TrainOptions, accelerator) -> list[Path]:
    """Encode every pair once (each process a share, skipping what is cached); returns the cache files."""
    from ..text import MAX_TOKENS, PromptEncoder
    from ..weights import save_file

    folder = Path(opts.cache_dir or Path(opts.output) / "cache")
    files = [folder / f"{_cache_key(p, opts)}.safetensors" for p in pairs]
    todo = [i for i in range(accelerator.process_index, len(pairs), accelerator.num_processes)
            if not files[i].is_file()]
    if todo:
        place = models.placement
        encoder = PromptEncoder(place.activate(models, "text_encoder"), models.tokenizer)
        vae = place.activate(models, "vae")
        for i in todo:
            if encoder.token_count(pairs[i].prompt) > MAX_TOKENS:
                print(f"note: the prompt of pair {i} is cut to {MAX_TOKENS} tokens", flush=True)
            save_file(_encode_pair(vae, encoder, pairs[i], opts, accelerator.device), files[i])
        place.release(models, "text_encoder")
    accelerator.wait_for_everyone()
    return files


def load_batch(files: list[Path], indices: list[int], device) -> dict[str, torch.Tensor]:
    """Stacked latents `(b, 16, 1, h, w)` and text `(b, 512, text_dim)` (zero-padded as Wan's pipelines pad)."""
    from safetensors.torch import load_file

    from ..text import MAX_TOKENS

    items = [load_file(str(files[i])) for i in indices]
    text = torch.zeros(len(items), MAX_TOKENS, items[0]["text"].shape[-1], dtype=items[0]["text"].dtype)
    for row, item in zip(text, items):
        row[: item["text"].shape[0]] = item["text"][:MAX_TOKENS]
    batch = {k: torch.stack([item[k] for item in items]) for k in ("source", "target")}
    return {k: v.to(device) for k, v in {**batch, "text": text}.items()}


class Stream:
    """The sample order: epoch e is a seeded permutation; position p -> (pair index, noise generator)."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self._perms = size, seed, {}

    def index(self, position: int) -> int:
        epoch = position // self.size
        if epoch not in self._perms:
            self._perms[epoch] = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch))
        return int(self._perms[epoch][position % self.size])

    def generator(self, position: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + position + 1)


def draw(stream: Stream, positions: list[int], shape, shift: float) -> dict[str, torch.Tensor]:
    """Per sample: sigma = shift(u), noise for the target and for a noised source."""
    u, noise, source_noise = [], [], []
    for p in positions:
        g = stream.generator(p)
        u.append(torch.rand(1, generator=g))
        noise.append(torch.randn(shape, generator=g))
        source_noise.append(torch.randn(shape, generator=g))
    u = torch.cat(u)
    return {"sigma": shift * u / (1 + (shift - 1) * u), "noise": torch.stack(noise),
            "source_noise": torch.stack(source_noise)}


def flow_loss(net, batch: dict, draws: dict) -> torch.Tensor:
    """Flow-matching MSE on the target chunk."""
    x0, noise = batch["target"], draws["noise"].to(batch["target"].device)
    sigma = draws["sigma"].to(x0.device).view(-1, 1, 1, 1, 1)
    noisy = (1 - sigma) * x0 + sigma * noise
    t = draws["sigma"].to(x0.device) * 1000
    pred = net(batch["source"], noisy, t, batch["text"], draws["source_noise"].to(x0.device))
    return nn.functional.mse_loss(pred.float(), (noise - x0).float())


# ----------------------------------------------------------------------------------------------- setup
def _accelerator(opts: TrainOptions, accum: int):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import AutocastKwargs

    AcceleratorState._reset_state()  # a second run in one process may change the precision (the process group stays)
    GradientState._reset_state()
    return Accelerator(gradient_accumulation_steps=accum, mixed_precision=_mixed_precision(opts),
                       project_dir=opts.output, kwargs_handlers=[AutocastKwargs(cache_enabled=False)])


def _mixed_precision(opts: TrainOptions) -> str:
    mp = {"auto": {"fp32": "no"}.get(opts.precision, opts.precision)}.get(opts.mixed_precision, opts.mixed_precision)
    if mp == "no" and opts.precision != "fp32":
        raise InputError(f"Base precision {opts.precision} needs mixed precision (the adapter trains in fp32).",
                         "Use --mixed-precision bf16 (or auto), or --precision fp32.")
    return mp


def _accumulation(opts: TrainOptions) -> int:
    from accelerate import PartialState

    per_step = opts.micro_batch_size * PartialState().num_processes
    if opts.batch_size % per_step:
        raise InputError(f"Batch size {opts.batch_size} is not a multiple of micro batch x processes ({per_step}).",
                         "Pick a batch size that the processes and micro batches divide.")
    return opts.batch_size // per_step


def _load_models(opts: TrainOptions, device):
    from ..models.sets import load_wan_models
    from ..placement import Placement

    models = load_wan_models(opts.model, None, opts.text_encoder, opts.vae, dtype=opts.precision,
                             placement=Placement("one_expert", device=device))
    return _given_models(models, device)


def _given_models(models, device):
    """A single T2V model set with a placement that computes on `device`."""
    from ..placement import Placement

    if models.placement is None:
        models.placement = Placement("one_expert", device=device)
    if models.family != "t2v" or models.transformer_2 is not None:
        raise InputError(f"{models.name} is not a single text-to-video model.",
                         "Train ImVideoEdit on Wan2.1-T2V-1.3B (wan2.1_t2v_1.3B_fp16) or Wan2.1-T2V-14B.")
    return models


def _adapter(models, opts: TrainOptions, device):
    blocks = None if not opts.blocks else [int(b) for b in opts.blocks.split(",")]
    adapter = create_adapter(models.transformer, blocks, opts.gate_hidden, opts.source_timestep,
                             opts.source_latents, opts.joint_rope, opts.seed, models.name)
    transformer = models.placement.activate(models, "transformer")
    insert_adapter(transformer, adapter.train(), device=device)
    if opts.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    return adapter


def _check(opts: TrainOptions) -> None:
    if opts.height % 16 or opts.width % 16:
        raise InputError(f"Training size {opts.width}x{opts.height} is not a multiple of 16.", "Use e.g. 832x480.")
    if opts.epochs < 1 or opts.batch_size < 1 or opts.micro_batch_size < 1:
        raise InputError("Epochs and batch sizes must be at least 1.", "The paper: 5 epochs, batch 16.")


# ----------------------------------------------------------------------------------------------- training
@dataclass
class TrainRun:
    """A finished run: the adapter file, the trained adapter (fp32, still on the training device), its steps."""

    path: Path
    adapter: ImVideoEditAdapter
    steps: int


def train(opts: TrainOptions, models=None) -> TrainRun:
    """Train an adapter and write `<output>/imvideoedit_adapter.safetensors`. `models`: an already loaded Wan2.1-T2V
    set to train on (default: load `opts.model` / `text_encoder` / `vae`; then the text encoder is dropped after
    encoding)."""
    _check(opts)
    Path(opts.output).mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")  # fp32 adapter norms
    accelerator = _accelerator(opts, _accumulation(opts))
    own = models is None
    models = _load_models(opts, accelerator.device) if own else _given_models(models, accelerator.device)
    pairs = read_pairs(opts.data)
    files = build_cache(models, pairs, opts, accelerator)
    val = _validation_set(models, pairs, files, opts)
    if own:
        models.text_encoder = None  # every prompt is encoded; 11 GB of RAM back
    adapter = _adapter(models, opts, accelerator.device)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    net, optimizer = accelerator.prepare(EditModel(adapter, models.transformer), optimizer)
    if opts.save_every or opts.resume:
        check_checkpointable(accelerator)
    total = opts.max_steps or math.ceil(opts.epochs * len(pairs) / opts.batch_size)
    step = _resume(accelerator, adapter, optimizer, opts)
    try:
        _loop(accelerator, net, optimizer, models, files, val, opts, step, total)
        return TrainRun(_save(accelerator, adapter, opts, total), adapter, total)
    finally:
        remove_adapter(models.transformer)
        models.transformer.disable_gradient_checkpointing()


def _loop(accelerator, net, optimizer, models, files, val, opts, step: int, total: int) -> None:
    stream, adapter = Stream(len(files), opts.seed), accelerator.unwrap_model(net).adapter
    accum = accelerator.gradient_accumulation_steps
    if step == 0 and opts.validate_every:
        _validate(accelerator, net, models, adapter, val, opts, 0)
    while step < total:
        started, losses = time.perf_counter(), []
        for micro in range(accum):
            first = step * opts.batch_size + (micro * accelerator.num_processes + accelerator.process_index) * \
                opts.micro_batch_size
            positions = list(range(first, first + opts.micro_batch_size))
            batch = load_batch(files, [stream.index(p) for p in positions], accelerator.device)
            with accelerator.accumulate(net):
                loss = flow_loss(net, batch, draw(stream, positions, batch["target"].shape[1:], opts.timestep_shift))
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(net.parameters(), opts.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
        step += 1
        _log(accelerator, opts, step, total, torch.stack(losses).mean(), time.perf_counter() - started)
        if opts.validate_every and (step % opts.validate_every == 0 or step == total):
            _validate(accelerator, net, models, adapter, val, opts, step)
        if opts.save_every and step % opts.save_every == 0 and step < total:
            _save(accelerator, adapter, opts, step, optimizer)


def _log(accelerator, opts: TrainOptions, step: int, total: int, loss: torch.Tensor, seconds: float) -> None:
    loss = float(accelerator.reduce(loss.to(accelerator.device), "mean"))
    if not accelerator.is_main_process:
        return
    record = {"step": step, "loss": loss, "seconds": round(seconds, 4)}
    with open(Path(opts.output) / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    if step % opts.log_every == 0 or step == total:
        print(f"step {step}/{total}  loss {loss:.5f}  {seconds:.2f} s/step", flush=True)


# ----------------------------------------------------------------------------------------------- validation
class _Autocast(SamplingHook):
    """The transformer calls of a validation render under the training autocast (fp32 adapter, bf16 model)."""

    def __init__(self, accelerator):
        self.accelerator = accelerator

    def forward_context(self, state, model):
        return self.accelerator.autocast()


def _validation_set(models, pairs: list[Pair], files: list[Path], opts: TrainOptions) -> list[dict]:
    """The first `val_count` pairs: images at the training size, cache file, prompt (and "" encoded for CFG)."""
    chosen = list(range(min(opts.val_count, len(pairs))))
    for i in chosen:
        encode_prompts(models, pairs[i].prompt, "" if opts.val_cfg > 1 else None)
    return [{"index": i, "file": files[i], "prompt": pairs[i].prompt,
             "source": load_image(pairs[i].source, opts.width, opts.height),
             "target": load_image(pairs[i].target, opts.width, opts.height)} for i in chosen]


@torch.no_grad()
def eval_loss(net, files: list[Path], indices: list[int], opts: TrainOptions, device) -> float:
    """The flow loss at fixed sigmas and fixed noise (seeded by pair index): comparable across steps."""
    losses = []
    for i in indices:
        batch = load_batch(files, [i], device)
        for k, sigma in enumerate(EVAL_SIGMAS):
            g = torch.Generator().manual_seed(10_007 * (i + 1) + k)
            shape = batch["target"].shape[1:]
            draws = {"sigma": torch.tensor([sigma]), "noise": torch.randn(shape, generator=g)[None],
                     "source_noise": torch.randn(shape, generator=g)[None]}
            losses.append(float(flow_loss(net, batch, draws)))
    return sum(losses) / max(1, len(losses))


def _validate(accelerator, net, models, adapter, val: list[dict], opts: TrainOptions, step: int) -> None:
    """Eval loss on the validation pairs and, every time, one render per pair ([source | edit | target] png)."""
    if not val or not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return
    with accelerator.autocast():
        loss = eval_loss(accelerator.unwrap_model(net), [v["file"] for v in val], list(range(len(val))), opts,
                         accelerator.device)
    folder = Path(opts.output) / "validation" / f"step-{step:06d}"
    if opts.val_steps > 0:
        for v in val:
            edited = edit_video(models, adapter, v["source"], v["prompt"], "", opts.val_steps, opts.val_cfg,
                                opts.val_shift, seed=opts.seed, max_side=0, hooks=[_Autocast(accelerator)]).frames
            _save_strip(torch.cat([v["source"], edited, v["target"]], dim=2)[0], folder / f"pair-{v['index']}.png")
    with open(Path(opts.output) / "log.jsonl", "a") as f:
        f.write(json.dumps({"step": step, "eval_loss": loss}) + "\n")
    print(f"step {step}: eval loss {loss:.5f}" + (f", renders in {folder}" if opts.val_steps > 0 else ""),
          flush=True)
    accelerator.wait_for_everyone()


def _save_strip(image: torch.Tensor, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((image.clamp(0, 1) * 255).round().to(torch.uint8).numpy()).save(path)


# ----------------------------------------------------------------------------------------------- checkpoints
def _save(accelerator, adapter, opts: TrainOptions, step: int, optimizer=None) -> Path:
    """The adapter file, and with `optimizer` a checkpoint under checkpoints/step-N (adapter tensors, optimizer,
    RNG: safetensors + JSON, no pickles; see `videoprior_edit.checkpoint`)."""
    path = Path(opts.output) / ADAPTER_FILE
    if optimizer is not None:
        folder = Path(opts.output) / "checkpoints" / f"step-{step:06d}"
        save_training_state(folder, accelerator, optimizer, adapter.state_dict(),
                            {"step": step, "options": asdict(opts)})
        if accelerator.is_main_process:
            prune_checkpoints(opts.output, opts.keep_checkpoints)
    if accelerator.is_main_process:
        save_adapter(adapter, path, opts.save_dtype)
    accelerator.wait_for_everyone()
    return path


def _resume(accelerator, adapter, optimizer, opts: TrainOptions) -> int:
    """Load a checkpoint (`latest` or a folder) into the adapter, optimizer and RNG and return its step; 0 when not
    resuming."""
    if not opts.resume:
        return 0
    # complete ones; else the others, to say why they cannot be used
    found = step_checkpoints(opts.output) or step_checkpoints(opts.output, complete=False)
    folder = (found[-1] if found else None) if opts.resume == "latest" else Path(opts.resume)
    if folder is None or not folder.is_dir():
        raise InputError(f"No checkpoint to resume from ({opts.resume}).",
                         "Give a checkpoints/step-N folder, or 'latest' with the same --output.")
    tensors, meta = load_training_state(folder, accelerator, optimizer)
    try:
        adapter.load_state_dict(tensors)
    except RuntimeError as e:
        raise InputError(f"The checkpoint {folder} holds another adapter than this run's ({e}).",
                         "Resume with the checkpoint's settings (see its state.json).") from None
    accelerator.print(f"resumed from {folder} at step {meta['step']}")
    return int(meta["step"])


# ----------------------------------------------------------------------------------------------- command line
def add_arguments(p: argparse.ArgumentParser) -> None:
    a = p.add_argument
    a("--data", required=True, help="pair folder (metadata.jsonl + images; see build-imvideoedit-pairs)")
    a("--model", required=True, help="Wan2.1-T2V file or folder (wan2.1_t2v_1.3B_fp16.safetensors)")
    a("--text-encoder", required=True, help="umt5_xxl_fp16.safetensors")
    a("--vae", required=True, help="wan_2.1_vae.safetensors")
    a("--output", required=True, help="run folder: adapter file, checkpoints/, validation/, log.jsonl, cache/")
    a("--epochs", type=int, default=5, help="passes over the pairs (paper: 5)")
    a("--batch-size", type=int, default=16, help="global batch per optimizer step (paper: 16)")
    a("--micro-batch-size", type=int, default=1, help="pairs per forward per process; the rest is accumulation")
    a("--lr", type=float, default=1e-5, help="AdamW learning rate (default 1e-5)")
    a("--weight-decay", type=float, default=0.01)
    a("--max-grad-norm", type=float, default=1.0, help="gradient clipping")
    a("--height", type=int, default=480, help="training height (default 480)")
    a("--width", type=int, default=832, help="training width (default 832)")
    a("--precision", choices=("bf16", "fp16", "fp32"), default="bf16", help="frozen model weights")
    a("--mixed-precision", choices=("auto", "bf16", "fp16", "no"), default="auto",
      help="autocast for the forward (auto: the model's precision); the adapter's weights stay fp32")
    a("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false",
      help="keep every block's activations (faster, more memory)")
    a("--timestep-shift", type=float, default=5.0, help="sigma = shift*u / (1 + (shift-1)*u), u ~ U(0,1)")
    a("--save-every", type=int, default=500, help="checkpoint every N optimizer steps")
    a("--keep-checkpoints", type=int, default=2, help="how many checkpoints to keep")
    a("--validate-every", type=int, default=250, help="eval loss + renders every N steps (0: never)")
    a("--val-count", type=int, default=2, help="validation pairs (the first ones)")
    a("--val-steps", type=int, default=20, help="denoising steps of a validation render (0: loss only)")
    a("--val-cfg", type=float, default=5.0)
    a("--val-shift", type=float, default=3.0)
    a("--resume", help="'latest' or a checkpoints/step-N folder")
    a("--seed", type=int, default=0)
    a("--max-steps", type=int, help="stop after N optimizer steps (default: the epochs' worth)")
    a("--log-every", type=int, default=10)
    a("--cache-dir", help="where encoded pairs are kept (default: <output>/cache)")
    a("--save-dtype", choices=("bf16", "fp16", "fp32"), default="bf16", help="adapter file precision")
    a("--blocks", help="comma-separated block indices to adapt (default: every block, as the paper)")
    a("--gate-hidden", type=int, help="hidden width of the gate MLP (default: the model width)")
    a("--source-timestep", choices=SOURCE_TIMESTEPS, default="zero", help="timestep of the source chunk")
    a("--source-latents", choices=SOURCE_LATENTS, default="clean", help="clean or noised source chunk")
    a("--joint-rope", choices=JOINT_ROPE, default="offset", help="RoPE of the joint H x 2W layout")


def run(args) -> int:
    names = {f.name for f in fields(TrainOptions)}
    result = train(TrainOptions(**{k: v for k, v in vars(args).items() if k in names}))
    print(f"adapter: {result.path} ({result.steps} steps)")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `train-imvideoedit` on a `videoprior-edit` subparsers object."""
    p = subparsers.add_parser("train-imvideoedit", help="ImVideoEdit: train a spatial-difference adapter on image "
                              "pairs (frozen Wan2.1-T2V; accelerate launch for several GPUs)")
    add_arguments(p)
    p.set_defaults(run=run)
    return p


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m videoprior_edit.imvideoedit.train",
                                description=__doc__.split("\n\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except VPEError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
