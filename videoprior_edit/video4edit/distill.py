"""What one Video4Edit step computes: the distilled blocks, forward hooks keeping their features, the `Distiller`
(student + teacher -> losses), the student's LoRA, and the position-seeded data order, noise and timesteps."""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..sampling.frames import chronoedit_positions
from ..sampling.loop import compute_dtype
from ..sampling.rope import temporal_positions
from ..sampling.schedules import NUM_TRAIN_TIMESTEPS
from .config import ADAPTER, DEFAULT_LORA_TARGETS, TrainConfig
from .editor import is_chronoedit


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
    return chronoedit_positions(latents) if chrono else None



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

