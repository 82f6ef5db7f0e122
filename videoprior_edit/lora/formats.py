"""Reading LoRA files: every key layout into one neutral form, a `LoraDelta` per module as the file names it.

Layouts (detected per key from its prefix, so mixed files work too):

| prefix | who writes it | module names |
| --- | --- | --- |
| `diffusion_model.`, `model.diffusion_model.` | Wan / lightx2v / Kijai, ComfyUI, diffusion-pipe, BFL | original |
| `lora_unet_` | musubi-tuner, kohya sd-scripts | original, `.` -> `_` |
| `lycoris_` | LyCORIS / SimpleTuner | original or diffusers, `.` -> `_` |
| `lora_transformer_` | OneTrainer | diffusers, `.` -> `_` |
| `transformer.`, `base_model.model.` | diffusers / PEFT | diffusers |
| none | bare state dicts | original or diffusers (guessed from the names) |

Tensors per module: `lora_down`/`lora_A` (rank x in), `lora_up`/`lora_B` (out x rank), `.alpha` (scale alpha / rank;
without it 1, as kohya and PEFT do), full deltas `.diff` (weight), `.diff_b` (bias; PEFT's `lora_B.bias` too, scaled
like the pair) and lightx2v's `<block>.diff_m` (the block's modulation table). diffusers files keep their alpha in
the safetensors metadata (`lora_adapter_metadata`: lora_alpha, alpha_pattern, use_rslora), which is read too.
Text-encoder keys are skipped; DoRA, LoHa and LoKr tensors are recognised and refused by name. Nothing here writes
to a tensor it was given.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..weights import WeightFile

# (suffix, kind)
_SUFFIXES = (
    (".lora_down.weight", "down"), (".lora_A.weight", "down"), (".lora.down.weight", "down"),
    (".lora_up.weight", "up"), (".lora_B.weight", "up"), (".lora.up.weight", "up"),
    (".lora_B.bias", "lora_bias"), (".alpha", "alpha"), (".diff", "diff"), (".diff_b", "diff_b"),
)
_PEFT_NAMED = re.compile(r"^(.+)\.lora_([AB])\.[A-Za-z0-9_\-]+\.weight$")  # PEFT with the adapter name kept
_UNSUPPORTED = {".dora_scale": "DoRA", ".lora_magnitude_vector": "DoRA", ".hada_w1_a": "LoHa", ".hada_w1_b": "LoHa",
                ".hada_w2_a": "LoHa", ".hada_w2_b": "LoHa", ".hada_t1": "LoHa", ".hada_t2": "LoHa",
                ".lokr_w1": "LoKr", ".lokr_w2": "LoKr", ".lokr_w1_a": "LoKr", ".lokr_w1_b": "LoKr",
                ".lokr_w2_a": "LoKr", ".lokr_w2_b": "LoKr", ".lokr_t2": "LoKr", ".lora_mid.weight": "LoCon (Tucker)",
                ".oft_blocks": "OFT", ".oft_diag": "OFT", ".w_norm": "GLoRA", ".a1.weight": "GLoRA",
                ".set_weight": "full weight replacement"}
# (prefix, layout label, name style, namespaces to look the name up in, in order)
_PREFIXES = (
    ("model.diffusion_model.", "original names (diffusion_model.*)", "dot", ("original", "diffusers")),
    ("diffusion_model.", "original names (diffusion_model.*)", "dot", ("original", "diffusers")),
    ("base_model.model.", "diffusers/PEFT", "dot", ("diffusers", "original")),
    ("transformer.", "diffusers/PEFT", "dot", ("diffusers", "original")),
    ("lora_unet_", "musubi-tuner/kohya (lora_unet_*)", "underscore", ("original", "diffusers")),
    ("lycoris_", "LyCORIS (lycoris_*)", "underscore", ("original", "diffusers")),
    ("lora_transformer_", "OneTrainer (lora_transformer_*)", "underscore", ("diffusers", "original")),
)
TEXT_ENCODER_PREFIXES = ("lora_te_", "lora_te1_", "lora_te2_", "lora_te3_", "text_encoder.", "text_encoder_2.",
                         "text_encoders.", "te.", "te1.", "te2.", "cond_stage_model.", "conditioner.")
_DIFFUSERS_HINTS = (".attn1.", ".attn2.", ".ffn.net.", ".condition_embedder.", ".proj_out.", ".attn.to_",
                    ".ff.net.", ".norm1.linear", ".x_embedder")
_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
           torch.float8_e4m3fn: "fp8_e4m3fn", torch.float8_e5m2: "fp8_e5m2"}
METADATA_KEY = "lora_adapter_metadata"


@dataclass
class LoraDelta:
    """What a LoRA holds for one module: a low-rank pair (down: rank x in, up: out x rank) with its alpha, and/or
    full deltas of the weight (`diff`) and of the bias (`diff_b`)."""

    source: str  # the module as the file names it (prefix included)
    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    alpha: float | None = None
    diff: torch.Tensor | None = None
    diff_b: torch.Tensor | None = None
    name: str = ""  # the module name without the layout prefix
    style: str = "dot"  # "dot" or "underscore" (kohya-style names: `.` -> `_`)
    namespaces: tuple[str, ...] = ("original", "diffusers")  # where to look the name up, in order
    layout: str = ""  # the layout label of the prefix
    rslora: bool = False  # PEFT use_rslora: alpha / sqrt(rank)
    keys: list[str] = field(default_factory=list)  # the file's keys of this module
    bias_scaled: bool = False  # diff_b came as PEFT's lora_B.bias (scaled by alpha / rank like the pair)

    @property
    def rank(self) -> int | None:
        return None if self.down is None else self.down.shape[0]

    @property
    def scale(self) -> float:
        """alpha / rank when the file has an alpha (alpha / sqrt(rank) for rsLoRA), else 1."""
        if self.alpha is None or self.down is None:
            return 1.0
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

    def fits(self, shape: tuple[int, ...]) -> bool:
        """Whether the weight delta has the shape of a weight of `shape` (a lone down or up never fits)."""
        return fits(self.down, self.up, self.diff, shape)

    def weight_delta(self, device: torch.device | str | None = None) -> torch.Tensor | None:
        """The float32 change of the weight at strength 1, computed on `device` (a new tensor; None when the LoRA
        has no weight delta)."""
        return weight_delta(self.down, self.up, self.diff, self.scale, device)


def fits(down: torch.Tensor | None, up: torch.Tensor | None, diff: torch.Tensor | None,
         shape: tuple[int, ...]) -> bool:
    """Whether down/up (and diff) make a delta of a weight of `shape` (a lone down or up never fits)."""
    if (down is None) != (up is None):
        return False
    if up is not None and (up.shape[0] != shape[0] or up.dim() < 2 or up.shape[1] != down.shape[0]
                           or math.prod(up.shape[2:]) != 1
                           or up.shape[0] * math.prod(down.shape[1:]) != math.prod(shape)):
        return False
    return diff is None or diff.numel() == math.prod(shape)


def weight_delta(down: torch.Tensor | None, up: torch.Tensor | None, diff: torch.Tensor | None, scale: float,
                 device: torch.device | str | None = None) -> torch.Tensor | None:
    """scale * up @ down (+ diff) in float32 on `device`: always a new tensor."""
    parts = []
    if up is not None and down is not None:
        parts.append((up.to(device, torch.float32).flatten(1) @ down.to(device, torch.float32).flatten(1)) * scale)
    if diff is not None:
        parts.append(diff.to(device, torch.float32, copy=True))
    if len(parts) == 2:
        return parts[0] + parts[1].reshape(parts[0].shape)
    return parts[0] if parts else None


@dataclass
class LoraFile:
    """A read LoRA: its deltas by module (as the file names it) and what was left aside."""

    name: str
    keys: list[str]
    deltas: dict[str, LoraDelta]
    ignored: list[str] = field(default_factory=list)  # keys this loader does not understand
    skipped: list[str] = field(default_factory=list)  # text-encoder keys (the loader changes the diffusion model)
    unsupported: Counter = field(default_factory=Counter)  # LoRA kinds recognised but not read (DoRA, LoKr, ...)
    dtypes: list[str] = field(default_factory=list)

    @property
    def layouts(self) -> list[str]:
        """The key layouts found, most used first."""
        return [layout for layout, _ in Counter(d.layout for d in self.deltas.values()).most_common()]

    @property
    def ranks(self) -> list[int]:
        return sorted({d.rank for d in self.deltas.values() if d.rank is not None})

    def describe(self) -> str:
        """"musubi-tuner/kohya (lora_unet_*), bf16, rank 32"."""
        ranks = self.ranks
        rank = "" if not ranks else f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {ranks[0]}-{ranks[-1]}"
        return ", ".join(p for p in (" + ".join(self.layouts), "/".join(self.dtypes), rank) if p)


def read_lora(source: str | Path | Mapping[str, torch.Tensor]) -> LoraFile:
    """Read a LoRA safetensors file (or a state dict, left untouched) into deltas keyed by module as written."""
    if isinstance(source, Mapping):
        name, tensors, metadata = "state dict", dict(source), {}
    else:
        wf = WeightFile(source)
        name, tensors, metadata = wf.path.name, wf.state_dict(), wf.metadata
    keys = list(tensors)
    bare_order = ("diffusers", "original") if any(h in "." + k for k in keys for h in _DIFFUSERS_HINTS) \
        else ("original", "diffusers")
    lora = LoraFile(name, keys, {})
    dtypes = Counter()
    for key, tensor in tensors.items():
        if key.startswith(TEXT_ENCODER_PREFIXES):
            lora.skipped.append(key)
            continue
        kind = next((k for suffix, k in _UNSUPPORTED.items() if key.endswith(suffix)), None)
        if kind is not None:
            lora.unsupported[kind] += 1
            continue
        split = _split(key)
        if split is None:
            lora.ignored.append(key)
            continue
        module, part = split
        delta = lora.deltas.get(module)
        if delta is None:
            delta = lora.deltas[module] = _new_delta(module, bare_order)
        delta.keys.append(key)
        if part == "alpha":
            delta.alpha = float(tensor.float().reshape(-1)[0])
        elif part == "lora_bias":  # PEFT lora_bias: lora_B's bias, scaled like the pair (below)
            delta.diff_b, delta.bias_scaled = tensor, True
            dtypes[tensor.dtype] += tensor.numel()
        else:
            setattr(delta, part, tensor)
            dtypes[tensor.dtype] += tensor.numel()
    for module, delta in list(lora.deltas.items()):  # an alpha alone belongs to tensors left aside
        if all(t is None for t in (delta.down, delta.up, delta.diff, delta.diff_b)):
            del lora.deltas[module]
            if not lora.unsupported:
                lora.ignored += delta.keys
    lora.dtypes = [_DTYPES.get(d, str(d).replace("torch.", "")) for d, _ in dtypes.most_common()]
    _peft_alphas(lora, metadata)
    for delta in lora.deltas.values():
        if delta.bias_scaled and delta.scale != 1.0:
            delta.diff_b = delta.diff_b.float() * delta.scale  # a new tensor
    return lora


def _split(key: str) -> tuple[str, str] | None:
    """(module as written, kind of tensor) for a LoRA key; None for keys this loader does not understand."""
    if key.endswith(".diff_m"):  # lightx2v: delta of a block's modulation table
        return key[: -len(".diff_m")] + ".modulation", "diff"
    for suffix, kind in _SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], kind
    m = _PEFT_NAMED.match(key)
    if m:
        return m.group(1), "down" if m.group(2) == "A" else "up"
    return None


def _new_delta(module: str, bare_order: tuple[str, ...]) -> LoraDelta:
    for prefix, layout, style, namespaces in _PREFIXES:
        if module.startswith(prefix):
            return LoraDelta(module, name=module[len(prefix):], style=style, namespaces=namespaces, layout=layout)
    return LoraDelta(module, name=module, style="dot", namespaces=bare_order, layout="bare module names")


def _peft_alphas(lora: LoraFile, metadata: Mapping[str, str]) -> None:
    """diffusers-saved LoRAs: alpha (and rsLoRA) from the PEFT config stored in the safetensors metadata, for the
    modules without an `.alpha` key."""
    raw = metadata.get(METADATA_KEY) if metadata else None
    if not raw:
        return
    try:
        config = json.loads(raw)
    except ValueError:
        return
    config = {k.split(".", 1)[1] if k.startswith("transformer.") else k: v for k, v in config.items()}
    alpha, patterns = config.get("lora_alpha"), config.get("alpha_pattern") or {}
    for delta in lora.deltas.values():
        if delta.alpha is not None or delta.namespaces[0] != "diffusers":
            continue
        found = next((a for p, a in patterns.items() if re.match(rf"(.*\.)?({p})$", delta.name)), alpha)
        if found is not None:
            delta.alpha, delta.rslora = float(found), bool(config.get("use_rslora", False))
