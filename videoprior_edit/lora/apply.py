"""Applying a read LoRA to a model: merged into the weights, or unmerged (kept beside them, strength changeable).

Merged: `strength * (alpha / rank * up @ down + diff)` is added to each weight (and `diff_b` to its bias) in float32
and stored back in the weight's dtype (fp8 storage included), into new tensors: storage shared with the file or the
caller is never written. Undoing a merge means reading the weights again (the model sets do it).

Unmerged: nothing of the base weights changes. Each affected `nn.Linear` (fp8-storage Linears too) gets a child
module `vpe_lora` (a `LoraLayer`) holding every unmerged LoRA's tensors as non-persistent buffers, and a forward hook
that adds `scale * (up(down(x)) + diff x + diff_b)`. Buffers move with the module (`.to()`, the placement's moves,
diffusers group offloading) and are not part of `state_dict()` or `named_parameters()`. Deltas of other parameters
(norm weights, modulation tables, convolutions, LayerNorm biases: small tensors) go to a `ParamPatch` child
`vpe_lora_params` of the owning module, which keeps the parameter's own value and sets the parameter to
`own + sum(strength_i * delta_i)`, recomputed from the kept value on every change (exact, never accumulated).
Changing a strength or removing an unmerged LoRA reads no file; removing the last one restores the model exactly.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError, ModelFileError
from ..models import wan_keys
from .formats import LoraFile, read_lora
from .layers import LAYER, PATCH, LoraLayer, ParamPatch, added, lora_hook
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

    def summary(self) -> str:
        how = "merged into" if self.merged else "added unmerged to"
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


def plan(model: nn.Module, lora: LoraFile, target: str = "model") -> Plan:
    """Match every module of `lora` to `model`; refuse a LoRA made for another base (or of a kind this loader does
    not read) before anything changes."""
    if lora.unsupported:
        kinds = ", ".join(f"{k} ({n} tensors)" for k, n in lora.unsupported.items())
        raise ModelFileError(f"'{lora.name}' holds {kinds}, which this loader does not apply.",
                             "Use a plain LoRA (lora_down/lora_up or lora_A/lora_B, optional alpha and diff keys); "
                             "LyCORIS/DoRA variants need converting to LoRA first.")
    if not lora.deltas:
        what = "only text-encoder LoRA keys" if lora.skipped else wan_keys.describe_checkpoint(lora.keys)
        raise ModelFileError(f"'{lora.name}' holds no LoRA tensors for a diffusion model; it is {what}.",
                             "Pick a LoRA file (lora_down/lora_up or lora_A/lora_B tensors) in the LoRA input.")
    names = ModelNames(model)
    pieces, unmatched, keys = [], [], 0
    for delta in lora.deltas.values():
        found = names.pieces(delta)
        if found is None:
            unmatched.append(delta.source)
        else:
            pieces += found
            keys += len(delta.keys)
    total = len(lora.deltas)
    report = LoraReport(lora.name, 0.0, target, total - len(unmatched), total, unmatched, list(lora.ignored),
                        len(lora.skipped), lora.describe(), (keys, len(lora.keys)))
    if 2 * report.matched < report.total:
        raise ModelFileError(
            f"LoRA '{lora.name}' does not fit the {target} ({describe_model(model)}): only {report.matched} of its "
            f"{report.total} modules have a place in it (e.g. not {', '.join(unmatched[:2])}). It seems made for "
            f"{apparent_base(lora)}.",
            "Use a LoRA trained for this model (its download page names the base model), or load the model it was "
            "made for.")
    return Plan(report, pieces)


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
    report = apply_read(transformer, read_lora(path), strength, merge, _source_name(path, name))
    log.info(report.summary())
    return report


def apply_read(model: nn.Module, lora: LoraFile, strength: float, merge: bool, name: str, target: str = "model",
               managed: bool = False) -> LoraReport:
    """Apply an already read LoRA (no logging): merged, or unmerged under `name`."""
    adapters = adapters_of(model)
    if not merge and name in adapters:
        raise InputError(f"A LoRA named '{name}' is already applied unmerged to this model.",
                         "Change its strength with set_lora_strength, or remove it first (remove_lora).")
    planned = plan(model, lora, target)
    _drop_group_offload(model)
    if merge:
        _merge(model, planned.pieces, strength)
    else:
        adapters[name] = _add_unmerged(model, planned.pieces, strength, name, managed)
        planned.report.adapter = name
    planned.report.strength, planned.report.merged = strength, merge
    return planned.report


# ------------------------------------------------------------------------------------------------ merged
def _merge(model: nn.Module, pieces: list[Piece], strength: float) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for piece in pieces:
            if piece.weight is not None:
                weight = params[piece.weight]
                _merge_param(model, piece.weight, weight, piece.weight_delta(weight.device), strength)
            if piece.bias is not None:
                _merge_param(model, piece.bias, params[piece.bias], piece.diff_b.float(), strength)


def _merge_param(model: nn.Module, key: str, param: nn.Parameter, delta: torch.Tensor, strength: float) -> None:
    owner, pname = _owner(model, key)
    patch = owner._modules.get(PATCH)
    if isinstance(patch, ParamPatch) and patch.holds(pname):  # unmerged LoRAs patch it: merge into its own value
        patch.merge_base(owner, pname, delta, strength)
    else:
        param.data = added(param.detach(), delta, strength)


def _owner(model: nn.Module, key: str) -> tuple[nn.Module, str]:
    path, _, pname = key.rpartition(".")
    return (model.get_submodule(path) if path else model), pname


# ------------------------------------------------------------------------------------------------ unmerged
@dataclass
class _Adapter:
    """One unmerged LoRA on one model: where its tensors are."""

    name: str
    strength: float
    managed: bool  # added by a model set's sync_loras (which alone changes or removes it)
    layers: list[tuple[LoraLayer, int]] = field(default_factory=list)
    patches: list[tuple[ParamPatch, int]] = field(default_factory=list)


def adapters_of(model: nn.Module) -> dict[str, _Adapter]:
    """The unmerged LoRAs on `model`, by name (a plain attribute: not a module, not in the state dict)."""
    adapters = model.__dict__.get("vpe_adapters")
    if adapters is None:
        adapters = model.__dict__["vpe_adapters"] = {}
    return adapters


def _add_unmerged(model: nn.Module, pieces: list[Piece], strength: float, name: str, managed: bool) -> _Adapter:
    adapter = _Adapter(name, strength, managed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for piece in pieces:
            owner, pname = _owner(model, piece.weight or piece.bias)
            if isinstance(owner, nn.Linear) and pname in ("weight", "bias"):
                layer = _layer(owner)
                adapter.layers.append((layer, layer.add(piece, strength, owner)))
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
