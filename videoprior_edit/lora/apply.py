"""Applying a read LoRA to a model: merged into the weights, or unmerged (kept beside them, strength changeable).

Merged: `strength * (alpha / rank * up @ down + diff)` is added to each weight (and `diff_b` to its bias) in float32
and stored back in the weight's dtype (fp8 storage included), into new tensors: storage shared with the file or the
caller is never written. A low-rank pair is merged with one weight-sized float32 tensor (`merged_pair`). Undoing a
merge means reading the weights again (the model sets do it).

Unmerged: nothing of the base weights changes. Each affected `nn.Linear` (fp8-storage Linears too) gets a child
module `vpe_lora` (a `LoraLayer`) holding every unmerged LoRA's tensors as non-persistent buffers (own copies in the
Linear's compute dtype; a LoRA read from its file is already in new memory and is kept without a second copy when
its dtype fits, once: a second model given the same read gets copies), and a forward hook that adds
`scale * (up(down(x)) + diff x + diff_b)`. Buffers move with the module (`.to()`, the placement's moves, diffusers
group offloading) and are not part of `state_dict()` or `named_parameters()`. Deltas of other parameters
(norm weights, modulation tables, convolutions, LayerNorm biases: small tensors) go to a `ParamPatch` child
`vpe_lora_params` of the owning module, which keeps the parameter's own value and sets the parameter to
`own + sum(strength_i * delta_i)`, recomputed from the kept value on every change (exact, never accumulated).
Changing a strength or removing an unmerged LoRA reads no file (a strength is a number: no tensor changes for a
Linear); removing the last one restores the model exactly.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import InputError, ModelFileError
from ..gguf import is_quantized
from ..models import wan_keys
from .formats import LoraFile, read_lora, weight_delta
from .layers import FP8, LAYER, PATCH, LoraLayer, ParamPatch, added, lora_hook
from .targets import ModelNames, Piece, apparent_base, describe_model

log = logging.getLogger("videoprior_edit.lora")



@dataclass
class LoraReport:
    """What applying one LoRA to one model did."""

    name: str
    strength: float
    target: str
    matched: int
    total: int
    unmatched: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    skipped: int = 0  # text-encoder keys
    format: str = ""  # "musubi-tuner/kohya (lora_unet_*), bf16, rank 32"
    keys: tuple[int, int] = (0, 0)  # keys of the matched modules, keys in the file
    merged: bool = True
    adapter: str | None = None  # unmerged: the name set_lora_strength / remove_lora take
    how: str | None = None  # what was done, when neither merged nor unmerged says it (ComfyUI weight patches)

    def summary(self) -> str:
        how = self.how or ("merged into" if self.merged else "added unmerged to")
        return (f"LoRA '{self.name}'{f' ({self.format})' if self.format else ''} at strength {self.strength:g} {how} "
                f"{self.where()}{self.details()}.")

    def where(self) -> str:
        keys = f" ({self.keys[0]} of {self.keys[1]} keys)" if self.keys[1] else ""
        return f"{self.matched} of its {self.total} modules{keys} of the {self.target}"

    def details(self) -> str:
        text = ""
        if self.unmatched:
            text += f"; {len(self.unmatched)} have no place in it (e.g. {', '.join(self.unmatched[:3])})"
        if self.ignored:
            text += f"; {len(self.ignored)} keys not understood (e.g. {', '.join(self.ignored[:3])})"
        if self.skipped:
            text += f"; {self.skipped} text-encoder keys skipped (only the diffusion model is changed)"
        return text


def summarize(reports: list[LoraReport]) -> str:
    """One line for one LoRA applied to one or several experts."""
    if len(reports) == 1:
        return reports[0].summary()
    first = reports[0]
    how = "merged into" if first.merged else "added unmerged to"
    where = "; ".join(r.where() + r.details() for r in reports)
    return (f"LoRA '{first.name}'{f' ({first.format})' if first.format else ''} at strength {first.strength:g} "
            f"{how} {where}.")


@dataclass
class Plan:
    """A LoRA matched against a model: what it changes, and the report."""

    report: LoraReport
    pieces: list[Piece]
    params: dict[str, nn.Parameter] = field(default_factory=dict)  # the model's, by name


def plan(model: nn.Module, lora: LoraFile, target: str = "model") -> Plan:
    """Match every module of `lora` to `model`; refuse a LoRA made for another base (or of a kind this loader does
    not read) before anything changes."""
    params = dict(model.named_parameters())
    report, matched = match(lora, ModelNames.of(params), target, lambda: describe_model(model))
    return Plan(report, [piece for _, pieces in matched for piece in pieces], params)


def match(lora: LoraFile, names: ModelNames, target: str, description) -> tuple[LoraReport, list[tuple]]:
    """`(report, [(delta, pieces), ...])`: where each module of `lora` goes in the model `names` lists; a LoRA of a
    kind this loader does not read, or made for another base, is refused (`description()` names the model)."""
    if lora.unsupported:
        kinds = ", ".join(f"{k} ({n} tensors)" for k, n in lora.unsupported.items())
        raise ModelFileError(f"'{lora.name}' holds {kinds}, which this loader does not apply.",
                             "Use a plain LoRA (lora_down/lora_up or lora_A/lora_B, optional alpha and diff keys); "
                             "LyCORIS/DoRA variants need converting to LoRA first.")
    if not lora.deltas:
        what = "only text-encoder LoRA keys" if lora.skipped else wan_keys.describe_checkpoint(lora.keys)
        raise ModelFileError(f"'{lora.name}' holds no LoRA tensors for a diffusion model; it is {what}.",
                             "Pick a LoRA file (lora_down/lora_up or lora_A/lora_B tensors) in the LoRA input.")
    matched, unmatched, keys = [], [], 0
    for delta in lora.deltas.values():
        found = names.pieces(delta)
        if found is None:
            unmatched.append(delta.source)
        else:
            matched.append((delta, found))
            keys += len(delta.keys)
    total = len(lora.deltas)
    report = LoraReport(lora.name, 0.0, target, total - len(unmatched), total, unmatched, list(lora.ignored),
                        len(lora.skipped), lora.describe(), (keys, len(lora.keys)))
    if 2 * report.matched < report.total:
        raise ModelFileError(
            f"LoRA '{lora.name}' does not fit the {target} ({description()}): only {report.matched} of its "
            f"{report.total} modules have a place in it (e.g. not {', '.join(unmatched[:2])}). It seems made for "
            f"{apparent_base(lora)}.",
            "Use a LoRA trained for this model (its download page names the base model), or load the model it was "
            "made for.")
    return report, matched


def _source_name(source, name: str | None) -> str:
    if name:
        return name
    return "state dict" if isinstance(source, Mapping) else str(source)


def apply_lora(transformer: nn.Module, path: str | Path | Mapping[str, torch.Tensor], strength: float = 1.0,
               merge: bool = True, name: str | None = None) -> LoraReport:
    """Apply the LoRA at `path` (a safetensors file, or a state dict that is left untouched) to `transformer` (a
    diffusers Wan or FLUX.1 transformer, or any diffusers model for diffusers-named LoRAs). One INFO line says what
    matched.

    `merge=True` adds it to the weights for good (fastest to run). `merge=False` keeps it beside the weights under
    `name` (default: the path): `set_lora_strength(transformer, name, s)` and `remove_lora(transformer, name)` then
    change it without reading any file.
    """
    if merge and quantized(transformer):
        merge = False  # GGUF blocks cannot take a merged delta: the LoRA runs beside them
        log.info("LoRA '%s' is kept unmerged: the model's weights are GGUF-quantised.", _source_name(path, name))
    report = apply_read(transformer, read_lora(path), strength, merge, _source_name(path, name))
    log.info(report.summary())
    return report


def quantized(model: nn.Module) -> bool:
    """Whether some of `model`'s weights are GGUF blocks (a LoRA can only run beside those, unmerged)."""
    return any(is_quantized(p) for p in model.parameters())


def apply_read(model: nn.Module, lora: LoraFile, strength: float, merge: bool, name: str, target: str = "model",
               managed: bool = False, planned: Plan | None = None) -> LoraReport:
    """Apply an already read LoRA (no logging): merged, or unmerged under `name`. `planned`: `plan(model, lora,
    target)` made since `model`'s parameters last changed objects (else it is made here)."""
    adapters = adapters_of(model)
    if not merge and name in adapters:
        raise InputError(f"A LoRA named '{name}' is already applied unmerged to this model.",
                         "Change its strength with set_lora_strength, or remove it first (remove_lora).")
    if planned is None:
        planned = plan(model, lora, target)
    _drop_group_offload(model)
    if merge:
        _merge(model, planned, strength)
    else:
        # a LoRA read from a file owns its tensors: the first unmerged use keeps them without a copy
        keep, lora.owned = lora.owned, False
        adapters[name] = _add_unmerged(model, planned, strength, name, managed, keep)
        adapters[name].report = planned.report
        planned.report.adapter = name
    planned.report.strength, planned.report.merged = strength, merge
    return planned.report


# ------------------------------------------------------------------------------------------------ merged
def _merge(model: nn.Module, planned: Plan, strength: float) -> None:
    params = planned.params
    with torch.no_grad():
        for piece in planned.pieces:
            if piece.weight is not None:
                owner, pname = _owner(model, piece.weight)
                patch = owner._modules.get(PATCH)
                weight = params[piece.weight]
                if piece.diff is None and not (isinstance(patch, ParamPatch) and patch.holds(pname)):
                    weight.data = merged_pair(weight.detach(), piece.down, piece.up, piece.scale, strength)
                else:
                    _merge_param(owner, pname, weight, piece.weight_delta(weight.device), strength)
            if piece.bias is not None:
                owner, pname = _owner(model, piece.bias)
                _merge_param(owner, pname, params[piece.bias], piece.diff_b.float(), strength)


def merged_pair(value: torch.Tensor, down: torch.Tensor, up: torch.Tensor, scale: float,
                strength: float) -> torch.Tensor:
    """value + strength * (scale * up @ down) in float32, rounded as `added(value, weight_delta(...), strength)`
    rounds (so a merge equals a hand merge bit for bit), with one weight-sized float32 tensor: the product is made
    in a new tensor, scaled in place and the weight added into it (a float32 weight is that result; another dtype
    gets it rounded once into a new tensor of its own; fp8 weights are upcast a few rows at a time).

    (Not `addmm`: BLAS accumulates long products into the output in pieces, which rounds differently.)"""
    device = value.device
    if value.dtype not in _MERGE_DTYPES:  # e.g. float64: adding it in place would compute in its dtype
        return added(value, weight_delta(down, up, None, scale, device), strength)
    delta = up.to(device, torch.float32).flatten(1) @ down.to(device, torch.float32).flatten(1)  # new, ours
    for factor in _factors(scale, strength):
        delta.mul_(factor)
    if value.dtype in FP8:  # no implicit float8 promotion: upcast a few rows at a time (exact, small temporaries)
        delta = delta.view(value.shape)
        flat, rows = delta.view(value.shape[0], -1), value.view(value.shape[0], -1)
        step = max(1, _CHUNK // max(1, flat.shape[1]))
        for i in range(0, flat.shape[0], step):
            flat[i:i + step].add_(rows[i:i + step].to(torch.float32))
        delta.clamp_(torch.finfo(value.dtype).min, torch.finfo(value.dtype).max)
    else:  # the weight is only read (16-bit values upcast as they are read, exactly)
        delta = delta.view(value.shape).add_(value)
    return delta if value.dtype == torch.float32 else delta.to(value.dtype)


_CHUNK = 1 << 22  # elements of an fp8 weight upcast at once when merging
_MERGE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, *FP8)  # merged_pair's one-buffer path


def _factors(scale: float, strength: float) -> tuple[float, ...]:
    """The float32 multiplications that give `(delta * scale) * strength` as the two roundings would: one when a
    factor is a power of two (scaling by it rounds nothing), none for 1."""
    a, b = float(np.float32(scale)), float(np.float32(strength))
    if a == 1.0 or b == 1.0:
        return tuple(f for f in (a, b) if f != 1.0)
    if _power_of_two(a) or _power_of_two(b):
        return (a * b,)  # exact in float32 (a power of two times a float32 number)
    return (a, b)


def _power_of_two(x: float) -> bool:
    mantissa, exponent = math.frexp(abs(x))
    return mantissa == 0.5 and -125 <= exponent <= 128


def _merge_param(owner: nn.Module, pname: str, param: nn.Parameter, delta: torch.Tensor, strength: float) -> None:
    patch = owner._modules.get(PATCH)
    if isinstance(patch, ParamPatch) and patch.holds(pname):  # unmerged LoRAs patch it: merge into its own value
        patch.merge_base(owner, pname, delta, strength)
    else:
        param.data = added(param.detach(), delta, strength)


def _owner(model: nn.Module, key: str) -> tuple[nn.Module, str]:
    path, _, pname = key.rpartition(".")
    module = model
    if path:
        for part in path.split("."):
            child = module._modules.get(part)
            module = child if child is not None else module.get_submodule(part)
    return module, pname


# ------------------------------------------------------------------------------------------------ unmerged
@dataclass
class _Adapter:
    """One unmerged LoRA on one model: where its tensors are."""

    name: str
    strength: float
    managed: bool  # added by a model set's sync_loras (which alone changes or removes it)
    layers: list[tuple[LoraLayer, int]] = field(default_factory=list)
    patches: list[tuple[ParamPatch, int]] = field(default_factory=list)
    report: LoraReport | None = None  # what applying it did (a set reuses it for a new strength: no file read)


def adapters_of(model: nn.Module) -> dict[str, _Adapter]:
    """The unmerged LoRAs on `model`, by name (a plain attribute: not a module, not in the state dict)."""
    adapters = model.__dict__.get("vpe_adapters")
    if adapters is None:
        adapters = model.__dict__["vpe_adapters"] = {}
    return adapters


def _add_unmerged(model: nn.Module, planned: Plan, strength: float, name: str, managed: bool,
                  keep: bool = False) -> _Adapter:
    """`keep`: the pieces' tensors belong to this LoRA alone (read from its file into new tensors), a Linear may
    keep them without a copy when they already have its dtype and device."""
    adapter = _Adapter(name, strength, managed)
    params = planned.params
    with torch.no_grad():
        for piece in planned.pieces:
            owner, pname = _owner(model, piece.weight or piece.bias)
            if isinstance(owner, nn.Linear) and pname in ("weight", "bias"):
                layer = _layer(owner)
                adapter.layers.append((layer, layer.add(piece, strength, owner, keep)))
                continue
            if piece.weight is not None:
                delta = piece.weight_delta(params[piece.weight].device)
                patch = _patch(owner)
                adapter.patches.append((patch, patch.add(owner, pname, delta, strength)))
            if piece.bias is not None:
                bias_owner, bias_name = _owner(model, piece.bias)
                patch = _patch(bias_owner)
                adapter.patches.append((patch, patch.add(bias_owner, bias_name, piece.diff_b.float(), strength)))
    return adapter


def _layer(linear: nn.Linear) -> LoraLayer:
    layer = linear._modules.get(LAYER)
    if layer is None:
        layer = LoraLayer()
        linear.add_module(LAYER, layer)
        layer.__dict__["_owner"] = weakref.ref(linear)
        layer.__dict__["_handle"] = linear.register_forward_hook(lora_hook)
    return layer


def _patch(owner: nn.Module) -> ParamPatch:
    patch = owner._modules.get(PATCH)
    if patch is None:
        patch = ParamPatch()
        owner.add_module(PATCH, patch)
        patch.__dict__["_owner"] = weakref.ref(owner)
    return patch


def set_lora_strength(transformer: nn.Module, name: str, strength: float) -> None:
    """Change the strength of the unmerged LoRA `name` (no file is read)."""
    adapter = _adapter(transformer, name)
    if adapter.patches:  # parameters change (Linear LoRAs only change a number)
        _drop_group_offload(transformer)
    with torch.no_grad():
        for layer, slot in adapter.layers:
            layer.set_strength(slot, strength)
        for patch, slot in adapter.patches:
            patch.set_strength(patch.__dict__["_owner"](), slot, strength)
    adapter.strength = strength


def remove_lora(transformer: nn.Module, name: str) -> None:
    """Remove the unmerged LoRA `name`; with the last one gone the model is exactly as before (no file is read)."""
    adapter = _adapter(transformer, name)
    _drop_group_offload(transformer)
    with torch.no_grad():
        for layer, slot in adapter.layers:
            layer.remove(slot)
            if layer.empty:
                _detach(layer, LAYER)
        for patch, slot in adapter.patches:
            patch.remove(patch.__dict__["_owner"](), slot)
            if patch.empty:
                _detach(patch, PATCH)
    del adapters_of(transformer)[name]


def unmerged_loras(transformer: nn.Module) -> dict[str, float]:
    """Name -> strength of the LoRAs applied unmerged to `transformer`."""
    return {name: a.strength for name, a in adapters_of(transformer).items()}


def forget_loras(transformer: nn.Module) -> None:
    """Drop every LoRA record and unmerged LoRA of `transformer` without touching its parameters (for a model whose
    weights were just read again from its file: they hold no LoRA)."""
    transformer.vpe_loras = ()
    adapters_of(transformer).clear()
    for module in list(transformer.modules()):
        for child in (LAYER, PATCH):
            holder = module._modules.get(child)
            if holder is not None:
                _detach(holder, child)


def _adapter(model: nn.Module, name: str) -> _Adapter:
    adapter = adapters_of(model).get(name)
    if adapter is None:
        known = ", ".join(adapters_of(model)) or "none"
        raise InputError(f"No LoRA named '{name}' is applied unmerged to this model (unmerged: {known}).",
                         "Use the name apply_lora returned in report.adapter (by default the file path).")
    return adapter


def _detach(holder: nn.Module, child: str) -> None:
    handle = holder.__dict__.pop("_handle", None)
    if handle is not None:
        handle.remove()
    owner = holder.__dict__.get("_owner", lambda: None)()
    if owner is not None and owner._modules.get(child) is holder:
        del owner._modules[child]


def _drop_group_offload(model: nn.Module) -> None:
    """Take off the placement's group offloading before tensors change (diffusers keeps its own copies of them when
    it streams); the next `Placement.activate` attaches it again."""
    if getattr(model, "_vpe_group_offload", None) is not None:
        from ..placement import _drop_group_offload as drop

        drop(model)
