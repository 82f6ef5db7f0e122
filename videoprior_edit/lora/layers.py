"""The modules that hold unmerged LoRAs: `LoraLayer` (on a Linear, via a forward hook) and `ParamPatch` (any other
parameter: kept value + deltas, recomputed on every change). Both keep their tensors as non-persistent buffers, so
`.to()`, the placement's moves and diffusers group offloading carry them and `state_dict()` never shows them."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..gguf import logical_shape
from .targets import Piece

LAYER = "vpe_lora"
PATCH = "vpe_lora_params"
FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)


def added(value: torch.Tensor, delta: torch.Tensor, strength: float) -> torch.Tensor:
    """value + strength * delta in float32, as a new tensor in value's dtype (fp8 clamped to its range)."""
    merged = value.to(torch.float32) + strength * delta.to(value.device).reshape(value.shape)
    if value.dtype in FP8:
        merged = merged.clamp(torch.finfo(value.dtype).min, torch.finfo(value.dtype).max)
    return merged.to(value.dtype)


class LoraLayer(nn.Module):
    """Unmerged LoRAs of one Linear: `y = linear(x) + sum_i s_i * (alpha_i / rank_i * up_i(down_i(x)) + diff_i x +
    diff_b_i)` at strength s_i, every tensor a non-persistent buffer (moves with the Linear, never in its
    state_dict)."""

    def __init__(self):
        super().__init__()
        d = self.__dict__  # plain attributes (nn.Module.__setattr__'s checks are moot for them)
        d["strengths"] = {}  # slot -> strength
        d["scales"] = {}  # slot -> alpha / rank
        d["next_slot"] = 0

    def add(self, piece: Piece, strength: float, linear: nn.Linear, keep: bool = False) -> int:
        """Hold `piece` at `strength` in the Linear's compute dtype and device. The tensors are copied unless `keep`
        says they are this LoRA's own (read from its file into new memory): then one with the right dtype and
        device is kept as it is. Never the file's memory map or the caller's storage."""
        slot = self.next_slot
        self.__dict__["next_slot"] = slot + 1
        weight = _param(linear, "weight")
        device, dtype = weight.device, _compute_dtype(linear)
        out_features, in_features = logical_shape(weight)  # GGUF blocks: the weight's own shape
        buffers, private = self._buffers, self._non_persistent_buffers_set
        for kind, t, shape in (("down", piece.down, None), ("up", piece.up, (out_features, -1)),
                               ("diff", piece.diff, (out_features, in_features)),
                               ("diff_b", piece.diff_b, (out_features,))):
            if t is None:
                continue
            t = (t.flatten(1) if shape is None else t.reshape(shape)).to(device, dtype, copy=not keep)
            if keep and not t.is_contiguous():  # e.g. a fused tensor's share of columns: dense, as a copy is
                t = t.contiguous()
            name = f"a{slot}_{kind}"  # a non-persistent buffer (register_buffer's checks are moot for these names)
            buffers[name] = t
            private.add(name)
        self.scales[slot], self.strengths[slot] = piece.scale, strength
        return slot

    def set_strength(self, slot: int, strength: float) -> None:
        self.strengths[slot] = strength

    def remove(self, slot: int) -> None:
        for kind in ("down", "up", "diff", "diff_b"):
            name = f"a{slot}_{kind}"
            self._buffers.pop(name, None)
            self._non_persistent_buffers_set.discard(name)
        self.strengths.pop(slot, None)
        self.scales.pop(slot, None)

    @property
    def empty(self) -> bool:
        return not self.strengths

    def add_to(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        buffers = self._buffers
        for slot, strength in self.strengths.items():
            if strength == 0:
                continue
            down, up = buffers.get(f"a{slot}_down"), buffers.get(f"a{slot}_up")
            if down is not None:
                out = out + F.linear(F.linear(x, down.to(x.dtype)), up.to(x.dtype)) * (strength * self.scales[slot])
            diff = buffers.get(f"a{slot}_diff")
            if diff is not None:
                out = out + F.linear(x, diff.to(x.dtype)) * strength
            diff_b = buffers.get(f"a{slot}_diff_b")
            if diff_b is not None:
                out = out + diff_b.to(out.dtype) * strength
        return out


def lora_hook(linear: nn.Module, args, output):
    layer = linear._modules.get(LAYER)
    return output if layer is None else layer.add_to(args[0], output)


def _param(module: nn.Module, name: str) -> torch.Tensor | None:
    """module.<name> without nn.Module's attribute lookup when it is a parameter (the usual case)."""
    found = module._parameters.get(name)
    return found if found is not None else getattr(module, name, None)


def _compute_dtype(linear: nn.Linear) -> torch.dtype:
    """The dtype the Linear computes in: its weight's, or for fp8 storage its bias's (the load dtype), else bf16."""
    for t in (_param(linear, "weight"), _param(linear, "bias")):
        if t is not None and t.dtype.is_floating_point and t.dtype not in FP8:
            return t.dtype
    return torch.bfloat16


class ParamPatch(nn.Module):
    """Unmerged LoRA deltas of parameters that are not Linear weights: keeps each parameter's own value (`base_<p>`)
    and sets the parameter to `base + sum(strength_i * delta_i)` in float32, recomputed on every change."""

    def __init__(self):
        super().__init__()
        self.strengths: dict[int, tuple[str, float]] = {}  # slot -> (parameter name, strength)
        self.next_slot = 0

    def holds(self, pname: str) -> bool:
        return f"base_{pname}" in self._buffers

    def add(self, owner: nn.Module, pname: str, delta: torch.Tensor, strength: float) -> int:
        param = owner._parameters[pname]
        if not self.holds(pname):
            self.register_buffer(f"base_{pname}", param.detach(), persistent=False)  # the current tensor is kept
        slot, self.next_slot = self.next_slot, self.next_slot + 1
        self.register_buffer(f"a{slot}_{pname}", delta.to(param.device, torch.float32, copy=True).reshape(param.shape),
                             persistent=False)  # an own copy: never the file's or the caller's storage
        self.strengths[slot] = (pname, strength)
        self.recompute(owner, pname)
        return slot

    def set_strength(self, owner: nn.Module, slot: int, strength: float) -> None:
        pname = self.strengths[slot][0]
        self.strengths[slot] = (pname, strength)
        self.recompute(owner, pname)

    def remove(self, owner: nn.Module, slot: int) -> None:
        pname = self.strengths.pop(slot)[0]
        self._buffers.pop(f"a{slot}_{pname}", None)
        self.recompute(owner, pname)

    def merge_base(self, owner: nn.Module, pname: str, delta: torch.Tensor, strength: float) -> None:
        """A merged LoRA changes the parameter's own value; the unmerged ones stay on top."""
        self._buffers[f"base_{pname}"] = added(self._buffers[f"base_{pname}"], delta, strength)
        self.recompute(owner, pname)

    def recompute(self, owner: nn.Module, pname: str) -> None:
        base = self._buffers[f"base_{pname}"]
        mine = [(self._buffers[f"a{slot}_{p}"], s) for slot, (p, s) in self.strengths.items() if p == pname]
        if not mine:  # the last one went: the parameter gets its own tensor back
            owner._parameters[pname].data = base
            del self._buffers[f"base_{pname}"]
            return
        value = base.to(torch.float32)
        for delta, strength in mine:
            value = value + strength * delta.to(value.device)
        owner._parameters[pname].data = value.to(base.dtype)

    @property
    def empty(self) -> bool:
        return not self.strengths
