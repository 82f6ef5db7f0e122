"""A minimal, merge-only LoRA loader for Wan transformers (first use: the Wan2.2 Lightning / lightx2v LoRAs).

A LoRA file is read safely (safetensors only) in any of the key layouts Wan LoRAs come in: original Wan /
lightx2v / Kijai (`diffusion_model.blocks.0.self_attn.q.lora_down.weight`, `lora_A`/`lora_B`, `.alpha`,
`.diff`, `.diff_b`, `.diff_m`, with or without the `diffusion_model.` prefix), musubi-tuner
(`lora_unet_blocks_0_self_attn_q...`, partial LoRAs welcome) and diffusers/PEFT
(`transformer.blocks.0.attn1.to_q.lora_A.weight`). `strength * alpha / rank * up @ down` is then added to the
matching weights for good (in float32, stored back in the weight's dtype, fp8 storage included); the file's and
the caller's tensors are never modified.

A model set lists its LoRAs in `models.loras`; `sync_loras` makes an expert's weights hold exactly that list when
the sampling loop uses it: LoRAs added since are merged, and when one was removed or its strength changed the
expert is first re-read from its file (the placement's `reload_weights`). So a set with a LoRA (`with_lora`) never
changes the set it was made from. A later issue adds unmerged stacking (changing strengths without a re-read).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import InputError, ModelFileError
from .models import wan_keys
from .weights import WeightFile

log = logging.getLogger(__name__)

EXPERTS = ("high", "low", "both")
_SUFFIXES = {".lora_down.weight": "down", ".lora_A.weight": "down", ".lora_up.weight": "up", ".lora_B.weight": "up",
             ".alpha": "alpha", ".diff": "diff", ".diff_b": "diff_b", ".lora_B.bias": "diff_b"}
_ORIGINAL_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
_DIFFUSERS_PREFIXES = ("base_model.model.", "transformer.")
_DIFFUSERS_HINTS = (".attn1.", ".attn2.", ".ffn.net.", ".condition_embedder.", ".proj_out.")
_FLUX_WORDS = ("double_blocks", "single_blocks", "transformer_blocks")
_BLOCK_INDEX = re.compile(r"(?:^|[._])blocks[._](\d+)[._]")
_WAN_SIZES = {5120: "Wan 14B (Wan2.1-14B or a Wan2.2-A14B expert)", 3072: "Wan2.2-TI2V-5B", 1536: "Wan2.1-T2V-1.3B"}


@dataclass
class LoraDelta:
    """What a LoRA holds for one module: a low-rank pair (down: rank x in, up: out x rank) with its alpha, and/or
    full deltas of the weight (`diff`) and of the bias (`diff_b`)."""

    source: str  # the module as the file names it
    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    alpha: float | None = None
    diff: torch.Tensor | None = None
    diff_b: torch.Tensor | None = None

    @property
    def scale(self) -> float:
        """alpha / rank when the file has an alpha, else 1."""
        return 1.0 if self.alpha is None or self.down is None else self.alpha / self.down.shape[0]

    def fits(self, shape: tuple[int, ...]) -> bool:
        """Whether the weight delta has the shape of a weight of `shape` (a lone down or up never fits)."""
        if (self.down is None) != (self.up is None):
            return False
        if self.up is not None and (self.up.shape[0] != shape[0]
                                    or self.up.shape[0] * math.prod(self.down.shape[1:]) != math.prod(shape)):
            return False
        return self.diff is None or self.diff.numel() == math.prod(shape)

    def weight_delta(self, device: torch.device | str | None = None) -> torch.Tensor | None:
        """The float32 change of the weight at strength 1, computed on `device` (a new tensor; None when the LoRA
        has no weight delta)."""
        parts = []
        if self.up is not None and self.down is not None:
            up, down = (t.to(device, torch.float32).flatten(1) for t in (self.up, self.down))
            parts.append((up @ down) * self.scale)
        if self.diff is not None:
            parts.append(self.diff.to(device, torch.float32, copy=True))
        if len(parts) == 2:
            return parts[0] + parts[1].reshape(parts[0].shape)
        return parts[0] if parts else None


@dataclass
class LoraFile:
    """A read LoRA: deltas by diffusers module name (the file's own name where it has none in Wan)."""

    name: str
    keys: list[str]
    deltas: dict[str, LoraDelta]
    ignored: list[str] = field(default_factory=list)  # keys this loader does not understand


@dataclass
class LoraReport:
    """What merging one LoRA into one model did."""

    name: str
    strength: float
    target: str
    matched: int
    total: int
    unmatched: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = (f"LoRA '{self.name}' at strength {self.strength:g} merged into {self.matched} of its {self.total} "
                f"modules of the {self.target}")
        if self.unmatched:
            text += f"; {len(self.unmatched)} have no place in it (e.g. {', '.join(self.unmatched[:3])})"
        if self.ignored:
            text += f"; {len(self.ignored)} keys not understood (e.g. {', '.join(self.ignored[:3])})"
        return text + "."


# ------------------------------------------------------------------------------------------------ reading
def read_lora(path: str | Path | Mapping[str, torch.Tensor], model_keys: Iterable[str] = ()) -> LoraFile:
    """Read a LoRA file (or a state dict) into deltas keyed by diffusers module name.

    `model_keys` are the target model's parameter names (diffusers layout); musubi `lora_unet_` names are mapped
    back to module paths with them (without them such names stay unmatched).
    """
    if isinstance(path, Mapping):
        name, tensors = "state dict", dict(path)
    else:
        wf = WeightFile(path)
        name, tensors = wf.path.name, wf.state_dict()
    keys = list(tensors)
    diffusers_file = any(h in "." + k for k in keys for h in _DIFFUSERS_HINTS)
    musubi = _musubi_names(model_keys)
    lora = LoraFile(name, keys, {})
    for key, tensor in tensors.items():
        split = _split(key)
        if split is None:
            lora.ignored.append(key)
            continue
        module, kind = split
        target = _module_name(module, diffusers_file, musubi)
        delta = lora.deltas.setdefault(target, LoraDelta(source=module))
        setattr(delta, kind, float(tensor.item()) if kind == "alpha" else tensor)
    return lora


def _split(key: str) -> tuple[str, str] | None:
    """(module as written, kind of tensor) for a LoRA key; None for keys this loader does not understand."""
    if key.endswith(".diff_m"):  # lightx2v: delta of a block's modulation parameter
        return key[: -len(".diff_m")] + ".modulation", "diff"
    for suffix, kind in _SUFFIXES.items():
        if key.endswith(suffix):
            return key[: -len(suffix)], kind
    return None


def _module_name(module: str, diffusers_file: bool, musubi: dict[str, str]) -> str:
    """The diffusers module name of a module as the file writes it (unchanged when it has no place in Wan)."""
    if module.startswith("lora_unet_"):
        return musubi.get(module[len("lora_unet_"):], module)
    for prefix in _DIFFUSERS_PREFIXES:
        if module.startswith(prefix):
            return module[len(prefix):]
    original = any(module.startswith(p) for p in _ORIGINAL_PREFIXES) or not diffusers_file
    translated = wan_keys.wan_key_to_diffusers(module + ".weight") if original else None
    return translated[: -len(".weight")] if translated else module


def _musubi_names(model_keys: Iterable[str]) -> dict[str, str]:
    """musubi name (original, or diffusers, module path joined with `_`) -> diffusers module name."""
    names = {}
    for key in model_keys:
        module = key.rsplit(".", 1)[0] if key.endswith((".weight", ".bias")) else key
        original = wan_keys.wan_key_to_original(module + ".weight")
        names[module.replace(".", "_")] = module  # kohya-style names of diffusers modules
        if original:
            names[original[: -len(".weight")].replace(".", "_")] = module
    return names


# ------------------------------------------------------------------------------------------------ merging
@dataclass
class _Plan:
    report: LoraReport
    targets: list[tuple[LoraDelta, nn.Parameter | None, nn.Parameter | None]]


def _plan(model: nn.Module, lora: LoraFile, target: str) -> _Plan:
    """Match every delta to the model's parameters; refuse a LoRA made for another base before touching weights."""
    if not lora.deltas:
        raise ModelFileError(f"'{lora.name}' holds no LoRA tensors; it is {wan_keys.describe_checkpoint(lora.keys)}.",
                             "Pick a LoRA file (lora_down/lora_up or lora_A/lora_B tensors) in the LoRA input.")
    params = dict(model.named_parameters())
    targets, unmatched = [], []
    for name, delta in lora.deltas.items():
        weight, bias = _fit(delta, params.get(name + ".weight", params.get(name)), params.get(name + ".bias"))
        if weight is None and bias is None:
            unmatched.append(delta.source)
        else:
            targets.append((delta, weight, bias))
    report = LoraReport(lora.name, 0.0, target, len(targets), len(lora.deltas), unmatched, lora.ignored)
    if 2 * report.matched < report.total:
        raise ModelFileError(
            f"LoRA '{lora.name}' does not fit the {target} ({_model_description(model)}): only {report.matched} of "
            f"its {report.total} modules have a place in it. It seems made for {_apparent_base(lora)}.",
            "Use a LoRA trained for this model (its download page names the base model), or load the model it was "
            "made for.")
    return _Plan(report, targets)


def _fit(delta: LoraDelta, weight: nn.Parameter | None, bias: nn.Parameter | None) -> tuple:
    """(weight, bias) the delta changes, both None unless every part of it fits the module."""
    has_weight = delta.up is not None or delta.down is not None or delta.diff is not None
    weight_ok = weight is not None and delta.fits(tuple(weight.shape))
    bias_ok = bias is not None and delta.diff_b is not None and bias.numel() == delta.diff_b.numel()
    if (has_weight and not weight_ok) or (delta.diff_b is not None and not bias_ok):
        return None, None
    return (weight if has_weight else None), (bias if bias_ok else None)


def _merge(plan: _Plan, strength: float) -> LoraReport:
    with torch.no_grad():
        for delta, weight, bias in plan.targets:
            if weight is not None:
                _add(weight, delta.weight_delta(weight.device), strength)
            if bias is not None:
                _add(bias, delta.diff_b.float(), strength)
    plan.report.strength = strength
    log.info(plan.report.summary())
    return plan.report


def _add(param: nn.Parameter, delta: torch.Tensor, strength: float) -> None:
    """param += strength * delta in float32, into a new tensor: storage shared with the file or the caller is never
    written."""
    merged = param.detach().to(torch.float32) + strength * delta.to(param.device).reshape(param.shape)
    if param.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        merged = merged.clamp(torch.finfo(param.dtype).min, torch.finfo(param.dtype).max)
    param.data = merged.to(param.dtype)


def apply_lora(transformer: nn.Module, path: str | Path | Mapping[str, torch.Tensor],
               strength: float = 1.0) -> LoraReport:
    """Merge the LoRA at `path` (a file, or a state dict that is left untouched) into `transformer`'s weights."""
    lora = read_lora(path, _model_keys(transformer))
    return _merge(_plan(transformer, lora, "model"), strength)


def add_lora(models, path: str | Path, strength: float = 1.0, expert: str = "both") -> list[LoraReport]:
    """Add a LoRA to the experts of a `WanModels` set ("high": the high-noise expert or the single model, "low": the
    low-noise expert, "both"): checked against each expert first, recorded in `models.loras`, merged into experts
    that are loaded (parked ones get it when they are reloaded)."""
    targets = _experts(models, expert)
    lora = read_lora(path, _model_keys(targets[0][1]))
    reports = [_plan(module, lora, label).report for label, module in targets]  # refuse before anything changes
    for report in reports:
        report.strength = strength
    models.loras.append((str(path), strength, expert))
    for slot in ("transformer", "transformer_2"):
        sync_loras(models, slot)
    return reports


def with_lora(models, path: str | Path, strength: float = 1.0, expert: str = "both"):
    """A new model set with one more LoRA; `models` keeps its own list (the weights follow whichever set runs)."""
    from dataclasses import replace

    new = replace(models, loras=list(models.loras))
    if "_prompt_encoder" in models.__dict__:  # same text encoder: share the prompt cache
        new.__dict__["_prompt_encoder"] = models.__dict__["_prompt_encoder"]
    add_lora(new, path, strength, expert)
    return new


def wanted_loras(models, slot: str) -> tuple[tuple[str, float], ...]:
    """(path, strength) of the LoRAs `models.loras` lists for `slot` ("transformer" or "transformer_2"), in order."""
    label = "high" if slot == "transformer" else "low"
    return tuple((path, strength) for path, strength, expert in models.loras if expert in ("both", label))


def sync_loras(models, slot: str) -> None:
    """Make the weights of `slot` hold exactly the LoRAs the set lists for it (no-op when they already do or when
    the expert is parked on disk)."""
    module = getattr(models, slot, None)
    if module is None or any(p.is_meta for p in module.parameters()):
        return
    wanted, applied = wanted_loras(models, slot), getattr(module, "vpe_loras", ())
    if wanted == applied:
        return
    if wanted[:len(applied)] != applied:  # one was removed or changed: start again from the file
        from .placement import reload_weights

        module = reload_weights(models, slot)
        applied = ()
    for path, strength in wanted[len(applied):]:
        apply_lora(module, path, strength)
    module.vpe_loras = wanted


def _experts(models, expert: str) -> list[tuple[str, nn.Module]]:
    if expert not in EXPERTS:
        raise InputError(f"Unknown expert '{expert}'.", f"Use one of {', '.join(EXPERTS)}.")
    if models.transformer_2 is None:
        if expert == "low":
            raise ModelFileError(f"{models.name} has one model, no low-noise expert, so a LoRA cannot go to 'low'.",
                                 "Use expert 'both' (or 'high') to apply it to the single model.")
        return [("model", models.transformer)]
    high, low = ("high-noise expert", models.transformer), ("low-noise expert", models.transformer_2)
    return {"high": [high], "low": [low], "both": [high, low]}[expert]


def _model_keys(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_parameters()]


# ------------------------------------------------------------------------------------------------ messages
def _model_description(model: nn.Module) -> str:
    info = getattr(model, "vpe_info", None)
    params = dict(model.named_parameters())
    q = params.get("blocks.0.attn1.to_q.weight")
    blocks = {int(m.group(1)) for k in params if (m := _BLOCK_INDEX.search(k))}
    shape = f"{max(blocks) + 1} blocks, hidden size {q.shape[1]}" if q is not None and blocks else ""
    name = info.names if info is not None else type(model).__name__
    return f"{name}, {shape}" if shape else name


def _apparent_base(lora: LoraFile) -> str:
    """A short guess of the model a LoRA was made for, from its key names and shapes."""
    keys = lora.keys
    if any(w in k for k in keys for w in _FLUX_WORDS):
        return "FLUX.1 (its keys name FLUX's double_blocks / single_blocks)"
    blocks = {int(m.group(1)) for k in keys if (m := _BLOCK_INDEX.search(k))}
    hidden = _hidden_size(lora)
    facts = [f"{max(blocks) + 1} blocks" if blocks else "", f"hidden size {hidden}" if hidden else ""]
    if any("k_img" in k or "add_k_proj" in k for k in keys):
        facts.append("image cross-attention k_img/v_img as in Wan2.1-I2V / FLF2V")
    facts = ", ".join(f for f in facts if f)
    if not facts:
        return f"another architecture (keys like {', '.join(keys[:2])})"
    return f"{_WAN_SIZES.get(hidden, 'a Wan model')} ({facts})"


def _hidden_size(lora: LoraFile) -> int | None:
    for name, delta in lora.deltas.items():
        if name.endswith(("attn1.to_q", "self_attn.q", "self_attn_q")):
            source = delta.down if delta.down is not None else delta.diff
            if source is not None and source.dim() == 2:
                return source.shape[1]
    return None
