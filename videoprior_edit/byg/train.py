"""The ByG trainer (Bootstrap Your Generator): unpaired training of a LoRA editor on Wan text-to-video (video) or
FLUX.1-dev (image).

Commands (`videoprior-edit train-byg ...` = `python -m videoprior_edit.byg.train ...`):
  Wan2.1-T2V:       --data d.jsonl --model wan2.1_t2v_1.3B_fp16.safetensors --text-encoder umt5_xxl_fp16.safetensors
                    --vae wan_2.1_vae.safetensors --output runs/byg
  Wan2.2-T2V-A14B:  --model-high wan2.2_t2v_high_noise_14B_fp16.safetensors --model-low
                    wan2.2_t2v_low_noise_14B_fp16.safetensors [--expert both|high|low] (+ text encoder, VAE)
  FLUX.1-dev:       --model flux1-dev.safetensors --clip-l clip_l.safetensors --t5xxl t5xxl_fp16.safetensors
                    --vae ae.safetensors (the family is read from the model file; --family flux|wan forces it)
The same command runs on the CPU, on one GPU, and on several with `accelerate launch --multi_gpu -m
videoprior_edit.byg.train ...` (replicated data parallel) or `accelerate launch --config_file
configs/accelerate/fsdp_wan14b.yaml -m videoprior_edit.byg.train ...` (FSDP: parameters sharded, see `parallel.py`).
CPU processes: `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 ...` (gloo; accelerate's
`--cpu` launches a single process unless mpirun is set up). `--zoo DIR [--zoo-model wan2.1|wan2.2|flux]` trains a
few steps on the tiny zoo with a generated data set (CPU).

The editor: the student is the base transformer with a LoRA (rank 64 on every attention and FFN Linear of the
blocks); the source's clean latents are concatenated after the noisy latents along the tokens (Wan: along frames,
same temporal RoPE positions; FLUX: packed tokens, ids equal to the noisy tokens' or Kontext's offset), the
prediction is sliced to the noisy part (`family.py`). The frozen base model is the same transformer with the
adapter disabled (no second copy in memory); the EMA model is the same transformer with the EMA of the LoRA
weights swapped in (only LoRA tensors are copied).

Wan2.2-T2V-A14B: each forward goes to the expert whose range holds the sample's sigma (high-noise expert for
sigma >= 0.875, diffusers' T2V `boundary_ratio`; low-noise below), for the student, the frozen base and every EMA
bootstrapping step. The paper trains Wan2.2 but does not say how its two experts were handled; chosen: `--expert
both` (default) gives each expert its own LoRA and trains both in one run (sigma drawn over the whole range, each
sample routed; one AdamW over both LoRAs), which is what a Wan2.2 editor needs at inference. `--expert high|low`
trains one (sigma drawn within its range, as musubi-tuner's per-expert runs); the other expert runs frozen, with
`--other-expert-lora` (that expert's ByG LoRA from an earlier run) merged in for bootstrapping when given.

One edit step, per sample (sigma ~ logit-normal, shifted; FLUX's default shift is its resolution-dependent e^mu):
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

Outputs: `<output>/byg_lora.safetensors` (musubi/kohya keys: Wan `lora_unet_blocks_0_self_attn_q`, FLUX BFL names
`lora_unet_double_blocks_0_img_attn_qkv`; loads in ComfyUI / musubi / this pack) and `byg_lora_diffusers.safetensors`
(PEFT keys + `lora_adapter_metadata`); Wan2.2: `byg_lora_high_noise.safetensors` and `byg_lora_low_noise.safetensors`
(+ `_diffusers` twins); `byg_config.json`; `checkpoints/step-N/` (LoRA, EMA, optimizer, RNG and step as safetensors
+ JSON, `videoprior_edit.checkpoint`: no pickles; sharded runs keep no optimizer state).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

from ..checkpoint import (
    check_checkpointable,
    load_training_state,
    prune_checkpoints,
    save_training_state,
    step_checkpoints,
)
from ..errors import InputError, VPEError
from . import losses as L
from . import parallel
from .data import Example, read_jsonl, write_demo_dataset
from .family import (  # noqa: F401  (base_velocity, edit_velocity: public API of the trainer)
    LORA_TARGETS,
    Family,
    FluxFamily,
    WanFamily,
    adapters_off,
    base_velocity,
    cat_texts,
    detect_family,
    edit_velocity,
    take,
    to_device,
)

LORA_NAME = "byg_lora"
CONFIG_FILE = "byg_config.json"
EXPERT_SUFFIX = {"model": "", "high": "_high_noise", "low": "_low_noise"}
FAMILIES = ("auto", "wan", "flux")
EXPERTS = ("both", "high", "low")


@dataclass
class ByGConfig:
    """Every setting of a ByG run (command-line flags of the same names, `-` for `_`). Saved as byg_config.json.

    Defaults: the paper's where its text gives them (rank 64, AdamW, identity probability 0.15, 200 identity-only
    warm-up steps, 10 bootstrap steps, logit-normal timesteps with a shift, 320x576 video, batch 1 per GPU, 750
    steps for video). The numbers our copy of the paper lost (lr, weight decay, the three lambdas, the shift) and
    what it never says are marked "chosen" with the reason. 0 for width/height/shift: the family's own."""

    data: str = ""  # JSONL of (media, source_caption, target_caption, instruction, inverse_instruction)
    family: str = "auto"  # "wan" (T2V video) or "flux" (FLUX.1-dev image); auto: read from the model file
    model: str = ""  # Wan T2V (Wan2.1-T2V 1.3B / 14B) or FLUX.1-dev transformer file / folder
    model_high: str = ""  # Wan2.2-T2V-A14B high-noise expert (with --model-low)
    model_low: str = ""  # Wan2.2-T2V-A14B low-noise expert
    expert: str = "both"  # Wan2.2: which experts get a LoRA: both (chosen default), high or low
    other_expert_lora: str = ""  # --expert high|low: a ByG LoRA merged into the frozen other expert
    text_encoder: str = ""  # Wan: umt5_xxl
    clip_l: str = ""  # FLUX: clip_l.safetensors
    t5xxl: str = ""  # FLUX: t5xxl_fp16.safetensors
    vae: str = ""
    output: str = "runs/byg"
    # media
    width: int = 0  # 0: Wan 576, FLUX 512 (paper: 320x576 video; image size not given, chosen 512)
    height: int = 0  # 0: Wan 320, FLUX 512
    num_frames: int = 81  # frames read from a video (4k+1); an image is a 1-frame video. Paper: Wan's 81.
    # LoRA
    rank: int = 64  # paper
    alpha: float | None = None  # chosen: alpha = rank (scale 1), so lr means the same at every rank
    targets: str = "attn+ffn"  # "attn+ffn" (chosen: every Linear musubi-tuner's / kohya's LoRAs cover) or "attn"
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
    sharding: str = "auto"  # several processes: auto (FSDP when accelerate's config says so), fsdp, none
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
    source_timestep: str = "same"  # Wan: timestep of the source tokens, "same" as the noisy ones or "zero" (silent)
    source_positions: str = "same"  # positions of the source tokens: "same" (paper) or "offset" (Kontext-style)
    guidance: float = 3.5  # FLUX: guidance embedding value (chosen: FLUX.1-dev's default, what inference uses)
    max_sequence_length: int = 0  # FLUX: T5 tokens (0: the model's, 512 for FLUX.1-dev)
    timestep_sampling: str = "logit_normal"  # paper (video): logit-normal with shift; or "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    timestep_shift: float = 0.0  # 0: the family's (Wan: 3.0, its 480p shift; FLUX: e^mu of the image's tokens)
    # bookkeeping
    seed: int = 0
    log_every: int = 10
    save_every: int = 250
    keep_checkpoints: int = 2
    resume: str | None = None  # a checkpoint folder, or "latest"
    save_dtype: str = "bf16"  # dtype of the saved LoRA files
    fixed_draws: bool = False  # tests / debugging: the same noise, sigmas and batch every step


# ----------------------------------------------------------------------------------------------- the LoRA
def add_lora(transformer, modules: list[str], rank: int, alpha: float | None, seed: int = 0) -> list[str]:
    """Add a trainable PEFT LoRA ("default") to the Linears `modules` of `transformer` (everything else frozen)."""
    from peft import LoraConfig

    if not modules:
        raise InputError("No Linear of the model matches the LoRA targets.", "Check --targets and the model file.")
    transformer.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # lora_A's init
        transformer.add_adapter(LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=modules,
                                           init_lora_weights=True))
    for p in lora_parameters(transformer).values():
        p.data = p.data.float()
        p.requires_grad_(True)
    return modules


def lora_parameters(transformer) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in transformer.named_parameters() if ".lora_A." in n or ".lora_B." in n}


def diffusers_path(path: Path) -> Path:
    return path.with_name(path.stem + "_diffusers" + path.suffix)


def expert_path(path: Path, label: str) -> Path:
    """`byg_lora.safetensors` for a single model, `byg_lora_high_noise` / `_low_noise` for Wan2.2's experts."""
    return path.with_name(path.stem + EXPERT_SUFFIX[label] + path.suffix)


def _save_dtype(name: str) -> torch.dtype:
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name not in table:
        raise InputError(f"Unknown save dtype '{name}'.", "Use bf16, fp16 or fp32.")
    return table[name]


# ----------------------------------------------------------------------------------------------- training
class ByGTrainer:
    """A ByG run. `models`: a loaded Wan T2V `WanModels` or `FluxModels` set, owned by the trainer from here on
    (None: loaded from the config's files). Use `train()` or `step_once()`; `losses(batch, draws, identity)` is the
    loss of one micro-batch."""

    def __init__(self, cfg: ByGConfig, models=None, examples: list[Example] | None = None):
        _check(cfg)
        self.accelerator = acc = _accelerator(cfg)
        self.device = acc.device
        self.models = models if models is not None else _load_models(cfg)
        self.family = _family(self.models, cfg)
        width, height = self.family.default_size()
        self.cfg = cfg = replace(cfg, width=cfg.width or width, height=cfg.height or height)
        _check_family(cfg, self.family)
        self.sharded = parallel.fsdp_requested(cfg.sharding, acc)
        if self.sharded and acc.mixed_precision == "fp16":
            raise InputError("FSDP training here runs in bf16 or fp32, not fp16.", "Use --mixed-precision bf16.")
        examples = examples if examples is not None else read_jsonl(cfg.data)
        self.data = self.family.encode(examples, cfg, self.device)
        self.family.release_encoders()
        if getattr(self.models, "placement", None) is not None:
            self.models.placement = None  # the trainer owns the device from here on
        self._prepare_experts()
        self.params = {f"{e.label}.{n}": p for e in self.family.trained for n, p in lora_parameters(e.module).items()}
        self.ema = {k: p.detach().clone().float() for k, p in self.params.items()}
        optimizer = torch.optim.AdamW(self.params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                      betas=(cfg.adam_beta1, cfg.adam_beta2))
        self.optimizer = optimizer if self.sharded else acc.prepare(optimizer)  # accelerate's FSDP2 wants a model
        self.shift = cfg.timestep_shift or self.family.default_shift(self.data[0]["latents"])
        self.sigma_range = _sigma_range(self.family)
        # FSDP runs every forward as a collective: with two experts, all processes must route alike
        self.shared_sigmas = self.sharded and len(self.family.experts) > 1
        self.step = 0
        self.history: list[dict[str, float]] = []
        # what `videoprior_edit.checkpoint` is told: a sharded run keeps no optimizer state
        self.checkpoint_accelerator = _ShardedView(acc) if self.sharded else acc
        check_checkpointable(self.checkpoint_accelerator)
        if cfg.resume:
            self.load(cfg.resume)

    @property
    def transformer(self):
        """The (first) trained transformer: the single model, or the high-noise expert."""
        return self.family.trained[0].module

    def _prepare_experts(self) -> None:
        """LoRA on the trained experts, the other expert's LoRA merged, checkpointing, then device or shards."""
        cfg = self.cfg
        for i, e in enumerate(self.family.experts):
            e.module.train(e.trains)
            if e.trains:
                add_lora(e.module, self.family.lora_modules(e.module, cfg.targets), cfg.rank, cfg.alpha, cfg.seed + i)
            else:
                e.module.requires_grad_(False)
                if cfg.other_expert_lora:
                    from ..lora import apply_lora

                    apply_lora(e.module, cfg.other_expert_lora, 1.0, merge=True)
            if cfg.gradient_checkpointing and e.trains:
                e.module.enable_gradient_checkpointing()
        if self.sharded:
            blocks, reshard = parallel.fsdp_settings(self.accelerator, self.family.block_classes)
            parallel.shard([e.module for e in self.family.experts], blocks, self.device, reshard)
        else:
            for e in self.family.experts:
                e.module.to(self.device)

    # -- the models
    def routed(self, run, x, sigma, text, source=None) -> torch.Tensor:
        """`run(expert, x, sigma, text, source)` with each sample sent to the expert whose sigma range holds it."""
        experts = self.family.experts
        index = self.family.expert_index(sigma)
        if len(experts) == 1 or bool((index == index[0]).all()):
            return run(experts[int(index[0])], x, sigma, text, source)
        parts, order = [], []
        for i in index.unique().tolist():
            sel = (index == i).nonzero().squeeze(1)
            parts.append(run(experts[i], x[sel], sigma[sel], take(text, sel), None if source is None else source[sel]))
            order.append(sel)
        return torch.cat(parts)[torch.argsort(torch.cat(order))]

    def student(self, noisy, source, sigma, text) -> torch.Tensor:
        """The editor's velocity (LoRA on, source tokens concatenated), per sample on its expert."""
        def run(expert, x, s, t, src):
            return self.family.velocity(expert.module, x, s, t, src, self.cfg)

        with self.accelerator.autocast():
            return self.routed(run, noisy, sigma, text, source)

    @torch.no_grad()
    def base(self, noisy, sigma, text) -> torch.Tensor:
        """The frozen text-to-video / text-to-image model's velocity (LoRA off, no source tokens)."""
        def run(expert, x, s, t, _):
            with adapters_off(expert.module) if expert.trains else contextlib.nullcontext():
                return self.family.velocity(expert.module, x, s, t, None, self.cfg)

        with self.accelerator.autocast():
            return self.routed(run, noisy, sigma, text)

    @contextlib.contextmanager
    def ema_weights(self):
        """The EMA editor: EMA LoRA tensors swapped in (decay 0: the current weights, a stop-gradient copy)."""
        if self.cfg.ema_decay == 0:
            yield
            return
        with torch.no_grad():
            saved = {k: p.detach().clone() for k, p in self.params.items()}
            for k, p in self.params.items():
                p.copy_(self.ema[k])
        try:
            yield
        finally:
            with torch.no_grad():
                for k, p in self.params.items():
                    p.copy_(saved[k])

    @torch.no_grad()
    def update_ema(self) -> None:
        d = self.cfg.ema_decay
        for k, p in self.params.items():
            self.ema[k].mul_(d).add_(p.detach().float(), alpha=1 - d)

    @torch.no_grad()
    def ema_integrate(self, x, source, text, sigma_from, sigma_to, steps: int) -> torch.Tensor:
        """Euler steps of the EMA editor from `sigma_from` to `sigma_to` (per sample, uniform in sigma); each step
        runs on the expert of its starting sigma."""
        with self.ema_weights():
            for i in range(steps):
                s0 = sigma_from + (sigma_to - sigma_from) * (i / steps)
                s1 = sigma_from + (sigma_to - sigma_from) * ((i + 1) / steps)
                v = self.student(x, source, s0, text)
                x = x + L._per_sample(s1 - s0, x) * v
        return x

    # -- the loss
    def losses(self, batch: dict, draws: dict, identity: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one micro-batch and its terms."""
        cfg = self.cfg
        src, (t_src, t_tgt, t_ins, t_inv) = batch["latents"], batch["texts"]
        sigma = draws["sigma"]
        if identity:
            x = L.noised(src, draws["noise_id"], sigma)
            ident = L.velocity_loss(self.student(x, src, sigma, t_inv), src, draws["noise_id"])
            return ident, {"identity": ident}
        x_t = self.ema_integrate(draws["noise"], src, t_ins, torch.ones_like(sigma), sigma, cfg.bootstrap_steps)
        x0_ema = self.ema_integrate(x_t, src, t_ins, sigma, torch.zeros_like(sigma), cfg.clean_steps)
        base = self.base(torch.cat([x_t, x_t]), torch.cat([sigma, sigma]), cat_texts([t_tgt, t_src]))
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
            base_r = self.base(torch.cat([x_r, x_r]), torch.cat([sigma_r, sigma_r]), cat_texts([t_src, t_tgt]))
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
        texts = [to_device(self.family.collate_texts([i["texts"][k] for i in items]), self.device) for k in range(4)]
        return {"latents": latents, "texts": texts}

    def draws(self, positions: list[int], shape) -> dict:
        """Sigmas and noises of the samples at `positions` (seeded by position). With FSDP and two experts the sigmas
        are drawn alike on every process (by the position within the process's batch), so all route alike."""
        cfg, out = self.cfg, {k: [] for k in ("sigma", "sigma_rev", "noise", "noise_id", "noise_rev")}
        offset = self.accelerator.process_index * cfg.batch_size if self.shared_sigmas else 0
        for p in positions:
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + p + 1)
            gs = torch.Generator().manual_seed(cfg.seed * 1_000_003 + p - offset + 1) if self.shared_sigmas else g
            out["sigma"].append(self._sigma(gs))
            other = self._sigma(gs)
            out["sigma_rev"].append(out["sigma"][-1] if cfg.cycle_sigma == "same" else other)
            for k in ("noise", "noise_rev", "noise_id"):
                out[k].append(torch.randn(shape, generator=g))
        return {k: torch.stack(v).to(self.device) for k, v in out.items()}

    def _sigma(self, g: torch.Generator) -> torch.Tensor:
        """A shifted logit-normal (or uniform) sigma in the trained experts' range (rejection sampling)."""
        cfg, (low, high) = self.cfg, self.sigma_range
        for _ in range(1000):
            if cfg.timestep_sampling == "logit_normal":
                u = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn((), generator=g))
            else:
                u = torch.rand((), generator=g)
            s = self.shift
            sigma = (s * u / (1 + (s - 1) * u)).clamp(1e-3, 1.0)
            if low <= sigma and (sigma < high or high >= 1.0):
                return sigma
        return low + (high - low) * torch.rand((), generator=g)

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
        params = list(self.params.values())
        if acc.num_processes > 1 and not self.sharded:
            parallel.average_gradients(params, acc.num_processes)
        if cfg.max_grad_norm:
            logs["grad_norm"] = self._clip(params)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.update_ema()
        self.step += 1
        logs["identity_step"] = float(identity)
        self.history.append(logs)
        return logs

    def _clip(self, params) -> float:
        with_grad = [p for p in params if p.grad is not None]
        if not with_grad:
            return 0.0
        if self.sharded:
            norm = torch.nn.utils.clip_grad_norm_(with_grad, self.cfg.max_grad_norm)
            return float(parallel.whole(norm))
        return float(self.accelerator.clip_grad_norm_(with_grad, self.cfg.max_grad_norm))

    def train(self, steps: int | None = None) -> list[Path]:
        """Train up to `cfg.max_steps` (or `steps` more steps), logging, checkpointing and saving the LoRA(s)."""
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
    def lora_tensors(self, ema: bool = False) -> dict[str, dict[str, torch.Tensor]]:
        """Per trained expert label, its LoRA (or EMA) tensors whole, by PEFT parameter name. Every process must
        call it (sharded tensors are gathered)."""
        source = self.ema if ema else self.params
        out: dict[str, dict[str, torch.Tensor]] = {e.label: {} for e in self.family.trained}
        for key, t in source.items():
            label, name = key.split(".", 1)
            out[label][name] = parallel.whole(t.detach()).cpu()
        return out

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps of the weights: `lora.<key>` and `ema.<key>`, whole, on the CPU (collective)."""
        out = {f"lora.{k}": parallel.whole(v.detach()).cpu().clone() for k, v in self.params.items()}
        out.update({f"ema.{k}": parallel.whole(v.detach()).cpu().clone() for k, v in self.ema.items()})
        return out

    def save_checkpoint(self) -> Path:
        """`checkpoints/step-N/`: LoRA + EMA (safetensors), optimizer and RNG states, step and config (JSON); no
        pickles (`videoprior_edit.checkpoint`). The oldest beyond `keep_checkpoints` are removed."""
        acc = self.accelerator
        path = Path(self.cfg.output) / "checkpoints" / f"step-{self.step:06d}"
        save_training_state(path, self.checkpoint_accelerator, self.optimizer, self.checkpoint_tensors(),
                            {"step": self.step, "config": asdict(self.cfg)})
        if acc.is_main_process:
            (path / CONFIG_FILE).write_text(json.dumps(asdict(self.cfg), indent=2), encoding="utf-8")
            prune_checkpoints(self.cfg.output, self.cfg.keep_checkpoints)
        acc.wait_for_everyone()
        return path

    def load(self, path: str | Path) -> None:
        """Resume from a checkpoint folder (or "latest"): weights, EMA, optimizer, RNG states and step."""
        if str(path) == "latest":
            found = step_checkpoints(self.cfg.output)
            if not found:
                raise InputError(f"No checkpoint under {self.cfg.output}/checkpoints.", "Start without --resume.")
            path = found[-1]
        tensors, meta = load_training_state(path, self.checkpoint_accelerator, self.optimizer)
        missing = [k for k in self.params if f"lora.{k}" not in tensors or f"ema.{k}" not in tensors]
        if missing:
            raise InputError(f"The checkpoint {path} does not hold this run's LoRA ({len(missing)} tensors missing, "
                             f"e.g. {missing[0]}).", "Resume with the model, rank and targets it was trained with.")
        for k, p in self.params.items():
            parallel.assign_whole(p, tensors[f"lora.{k}"])
            parallel.assign_whole(self.ema[k], tensors[f"ema.{k}"])
        self.step = int(meta["step"])
        print(f"resumed from {path} at step {self.step}", flush=True)

    def save_lora(self, path: str | Path) -> list[Path]:
        """Write each trained LoRA: the musubi/kohya file (`path`, with `_high_noise` / `_low_noise` for Wan2.2's
        experts) and its diffusers/PEFT twin (`*_diffusers`); returns the musubi/kohya paths. Collective."""
        from ..weights import save_file

        path, cfg = Path(path), self.cfg
        alpha, dtype = cfg.alpha or cfg.rank, _save_dtype(cfg.save_dtype)
        tensors = self.lora_tensors()
        written = []
        for e in self.family.trained:
            target = expert_path(path, e.label)
            written.append(target)
            if not self.accelerator.is_main_process:
                continue
            shapes = {n.replace(".base_layer.", "."): tuple(p.shape) for n, p in e.module.named_parameters()}  # global
            kohya, peft_sd, metadata = self.family.lora_files(tensors[e.label], shapes, cfg.rank, alpha, dtype)
            info = {"byg_config": json.dumps(asdict(cfg)), "byg_step": str(self.step), "byg_family": self.family.name,
                    "byg_expert": e.label}
            save_file(kohya, target, metadata={"ss_network_dim": str(cfg.rank), "ss_network_alpha": str(alpha), **info})
            save_file(peft_sd, diffusers_path(target), metadata={"lora_adapter_metadata": metadata, "format": "pt",
                                                                  **info})
        self.accelerator.wait_for_everyone()
        return written


class _ShardedView:
    """The accelerator as `videoprior_edit.checkpoint` must see a sharded run (also when `--sharding fsdp` shards
    processes accelerate runs as plain data parallel): its optimizer state is not saved."""

    distributed_type = "FSDP"

    def __init__(self, accelerator):
        self.__dict__["_accelerator"] = accelerator

    def __getattr__(self, name):
        return getattr(self.__dict__["_accelerator"], name)

    def __setattr__(self, name, value):
        setattr(self.__dict__["_accelerator"], name, value)


def _sigma_range(family: Family) -> tuple[float, float]:
    """The sigmas to train at: all, or the trained expert's range when only one of two experts trains."""
    trained = family.trained
    if len(trained) == len(family.experts):
        return 0.0, 1.0
    return trained[0].low, trained[0].high


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
    # several CPU processes (torchrun / accelerate launch --multi_gpu without GPUs): gloo data parallel
    cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    return Accelerator(mixed_precision=mp, project_dir=cfg.output, cpu=cpu,
                       kwargs_handlers=[AutocastKwargs(cache_enabled=False)])


def _load_models(cfg: ByGConfig):
    """The model set the config names (on the CPU; the trainer moves or shards it)."""
    family = cfg.family if cfg.family != "auto" else detect_family(cfg.model or cfg.model_high)
    if family == "flux":
        from .flux import load_flux_models

        for what in ("model", "clip_l", "t5xxl", "vae"):
            if not getattr(cfg, what):
                raise InputError(f"No --{what.replace('_', '-')} given.",
                                 "FLUX needs flux1-dev, clip_l, t5xxl and ae (VAE) files.")
        return load_flux_models(cfg.model, cfg.clip_l, cfg.t5xxl, cfg.vae, dtype=cfg.precision)
    from ..models.sets import load_wan_models

    if cfg.model_high or cfg.model_low:
        if not (cfg.model_high and cfg.model_low):
            raise InputError("Wan2.2-T2V-A14B needs both experts.", "Give --model-high and --model-low.")
        if cfg.model:
            raise InputError("Give either --model (one model) or --model-high/--model-low (two experts).",
                             "Drop --model for Wan2.2-T2V-A14B.")
    high = cfg.model_high or cfg.model
    for what, value in (("model", high), ("text_encoder", cfg.text_encoder), ("vae", cfg.vae)):
        if not value:
            raise InputError(f"No --{what.replace('_', '-')} given.", "Give the Wan T2V, UMT5 and VAE files.")
    return load_wan_models(high, cfg.model_low or None, cfg.text_encoder, cfg.vae, dtype=cfg.precision)


def _family(models, cfg: ByGConfig) -> Family:
    is_flux = hasattr(models, "text_encoder_2")
    if cfg.family not in ("auto", "flux" if is_flux else "wan"):
        raise InputError(f"--family {cfg.family} but the model is {models.name}.", "Use --family auto.")
    return (FluxFamily if is_flux else WanFamily).from_models(models, cfg.expert)


def _check_family(cfg: ByGConfig, family: Family) -> None:
    if family.name == "flux" and cfg.source_timestep != "same":
        raise InputError("FLUX takes one timestep per sample: --source-timestep zero is for Wan.",
                         "Leave --source-timestep at 'same'.")
    if cfg.other_expert_lora and len(family.trained) == len(family.experts):
        raise InputError("--other-expert-lora is for --expert high|low on Wan2.2-T2V-A14B.", "Drop it.")
    if cfg.height % 16 or cfg.width % 16:
        raise InputError(f"Training size {cfg.width}x{cfg.height} is not a multiple of 16.", "Use e.g. 576x320.")


def _check(cfg: ByGConfig) -> None:
    if cfg.rank < 1 or cfg.batch_size < 1 or cfg.grad_accumulation < 1 or cfg.bootstrap_steps < 1 \
            or cfg.clean_steps < 1:
        raise InputError("Rank, batch size, accumulation and step counts must be at least 1.", "See --help.")
    if not 0 <= cfg.ema_decay <= 1 or not 0 <= cfg.identity_probability <= 1:
        raise InputError("EMA decay and identity probability must be in [0, 1].", "Paper: identity 0.15.")
    for name, allowed in (("cycle_sigma", ("same", "independent")), ("source_timestep", ("same", "zero")),
                          ("source_positions", ("same", "offset")), ("targets", LORA_TARGETS),
                          ("timestep_sampling", ("logit_normal", "uniform")), ("family", FAMILIES),
                          ("expert", EXPERTS), ("sharding", parallel.SHARDING)):
        if getattr(cfg, name) not in allowed:
            raise InputError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}.", "See --help.")


def train(cfg: ByGConfig, models=None, examples=None) -> ByGTrainer:
    trainer = ByGTrainer(cfg, models, examples)
    trainer.train()
    return trainer


# ----------------------------------------------------------------------------------------------- command line
_HELP = {
    "data": "JSONL of training tuples (media, source_caption, target_caption, instruction, inverse_instruction)",
    "family": "wan (T2V video) or flux (FLUX.1-dev image); auto reads it from the model file",
    "model": "Wan T2V or FLUX.1-dev transformer (ComfyUI file, diffusers folder or official repo)",
    "model_high": "Wan2.2-T2V-A14B high-noise expert (wan2.2_t2v_high_noise_14B_*.safetensors)",
    "model_low": "Wan2.2-T2V-A14B low-noise expert (wan2.2_t2v_low_noise_14B_*.safetensors)",
    "expert": "Wan2.2: train both experts' LoRAs (one run) or only the high / low one",
    "other_expert_lora": "with --expert high|low: the other expert's ByG LoRA, merged for bootstrapping",
    "text_encoder": "Wan: umt5_xxl text encoder",
    "clip_l": "FLUX: CLIP-L text encoder (clip_l.safetensors)",
    "t5xxl": "FLUX: T5-XXL text encoder (t5xxl_fp16.safetensors)",
    "width": "training width (0: Wan 576, FLUX 512)",
    "height": "training height (0: Wan 320, FLUX 512)",
    "sharding": "several processes: auto (FSDP when accelerate's config says so), fsdp, none (replicated)",
    "anchor_weight": "lambda: weight of the prior's MSE anchor to the base model's target-caption velocity",
    "identity_weight": "weight of an identity term added on edit steps too (0: identity only in identity steps)",
    "ema_decay": "EMA decay of the LoRA weights used for bootstrapping (0: current weights, the paper's video default)",
    "guidance": "FLUX: guidance embedding value for the student and the base model",
    "max_sequence_length": "FLUX: T5 tokens (0: the model's, 512)",
    "timestep_shift": "sigma shift (0: the family's: Wan 3.0, FLUX e^mu of the image's token count)",
    "resume": "checkpoint folder to resume from, or 'latest'",
    "fixed_draws": "same batch, noise and sigmas every step (debugging)",
}
ZOO_MODELS = ("wan2.1", "wan2.2", "flux")


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
    p.add_argument("--zoo-model", choices=ZOO_MODELS, default="wan2.1",
                   help="which tiny model the --zoo demo trains (wan2.2: two experts; flux: image editing)")


def run(args) -> int:
    names = {f.name for f in fields(ByGConfig)}
    cfg = ByGConfig(**{k: v for k, v in vars(args).items() if k in names})
    if getattr(args, "zoo", None):
        cfg = zoo_config(args.zoo, cfg, getattr(args, "zoo_model", "wan2.1"))
    trainer = train(cfg)
    for path in expert_path_list(trainer, Path(cfg.output) / f"{LORA_NAME}.safetensors"):
        if trainer.accelerator.is_main_process:
            print(f"LoRA: {path} (musubi/kohya), {diffusers_path(path)} (diffusers) after {trainer.step} steps")
    return 0


def expert_path_list(trainer: ByGTrainer, path: Path) -> list[Path]:
    return [expert_path(path, e.label) for e in trainer.family.trained]


def write_t2v_experts(folder: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Two random-weight tiny Wan T2V files named as Wan2.2-T2V-A14B's experts (the tiny zoo has no T2V pair):
    (high-noise path, low-noise path). Loaded together they are detected as Wan2.2-T2V-A14B."""
    from ..models.wan_keys import wan_key_to_original
    from ..weights import save_file
    from ..zoo import tiny_wan_transformer

    folder = Path(folder)
    paths = []
    for label, offset in (("high", 21), ("low", 22)):
        path = folder / f"tiny_wan2.2_t2v_{label}_noise_14B_fp32.safetensors"
        if not path.is_file():
            model = tiny_wan_transformer("t2v", seed + offset)
            save_file({wan_key_to_original(k): v for k, v in model.state_dict().items()}, path)
        paths.append(path)
    return paths[0], paths[1]


def zoo_config(folder: str | Path, cfg: ByGConfig | None = None, zoo_model: str = "wan2.1") -> ByGConfig:
    """`cfg` pointed at the tiny zoo and a generated data set under `folder`, sized for a CPU demo (unless the
    caller changed those settings from their defaults). `zoo_model`: wan2.1, wan2.2 (two experts) or flux."""
    from ..zoo import Zoo, write_zoo

    if zoo_model not in ZOO_MODELS:
        raise InputError(f"Unknown zoo model '{zoo_model}'.", f"Use one of: {', '.join(ZOO_MODELS)}.")
    folder = Path(folder)
    zoo = Zoo(folder / "zoo") if (folder / "zoo" / "zoo.json").is_file() else write_zoo(folder / "zoo", seed=0)
    data = write_demo_dataset(folder / "data", 64, 64, count=4)
    base, cfg = ByGConfig(), cfg or ByGConfig()
    small = {"data": str(data), "output": str(folder / "run"), "width": 64, "height": 64, "rank": 4,
             "precision": "fp32", "max_steps": 6, "identity_warmup_steps": 2, "bootstrap_steps": 2,
             "clean_steps": 2, "log_every": 1, "save_every": 3, "lr": 1e-3, "gradient_checkpointing": False}
    if zoo_model == "flux":
        fz = zoo.flux
        small.update(model=str(fz["transformer"]), clip_l=str(fz["clip_l"]), t5xxl=str(fz["t5xxl"]),
                     vae=str(fz["vae"]), max_sequence_length=32)
    else:
        small.update(text_encoder=str(zoo.file("umt5")), vae=str(zoo.file("vae")))
        if zoo_model == "wan2.2":
            high, low = write_t2v_experts(folder / "zoo_t2v_experts")
            small.update(model_high=str(high), model_low=str(low))
        else:
            small.update(model=str(zoo.file("wan21_t2v")))
    changed = {k: v for k, v in asdict(cfg).items() if v != getattr(base, k)}
    return ByGConfig(**{**asdict(base), **small, **changed})


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `train-byg` on a `videoprior-edit` subparsers object."""
    p = subparsers.add_parser("train-byg", help="ByG: unpaired LoRA training of a Wan T2V (video) or FLUX.1-dev "
                              "(image) editor (accelerate launch for several GPUs, FSDP for 14B; --zoo DIR for a "
                              "tiny CPU demo)")
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
