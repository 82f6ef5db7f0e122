"""The Video4Edit distillation trainer: a frozen Wan2.1-FLF2V teacher, a Wan2.1-I2V student, block-wise DiT feature
distillation and tail-frame supervision in the VAE latent space (LoRA or full fine-tune of the student).

Command: `videoprior-edit train-video4edit --data my_edits/ --models /path/to/ComfyUI/models --output runs/v4e`
(or `python -m videoprior_edit.video4edit.train ...`; explicit files with --student/--teacher/--text-encoder/--vae/
--clip-vision); several GPUs: `accelerate launch -m videoprior_edit.video4edit.train ...`. On the tiny zoo (random
weights, a generated dataset, CPU, seconds): `python -m videoprior_edit.video4edit.train --zoo /tmp/zoo --out run`.

What one training example is (`data.py` has the dataset folder format):
- teacher (frozen Wan2.1-FLF2V-14B): the source image as first frame, the edited image as last frame, the evolution
  prompt, CLIP embeddings of both images;
- student (Wan2.1-I2V-14B, or ChronoEdit-14B): the source image as first frame, the instruction, CLIP of the source;
- the clip: `frames` frames (default 5 = 2 latent frames: the tail latent is the edit) whose first frame is the
  source and whose last frame is the edited image; the frames between come from the teacher's trajectory (rolled out
  once per triplet with FLF2V and cached as PNGs), resampled uniformly to the clip's length (`clip_mode`).
  x0 = VAE latents of that clip (normalised).

One step: sigma = shift(u), u ~ U(0, 1), t = 1000 sigma; x_t = (1 - sigma) x0 + sigma eps. Teacher and student run on
the same x_t (each with its own 20-channel condition, text and CLIP tokens); forward hooks keep the chosen blocks'
outputs (diffusers classes are never modified). Losses:
- distill: mean over the chosen blocks of MSE(norm(student features), norm(teacher features)), norm = per-token
  LayerNorm without affine (the residual stream's scale grows with depth and has outlier channels; normalising makes
  each block count alike and the loss about 2 (1 - cosine)). A linear projector per block is added only when the
  widths differ (they do not for Wan2.1-I2V-14B / FLF2V-14B, both 40 x 5120);
- tail_flow: flow matching on the tail latent frame(s), |v - (eps - x0)|^2 (the paper's tail-frame supervision);
- tail_x0: optional x0 prediction of the tail, |x_t - sigma v - x0|^2 (= sigma^2-weighted tail_flow);
- inbetween_flow: optional flow matching on the latents between the first and the tail (none in a 5-frame clip).
total = distill_weight * distill + tail_flow_weight * tail_flow + tail_x0_weight * tail_x0 + inbetween_flow_weight
* inbetween_flow.

Choices the paper leaves open, and the defaults (all options of `TrainConfig` / the command):
- blocks: "quarters" = the last block of each quarter of the student (9, 19, 29, 39 for 40 blocks): four depths
  from the layout to the output, the last block included because it is nearest to the prediction; four hooks, four
  feature maps per model held per step. "all", "every:N", "none" or indices ("0,10,20") are options;
- loss weights 1 / 1 / 0 / 0: the two losses the paper names, equal weight (both are MSEs of unit-scale tensors);
- student clip 5 frames (2 latents): the shortest clip with an edited frame, as the tail-frame editor and ChronoEdit
  run; the teacher's trajectory is 33 frames (its rollout: 50 UniPC steps, CFG 5, shift 16: Wan2.1-FLF2V's official
  settings) resampled to the clip;
- timestep shift 5: sigma is sampled with the shift the student samples with (Wan I2V, ChronoEdit);
- LoRA rank 32, alpha 32 (scale 1) on every block's attention q/k/v/o (self and cross), the image K/V of the
  cross-attention (the CLIP tokens of the source) and the FFN Linears (the Lightning LoRAs' modules + k_img/v_img);
  lr 1e-4 (LoRA) / 1e-5 (full), AdamW, weight decay 0.01, grad-norm clip 1, global batch 4 (micro-batch 1 +
  accumulation), 2000 steps (a common LoRA budget: watch the validation renders, written every 250 steps);
- training size 832x480 (Wan's 480p: the one-off teacher rollouts dominate the cost; the paper's models are the
  720P ones: `--width 1280 --height 720` trains at 720p).

Real scale (Wan2.1-I2V-14B student + FLF2V-14B teacher, bf16, 832x480, 5 frames = 3120 video tokens; estimates from
weight sizes, not yet measured on a GPU):
- caching (once per triplet): UMT5-XXL (11.4 GB) encodes every prompt first and leaves the GPU; then per triplet the
  teacher (28.6 GB) rolls out 33 frames (50 steps x 2 forwards at 14,040 tokens: minutes on one H100) and the VAE
  and CLIP encode; `Placement("one_expert")` keeps one big model on the GPU at a time. `--teacher-steps 20-30`
  roughly halves the rollout time; trajectories you already have (`trajectory` field) skip it;
- training, LoRA: student weights 28.6 GB + LoRA (rank 32: 0.18 B values, 2.9 GB with fp32 grads and AdamW states) +
  activations with gradient checkpointing (~2-3 GB at 3120 tokens: 40 block inputs of 3120 x 5120 bf16 = 1.3 GB,
  one block recomputed, the distilled blocks' features) + teacher 28.6 GB (`--teacher-placement all_on_device`) =
  ~63 GB: one 80 GB H100/A100. `block_offload` keeps the teacher in RAM and streams one block at a
  time (< 2 GB on the GPU, slower): ~35 GB, a 48 GB card; `--student-weight-storage fp8_e4m3fn` (and the teacher
  in fp8) brings the student to ~15 GB: ~21 GB, tight on 24 GB. `auto` picks block_offload when both models do not
  fit the GPU with 12 GB to spare. RAM: both DiTs (57 GB) + CLIP; the text encoder is dropped after caching;
- training, full fine-tune: the student is trained in fp32 (56 GB) with grads and AdamW states (168 GB more): that
  needs sharding over several GPUs (FSDP / DeepSpeed ZeRO-3 via `accelerate config`; not yet tried with this
  trainer), not one GPU; on one GPU train a LoRA. `--full` runs as is on the tiny zoo and small models;
- several GPUs: `accelerate launch` runs one process per GPU (DDP); each holds both models; the global batch is
  split over processes and micro-batches.

Outputs in `--output`: the student (`video4edit_student_lora.safetensors`: diffusers/PEFT keys
`transformer.blocks.0.attn1.to_q.lora_A.weight` with the alpha in the `lora_adapter_metadata`, for Apply Wan LoRA /
`add_lora`; or with `--full` `video4edit_student.safetensors`, a ComfyUI single file in original Wan keys for Load
Wan Models / `load_wan_models`), `training_config.json`, `log.jsonl` (one line per step), `checkpoints/step-N/`
(accelerate state: trainable weights, optimizer, schedule, RNG; `--resume latest` continues from the newest),
`cache/` (encoded triplets and teacher trajectories), `validation/step-N/<name>.png` (source | student | target).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, VPEError
from ..sampling.condition import (
    clip_embeds,
    encode_mode,
    i2v_condition,
    normalize_latents,
    pixels_from_image,
    to_pil,
)
from ..sampling.loop import compute_dtype, placement_of
from ..sampling.rope import temporal_positions
from ..sampling.schedules import NUM_TRAIN_TIMESTEPS
from ..text import MAX_TOKENS, PromptEncoder
from .data import (
    CLIP_MODES,
    Triplet,
    load_frames,
    load_image,
    read_triplets,
    save_frames,
    student_clip,
)
from .editor import CHRONOEDIT_SKIP, edit_tail_frame, is_chronoedit, teacher_trajectory

LORA_FILE = "video4edit_student_lora.safetensors"
FULL_FILE = "video4edit_student.safetensors"
ADAPTER = "video4edit"
DEFAULT_LORA_TARGETS = "to_q,to_k,to_v,to_out.0,add_k_proj,add_v_proj,ffn.net.0.proj,ffn.net.2"
TEACHER_PLACEMENTS = ("auto", "all_on_device", "block_offload")
FEATURE_NORMS = ("layer", "l2", "none")
POSITION_MODES = ("auto", "consecutive", "chronoedit")
# Settings a resumed run must share with its checkpoint (they shape the trainable tensors or the data).
_STRUCTURAL = ("full", "lora_rank", "lora_targets")


@dataclass
class TrainConfig:
    """Every choice of the trainer (command-line flags of the same names; the module docstring gives the reasons
    for the defaults). Saved as `training_config.json` and in every checkpoint."""

    data: str = ""  # dataset folder (metadata.jsonl / metadata.csv, see data.py)
    output: str = "video4edit_run"
    student: str = ""  # Wan2.1-I2V-14B (wan2.1_i2v_720p_14B_fp16) or ChronoEdit-14B
    teacher: str = ""  # Wan2.1-FLF2V-14B-720P
    text_encoder: str = ""
    vae: str = ""
    clip_vision: str = ""
    # the clip
    width: int = 832
    height: int = 480
    frames: int = 5
    clip_mode: str = "teacher"  # data.CLIP_MODES
    teacher_frames: int = 33
    teacher_steps: int = 50
    teacher_cfg: float = 5.0
    teacher_shift: float = 16.0
    teacher_negative: str = ""
    # the losses
    distill_blocks: str = "quarters"
    distill_weight: float = 1.0
    feature_norm: str = "layer"
    tail_flow_weight: float = 1.0
    tail_x0_weight: float = 0.0
    inbetween_flow_weight: float = 0.0
    tail_latents: int = 1
    timestep_shift: float = 5.0
    positions: str = "auto"  # student RoPE: auto = ChronoEdit's for ChronoEdit students
    # the student
    full: bool = False
    lora_rank: int = 32
    lora_alpha: float | None = None  # None: = rank (scale 1)
    lora_targets: str = DEFAULT_LORA_TARGETS
    # optimisation
    steps: int = 2000
    lr: float | None = None  # None: 1e-4 for LoRA, 1e-5 for full
    lr_warmup_steps: int = 0
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    batch_size: int = 4
    micro_batch_size: int = 1
    seed: int = 0
    overfit: bool = False  # sanity check: the first batch, same noise and timestep, every step
    # memory
    precision: str = "bf16"  # dtype of the frozen weights (trainable ones are float32)
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = True
    teacher_placement: str = "auto"
    teacher_weight_storage: str = "default"
    student_weight_storage: str = "default"
    # bookkeeping
    save_every: int = 250
    keep_checkpoints: int = 2
    log_every: int = 10
    validate_every: int = 250
    val_count: int = 2
    val_steps: int = 20
    val_cfg: float = 5.0
    val_shift: float = 5.0
    resume: str | None = None  # "latest" or a checkpoints/step-N folder
    cache_dir: str | None = None
    save_dtype: str = "bf16"

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1e-5 if self.full else 1e-4)

    @property
    def alpha(self) -> float:
        return float(self.lora_alpha if self.lora_alpha is not None else self.lora_rank)

    def check(self) -> None:
        if self.width % 16 or self.height % 16 or self.width < 16 or self.height < 16:
            raise InputError(f"Training size {self.width}x{self.height} is not a multiple of 16.",
                             "Use e.g. 832x480 (480p) or 1280x720 (720p).")
        if self.frames < 5 or (self.frames - 1) % 4:
            raise InputError(f"{self.frames} frames: Wan clips have 4k+1 frames, at least 5.",
                             "Use 5 (2 latent frames: the tail latent is the edit), 9, 13, ...")
        if self.clip_mode not in CLIP_MODES:
            raise InputError(f"Unknown clip mode '{self.clip_mode}'.", f"Use one of: {', '.join(CLIP_MODES)}.")
        if self.clip_mode.startswith("teacher") and (self.teacher_frames < self.frames
                                                     or (self.teacher_frames - 1) % 4):
            raise InputError(f"Teacher frames {self.teacher_frames}: need 4k+1 and at least the clip's {self.frames}.",
                             "Use 33 (default) or 81 (FLF2V's full length).")
        latents = (self.frames - 1) // 4 + 1
        if not 1 <= self.tail_latents < latents:
            raise InputError(f"tail_latents {self.tail_latents}: a {self.frames}-frame clip has {latents} latent "
                             "frames, the first of which is the source.", "Use 1 (the last latent frame).")
        for name, allowed in (("feature_norm", FEATURE_NORMS), ("teacher_placement", TEACHER_PLACEMENTS),
                              ("positions", POSITION_MODES)):
            if getattr(self, name) not in allowed:
                raise InputError(f"Unknown {name} '{getattr(self, name)}'.", f"Use one of: {', '.join(allowed)}.")
        if self.steps < 1 or self.batch_size < 1 or self.micro_batch_size < 1 or self.lora_rank < 1:
            raise InputError("steps, batch sizes and the LoRA rank must be at least 1.", "See --help for defaults.")
        if self.full and self.student_weight_storage != "default":
            raise InputError("A full fine-tune cannot train fp8-stored weights.",
                             "Use --student-weight-storage default with --full, or train a LoRA.")
        if min(self.distill_weight, self.tail_flow_weight, self.tail_x0_weight, self.inbetween_flow_weight) < 0:
            raise InputError("Loss weights must not be negative.", "Use 0 to switch a loss off.")


@dataclass
class TrainResult:
    """A finished run: the output folder, the student file (LoRA or full model), the last step, one dict of losses
    per optimizer step of this run, and CPU copies of the trained LoRA (and projector) tensors under their PEFT
    names (empty for a full fine-tune: the student set's transformer holds the result)."""

    output: Path
    student_file: Path
    steps: int
    history: list[dict] = field(default_factory=list)
    trainable: dict[str, torch.Tensor] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- blocks & features
def select_blocks(spec: str, count: int) -> list[int]:
    """Student block indices from a spec: "quarters" (the last block of each quarter), "all", "none", "every:N"
    (N-1, 2N-1, ..., and the last block) or comma-separated indices (negative ones count from the end)."""
    spec = str(spec).strip().lower()
    if spec == "none":
        return []
    if spec == "all":
        return list(range(count))
    if spec == "quarters":
        return sorted({max(0, math.ceil(count * k / 4) - 1) for k in range(1, 5)})
    if spec.startswith("every:"):
        n = int(spec.split(":", 1)[1])
        if n < 1:
            raise InputError(f"Block spec '{spec}': N must be at least 1.", "e.g. every:4")
        return sorted(set(range(n - 1, count, n)) | {count - 1})
    try:
        picked = sorted({int(b) % count if -count <= int(b) < count else int(b) for b in spec.split(",") if b.strip()})
    except ValueError:
        raise InputError(f"Unknown block spec '{spec}'.", "Use quarters, all, none, every:N or indices like 0,10,20.")
    bad = [b for b in picked if not 0 <= b < count]
    if bad or not picked:
        raise InputError(f"Blocks {bad or spec} do not exist: the student has {count} blocks (0..{count - 1}).",
                         "Pick indices in range.")
    return picked


def teacher_block(index: int, student_blocks: int, teacher_blocks: int) -> int:
    """The teacher block at the same relative depth (the same index when both have as many blocks)."""
    return max(0, round((index + 1) * teacher_blocks / student_blocks) - 1)


class FeatureTap:
    """Forward hooks on some blocks that keep each block's output during `capture()`. Only the first output per
    block and capture is kept, so the recomputation of gradient checkpointing during backward changes nothing;
    outside a capture the hooks do nothing. `fired` lists the blocks whose hook ran in the last capture."""

    def __init__(self, blocks: nn.ModuleList, indices: list[int]):
        self.indices = list(indices)
        self.features: dict[int, torch.Tensor] = {}
        self.fired: list[int] = []
        self._armed = False
        self._handles = [blocks[i].register_forward_hook(self._hook(i)) for i in self.indices]

    def _hook(self, index: int):
        def hook(module, args, output):
            if self._armed and index not in self.features:
                self.features[index] = output
                self.fired.append(index)
        return hook

    @contextlib.contextmanager
    def capture(self):
        self.features, self.fired, self._armed = {}, [], True
        try:
            yield self.features
        finally:
            self._armed = False

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def normalize_features(x: torch.Tensor, how: str) -> torch.Tensor:
    x = x.float()
    if how == "layer":
        return F.layer_norm(x, x.shape[-1:])
    if how == "l2":
        return F.normalize(x, dim=-1) * math.sqrt(x.shape[-1])
    return x


class Distiller(nn.Module):
    """Student + teacher for one training step; `forward(batch, noise, sigma)` returns the losses.

    What the optimizer and accelerate see (registered): the trainable tensors only, i.e. the student's LoRA tensors
    (a `ParameterDict` sharing them with the student) or, with `full`, the whole student; plus the projectors when
    the widths differ. The teacher (frozen) and, for LoRA, the student's base weights are held unregistered, so
    checkpoints hold only what trains. Creating it adds the LoRA (peft) to the student; `close()` removes the LoRA
    and the hooks again."""

    def __init__(self, student: nn.Module, teacher: nn.Module, config: TrainConfig,
                 positions: list[int] | None = None):
        super().__init__()
        self.config, self.positions = config, positions
        self.__dict__["teacher"] = teacher
        torch.manual_seed(config.seed)  # LoRA / projector initialisation
        if config.full:
            self.student = student
            for p in student.parameters():
                p.data = p.data.float()
                p.requires_grad_(True)
        else:
            self.__dict__["student"] = student
            self.lora = nn.ParameterDict({n.replace(".", "__"): p for n, p in _add_lora(student, config)})
        count_s, count_t = len(student.blocks), len(teacher.blocks)
        self.blocks = select_blocks(config.distill_blocks, count_s) if config.distill_weight > 0 else []
        self.pairs = [(b, teacher_block(b, count_s, count_t)) for b in self.blocks]
        dim_s, dim_t = _width(student), _width(teacher)
        self.projectors = nn.ModuleDict({str(b): nn.Linear(dim_s, dim_t) for b in self.blocks} if dim_s != dim_t
                                        else {})
        self.student_tap = FeatureTap(student.blocks, self.blocks)
        self.teacher_tap = FeatureTap(teacher.blocks, [t for _, t in self.pairs])

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) of everything that trains (LoRA: PEFT names as in the student)."""
        if self.config.full:
            named = list(self.student.named_parameters())
        else:
            named = [(n.replace("__", "."), p) for n, p in self.lora.items()]
        return named + [(f"projectors.{n}", p) for n, p in self.projectors.named_parameters()]

    def forward(self, batch: dict[str, torch.Tensor], noise: torch.Tensor, sigma: torch.Tensor
                ) -> dict[str, torch.Tensor]:
        cfg = self.config
        x0 = batch["x0"].float()
        noise = noise.to(x0.device, torch.float32)
        s = sigma.to(x0.device, torch.float32).view(-1, 1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        target = noise - x0
        t = sigma.to(x0.device, torch.float32) * NUM_TRAIN_TIMESTEPS
        with self.student_tap.capture() as feats, temporal_positions(self.student, self.positions):
            v = _run(self.student, xt, batch["cond_student"], t, batch["text_student"], batch["clip_student"]).float()
        per_block = []
        if self.pairs:
            with torch.no_grad(), self.teacher_tap.capture() as targets:
                _run(self.teacher, xt, batch["cond_teacher"], t, batch["text_teacher"], batch["clip_teacher"])
            for b, tb in self.pairs:
                f = feats[b]
                if str(b) in self.projectors:
                    f = self.projectors[str(b)](f.to(self.projectors[str(b)].weight.dtype))
                f = normalize_features(f, cfg.feature_norm)
                g = normalize_features(targets[tb].to(f.device), cfg.feature_norm)
                per_block.append(F.mse_loss(f, g))
        zero = v.new_zeros(())
        distill = torch.stack(per_block).mean() if per_block else zero
        k, n = cfg.tail_latents, v.shape[2]
        tail = F.mse_loss(v[:, :, n - k:], target[:, :, n - k:])
        x0_tail = F.mse_loss(xt[:, :, n - k:] - s * v[:, :, n - k:], x0[:, :, n - k:])
        inbetween = F.mse_loss(v[:, :, 1:n - k], target[:, :, 1:n - k]) if n - k > 1 else zero
        total = (cfg.distill_weight * distill + cfg.tail_flow_weight * tail + cfg.tail_x0_weight * x0_tail
                 + cfg.inbetween_flow_weight * inbetween)
        return {"total": total, "distill": distill, "tail_flow": tail, "tail_x0": x0_tail, "inbetween_flow": inbetween,
                "distill_blocks": torch.stack(per_block).detach() if per_block else zero.detach()}

    def close(self) -> None:
        """Remove the hooks and (LoRA) the adapter: the student is its base model again."""
        self.student_tap.remove()
        self.teacher_tap.remove()
        if not self.config.full and getattr(self.student, "peft_config", None):
            self.student.unload_lora()


def _width(model: nn.Module) -> int:
    return model.config.num_attention_heads * model.config.attention_head_dim


def _run(model, xt, condition, t, text, image) -> torch.Tensor:
    dtype = compute_dtype(model)
    x = torch.cat([xt, condition.to(xt.device, torch.float32)], dim=1).to(dtype)
    if image is not None:
        image = image.flatten(0, 1)  # (B, images, tokens, width) -> (B * images, tokens, width)
    return model(hidden_states=x, timestep=t, encoder_hidden_states=text.to(x.device, dtype),
                 encoder_hidden_states_image=None if image is None else image.to(x.device, dtype),
                 return_dict=False)[0]


def _add_lora(student: nn.Module, config: TrainConfig) -> list[tuple[str, nn.Parameter]]:
    """Add the trainable LoRA (peft) to the student's Linears named in `lora_targets`; float32 tensors."""
    from peft import LoraConfig

    if getattr(student, "peft_config", None):
        raise InputError("The student transformer already holds a PEFT adapter.",
                         "Load the student again (or call Distiller.close() on the earlier run).")
    targets = [t.strip() for t in config.lora_targets.split(",") if t.strip()]
    names = {n for n, m in student.named_modules() if isinstance(m, nn.Linear)}
    if not targets or not any(any(n == t or n.endswith("." + t) for n in names) for t in targets):
        raise InputError(f"LoRA targets '{config.lora_targets}' match no Linear of the student.",
                         f"Use module names such as {DEFAULT_LORA_TARGETS}.")
    student.add_adapter(LoraConfig(r=config.lora_rank, lora_alpha=config.alpha, target_modules=targets,
                                   init_lora_weights=True, lora_dropout=0.0), adapter_name=ADAPTER)
    named = [(n, p) for n, p in student.named_parameters() if ".lora_" in n]
    for _, p in named:
        p.data = p.data.float()
        p.requires_grad_(True)
    return named


def student_positions(models, config: TrainConfig) -> list[int] | None:
    """Temporal RoPE positions of the student's clip: ChronoEdit's (0 and 7 for two latent frames) for ChronoEdit
    students (as the tail-frame editor samples them), else Wan's own (None)."""
    latents = (config.frames - 1) // 4 + 1
    chrono = config.positions == "chronoedit" or (config.positions == "auto" and is_chronoedit(models))
    return [0, CHRONOEDIT_SKIP - 1] if chrono and latents == 2 else None


# ----------------------------------------------------------------------------------------------- models
def load_models(config: TrainConfig):
    """The student set (Wan2.1-I2V / ChronoEdit with CLIP, UMT5, VAE) and the teacher set (Wan2.1-FLF2V sharing the
    student's encoders and VAE: UMT5 is read once)."""
    from ..models.sets import load_wan_models

    for what, value in (("--student", config.student), ("--teacher", config.teacher),
                        ("--text-encoder", config.text_encoder), ("--vae", config.vae),
                        ("--clip-vision", config.clip_vision)):
        if not value:
            raise InputError(f"No {what} file given.", "Give the files, or --models DIR (a ComfyUI models folder) "
                             "or --zoo DIR (the tiny test zoo).")
    student = load_wan_models(config.student, None, config.text_encoder, config.vae, config.clip_vision,
                              dtype=config.precision, weight_storage=config.student_weight_storage, task="i2v")
    return student, teacher_set(student, config.teacher, config.precision, config.teacher_weight_storage)


def teacher_set(student, path: str | Path, dtype: str = "bf16", weight_storage: str = "default"):
    """A Wan2.1-FLF2V model set that shares the student set's text encoder, CLIP and VAE."""
    from ..models.sets import WanModels
    from ..models.wan import load_wan_transformer

    model = load_wan_transformer(path, dtype, weight_storage, expect=("flf2v",), slot="teacher")
    variant = next(iter(model.vpe_info.variants), "wan2.1-flf2v-14b")
    return WanModels(variant=variant, transformer=model, text_encoder=student.text_encoder,
                     tokenizer=student.tokenizer, vae=student.vae, image_encoder=student.image_encoder,
                     image_processor=student.image_processor, sources={**student.sources, "model": str(path)},
                     load_options={**student.load_options, "dtype": dtype, "weight_storage": weight_storage})


def check_sets(student, teacher) -> None:
    if student.family != "i2v" or student.transformer_2 is not None or student.image_encoder is None:
        raise InputError(f"The student is {student.name}; Video4Edit's student is Wan2.1-I2V-14B (or ChronoEdit-14B) "
                         "with its CLIP image encoder.", "Load wan2.1_i2v_720p_14B_fp16 with clip_vision_h.")
    if teacher.family != "flf2v" or teacher.image_encoder is None:
        raise InputError(f"The teacher is {teacher.name}; Video4Edit's teacher is Wan2.1-FLF2V-14B-720P.",
                         "Load wan2.1_flf2v_720p_14B_fp16 with clip_vision_h.")


# ----------------------------------------------------------------------------------------------- cache
class _EmbeddingTable(PromptEncoder):
    """A prompt encoder that serves embeddings computed beforehand (trimmed to their tokens), so the sampling loop
    (teacher rollouts, validation renders) never needs the text encoder on the device again."""

    def __init__(self, tokenizer, table: dict[str, torch.Tensor]):
        super().__init__(None, tokenizer)
        self.table = table

    def has(self, prompt: str) -> bool:
        return prompt in self.table or super().has(prompt)

    def _encode(self, prompts: list[str]) -> None:
        for prompt in prompts:
            if prompt not in self.table:
                raise InputError(f"The prompt '{prompt[:60]}' was not encoded before training.",
                                 "This is a bug in the trainer's prompt list; please report it.")
            self._cache[prompt] = _pad(self.table[prompt])


def _pad(embedding: torch.Tensor) -> torch.Tensor:
    out = embedding.new_zeros(MAX_TOKENS, embedding.shape[-1])
    out[:embedding.shape[0]] = embedding[:MAX_TOKENS]
    return out


def encode_texts(models, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Each prompt's UMT5 embedding trimmed to its real tokens (CPU), with the text encoder on the device once."""
    prompts = list(dict.fromkeys(prompts))
    if not prompts:
        return {}
    place = placement_of(models)
    encoder = PromptEncoder(place.activate(models, "text_encoder"), models.tokenizer)
    try:
        table = {}
        for prompt in prompts:
            n = max(1, min(MAX_TOKENS, encoder.token_count(prompt)))
            table[prompt] = encoder([prompt])[0][:n].clone()
            encoder.clear()
        return table
    finally:
        place.release(models, "text_encoder")


def _stamp(path: Path) -> list:
    path = Path(path)
    if path.is_dir():
        return [_stamp(p) for p in sorted(path.iterdir()) if p.is_file()]
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:40] or "triplet"


def _rollout_key(t: Triplet, config: TrainConfig, teacher_source: str) -> str:
    what = [_stamp(t.source), _stamp(t.edited), t.teacher_prompt, config.teacher_negative, config.width,
            config.height, config.teacher_frames, config.teacher_steps, config.teacher_cfg, config.teacher_shift,
            config.seed, Path(teacher_source).name, config.precision]
    return hashlib.sha1(json.dumps(what).encode()).hexdigest()[:16]


def _cache_key(t: Triplet, config: TrainConfig, teacher_source: str, student_source: str) -> str:
    trajectory = _stamp(t.trajectory) if t.trajectory else (
        _rollout_key(t, config, teacher_source) if config.clip_mode.startswith("teacher") else None)
    what = [_stamp(t.source), _stamp(t.edited), t.instruction, t.teacher_prompt, trajectory, config.width,
            config.height, config.frames, config.clip_mode, Path(student_source).name, config.precision]
    return hashlib.sha1(json.dumps(what).encode()).hexdigest()[:16]


def cache_folder(config: TrainConfig) -> Path:
    return Path(config.cache_dir or Path(config.output) / "cache")


def build_cache(student, teacher, triplets: list[Triplet], config: TrainConfig, accelerator=None) -> list[Path]:
    """Encode every triplet once (each process a share; what is cached is skipped) and return the cache files.

    Per triplet: the teacher trajectory (given, cached, or rolled out with FLF2V and saved as PNGs under
    cache/trajectories/), the student clip, its VAE latents x0, the student's and the teacher's I2V conditions,
    CLIP embeddings (source; source + edited) and the instruction's / evolution prompt's embeddings. All prompts
    are encoded first, so the text encoder is on the device once."""
    folder = cache_folder(config)
    src_t, src_s = teacher.sources.get("model", ""), student.sources.get("model", "")
    files = [folder / f"{_safe(t.name)}-{_cache_key(t, config, src_t, src_s)}.safetensors" for t in triplets]
    rank, world = (0, 1) if accelerator is None else (accelerator.process_index, accelerator.num_processes)
    todo = [i for i in range(rank, len(triplets), world) if not files[i].is_file()]
    if todo:
        rollout = config.clip_mode.startswith("teacher")
        prompts = [p for i in todo for p in (triplets[i].instruction, triplets[i].teacher_prompt)]
        prompts += [config.teacher_negative] if rollout and config.teacher_cfg > 1 else []
        table = encode_texts(student, prompts)
        saved = teacher.__dict__.get("_prompt_encoder")
        teacher.__dict__["_prompt_encoder"] = _EmbeddingTable(teacher.tokenizer, table)
        try:
            for n, i in enumerate(todo):
                _encode_triplet(student, teacher, triplets[i], config, table, files[i], folder)
                teacher.__dict__["_prompt_encoder"].clear()
                if n % 10 == 0 or n == len(todo) - 1:
                    _print(accelerator, f"cache: {n + 1}/{len(todo)} triplets encoded ({triplets[i].name})")
        finally:
            if saved is None:
                teacher.__dict__.pop("_prompt_encoder", None)
            else:
                teacher.__dict__["_prompt_encoder"] = saved
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return files


@torch.no_grad()
def _encode_triplet(student, teacher, t: Triplet, config: TrainConfig, table, path: Path, folder: Path) -> None:
    from ..weights import save_file

    w, h = config.width, config.height
    source, edited = load_image(t.source, w, h), load_image(t.edited, w, h)
    trajectory = None
    if config.clip_mode.startswith("teacher"):
        trajectory = _trajectory(teacher, t, source, edited, config, folder)
    clip = student_clip(source, edited, config.frames, config.clip_mode, trajectory)
    place = placement_of(student)
    out = {}
    vae = place.activate(student, "vae")
    device = next(vae.parameters()).device
    video = pixels_from_image(clip).permute(1, 0, 2, 3).unsqueeze(0)  # (1, 3, F, H, W)
    out["x0"] = normalize_latents(vae, encode_mode(vae, video.to(device)).float())[0]
    first, last = pixels_from_image(source).to(device), pixels_from_image(edited).to(device)
    out["cond_student"] = i2v_condition(vae, first, config.frames, device=device)[0]
    out["cond_teacher"] = i2v_condition(vae, first, config.frames, last, device=device)[0]
    place.release(student, "vae")
    for key, models, pictures in (("clip_student", student, [to_pil(source[0])]),
                                  ("clip_teacher", teacher, [to_pil(source[0]), to_pil(edited[0])])):
        tplace = placement_of(models)
        encoder = tplace.activate(models, "image_encoder")
        # (images, tokens, width): FLF2V's image embedder pairs each clip's two images up itself
        out[key] = clip_embeds(encoder, models.image_processor, pictures if len(pictures) > 1 else pictures[0])
        tplace.release(models, "image_encoder")
    out["text_student"], out["text_teacher"] = table[t.instruction], table[t.teacher_prompt]
    save_file({k: v.detach().cpu().contiguous() for k, v in out.items()}, path,
              metadata={"name": t.name, "instruction": t.instruction, "evolution": t.teacher_prompt})


def _trajectory(teacher, t: Triplet, source, edited, config: TrainConfig, folder: Path) -> torch.Tensor:
    """The teacher's frames from source to edited: the triplet's own folder, a cached rollout, or a new rollout
    (saved as PNGs so it is done once and can be looked at)."""
    w, h = config.width, config.height
    if t.trajectory is not None:
        return load_frames(t.trajectory, w, h)
    cached = folder / "trajectories" / f"{_safe(t.name)}-{_rollout_key(t, config, teacher.sources.get('model', ''))}"
    if (cached / "done").is_file():
        return load_frames(cached, w, h)
    frames, _ = teacher_trajectory(teacher, source, edited, t.teacher_prompt, config.teacher_negative,
                                   frames=config.teacher_frames, steps=config.teacher_steps, cfg=config.teacher_cfg,
                                   shift=config.teacher_shift, seed=config.seed, size_mode="resize", max_side=0)
    save_frames(frames, cached)
    (cached / "done").write_text("")
    return load_frames(cached, w, h)  # the saved (8-bit) frames, so a rerun sees exactly the same clip


def load_batch(files: list[Path], indices: list[int], device=None) -> dict[str, torch.Tensor]:
    """Stacked cached triplets; the text embeddings zero-padded to 512 tokens (as Wan's pipelines pad)."""
    from safetensors.torch import load_file

    items = [load_file(str(files[i])) for i in indices]
    batch = {k: torch.stack([item[k] for item in items]) for k in items[0] if not k.startswith("text_")}
    for k in ("text_student", "text_teacher"):
        batch[k] = torch.stack([_pad(item[k]) for item in items])
    return {k: v.to(device) for k, v in batch.items()}


# ----------------------------------------------------------------------------------------------- sampling order
def sample_index(position: int, size: int, seed: int) -> int:
    """The triplet at sample `position`: epoch e is a permutation seeded with seed + e."""
    epoch = position // size
    perm = torch.randperm(size, generator=torch.Generator().manual_seed(seed + epoch))
    return int(perm[position % size])


def draw(seed: int, positions: list[int], shape, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise `(B, *shape)` and sigma `(B,)` for samples at `positions` (sigma = shift u / (1 + (shift - 1) u), u ~
    U(0, 1)): a function of the position only, so a resumed run draws exactly what the uninterrupted one would."""
    noise, u = [], []
    for p in positions:
        g = torch.Generator().manual_seed(seed * 1_000_003 + p + 1)
        u.append(torch.rand(1, generator=g))
        noise.append(torch.randn(tuple(shape), generator=g))
    u = torch.cat(u)
    return torch.stack(noise), shift * u / (1 + (shift - 1) * u)


# ----------------------------------------------------------------------------------------------- saving
def save_lora(student: nn.Module, path: str | Path, dtype: torch.dtype = torch.bfloat16,
              info: dict | None = None) -> Path:
    """The student's LoRA as a diffusers/PEFT file: `transformer.<module>.lora_A.weight` / `lora_B.weight`, the PEFT
    config (rank, alpha, targets) in the `lora_adapter_metadata` entry as diffusers writes it."""
    from peft.utils import get_peft_model_state_dict

    from ..weights import save_file

    state = get_peft_model_state_dict(student, adapter_name=ADAPTER)
    tensors = {f"transformer.{k}": v.detach().to("cpu", dtype) for k, v in state.items()}
    config = student.peft_config[ADAPTER].to_dict()
    metadata = {"format": "pt", "lora_adapter_metadata": json.dumps({f"transformer.{k}": v for k, v in config.items()},
                                                                    default=_jsonable, sort_keys=True)}
    if info:
        metadata["video4edit"] = json.dumps(info, default=str)
    save_file(tensors, path, metadata)
    return Path(path)


def _jsonable(value):
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value) if all(isinstance(v, str) for v in value) else list(value)
    return str(value)


def save_full(student: nn.Module, path: str | Path, dtype: torch.dtype = torch.bfloat16,
              info: dict | None = None) -> Path:
    """The whole student as a ComfyUI-style single file in original Wan keys (`blocks.0.self_attn.q.weight`)."""
    from ..models.wan_keys import wan_key_to_original
    from ..weights import save_file

    tensors = {}
    for key, value in student.state_dict().items():
        original = wan_key_to_original(key)
        if original is None:
            raise VPEError(f"The student's tensor '{key}' has no original Wan name.", "Please report this.")
        tensors[original] = value.detach().to("cpu", dtype) if value.is_floating_point() else value.detach().cpu()
    save_file(tensors, path, {"video4edit": json.dumps(info or {}, default=str)})
    return Path(path)


# ----------------------------------------------------------------------------------------------- training
def _accelerator(config: TrainConfig):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()  # a second run in one process may use another precision
    GradientState._reset_state()
    mixed = config.mixed_precision
    if mixed == "auto":
        mixed = {"fp32": "no"}.get(config.precision, config.precision)
    if mixed not in ("no", "bf16", "fp16"):
        raise InputError(f"Unknown mixed precision '{config.mixed_precision}'.", "Use auto, no, bf16 or fp16.")
    if mixed == "no" and config.precision != "fp32":
        raise InputError(f"Weights in {config.precision} need mixed precision (trainable tensors are float32).",
                         "Use --mixed-precision auto (or bf16), or --precision fp32.")
    return Accelerator(mixed_precision=mixed, project_dir=config.output)


def _print(accelerator, text: str) -> None:
    if accelerator is None:
        print(text, flush=True)
    else:
        accelerator.print(text, flush=True)


def _teacher_mode(config: TrainConfig, student, teacher, device: torch.device) -> str:
    if config.teacher_placement != "auto":
        return config.teacher_placement
    if device.type != "cuda":
        return "all_on_device"
    need = sum(p.numel() * p.element_size() for m in (student.transformer, teacher.transformer)
               for p in m.parameters())
    return "all_on_device" if need + 12 * 2**30 < torch.cuda.get_device_properties(device).total_memory \
        else "block_offload"


def _accumulation(config: TrainConfig, processes: int) -> int:
    per_step = config.micro_batch_size * processes
    if config.batch_size % per_step:
        raise InputError(f"Batch size {config.batch_size} is not a multiple of micro batch x processes ({per_step}).",
                         "Pick a batch size that the processes and micro batches divide.")
    return config.batch_size // per_step


def train(config: TrainConfig, student=None, teacher=None) -> TrainResult:
    """Distil the teacher into the student on `config.data` and write the student file into `config.output`.

    `student` / `teacher`: model sets already loaded (a Wan2.1-I2V set with CLIP, a Wan2.1-FLF2V set); default:
    loaded from the config's files (and the text encoder dropped after encoding). A LoRA run leaves the student set
    as it was (the adapter is removed at the end); a full run trains the set's transformer in place (cast back to
    its load dtypes at the end). Placements of the sets are restored."""
    config.check()
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    accelerator = _accelerator(config)
    accum = _accumulation(config, accelerator.num_processes)
    own = student is None
    if own:
        student, teacher = load_models(config)
    elif teacher is None:
        raise InputError("A student set was given without a teacher set.", "Pass both, or neither (files).")
    check_sets(student, teacher)
    triplets = read_triplets(config.data)
    placements = (student.placement, teacher.placement)
    prompt_encoder = student.__dict__.get("_prompt_encoder")
    dtypes = {n: p.dtype for n, p in student.transformer.named_parameters()}
    distiller = None
    try:
        from ..placement import Placement

        device = accelerator.device
        student.placement = teacher.placement = Placement("one_expert", device=device)
        files = build_cache(student, teacher, triplets, config, accelerator)
        val = triplets[:config.val_count] if config.validate_every and config.val_steps else []
        table = encode_texts(student, [t.instruction for t in val] + [""]) if val else {}
        student.__dict__["_prompt_encoder"] = _EmbeddingTable(student.tokenizer, table)
        if own:
            student.text_encoder = teacher.text_encoder = None  # every prompt is encoded: its RAM back
        student.placement = Placement("all_on_device", device=device)
        teacher.placement = Placement(_teacher_mode(config, student, teacher, device), device=device)
        distiller = Distiller(student.placement.activate(student, "transformer"),
                              teacher.placement.activate(teacher, "transformer"), config,
                              student_positions(student, config))
        if config.gradient_checkpointing:
            student.transformer.enable_gradient_checkpointing()
        return _fit(accelerator, distiller, student, triplets, files, val, config, accum,
                    teacher.placement.describe())
    finally:
        if distiller is not None:
            distiller.close()
            student.transformer.disable_gradient_checkpointing()
        if config.full:
            for n, p in student.transformer.named_parameters():
                p.requires_grad_(False)
                p.data = p.data.to(dtypes[n])
        student.placement, teacher.placement = placements
        if prompt_encoder is None:
            student.__dict__.pop("_prompt_encoder", None)
        else:
            student.__dict__["_prompt_encoder"] = prompt_encoder


def _fit(accelerator, distiller: Distiller, student, triplets, files, val, config: TrainConfig, accum: int,
         teacher_where: str) -> TrainResult:
    named = distiller.trainable_parameters()
    params = [p for _, p in named]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    warmup = max(0, config.lr_warmup_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / (warmup + 1)))
    net, optimizer = accelerator.prepare(distiller, optimizer)
    accelerator.register_for_checkpointing(schedule)
    step = _resume(accelerator, config)
    out = Path(config.output)
    if accelerator.is_main_process:
        (out / "training_config.json").write_text(json.dumps(asdict(config), indent=1))
    what = "full fine-tune" if config.full else f"LoRA rank {config.lora_rank}"
    _print(accelerator, f"video4edit: {len(triplets)} triplets, {what} ({sum(p.numel() for p in params):,} trainable "
           f"values), distilled blocks {distiller.blocks or 'none'}, teacher: {teacher_where}; steps {step + 1}.."
           f"{config.steps}")
    if step == 0 and val:
        _validate(accelerator, student, val, config, 0)
    history, window, started = [], [], time.time()
    device = accelerator.device
    shape = None
    while step < config.steps:
        sums = {}
        for micro in range(accum):
            positions = [step * config.batch_size + (micro * accelerator.num_processes + accelerator.process_index)
                         * config.micro_batch_size + j for j in range(config.micro_batch_size)]
            indices = [0] * len(positions) if config.overfit else \
                [sample_index(p, len(files), config.seed) for p in positions]
            batch = load_batch(files, indices, device)
            shape = shape or batch["x0"].shape[1:]
            noise, sigma = draw(config.seed, [0] * len(positions) if config.overfit else positions, shape,
                                config.timestep_shift)
            sync = contextlib.nullcontext() if micro == accum - 1 else accelerator.no_sync(net)
            with sync, accelerator.autocast():
                losses = net(batch, noise.to(device), sigma.to(device))
                accelerator.backward(losses["total"] / accum)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0) + v.detach().float() / accum
        if config.max_grad_norm > 0:
            accelerator.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        record = _record(accelerator, sums, step, schedule.get_last_lr()[0], distiller.blocks)
        history.append(record)
        window.append(record)
        if accelerator.is_main_process:
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        if step % max(1, config.log_every) == 0 or step == config.steps:
            _log(accelerator, window, step, config, (time.time() - started) / len(window))
            window, started = [], time.time()
        last = step == config.steps
        if last or (config.save_every and step % config.save_every == 0):
            _save(accelerator, distiller, student, config, step)
        if val and (last or step % config.validate_every == 0):
            _validate(accelerator, student, val, config, step)
    path = out / (FULL_FILE if config.full else LORA_FILE)
    trainable = {} if config.full else {n: p.detach().float().cpu().clone() for n, p in named}
    return TrainResult(out, path, step, history, trainable)


def _record(accelerator, sums: dict, step: int, lr: float, blocks: list[int]) -> dict:
    keys = ["total", "distill", "tail_flow", "tail_x0", "inbetween_flow"]
    stacked = torch.stack([sums[k].reshape(()) for k in keys])
    per_block = sums["distill_blocks"].reshape(-1)
    both = accelerator.reduce(torch.cat([stacked, per_block]), "mean")
    record = {"step": step, **{k: float(v) for k, v in zip(keys, both[:len(keys)])}, "lr": lr}
    if blocks:
        record["blocks"] = {str(b): float(v) for b, v in zip(blocks, both[len(keys):])}
    for k, v in record.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise VPEError(f"The {k} loss is not finite at step {step} ({v}).",
                           "Lower --lr, use --mixed-precision bf16 rather than fp16, or check the data.")
    return record


def _log(accelerator, window: list[dict], step: int, config: TrainConfig, seconds: float) -> None:
    """One line for the last `log_every` steps (means): total, each weighted loss (distill per block), lr, speed."""
    mean = lambda k: sum(r[k] for r in window) / len(window)
    parts = [f"step {step}/{config.steps}: loss {mean('total'):.4f}"]
    if window[-1].get("blocks"):
        blocks = " ".join(f"b{b} {sum(r['blocks'][b] for r in window) / len(window):.3f}" for b in window[-1]["blocks"])
        parts.append(f"distill {mean('distill'):.4f} [{blocks}]")
    for key, label, weight in (("tail_flow", "tail", config.tail_flow_weight),
                               ("tail_x0", "tail x0", config.tail_x0_weight),
                               ("inbetween_flow", "in-between", config.inbetween_flow_weight)):
        if weight:
            parts.append(f"{label} {mean(key):.4f}")
    parts += [f"lr {window[-1]['lr']:.2e}", f"{seconds:.2f} s/step"]
    _print(accelerator, ", ".join(parts))


# ----------------------------------------------------------------------------------------------- checkpoints
def checkpoints(output: str | Path) -> list[Path]:
    folder = Path(output) / "checkpoints"
    found = [p for p in folder.glob("step-*") if (p / "trainer_state.json").is_file()] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _info(config: TrainConfig, student, step: int) -> dict:
    return {"method": "video4edit", "base": student.name, "base_file": Path(student.sources.get("model", "")).name,
            "step": step, "config": asdict(config)}


def _save(accelerator, distiller: Distiller, student, config: TrainConfig, step: int) -> None:
    """Accelerate state under checkpoints/step-N (what trains, optimizer, schedule, RNG) and the student file."""
    out = Path(config.output)
    folder = out / "checkpoints" / f"step-{step:06d}"
    accelerator.save_state(str(folder))
    if accelerator.is_main_process:
        (folder / "trainer_state.json").write_text(json.dumps({"step": step, "config": asdict(config)}, indent=1))
        for old in checkpoints(out)[:-max(1, config.keep_checkpoints)]:
            shutil.rmtree(old)
        from ..models.core import parse_dtype

        dtype, info = parse_dtype(config.save_dtype), _info(config, student, step)
        if config.full:
            save_full(distiller.student, out / FULL_FILE, dtype, info)
        else:
            save_lora(distiller.student, out / LORA_FILE, dtype, info)
    accelerator.wait_for_everyone()


def _resume(accelerator, config: TrainConfig) -> int:
    """Load a checkpoint ('latest' or a folder) and return its step; 0 when not resuming (or 'latest' finds none)."""
    if not config.resume:
        return 0
    if config.resume == "latest":
        found = checkpoints(config.output)
        if not found:
            _print(accelerator, f"no checkpoint in {Path(config.output) / 'checkpoints'} yet: starting at step 0")
            return 0
        folder = found[-1]
    else:
        folder = Path(config.resume)
    state = folder / "trainer_state.json"
    if not state.is_file():
        raise InputError(f"No checkpoint to resume from at {folder}.",
                         "Give a checkpoints/step-N folder, or 'latest' with the same --output.")
    saved = json.loads(state.read_text())
    changed = [k for k in _STRUCTURAL if saved["config"].get(k) != getattr(config, k)]
    if changed:
        was = ", ".join(f"{k}={saved['config'].get(k)!r}" for k in changed)
        raise InputError(f"The checkpoint was trained with other {', '.join(changed)} ({was}).",
                         "Resume with the checkpoint's settings (see its trainer_state.json).")
    accelerator.load_state(str(folder))
    _print(accelerator, f"resumed from {folder} at step {saved['step']}")
    return int(saved["step"])


# ----------------------------------------------------------------------------------------------- validation
def _validate(accelerator, student, val: list[Triplet], config: TrainConfig, step: int) -> None:
    """Edit the first triplets' sources with the student as it is now: validation/step-N/<name>.png holds
    source | student's edit | target."""
    if accelerator.is_main_process:
        from PIL import Image

        folder = Path(config.output) / "validation" / f"step-{step:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        for t in val:
            source = load_image(t.source, config.width, config.height)
            with torch.no_grad(), accelerator.autocast():
                edit = edit_tail_frame(student, source, t.instruction, "", config.frames, config.val_steps,
                                       config.val_cfg, config.val_shift, seed=config.seed, max_side=0,
                                       positions=config.positions).edited
            target = load_image(t.edited, config.width, config.height)
            strip = torch.cat([source, edit.cpu(), target], dim=2)[0]
            Image.fromarray((strip.clamp(0, 1) * 255).round().to(torch.uint8).numpy()).save(folder / f"{_safe(t.name)}.png")
        _print(accelerator, f"step {step}: validation renders in {folder}")
    accelerator.wait_for_everyone()


# ----------------------------------------------------------------------------------------------- command line
# (flag, config field, type, help); defaults come from TrainConfig (or the tiny-zoo settings with --zoo).
_OPTIONS = [
    ("--data", "data", str, ("dataset folder: metadata.jsonl (or .csv) + images (see videoprior_edit/video4edit/"
                             "data.py)")),
    ("--output", "output", str, "run folder: student file, checkpoints/, cache/, validation/, log.jsonl"),
    ("--student", "student", str, "Wan2.1-I2V-14B file (wan2.1_i2v_720p_14B_fp16) or ChronoEdit-14B"),
    ("--teacher", "teacher", str, "Wan2.1-FLF2V-14B-720P file (wan2.1_flf2v_720p_14B_fp16)"),
    ("--text-encoder", "text_encoder", str, "umt5_xxl_fp16.safetensors"),
    ("--vae", "vae", str, "wan_2.1_vae.safetensors"),
    ("--clip-vision", "clip_vision", str, "clip_vision_h.safetensors"),
    ("--width", "width", int, "training width (multiple of 16)"),
    ("--height", "height", int, "training height (multiple of 16)"),
    ("--frames", "frames", int, "student clip length, 4k+1 (5 = 2 latent frames: the tail latent is the edit)"),
    ("--clip-mode", "clip_mode", str, (f"middle frames of the clip: {', '.join(CLIP_MODES)} (teacher: its "
                                       "trajectory resampled to the clip)")),
    ("--teacher-frames", "teacher_frames", int, "length of the teacher's rollout (4k+1)"),
    ("--teacher-steps", "teacher_steps", int, "denoising steps of the teacher's rollout (once per triplet)"),
    ("--teacher-cfg", "teacher_cfg", float, "CFG of the teacher's rollout"),
    ("--teacher-shift", "teacher_shift", float, "shift of the teacher's rollout (FLF2V official: 16)"),
    ("--teacher-negative", "teacher_negative", str, "negative prompt of the teacher's rollout"),
    ("--distill-blocks", "distill_blocks", str, ("student blocks whose outputs match the teacher's: quarters, all, "
                                                 "none, every:N or indices 0,10,20")),
    ("--distill-weight", "distill_weight", float, "weight of the block-wise feature distillation"),
    ("--feature-norm", "feature_norm", str, f"feature normalisation before the MSE: {', '.join(FEATURE_NORMS)}"),
    ("--tail-flow-weight", "tail_flow_weight", float, "weight of the flow-matching loss on the tail latent"),
    ("--tail-x0-weight", "tail_x0_weight", float, "weight of the x0-prediction loss on the tail latent"),
    ("--inbetween-flow-weight", "inbetween_flow_weight", float, "weight of flow matching on the middle latents"),
    ("--tail-latents", "tail_latents", int, "how many last latent frames count as the tail"),
    ("--timestep-shift", "timestep_shift", float, "sigma = shift u / (1 + (shift - 1) u), u ~ U(0, 1)"),
    ("--positions", "positions", str, (f"student temporal RoPE: {', '.join(POSITION_MODES)} (auto: ChronoEdit's for "
                                       "ChronoEdit students)")),
    ("--lora-rank", "lora_rank", int, "LoRA rank"),
    ("--lora-alpha", "lora_alpha", float, "LoRA alpha (default: the rank, scale 1)"),
    ("--lora-targets", "lora_targets", str, "comma-separated Linear names the LoRA adapts (in every block)"),
    ("--steps", "steps", int, "optimizer steps (total, also when resuming)"),
    ("--lr", "lr", float, "AdamW learning rate (default 1e-4 LoRA, 1e-5 full)"),
    ("--lr-warmup-steps", "lr_warmup_steps", int, "linear warm-up steps"),
    ("--weight-decay", "weight_decay", float, "AdamW weight decay"),
    ("--max-grad-norm", "max_grad_norm", float, "gradient clipping (0: off)"),
    ("--batch-size", "batch_size", int, "global batch per optimizer step"),
    ("--micro-batch-size", "micro_batch_size", int, "triplets per forward per process; the rest is accumulation"),
    ("--seed", "seed", int, "seed of the data order, noise, timesteps, LoRA init and teacher rollouts"),
    ("--precision", "precision", str, "frozen weights: bf16, fp16 or fp32 (trainable tensors are fp32)"),
    ("--mixed-precision", "mixed_precision", str, "autocast: auto (the weights' precision), bf16, fp16, no"),
    ("--teacher-placement", "teacher_placement", str, (f"teacher during training: {', '.join(TEACHER_PLACEMENTS)} "
                                                       "(block_offload: weights in RAM, one block on the GPU)")),
    ("--teacher-weight-storage", "teacher_weight_storage", str, "default or fp8_e4m3fn"),
    ("--student-weight-storage", "student_weight_storage", str, "default or fp8_e4m3fn (LoRA only)"),
    ("--save-every", "save_every", int, "checkpoint + student file every N steps (0: at the end only)"),
    ("--keep-checkpoints", "keep_checkpoints", int, "how many checkpoints to keep"),
    ("--log-every", "log_every", int, "one log line per N steps"),
    ("--validate-every", "validate_every", int, "validation renders every N steps (0: never)"),
    ("--val-count", "val_count", int, "triplets rendered (the first ones)"),
    ("--val-steps", "val_steps", int, "denoising steps of a validation render"),
    ("--val-cfg", "val_cfg", float, "CFG of a validation render"),
    ("--val-shift", "val_shift", float, "shift of a validation render"),
    ("--cache-dir", "cache_dir", str, "where encoded triplets and trajectories go (default: <output>/cache)"),
    ("--save-dtype", "save_dtype", str, "precision of the saved student: bf16, fp16, fp32"),
]
# The tiny zoo: small enough for a CPU in seconds (options given on the command line still win).
ZOO_SETTINGS = {"width": 64, "height": 48, "teacher_frames": 9, "teacher_steps": 4, "precision": "fp32",
                "steps": 10, "lora_rank": 4, "lr": 1e-3, "batch_size": 1, "save_every": 5, "log_every": 1,
                "validate_every": 10, "val_count": 1, "val_steps": 4, "save_dtype": "fp32"}
# Real files in a ComfyUI models folder, by manifest id (first present wins).
REAL_FILES = {"student": ("wan2.1_i2v_720p_14B_fp16", "wan2.1_i2v_480p_14B_fp16", "chrono_edit_14B_fp16"),
              "teacher": ("wan2.1_flf2v_720p_14B_fp16",), "text_encoder": ("umt5_xxl_fp16",),
              "vae": ("wan_2.1_vae",), "clip_vision": ("clip_vision_h",)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    for flag, name, kind, text in _OPTIONS:
        default = getattr(defaults, name)
        shown = f" (default: {default})" if default not in (None, "") else ""
        p.add_argument(flag, dest=name, type=kind, default=None, help=text + shown)
    p.add_argument("--out", dest="output", help="same as --output")
    p.add_argument("--full", action="store_true", default=None, help="full fine-tune of the student instead of LoRA")
    p.add_argument("--overfit", action="store_true", default=None,
                   help="sanity check: the first batch with the same noise and timestep every step (the loss must "
                        "fall)")
    p.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false", default=None,
                   help="keep every block's activations (faster, more memory)")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue from the newest checkpoint in --output (or the checkpoints/step-N folder given)")
    p.add_argument("--models", help="a ComfyUI models folder: the student, teacher, UMT5, VAE and CLIP files are "
                                    "found there (`videoprior-edit models download video4edit` fetches them)")
    p.add_argument("--zoo", help="train on the tiny random-weight zoo in this folder (written if missing) with a "
                                 "generated tiny dataset (unless --data): a CPU smoke run")


def config_from_args(args) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    base: dict = {}
    if getattr(args, "zoo", None):
        base = {**ZOO_SETTINGS, **_zoo_files(Path(args.zoo))}
        if "data" not in given:
            from .data import write_tiny_dataset

            folder = Path(given.get("output", TrainConfig.output)) / "tiny_dataset"
            if not (folder / "metadata.jsonl").is_file():
                write_tiny_dataset(folder, count=2, width=64, height=48)
            base["data"] = str(folder)
    elif getattr(args, "models", None):
        base = _real_files(Path(args.models))
    config = TrainConfig(**{**base, **given})
    if not config.data:
        raise InputError("No --data folder given.", "Point --data at a dataset folder (see --help), or use --zoo.")
    return config


def _zoo_files(root: Path) -> dict[str, str]:
    from ..zoo import Zoo, write_zoo

    zoo = Zoo(root)
    if not (root / "zoo.json").is_file():
        print(f"writing the tiny zoo (random weights, real architectures) to {root}", flush=True)
        write_zoo(root)
    return {"student": str(zoo.file("wan21_i2v")), "teacher": str(zoo.file("wan21_flf2v")),
            "text_encoder": str(zoo.file("umt5")), "vae": str(zoo.file("vae")),
            "clip_vision": str(zoo.file("clip_vision"))}


def _real_files(models: Path) -> dict[str, str]:
    from ..errors import ModelFileError
    from ..folders import ModelFolders
    from ..manifest import load_manifest

    entries = {e["id"]: e for e in load_manifest()}
    folders, picked, missing = ModelFolders(models), {}, []
    for slot, ids in REAL_FILES.items():
        for i in ids:
            try:
                picked[slot] = str(folders.path(entries[i]["folder"], entries[i]["file"]))
                break
            except ModelFileError:
                continue
        else:
            missing.append(f"{entries[ids[0]]['folder']}/{entries[ids[0]]['file']}")
    if missing:
        raise ModelFileError(f"Missing in {models}: {', '.join(missing)}.",
                             f"Run `videoprior-edit models download video4edit --models {models}`, or give the files "
                             "with --student/--teacher/--text-encoder/--vae/--clip-vision.")
    return picked


def run(args) -> int:
    result = train(config_from_args(args))
    print(f"student: {result.student_file} ({result.steps} steps)")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `train-video4edit` on a `videoprior-edit` subparsers object."""
    p = subparsers.add_parser("train-video4edit", help="Video4Edit: distil Wan2.1-FLF2V (teacher) into a Wan2.1-I2V "
                              "student (LoRA or full) from (source, edited, instruction) triplets; accelerate launch "
                              "for several GPUs")
    add_arguments(p)
    p.set_defaults(run=run)
    return p


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m videoprior_edit.video4edit.train",
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
