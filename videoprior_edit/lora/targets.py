"""Where a LoRA's modules go in a model, and what a LoRA or a model is (for the messages).

`ModelNames(model)` lists every name a LoRA may use for a parameter of the model: its diffusers name and, for Wan and
FLUX.1, its original name (Wan repos / ComfyUI; BFL for FLUX), each also with `.` -> `_` (kohya style). A BFL name of a
fused tensor (`double_blocks.0.img_attn.qkv`, `single_blocks.0.linear1`) stands for several diffusers modules
(`attn.to_q/to_k/to_v`, `+ proj_mlp`): its `up` rows (and `diff` / `diff_b` rows) are split between them, its `down`
is shared (or split too when the file stores the parts block-diagonally, as sd-scripts' split_qkv does), and FLUX's
final modulation has its (shift, scale) halves swapped into diffusers' (scale, shift).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from ..gguf import logical_shape
from ..models import wan_keys
from .formats import LoraDelta, LoraFile, fits, weight_delta


@dataclass(frozen=True)
class Part:
    """One model parameter a LoRA module name stands for (part `index` of `count` for a fused BFL tensor)."""

    weight: str  # key of the parameter the weight delta changes
    bias: str | None  # key of the module's bias (for diff_b)
    index: int = 0
    count: int = 1
    swap: bool = False  # rows are (shift, scale) in the file, (scale, shift) in the model


@dataclass
class Piece:
    """What one LoRA module changes in one parameter of the model (and in its bias)."""

    source: str
    weight: str | None
    bias: str | None
    down: torch.Tensor | None
    up: torch.Tensor | None
    diff: torch.Tensor | None
    diff_b: torch.Tensor | None
    scale: float

    @property
    def has_weight(self) -> bool:
        return self.up is not None or self.diff is not None

    def weight_delta(self, device: torch.device | str | None = None) -> torch.Tensor | None:
        return weight_delta(self.down, self.up, self.diff, self.scale, device)


class ModelNames:
    """The names a LoRA may use for the parameters of `model` (diffusers names; Wan / BFL original names).

    `ModelNames.of(params)` gives the tables of a model from its `named_parameters()` dict, built once per model
    structure (names and shapes) and then reused: they hold only names and shapes."""

    @classmethod
    def of(cls, params: dict[str, torch.Tensor]) -> ModelNames:
        signature = tuple((k, logical_shape(p)) for k, p in params.items())
        names = _NAMES.get(signature)
        if names is None:
            names = cls(params)
            if len(_NAMES) >= 8:
                _NAMES.pop(next(iter(_NAMES), None), None)
            _NAMES[signature] = names
        return names

    def __init__(self, model: nn.Module | dict[str, torch.Tensor]):
        params = model if isinstance(model, dict) else dict(model.named_parameters())
        self.shapes = {k: logical_shape(p) for k, p in params.items()}  # GGUF blocks: the weight's own shape
        self.family = model_family(self.shapes)
        self.tables: dict[tuple[str, str], dict[str, list[Part]]] = {
            (ns, style): {} for ns in ("original", "diffusers") for style in ("dot", "underscore")}
        for key in self.shapes:
            if key.endswith(".bias") and key[: -len(".bias")] + ".weight" in self.shapes:
                continue
            module = key.removesuffix(".weight")
            bias = module + ".bias" if key.endswith(".weight") and module + ".bias" in self.shapes else None
            self._add("diffusers", module, Part(key, bias))
            if self.family == "wan":
                original = wan_keys.wan_key_to_original(key)
                if original:
                    self._add("original", _module_of(original), Part(key, bias))
            elif self.family == "flux":
                from ..models.flux import flux_key_to_original

                found = flux_key_to_original(key)
                if found:
                    original, index, count = found
                    part = Part(key, bias, index, count, swap=original.startswith("final_layer.adaLN_modulation.1."))
                    self._add("original", _module_of(original), part)
                    if original.endswith(".scale"):  # norm scales: also the norm's own name
                        self._add("original", original, part)
        for table in self.tables.values():  # fused names: parts in order, once (resolve reads them as they are)
            for name, parts in table.items():
                if len(parts) > 1:
                    table[name] = sorted(parts, key=lambda p: p.index)

    def _add(self, namespace: str, name: str, part: Part) -> None:
        for style, alias in (("dot", name), ("underscore", name.replace(".", "_"))):
            parts = self.tables[namespace, style].setdefault(alias, [])
            if part.count > 1 or not parts:  # a fused name gathers its parts; otherwise the first name wins
                parts.append(part)

    def resolve(self, delta: LoraDelta) -> list[Part] | None:
        """The parameters `delta`'s module name stands for (None when it has no place in the model)."""
        for namespace in delta.namespaces:
            parts = self.tables[namespace, delta.style].get(delta.name)
            if parts:
                return parts if len(parts) == parts[0].count else None
        return None

    def pieces(self, delta: LoraDelta) -> list[Piece] | None:
        """`delta` cut into the parameters it changes; None unless every part fits its parameter."""
        parts = self.resolve(delta)
        if parts is None:
            return None
        down, up, diff, diff_b = delta.down, delta.up, delta.diff, delta.diff_b
        if len(parts) == 1:
            downs, ups, diffs, diff_bs = [down], [up], [diff], [diff_b]
        else:
            sizes = [self.shapes[p.weight][0] for p in parts]
            if any(t.shape[0] != sum(sizes) for t in (up, diff, diff_b) if t is not None):
                return None
            downs, ups = _split_pair(down, up, sizes)
            diffs, diff_bs = _split_rows(diff, sizes), _split_rows(diff_b, sizes)
        pieces = []
        for part, d, u, w, b in zip(parts, downs, ups, diffs, diff_bs):
            if part.swap:
                u, w, b = _swap(u), _swap(w), _swap(b)
            piece = Piece(delta.source, part.weight if (u is not None or w is not None or d is not None) else None,
                          part.bias if b is not None else None, d, u, w, b, delta.scale)
            if piece.weight is not None and not fits(d, u, w, self.shapes[part.weight]):
                return None
            if b is not None and (part.bias is None or b.numel() != _numel(self.shapes[part.bias])):
                return None
            pieces.append(piece)
        return pieces


_NAMES: dict[tuple, ModelNames] = {}  # by model structure: ((parameter name, shape), ...)


def _module_of(key: str) -> str:
    return key.removesuffix(".weight")


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _split_rows(t: torch.Tensor | None, sizes: list[int]) -> list[torch.Tensor | None]:
    return [None] * len(sizes) if t is None else list(torch.split(t, sizes, dim=0))


def _split_pair(down: torch.Tensor | None, up: torch.Tensor | None, sizes: list[int]) -> tuple[list, list]:
    """Split a fused low-rank pair by output rows: `down` is shared, unless `up` is block-diagonal in equal rank
    chunks (each part uses only its own chunk of the rank), then each part gets its chunk of `down` too."""
    if up is None or down is None:
        return [down] * len(sizes), _split_rows(up, sizes)
    n, rank = len(sizes), down.shape[0]
    ups = list(torch.split(up, sizes, dim=0))
    if rank % n == 0:
        r = rank // n
        blocks = [u.flatten(1)[:, j * r:(j + 1) * r] for u in ups for j in range(n)]
        if all(not blocks[i * n + j].any() for i in range(n) for j in range(n) if i != j):
            return list(torch.chunk(down, n, dim=0)), [u[:, i * r:(i + 1) * r] for i, u in enumerate(ups)]
    return [down] * n, ups


def _swap(t: torch.Tensor | None) -> torch.Tensor | None:
    if t is None:
        return None
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


# ------------------------------------------------------------------------------------------------ messages
_BLOCK = re.compile(r"(?:^|[._])blocks[._](\d+)[._]")
_FLUX_DOUBLE = re.compile(r"(?:^|[._])(?:double_blocks|(?<!single_)transformer_blocks)[._](\d+)[._]")
_FLUX_SINGLE = re.compile(r"(?:^|[._])(?:single_blocks|single_transformer_blocks)[._](\d+)[._]")
_WAN_SIZES = {5120: "Wan 14B (Wan2.1-14B or a Wan2.2-A14B expert)", 3072: "Wan2.2-TI2V-5B",
              1536: "Wan2.1-T2V-1.3B"}


def model_family(shapes) -> str:
    """"wan", "flux" or "other" from a model's parameter names."""
    if "patch_embedding.weight" in shapes and any(k.startswith("blocks.0.attn1.") for k in shapes):
        return "wan"
    if "x_embedder.weight" in shapes and "transformer_blocks.0.attn.to_q.weight" in shapes:
        return "flux"
    return "other"


def _count(pattern: re.Pattern, keys) -> int:
    found = {int(m.group(1)) for k in keys if (m := pattern.search(k))}
    return max(found) + 1 if found else 0


def describe_model(model: nn.Module) -> str:
    """"Wan2.2-I2V-A14B high-noise expert, 40 blocks, hidden size 5120" (name from the loader when it has one)."""
    info = getattr(model, "vpe_info", None)
    name = getattr(info, "names", None) or getattr(info, "name", None) or type(model).__name__
    params = dict(model.named_parameters())
    family = model_family(params)
    if family == "wan":
        shape = f"{_count(_BLOCK, params)} blocks, hidden size {params['blocks.0.attn1.to_q.weight'].shape[1]}"
    elif family == "flux":
        shape = (f"{_count(_FLUX_DOUBLE, params)} double + {_count(_FLUX_SINGLE, params)} single blocks, hidden "
                 f"size {params['transformer_blocks.0.attn.to_q.weight'].shape[1]}")
    else:
        return name
    return f"{name}, {shape}"


def apparent_base(lora: LoraFile) -> str:
    """A short guess of the model a LoRA was made for, from its key names and shapes."""
    keys = lora.keys
    if any(w in k for k in keys for w in ("double_blocks", "single_blocks", "single_transformer_blocks")):
        hidden = _hidden_size(lora, ("img_attn.qkv", "img_attn_qkv", "attn.to_q", "attn_to_q"))
        facts = [f"{_count(_FLUX_DOUBLE, keys)} double + {_count(_FLUX_SINGLE, keys)} single blocks"]
        facts += [f"hidden size {hidden}"] if hidden else []
        name = "FLUX.1" if hidden in (None, 3072) else "a FLUX.1-style model"
        return f"{name} ({', '.join(facts)}; its keys name FLUX's double_blocks / single_blocks)"
    if any(w in k for k in keys for w in ("input_blocks", "down_blocks", "mid_block", "middle_block")):
        return "a Stable Diffusion / SDXL UNet (its keys name down_blocks / input_blocks)"
    if any("individual_token_refiner" in k for k in keys):
        return "HunyuanVideo (its keys name the token refiner)"
    blocks = _count(_BLOCK, keys)
    hidden = _hidden_size(lora, ("attn1.to_q", "attn1_to_q", "self_attn.q", "self_attn_q"))
    facts = [f"{blocks} blocks" if blocks else "", f"hidden size {hidden}" if hidden else ""]
    if any("k_img" in k or "add_k_proj" in k for k in keys):
        facts.append("image cross-attention k_img/v_img as in Wan2.1-I2V / FLF2V")
    facts = ", ".join(f for f in facts if f)
    if not facts:
        return f"another architecture (keys like {', '.join(keys[:2])})"
    return f"{_WAN_SIZES.get(hidden, 'a Wan model')} ({facts})"


def _hidden_size(lora: LoraFile, ends: tuple[str, ...]) -> int | None:
    for delta in lora.deltas.values():
        if delta.source.endswith(ends):
            source = delta.down if delta.down is not None else delta.diff
            if source is not None and source.dim() == 2:
                return source.shape[1]
    return None
