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

A file's tensors are read straight into new memory that the read LoRA owns (`LoraFile.owned`; never views of the
file's memory map), so an unmerged LoRA can keep them as they are (no second copy) when they already have the
model's dtype and device.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ModelFileError
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
_UNSUPPORTED_ENDS = tuple(_UNSUPPORTED)
_SUFFIX_ENDS = tuple(suffix for suffix, _ in _SUFFIXES)
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
_ITEM_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32)
METADATA_KEY = "lora_adapter_metadata"
_SLAB = 16 * 2**20  # bytes read at once (below glibc's largest mmap threshold, so such buffers are reused)


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
    # the tensors are this read's own (read from the file into new memory: not the caller's, not a memory map): the
    # first unmerged application may keep them without a copy (it then clears this, so a second user copies)
    owned: bool = False

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
    owned = False
    if isinstance(source, Mapping):
        name, tensors, metadata = "state dict", dict(source), {}
    else:
        wf, tensors, owned = read_file(source)
        name, metadata = wf.path.name, wf.metadata
    keys = list(tensors)
    joined = "." + "\n.".join(keys)  # every key after a ".", one a line (no hint holds a line break)
    bare_order = ("diffusers", "original") if any(h in joined for h in _DIFFUSERS_HINTS) else ("original", "diffusers")
    lora = LoraFile(name, keys, {}, owned=owned)
    deltas = lora.deltas
    dtypes = Counter()
    for key, tensor in tensors.items():
        module, part = _classify(key)
        if module is None:
            if part == "skipped":
                lora.skipped.append(key)
            elif part == "ignored":
                lora.ignored.append(key)
            else:
                lora.unsupported[part] += 1
            continue
        delta = deltas.get(module)
        if delta is None:
            delta = deltas[module] = _new_delta(module, bare_order)
        delta.keys.append(key)
        if part == "alpha":
            delta.alpha = _scalar(tensor)
        elif part == "lora_bias":  # PEFT lora_bias: lora_B's bias, scaled like the pair (below)
            delta.diff_b, delta.bias_scaled = tensor, True
            dtypes[tensor.dtype] += tensor.numel()
        else:
            setattr(delta, part, tensor)
            dtypes[tensor.dtype] += tensor.numel()
    for module, delta in list(deltas.items()):  # an alpha alone belongs to tensors left aside
        if delta.down is None and delta.up is None and delta.diff is None and delta.diff_b is None:
            del deltas[module]
            if not lora.unsupported:
                lora.ignored += delta.keys
    lora.dtypes = [_DTYPES.get(d, str(d).replace("torch.", "")) for d, _ in dtypes.most_common()]
    _peft_alphas(lora, metadata)
    for delta in deltas.values():
        if delta.bias_scaled and delta.scale != 1.0:
            delta.diff_b = delta.diff_b.float() * delta.scale  # a new tensor
    return lora


@dataclass
class _Layout:
    """A checked single-file, unquantised LoRA and where its tensors lie: runs of tensors that follow each other in
    the file (at most `_SLAB` bytes each, or one larger tensor) to read at once."""

    wf: WeightFile
    head: bytes  # the file's first bytes: header length and header (keys, dtypes, shapes, offsets, metadata)
    size: int  # of the file
    slabs: list[tuple[int, int, list[tuple]]]  # (file offset, bytes, [(key, dtype, shape, strides, offset)])
    keys: list[str]  # safetensors' key order (sorted)


def _layout(wf: WeightFile) -> _Layout:
    """Where the tensors of a checked single file lie (from its parsed header), and the header's bytes."""
    with open(wf.shards[0], "rb", buffering=0) as f:
        head = f.read(8)
        head += f.read(struct.unpack("<Q", head)[0])
        size = os.fstat(f.fileno()).st_size
    entries = sorted((info.span[0], info.span[1], key) for key, info in wf.infos.items())
    slabs, i = [], 0
    while i < len(entries):
        start, end, j = entries[i][0], entries[i][1], i + 1
        while j < len(entries) and entries[j][1] - start <= _SLAB:
            end, j = max(end, entries[j][1]), j + 1
        items = []
        for begin, _, key in entries[i:j]:
            info = wf.infos[key]
            items.append((key, info.dtype, info.shape, _strides(info.shape), begin - start))
        slabs.append((start, end - start, items))
        i = j
    return _Layout(wf, head, size, slabs, sorted(wf.infos))


def read_file(source: str | Path) -> tuple[WeightFile, dict[str, torch.Tensor], bool]:
    """A LoRA file's checked `WeightFile` and tensors, and whether the tensors are the reader's own (read into new
    memory, see `read_owned`). The checks and layout of a single file are remembered and reused while its header
    and size stay the same (read and compared on each call), so trying LoRAs back and forth reads only their
    tensors (and header)."""
    path = Path(source)
    known = _FILES.get(str(path))
    if known is not None:
        try:
            with open(path, "rb", buffering=0) as f:
                if os.fstat(f.fileno()).st_size == known.size and f.read(len(known.head)) == known.head:
                    return known.wf, read_owned(known, f), True
        except OSError:
            pass
        _FILES.pop(str(path), None)
    wf = WeightFile(path)  # checks: no pickle, complete file, known dtypes and layouts
    if len(wf.shards) != 1 or wf.fp8_scaled:
        return wf, wf.state_dict(), False
    layout = _layout(wf)
    with open(wf.shards[0], "rb", buffering=0) as f:
        tensors = read_owned(layout, f)
    if len(_FILES) >= 64:
        _FILES.pop(next(iter(_FILES), None), None)
    _FILES[str(path)] = layout
    return wf, tensors, True


_FILES: dict[str, _Layout] = {}


def read_owned(layout: _Layout, f) -> dict[str, torch.Tensor]:
    """Every tensor of the file `f`, in safetensors' key order, read straight from the file into new memory (one
    copy; no memory map): each run of tensors with one read into one new buffer, the tensors views of it (few reads
    and allocations, and buffers of a size the allocator reuses when one LoRA replaces another)."""
    out = {}
    for position, size, items in layout.slabs:
        slab = torch.empty((size + 7) // 8 * 8, dtype=torch.uint8)  # whole 8-byte words: typed views
        view, done = memoryview(slab.numpy())[:size], 0
        f.seek(position)
        while done < size:
            got = f.readinto(view[done:])
            if not got:
                raise ModelFileError(f"'{layout.wf.path.name}' changed while it was read.", "Load it again.")
            done += got
        typed = {}
        for key, dtype, shape, strides, offset in items:
            itemsize = dtype.itemsize
            if offset % itemsize:  # not aligned for a view: a copy of its own
                out[key] = slab[offset:offset + itemsize * math.prod(shape)].clone().view(dtype).view(shape)
                continue
            whole = typed.get(dtype)
            if whole is None:
                whole = typed[dtype] = slab.view(dtype)
            out[key] = whole.as_strided(shape, strides, offset // itemsize)
    return {key: out[key] for key in layout.keys}


def _strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A contiguous tensor's strides (remembered per shape: a LoRA repeats a few shapes many times)."""
    strides = _STRIDES.get(shape)
    if strides is None:
        step, out = 1, []
        for size in reversed(shape):
            out.append(step)
            step *= max(size, 1)
        strides = tuple(reversed(out))
        if len(_STRIDES) < 4096:
            _STRIDES[shape] = strides
    return strides


_STRIDES: dict[tuple[int, ...], tuple[int, ...]] = {}


def _scalar(t: torch.Tensor) -> float:
    if t.numel() == 1 and t.dtype in _ITEM_DTYPES:
        return float(t.item())
    return float(t.float().reshape(-1)[0])


def _classify(key: str) -> tuple[str | None, str]:
    """(module as written, kind of tensor), or (None, "skipped" / "ignored" / the refused LoRA kind); remembered
    per key (LoRA files repeat the same keys)."""
    found = _KINDS.get(key)
    if found is None:
        if key.startswith(TEXT_ENCODER_PREFIXES):
            found = (None, "skipped")
        elif key.endswith(_UNSUPPORTED_ENDS):
            found = (None, next(k for suffix, k in _UNSUPPORTED.items() if key.endswith(suffix)))
        else:
            found = _split(key) or (None, "ignored")
        if len(_KINDS) < 1 << 16:
            _KINDS[key] = found
    return found


_KINDS: dict[str, tuple[str | None, str]] = {}


def _split(key: str) -> tuple[str, str] | None:
    """(module as written, kind of tensor) for a LoRA key; None for keys this loader does not understand."""
    if key.endswith(".diff_m"):  # lightx2v: delta of a block's modulation table
        return key[: -len(".diff_m")] + ".modulation", "diff"
    if key.endswith(_SUFFIX_ENDS):
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
