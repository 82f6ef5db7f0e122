"""The ByG trainer (Bootstrap Your Generator): unpaired training of a LoRA editor on a Wan text-to-video model.

Command: `videoprior-edit train-byg --data data.jsonl --model wan2.1_t2v_1.3B_fp16.safetensors --text-encoder
umt5_xxl_fp16.safetensors --vae wan_2.1_vae.safetensors --output runs/byg` (or `python -m videoprior_edit.byg.train`);
several GPUs: `accelerate launch -m videoprior_edit.byg.train ...` (data parallel). `--zoo DIR` builds a tiny data
set of generated pictures and trains a few steps on the tiny zoo (CPU).

The editor: the student is the base transformer with a LoRA (rank 64 on every attention and FFN Linear of the
blocks); the source's clean latents are concatenated after the noisy latents along frames (tokens), with the same
temporal RoPE positions, and the prediction is sliced to the first F frames. The frozen base model is the same
transformer with the adapter disabled (no second copy in memory); the EMA model is the same transformer with the
EMA of the LoRA weights swapped in (only LoRA tensors are copied).

One edit step, per sample (sigma ~ logit-normal, shifted; t = 1000 sigma):
  1. bootstrap: the EMA editor integrates from pure noise (sigma = 1) to sigma in `bootstrap_steps` Euler steps
     (instruction, source condition) -> x_t; it continues to sigma = 0 in `clean_steps` steps -> x0_ema (no grad);
  2. prior: v = student(x_t | src, instruction); base velocities for target / source captions on x_t;
     L = (1 - cos(v - vb_src, vb_tgt - vb_src)) + lambda |v - vb_tgt|^2;
  3. cycle: x0_hat = x_t - sigma v; the reverse pass sees cond = x0_ema + (x0_hat - sg(x0_hat)) (value x0_ema,
     gradient into x0_hat: straight-through gradient routing); v_rev = student(noised source | cond, inverse
     instruction); L_cyc = |v_rev - (eps' - src)|^2; the prior applied to v_rev with the captions swapped;
  4. total = L_prior + w_rev L_prior_rev + w_cyc L_cyc (+ w_id L_id).
Identity steps (probability 0.15, and every step of the warm-up): only L_id = |student(noised src | src, inverse
instruction) - (eps - src)|^2. Noise, sigmas and the identity draw come from seeded generators indexed by the step
and the sample's position, so a resumed run continues exactly. AdamW on the LoRA parameters; EMA after each step.
Outputs: `<output>/<name>.safetensors` (musubi-tuner keys, loads in ComfyUI / musubi / this pack),
`<output>/<name>_diffusers.safetensors` (PEFT keys + `lora_adapter_metadata`), `byg_config.json`, and
`checkpoints/step-N/` (accelerate state: LoRA, EMA, optimizer, step).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from ..errors import InputError, VPEError
from . import losses as L
from .data import Example, load_media, read_jsonl, write_demo_dataset

LORA_NAME = "byg_lora"
CONFIG_FILE = "byg_config.json"
TARGETS = {  # diffusers module names (inside `blocks.N.`) the LoRA covers
    "attn+ffn": ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                 "attn2.to_v", "attn2.to_out.0", "ffn.net.0.proj", "ffn.net.2"),
    "attn": ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
             "attn2.to_out.0"),
}


@dataclass
class ByGConfig:
    """Every setting of a ByG run (command-line flags of the same names, `-` for `_`). Saved as byg_config.json.

    Defaults: the paper's where its text gives them (rank 64, AdamW, identity probability 0.15, 200 identity-only
    warm-up steps, 10 bootstrap steps, logit-normal timesteps with a shift, 320x576 video, batch 1 per GPU, 750
    steps for video). The numbers our copy of the paper lost (lr, weight decay, the three lambdas, the shift) and
    what it never says are marked "chosen" with the reason."""

    data: str = ""  # JSONL of (media, source_caption, target_caption, instruction, inverse_instruction)
    model: str = ""  # Wan T2V transformer file / folder (Wan2.1-T2V-1.3B / 14B; one model, not A14B experts)
    text_encoder: str = ""
    vae: str = ""
    output: str = "runs/byg"
    # media
    width: int = 576  # paper: 320x576 video
    height: int = 320
    num_frames: int = 81  # frames read from a video (4k+1); an image is a 1-frame video. Paper: Wan's 81.
    # LoRA
    rank: int = 64  # paper
    alpha: float | None = None  # chosen: alpha = rank (scale 1), so lr means the same at every rank
    targets: str = "attn+ffn"  # "attn+ffn" (chosen: every Linear musubi-tuner's Wan LoRAs cover) or "attn"
    # optimisation
    lr: float = 1e-4  # chosen (lost): the usual LoRA rate for Wan in musubi-tuner, the paper's training base
    weight_decay: float = 0.01  # chosen (lost): AdamW's usual value
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    max_grad_norm: float = 1.0  # chosen: standard clipping, protects against bootstrapping spikes
    max_steps: int = 750  # paper, video (image: 30000)
    batch_size: int = 1  # per process (paper: 1 per GPU, 8 GPUs)
    grad_accumulation: int = 1
    precision: str = "bf16"  # storage of the frozen base weights (LoRA/EMA/optimizer stay fp32)
    mixed_precision: str = "auto"  # accelerate autocast: auto = bf16 unless precision is fp32
    gradient_checkpointing: bool = True
    # ByG
    anchor_weight: float = 1.0  # lambda of the prior's MSE anchor (chosen, lost in our copy: equal weight)
    cycle_weight: float = 1.0  # chosen (lost): equal weight
    reverse_prior_weight: float = 1.0  # the prior on the reverse pass ("applied symmetrically": same weight)
    identity_weight: float = 0.0  # identity term added on edit steps too (chosen: 0, the identity loss comes from
    #                               the identity steps, as the paper's appendix runs it; > 0 adds one forward)
    identity_probability: float = 0.15  # paper, image (video: 0.10)
    identity_warmup_steps: int = 200  # paper: identity-only first steps
    ema_decay: float = 0.99  # chosen: a ~100-step horizon fits both 750-step video and long image runs; 0 = the
    #                          paper's video default (a stop-gradient copy of the current weights)
    bootstrap_steps: int = 10  # paper: EMA Euler steps from noise to sigma
    clean_steps: int = 10  # chosen (silent): EMA Euler steps from sigma to 0 for the clean estimate
    cycle_sigma: str = "same"  # "same" sigma for the reverse pass (the paper's notation) or "independent"
    source_timestep: str = "same"  # timestep of the source tokens: "same" as the noisy ones or "zero" (silent)
    source_positions: str = "same"  # temporal RoPE positions of the source frames: "same" (paper) or "offset"
    timestep_sampling: str = "logit_normal"  # paper (video): logit-normal with shift; or "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    timestep_shift: float = 3.0  # chosen (lost): Wan's 480p shift, biases toward high noise as the paper wants
    # bookkeeping
    seed: int = 0
    log_every: int = 10
    save_every: int = 250
    keep_checkpoints: int = 2
    resume: str | None = None  # a checkpoint folder, or "latest"
    save_dtype: str = "bf16"  # dtype of the saved LoRA files
    fixed_draws: bool = False  # tests / debugging: the same noise, sigmas and batch every step


# ----------------------------------------------------------------------------------------------- the model
def add_lora(transformer, rank: int, alpha: float | None, targets: str = "attn+ffn", seed: int = 0) -> list[str]:
    """Add a trainable PEFT LoRA ("default") to every target Linear of the blocks; returns their module names."""
    from peft import LoraConfig

    if targets not in TARGETS:
        raise InputError(f"Unknown LoRA targets '{targets}'.", f"Use one of: {', '.join(TARGETS)}.")
    names = [n for n, _ in transformer.named_modules()
             if n.startswith("blocks.") and n.count(".") >= 2 and n.split(".", 2)[2] in TARGETS[targets]]
    transformer.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # lora_A's init
        transformer.add_adapter(LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=names,
                                           init_lora_weights=True))
    for p in lora_parameters(transformer).values():
        p.data = p.data.float()
        p.requires_grad_(True)
    return names


def lora_parameters(transformer) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in transformer.named_parameters() if ".lora_A." in n or ".lora_B." in n}


@contextlib.contextmanager
def base_model(transformer):
    """The frozen base: the same transformer with its LoRA disabled."""
    transformer.disable_adapters()
    try:
        yield transformer
    finally:
        transformer.enable_adapters()


def _dtype(transformer) -> torch.dtype:
    return transformer.patch_embedding.weight.dtype


def base_velocity(transformer, noisy: torch.Tensor, sigma: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The frozen T2V model's velocity (no source tokens)."""
    dtype = _dtype(transformer)
    with base_model(transformer):
        return transformer(hidden_states=noisy.to(dtype), timestep=sigma * 1000, encoder_hidden_states=text.to(dtype),
                           return_dict=False)[0].float()


def edit_velocity(transformer, noisy: torch.Tensor, source: torch.Tensor, sigma: torch.Tensor, text: torch.Tensor,
                  source_timestep: str = "same", positions: str = "same") -> torch.Tensor:
    """The editor's velocity, computed by the ByG editor's own input hook (`byg.video.SourceTokens`): `[noisy,
    source]` concatenated along frames, source frames at the same temporal positions (0..F-1 twice), optional
    timestep 0 on the source tokens; the prediction is sliced to the first F frames."""
    from ..sampling.rope import temporal_positions
    from .video import SourceTokens

    dtype, frames = _dtype(transformer), noisy.shape[2]
    hook = SourceTokens(source, positions, source_timestep)
    x, t, rope = hook.model_input(None, noisy.to(dtype), sigma * 1000, None)
    with temporal_positions(transformer, rope):
        out = transformer(hidden_states=x, timestep=t, encoder_hidden_states=text.to(dtype), return_dict=False)[0]
    return out[:, :, :frames].float()


# ----------------------------------------------------------------------------------------------- data
def _pad_text(items: list[torch.Tensor]) -> torch.Tensor:
    from ..text import MAX_TOKENS

    out = torch.zeros(len(items), MAX_TOKENS, items[0].shape[-1], dtype=items[0].dtype)
    for row, item in zip(out, items):
        row[: item.shape[0]] = item[:MAX_TOKENS]
    return out


@torch.no_grad()
def encode_examples(models, examples: list[Example], cfg: ByGConfig, device) -> list[dict]:
    """Per example: normalised source latents `(16, F', h, w)` (VAE mode) and the real-token embeddings of its four
    texts, all on CPU; the text encoder and VAE are used here only (then released by the placement)."""
    from ..placement import Placement
    from ..sampling.condition import encode_mode, normalize_latents
    from ..text import PromptEncoder

    place = models.placement or Placement("one_expert", device=device)
    encoder = PromptEncoder(place.activate(models, "text_encoder"), models.tokenizer)
    texts = {}
    for ex in examples:
        for text in ex.texts():
            if text not in texts:
                texts[text] = encoder([text])[0][: max(1, encoder.token_count(text))].clone()
    encoder.clear()
    place.release(models, "text_encoder")
    vae = place.activate(models, "vae")
    out = []
    for ex in examples:
        pixels = load_media(ex.media, cfg.width, cfg.height, cfg.num_frames)[None]
        latents = normalize_latents(vae, encode_mode(vae, pixels).float())[0].cpu()
        out.append({"latents": latents, "texts": [texts[t] for t in ex.texts()]})
    place.release(models, "vae")
    return out


# ----------------------------------------------------------------------------------------------- training
class _Checkpointed:
    """What accelerate's save_state/load_state keep beside the optimizer: LoRA weights, EMA, step."""

    def __init__(self, trainer):
        self.trainer = trainer

    def state_dict(self):
        t = self.trainer
        return {"lora": {k: v.detach().cpu().clone() for k, v in t.params.items()},
                "ema": {k: v.cpu().clone() for k, v in t.ema.items()}, "step": t.step}

    def load_state_dict(self, state):
        t = self.trainer
        with torch.no_grad():
            for k, v in state["lora"].items():
                t.params[k].copy_(v)
            for k, v in state["ema"].items():
                t.ema[k].copy_(v)
        t.step = int(state["step"])


class ByGTrainer:
    """A ByG run. `models`: a loaded T2V `WanModels` set (None: loaded from the config's files). Use `train()` or
    `step_once()`; `losses(batch, draws)` is the loss of one micro-batch."""

    def __init__(self, cfg: ByGConfig, models=None, examples: list[Example] | None = None):
        _check(cfg)
        self.cfg = cfg
        self.accelerator = _accelerator(cfg)
        self.device = self.accelerator.device
        self.models = models if models is not None else _load_models(cfg, self.device)
        if self.models.transformer_2 is not None or self.models.family != "t2v":
            raise InputError(f"{self.models.name} is not a single text-to-video model.",
                             "Train ByG on Wan2.1-T2V (1.3B / 14B); two-expert Wan2.2-A14B training is not there yet.")
        if self.accelerator.distributed_type.value == "FSDP":
            raise InputError("FSDP is not supported by the ByG trainer yet.",
                             "Use plain data parallel (accelerate launch without an FSDP config); a 14B model in "
                             "bf16 with gradient checkpointing fits one 80 GB GPU.")
        examples = examples if examples is not None else read_jsonl(cfg.data)
        self.data = encode_examples(self.models, examples, cfg, self.device)
        self.transformer = self.models.transformer.to(self.device)
        if self.models.placement is not None:
            self.models.placement = None  # the trainer owns the device from here on
        self.transformer.train()
        add_lora(self.transformer, cfg.rank, cfg.alpha, cfg.targets, cfg.seed)
        if cfg.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        self.params = lora_parameters(self.transformer)
        self.ema = {k: p.detach().clone().float() for k, p in self.params.items()}
        optimizer = torch.optim.AdamW(self.params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                      betas=(cfg.adam_beta1, cfg.adam_beta2))
        self.optimizer = self.accelerator.prepare(optimizer)
        self.step = 0
        self.accelerator.register_for_checkpointing(_Checkpointed(self))
        self.history: list[dict[str, float]] = []
        if cfg.resume:
            self.load(cfg.resume)

    # -- pieces
    @contextlib.contextmanager
    def ema_weights(self):
        """The EMA editor: EMA LoRA tensors swapped in (decay 0: the current weights, a stop-gradient copy)."""
        if self.cfg.ema_decay == 0:
            yield
            return
        with torch.no_grad():
            saved = {k: p.data.clone() for k, p in self.params.items()}
            for k, p in self.params.items():
                p.data.copy_(self.ema[k])
        try:
            yield
        finally:
            with torch.no_grad():
                for k, p in self.params.items():
                    p.data.copy_(saved[k])

    @torch.no_grad()
    def update_ema(self) -> None:
        d = self.cfg.ema_decay
        for k, p in self.params.items():
            self.ema[k].mul_(d).add_(p.detach().float(), alpha=1 - d)

    def student(self, noisy, source, sigma, text):
        with self.accelerator.autocast():
            return edit_velocity(self.transformer, noisy, source, sigma, text, self.cfg.source_timestep,
                                 self.cfg.source_positions)

    @torch.no_grad()
    def base(self, noisy, sigma, text):
        with self.accelerator.autocast():
            return base_velocity(self.transformer, noisy, sigma, text)

    @torch.no_grad()
    def ema_integrate(self, x, source, text, sigma_from, sigma_to, steps: int) -> torch.Tensor:
        """Euler steps of the EMA editor from `sigma_from` to `sigma_to` (per sample, uniform in sigma)."""
        with self.ema_weights():
            for i in range(steps):
                s0 = sigma_from + (sigma_to - sigma_from) * (i / steps)
                s1 = sigma_from + (sigma_to - sigma_from) * ((i + 1) / steps)
                v = self.student(x, source, s0, text)
                x = x + L._per_sample(s1 - s0, x) * v
        return x

    def losses(self, batch: dict, draws: dict, identity: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one micro-batch and its terms (floats for logging)."""
        cfg = self.cfg
        src, (t_src, t_tgt, t_ins, t_inv) = batch["latents"], batch["texts"]
        sigma = draws["sigma"]
        if identity:
            x = L.noised(src, draws["noise_id"], sigma)
            ident = L.velocity_loss(self.student(x, src, sigma, t_inv), src, draws["noise_id"])
            return ident, {"identity": ident}
        x_t = self.ema_integrate(draws["noise"], src, t_ins, torch.ones_like(sigma), sigma, cfg.bootstrap_steps)
        x0_ema = self.ema_integrate(x_t, src, t_ins, sigma, torch.zeros_like(sigma), cfg.clean_steps)
        base = self.base(torch.cat([x_t, x_t]), torch.cat([sigma, sigma]), torch.cat([t_tgt, t_src]))
        v = self.student(x_t, src, sigma, t_ins)
        prior, parts = L.prior_loss(v, *base.chunk(2), cfg.anchor_weight)
        # cycle with gradient routing
        cond = L.route_gradients(x0_ema, L.one_step_estimate(x_t, v, sigma))
        sigma_r = draws["sigma_rev"]
        x_r = L.noised(src, draws["noise_rev"], sigma_r)
        v_rev = self.student(x_r, cond, sigma_r, t_inv)
        cycle = L.velocity_loss(v_rev, src, draws["noise_rev"])
        terms = {"prior": prior, "direction": parts["direction"], "anchor": parts["anchor"], "cycle": cycle}
        total = prior + cfg.cycle_weight * cycle
        if cfg.reverse_prior_weight:
            base_r = self.base(torch.cat([x_r, x_r]), torch.cat([sigma_r, sigma_r]), torch.cat([t_src, t_tgt]))
            prior_r, _ = L.prior_loss(v_rev, *base_r.chunk(2), cfg.anchor_weight)
            total = total + cfg.reverse_prior_weight * prior_r
            terms["prior_rev"] = prior_r
        if cfg.identity_weight:
            x = L.noised(src, draws["noise_id"], sigma)
            ident = L.velocity_loss(self.student(x, src, sigma, t_inv), src, draws["noise_id"])
            total = total + cfg.identity_weight * ident
            terms["identity"] = ident
        return total, terms

    # -- sampling of data and noise
    def positions(self, step: int, micro: int) -> list[int]:
        cfg, acc = self.cfg, self.accelerator
        if cfg.fixed_draws:
            step = 0
        per_step = cfg.batch_size * cfg.grad_accumulation * acc.num_processes
        first = step * per_step + (micro * acc.num_processes + acc.process_index) * cfg.batch_size
        return list(range(first, first + cfg.batch_size))

    def batch(self, positions: list[int]) -> dict:
        n = len(self.data)
        items = []
        for p in positions:
            epoch = p // n
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.seed + 7919 * epoch))
            items.append(self.data[int(perm[p % n])])
        shapes = {tuple(i["latents"].shape) for i in items}
        if len(shapes) > 1:
            raise InputError(f"A batch mixes latent shapes {sorted(shapes)}.",
                             "Use --batch-size 1 (with --grad-accumulation) for media of different lengths.")
        latents = torch.stack([i["latents"] for i in items]).to(self.device)
        texts = [_pad_text([i["texts"][k] for i in items]).to(self.device) for k in range(4)]
        return {"latents": latents, "texts": texts}

    def draws(self, positions: list[int], shape) -> dict:
        cfg, out = self.cfg, {k: [] for k in ("sigma", "sigma_rev", "noise", "noise_rev", "noise_id")}
        for p in positions:
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + p + 1)
            out["sigma"].append(self._sigma(g))
            other = self._sigma(g)
            out["sigma_rev"].append(out["sigma"][-1] if cfg.cycle_sigma == "same" else other)
            for k in ("noise", "noise_rev", "noise_id"):
                out[k].append(torch.randn(shape, generator=g))
        return {k: torch.stack(v).to(self.device) for k, v in out.items()}

    def _sigma(self, g: torch.Generator) -> torch.Tensor:
        cfg = self.cfg
        if cfg.timestep_sampling == "logit_normal":
            u = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn((), generator=g))
        else:
            u = torch.rand((), generator=g)
        s = cfg.timestep_shift
        return (s * u / (1 + (s - 1) * u)).clamp(1e-3, 1.0)

    def is_identity_step(self, step: int) -> bool:
        cfg = self.cfg
        if step < cfg.identity_warmup_steps:
            return True
        g = torch.Generator().manual_seed(cfg.seed * 7_777_777 + (0 if cfg.fixed_draws else step) + 3)
        return bool(torch.rand((), generator=g) < cfg.identity_probability)

    # -- the loop
    def step_once(self) -> dict[str, float]:
        """One optimizer step (grad accumulation and, with several processes, gradient averaging included)."""
        cfg, acc = self.cfg, self.accelerator
        identity = self.is_identity_step(self.step)
        logs: dict[str, float] = {}
        for micro in range(cfg.grad_accumulation):
            positions = self.positions(self.step, micro)
            batch = self.batch(positions)
            draws = self.draws(positions, batch["latents"].shape[1:])
            loss, terms = self.losses(batch, draws, identity)
            acc.backward(loss / cfg.grad_accumulation)
            for k, v in {"loss": loss, **terms}.items():
                logs[k] = logs.get(k, 0.0) + float(v.detach()) / cfg.grad_accumulation
        if acc.num_processes > 1:
            for p in self.params.values():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                torch.distributed.all_reduce(p.grad)
                p.grad.div_(acc.num_processes)
        if cfg.max_grad_norm:
            logs["grad_norm"] = float(acc.clip_grad_norm_(list(self.params.values()), cfg.max_grad_norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.update_ema()
        self.step += 1
        logs["identity_step"] = float(identity)
        self.history.append(logs)
        return logs

    def train(self, steps: int | None = None) -> Path:
        """Train up to `cfg.max_steps` (or `steps` more steps), logging, checkpointing and saving the LoRA."""
        cfg, acc = self.cfg, self.accelerator
        out = Path(cfg.output)
        if acc.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            (out / CONFIG_FILE).write_text(json.dumps(asdict(cfg), indent=2), encoding="utf-8")
        end = cfg.max_steps if steps is None else self.step + steps
        last = time.perf_counter()
        while self.step < end:
            logs = self.step_once()
            if acc.is_main_process and (self.step % cfg.log_every == 0 or self.step == end):
                now = time.perf_counter()
                seconds, last = (now - last) / max(1, min(cfg.log_every, self.step)), now
                terms = " ".join(f"{k} {v:.4f}" for k, v in logs.items() if k not in ("loss", "identity_step"))
                print(f"step {self.step}/{end} loss {logs['loss']:.4f} "
                      f"({'identity' if logs['identity_step'] else 'edit'}) {terms} {seconds:.2f} s/step", flush=True)
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < end:
                self.save_checkpoint()
        self.save_checkpoint()
        return self.save_lora(out / f"{LORA_NAME}.safetensors")

    # -- saving
    def checkpoint_dirs(self) -> list[Path]:
        folder = Path(self.cfg.output) / "checkpoints"
        return sorted(folder.glob("step-*"), key=lambda p: int(p.name.split("-")[1])) if folder.is_dir() else []

    def save_checkpoint(self) -> Path:
        acc = self.accelerator
        path = Path(self.cfg.output) / "checkpoints" / f"step-{self.step:06d}"
        acc.save_state(str(path))
        if acc.is_main_process:
            (path / CONFIG_FILE).write_text(json.dumps(asdict(self.cfg), indent=2), encoding="utf-8")
            for old in self.checkpoint_dirs()[:-max(1, self.cfg.keep_checkpoints)]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return path

    def load(self, path: str | Path) -> None:
        if str(path) == "latest":
            found = self.checkpoint_dirs()
            if not found:
                raise InputError(f"No checkpoint under {self.cfg.output}/checkpoints.", "Start without --resume.")
            path = found[-1]
        self.accelerator.load_state(str(path))
        print(f"resumed from {path} at step {self.step}", flush=True)

    def save_lora(self, path: str | Path) -> Path:
        """Write the musubi-tuner file at `path` and the diffusers/PEFT file beside it (`*_diffusers`)."""
        path = Path(path)
        if self.accelerator.is_main_process:
            alpha = self.cfg.alpha or self.cfg.rank
            musubi, diffusers, metadata = lora_state_dicts(self.transformer, self.cfg.rank, alpha,
                                                           _save_dtype(self.cfg.save_dtype))
            from safetensors.torch import save_file

            path.parent.mkdir(parents=True, exist_ok=True)
            info = {"byg_config": json.dumps(asdict(self.cfg)), "byg_step": str(self.step)}
            save_file(musubi, str(path), metadata={"ss_network_dim": str(self.cfg.rank),
                                                   "ss_network_alpha": str(self.cfg.alpha or self.cfg.rank), **info})
            save_file(diffusers, str(diffusers_path(path)), metadata={"lora_adapter_metadata": metadata, "format": "pt",
                                                                       **info})
        self.accelerator.wait_for_everyone()
        return path


def diffusers_path(path: Path) -> Path:
    return path.with_name(path.stem + "_diffusers" + path.suffix)


def lora_state_dicts(transformer, rank: int, alpha: float, dtype=torch.bfloat16):
    """(musubi-tuner dict, diffusers/PEFT dict, PEFT metadata JSON) of the transformer's "default" LoRA."""
    from ..models.wan_keys import wan_key_to_original

    musubi, peft_sd, targets = {}, {}, []
    for name, module in transformer.named_modules():
        if not hasattr(module, "lora_A") or "default" not in getattr(module, "lora_A", {}):
            continue
        down = module.lora_A["default"].weight.detach().to("cpu", dtype).contiguous()
        up = module.lora_B["default"].weight.detach().to("cpu", dtype).contiguous()
        original = wan_key_to_original(name + ".weight")
        if original is None:
            raise VPEError(f"No original Wan name for '{name}'.")
        stem = "lora_unet_" + original[: -len(".weight")].replace(".", "_")
        musubi[stem + ".lora_down.weight"], musubi[stem + ".lora_up.weight"] = down, up
        musubi[stem + ".alpha"] = torch.tensor(float(alpha), dtype=dtype)
        peft_sd[f"transformer.{name}.lora_A.weight"] = down.clone()
        peft_sd[f"transformer.{name}.lora_B.weight"] = up.clone()
        targets.append(name)
    metadata = json.dumps({"transformer.r": rank, "transformer.lora_alpha": alpha,
                           "transformer.target_modules": targets, "transformer.use_rslora": False})
    return musubi, peft_sd, metadata


def _save_dtype(name: str) -> torch.dtype:
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name not in table:
        raise InputError(f"Unknown save dtype '{name}'.", "Use bf16, fp16 or fp32.")
    return table[name]


# ----------------------------------------------------------------------------------------------- setup
def _accelerator(cfg: ByGConfig):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import AutocastKwargs

    AcceleratorState._reset_state()  # a second run in one process may change the precision
    GradientState._reset_state()
    mp = cfg.mixed_precision
    if mp == "auto":
        mp = "no" if cfg.precision == "fp32" else cfg.precision
    if mp == "no" and cfg.precision != "fp32":
        raise InputError(f"Base precision {cfg.precision} needs mixed precision (the LoRA trains in fp32).",
                         "Use --mixed-precision bf16 (or auto), or --precision fp32.")
    return Accelerator(mixed_precision=mp, project_dir=cfg.output,
                       kwargs_handlers=[AutocastKwargs(cache_enabled=False)])


def _load_models(cfg: ByGConfig, device):
    from ..models.sets import load_wan_models
    from ..placement import Placement

    for what in ("model", "text_encoder", "vae"):
        if not getattr(cfg, what):
            raise InputError(f"No --{what.replace('_', '-')} given.", "Give the Wan T2V, UMT5 and VAE files.")
    return load_wan_models(cfg.model, None, cfg.text_encoder, cfg.vae, dtype=cfg.precision,
                           placement=Placement("one_expert", device=device))


def _check(cfg: ByGConfig) -> None:
    if cfg.height % 16 or cfg.width % 16:
        raise InputError(f"Training size {cfg.width}x{cfg.height} is not a multiple of 16.", "Use e.g. 576x320.")
    if cfg.rank < 1 or cfg.batch_size < 1 or cfg.grad_accumulation < 1 or cfg.bootstrap_steps < 1 \
            or cfg.clean_steps < 1:
        raise InputError("Rank, batch size, accumulation and step counts must be at least 1.", "See --help.")
    if not 0 <= cfg.ema_decay <= 1 or not 0 <= cfg.identity_probability <= 1:
        raise InputError("EMA decay and identity probability must be in [0, 1].", "Paper: identity 0.15.")
    for name, allowed in (("cycle_sigma", ("same", "independent")), ("source_timestep", ("same", "zero")),
                          ("source_positions", ("same", "offset")),
                          ("timestep_sampling", ("logit_normal", "uniform"))):
        if getattr(cfg, name) not in allowed:
            raise InputError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}.", "See --help.")


def train(cfg: ByGConfig, models=None, examples=None) -> ByGTrainer:
    trainer = ByGTrainer(cfg, models, examples)
    trainer.train()
    return trainer


# ----------------------------------------------------------------------------------------------- command line
_HELP = {
    "data": "JSONL of training tuples (media, source_caption, target_caption, instruction, inverse_instruction)",
    "model": "Wan T2V transformer (ComfyUI file, diffusers folder or official repo)",
    "anchor_weight": "lambda: weight of the prior's MSE anchor to the base model's target-caption velocity",
    "identity_weight": "weight of an identity term added on edit steps too (0: identity only in identity steps)",
    "ema_decay": "EMA decay of the LoRA weights used for bootstrapping (0: current weights, the paper's video default)",
    "resume": "checkpoint folder to resume from, or 'latest'",
    "fixed_draws": "same batch, noise and sigmas every step (debugging)",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    defaults = ByGConfig()
    for f in fields(ByGConfig):
        flag, default = "--" + f.name.replace("_", "-"), getattr(defaults, f.name)
        help_text = _HELP.get(f.name, "") + (f" (default: {default})" if default not in ("", None) else "")
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        else:
            kind = {"alpha": float, "resume": str}.get(f.name, type(default))
            p.add_argument(flag, type=kind, default=default, help=help_text)
    p.add_argument("--zoo", metavar="DIR", default=None,
                   help="demo: write the tiny zoo and a generated data set under DIR and train a few steps on CPU")


def run(args) -> int:
    names = {f.name for f in fields(ByGConfig)}
    cfg = ByGConfig(**{k: v for k, v in vars(args).items() if k in names})
    if getattr(args, "zoo", None):
        cfg = zoo_config(args.zoo, cfg)
    trainer = train(cfg)
    path = Path(cfg.output) / f"{LORA_NAME}.safetensors"
    print(f"LoRA: {path} (musubi-tuner), {diffusers_path(path)} (diffusers) after {trainer.step} steps")
    return 0


def zoo_config(folder: str | Path, cfg: ByGConfig | None = None) -> ByGConfig:
    """`cfg` pointed at the tiny zoo and a generated data set under `folder`, sized for a CPU demo (unless the
    caller changed those settings from their defaults)."""
    from ..zoo import write_zoo

    folder = Path(folder)
    zoo = write_zoo(folder / "zoo", seed=0) if not (folder / "zoo" / "models").is_dir() else None
    from ..zoo import Zoo

    zoo = zoo or Zoo(folder / "zoo")
    data = write_demo_dataset(folder / "data", 64, 64, count=4)
    base, cfg = ByGConfig(), cfg or ByGConfig()
    small = {"data": str(data), "model": str(zoo.file("wan21_t2v")), "text_encoder": str(zoo.file("umt5")),
             "vae": str(zoo.file("vae")), "output": str(folder / "run"), "width": 64, "height": 64, "rank": 4,
             "precision": "fp32", "max_steps": 6, "identity_warmup_steps": 2, "bootstrap_steps": 2,
             "clean_steps": 2, "log_every": 1, "save_every": 3, "lr": 1e-3, "gradient_checkpointing": False}
    changed = {k: v for k, v in asdict(cfg).items() if v != getattr(base, k)}
    return ByGConfig(**{**asdict(base), **small, **changed})


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `train-byg` on a `videoprior-edit` subparsers object."""
    p = subparsers.add_parser("train-byg", help="ByG: unpaired LoRA training of a Wan T2V editor (accelerate "
                              "launch for several GPUs; --zoo DIR for a tiny CPU demo)")
    add_arguments(p)
    p.set_defaults(run=run)
    return p


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m videoprior_edit.byg.train", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except VPEError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
