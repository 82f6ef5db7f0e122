"""Video4Edit trainer settings: `TrainConfig` (every choice, with checks), `TrainResult`, file names and constants.
The reasons for the defaults are in `train.py`'s docstring."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import InputError
from .data import CLIP_MODES

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



def _print(accelerator, text: str) -> None:
    if accelerator is None:
        print(text, flush=True)
    else:
        accelerator.print(text, flush=True)

