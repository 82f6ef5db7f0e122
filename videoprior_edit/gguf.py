"""GGUF weight files (city96 / QuantStack Wan and FLUX transformers): read, kept quantised, dequantised per layer.

Reading: the header gives each tensor's name, logical shape (torch order; ComfyUI-GGUF's `comfy.gguf.orig_shape.<key>`
when it was stored reshaped) and type; tensors are read one at a time. F32/F16/BF16 tensors come back as plain
tensors, quantised ones (Q8_0, Q4_K, Q5_K, Q6_K, ...) as diffusers' `GGUFParameter`: the raw blocks as uint8 with the
rows intact, so row splits of fused FLUX tensors stay valid.
Running: `GGUFLinear` keeps such a weight and dequantises it (diffusers' torch dequantisers) for each matmul, so memory
holds the quantised bytes plus one layer's dequantised weight at a time. Other quantised tensors (convolutions, the
modules upstream keeps in float32) are dequantised once at load.
Writing (tiny zoo, tests): `write_gguf`, with gguf-py's quantisers plus this module's Q4_K and Q6_K (gguf-py only
dequantises K-quants), packed as ggml's `block_q4_K` / `block_q6_K`.

The `gguf` package and diffusers' GGUF utilities are imported only when a GGUF file is used.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import ModelFileError

MAGIC = b"GGUF"
FLOAT_TYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_ORIG_SHAPE = "comfy.gguf.orig_shape."
_REDOWNLOAD = "Delete it and download it again (an interrupted download leaves a truncated file)."


def is_gguf(path: Path) -> bool:
    """Whether `path` is a file starting with the GGUF magic."""
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == MAGIC


def is_quantized(t: torch.Tensor) -> bool:
    """Whether `t` holds GGUF blocks (a `GGUFParameter`) rather than plain values."""
    return getattr(t, "quant_type", None) is not None


def logical_shape(t: torch.Tensor) -> tuple[int, ...]:
    """The shape of the weight `t` stands for (for quantised blocks: the dequantised shape)."""
    return tuple(t.quant_shape) if is_quantized(t) else tuple(t.shape)


def dequantize(t: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`t`'s values as a plain tensor in `dtype` (quantised blocks are decoded, on `t`'s device)."""
    if not is_quantized(t):
        return t.to(dtype)
    from diffusers.quantizers.gguf.utils import GGML_QUANT_SIZES, dequantize_functions

    block_size, type_size = GGML_QUANT_SIZES[t.quant_type]
    blocks = t.as_tensor().view(torch.uint8).reshape(-1, type_size)
    values = dequantize_functions[t.quant_type](blocks, block_size, type_size, dtype=dtype)
    return values.reshape(t.quant_shape).to(dtype)


class GGUFLinear(nn.Linear):
    """A Linear whose weight stays GGUF-quantised and is dequantised, in the input's dtype, for each matmul."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = dequantize(self.weight, x.dtype).reshape(self.out_features, self.in_features)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return nn.functional.linear(x, weight, bias)


def assign_quantized(model: nn.Module, key: str, t: torch.Tensor, dtype: torch.dtype, keep: bool) -> None:
    """Put the quantised tensor `t` at `key` of `model`: an nn.Linear's weight stays quantised when `keep` (the Linear
    becomes a `GGUFLinear`); anything else is dequantised to `dtype` now. Meta `t` (an empty model) works alike."""
    path, _, name = key.rpartition(".")
    module = model.get_submodule(path)
    if keep and is_quantized(t) and name == "weight" and type(module) in (nn.Linear, GGUFLinear):
        module._parameters[name] = t
        module.__class__ = GGUFLinear
        return
    if t.is_meta:
        value = torch.empty(logical_shape(t), dtype=dtype, device="meta")
    else:
        value = dequantize(t, dtype)
    if name in module._buffers:
        module._buffers[name] = value
    else:
        module._parameters[name] = nn.Parameter(value, requires_grad=False)


# ----------------------------------------------------------------------------------------------- reading
class GGUFContents:
    """One GGUF file: metadata, names, logical shapes and types from the header; tensors read one at a time."""

    def __init__(self, path: str | Path):
        import gguf

        self.path = Path(path)
        try:
            self._reader = gguf.GGUFReader(self.path, "r")
        except (ValueError, IndexError, OSError) as e:  # numpy's errors on a cut or damaged file
            raise ModelFileError(f"'{self.path.name}' is a truncated or damaged GGUF file ({e}).",
                                 _REDOWNLOAD) from None
        self.metadata = self._read_metadata()
        self._tensors = {t.name: t for t in self._reader.tensors}
        self.types = {name: t.tensor_type.name for name, t in self._tensors.items()}
        self.shapes = {name: self._shape(t) for name, t in self._tensors.items()}
        self._check()

    def _read_metadata(self) -> dict[str, str]:
        from gguf import GGUFValueType

        meta = {}
        for name, field in self._reader.fields.items():
            if field.types == [GGUFValueType.STRING]:
                meta[name] = str(bytes(field.parts[field.data[0]]), "utf-8", errors="replace")
            elif len(field.types) == 1 and field.types[0] != GGUFValueType.ARRAY:
                meta[name] = str(field.parts[field.data[0]][0])
        return meta

    def _shape(self, tensor) -> tuple[int, ...]:
        field = self._reader.get_field(_ORIG_SHAPE + tensor.name)
        if field is not None:
            return tuple(int(field.parts[i][0]) for i in field.data)
        return tuple(int(d) for d in reversed(tensor.shape.tolist()))

    def _check(self) -> None:
        from diffusers.quantizers.gguf.utils import dequantize_functions

        if int(self.metadata.get("split.count", "1")) > 1:
            raise ModelFileError(f"'{self.path.name}' is one part of a split GGUF model "
                                 f"({self.metadata['split.count']} parts).",
                                 "Merge the parts into one file with llama.cpp's `llama-gguf-split --merge`.")
        known = set(FLOAT_TYPES) | {t.name for t in dequantize_functions}
        odd = [(n, q) for n, q in self.types.items() if q not in known]
        if odd:
            raise ModelFileError(
                f"'{self.path.name}': tensor '{odd[0][0]}' is stored as {odd[0][1]}, which this pack cannot "
                "dequantise.",
                "Use a file quantised as Q8_0, Q6_K, Q5_K_M, Q5_0, Q4_K_M, Q4_0, Q3_K_M or Q2_K (or F16/BF16).")
        size = self.path.stat().st_size
        end = max((t.data_offset + t.n_bytes for t in self._tensors.values()), default=0)
        if end > size:
            raise ModelFileError(f"'{self.path.name}' is truncated: its header describes {end:,} bytes but the file "
                                 f"has {size:,}.", _REDOWNLOAD)

    @property
    def summary(self) -> str:
        """The file's tensor types, most common first (e.g. 'Q4_K/Q6_K/F32')."""
        counts: dict[str, int] = {}
        for q in self.types.values():
            counts[q] = counts.get(q, 0) + 1
        return "/".join(sorted(counts, key=lambda q: (q in FLOAT_TYPES, -counts[q])))

    def span(self, name: str) -> tuple[int, int]:
        t = self._tensors[name]
        return t.data_offset, t.data_offset + t.n_bytes

    def read(self, name: str) -> torch.Tensor:
        """Tensor `name`: plain for F32/F16/BF16, a `GGUFParameter` of its blocks when quantised (copied out of the
        file's memory map)."""
        from diffusers.quantizers.gguf.utils import GGUFParameter

        t, shape = self._tensors[name], self.shapes[name]
        data = torch.from_numpy(np.array(t.data))
        qtype = self.types[name]
        if qtype == "BF16":
            return data.view(torch.bfloat16).reshape(shape)
        if qtype in FLOAT_TYPES:
            return data.reshape(shape)
        blocks = GGUFParameter(data, quant_type=t.tensor_type)
        if logical_shape(blocks) != shape:  # stored reshaped (ComfyUI-GGUF): rows are no longer the weight's rows
            return dequantize(blocks).reshape(shape)
        return blocks

    def meta(self, name: str) -> torch.Tensor:
        """Tensor `name` on the meta device, with the type and shape `read` gives (for models built empty)."""
        from diffusers.quantizers.gguf.utils import GGUFParameter

        t, shape, qtype = self._tensors[name], self.shapes[name], self.types[name]
        if qtype in FLOAT_TYPES:
            return torch.empty(shape, dtype=FLOAT_TYPES[qtype], device="meta")
        empty = torch.empty(tuple(int(d) for d in t.data.shape), dtype=torch.uint8, device="meta")
        blocks = GGUFParameter(empty, quant_type=t.tensor_type)
        return blocks if logical_shape(blocks) == shape else torch.empty(shape, device="meta")


# ----------------------------------------------------------------------------------------------- writing
def _fp16_at_least(x: np.ndarray) -> np.ndarray:
    """float16 values >= `x` (the super-block scales: every sub-block scale must stay representable)."""
    h = x.astype(np.float16)
    return np.where(h.astype(np.float32) < x, np.nextafter(h, np.float16(np.inf)), h)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a), where=b > 0)


def quantize_q4_k(w: np.ndarray) -> np.ndarray:
    """Q4_K blocks (ggml `block_q4_K`: fp16 d, fp16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of 4-bit quants)
    of `w` (..., n) with n a multiple of 256. Value = d * scale_j * q - dmin * min_j per 32-value sub-block j."""
    x = w.astype(np.float32).reshape(-1, 8, 32)
    lo, hi = np.minimum(x.min(-1), 0), x.max(-1)
    step = (hi - lo) / 15
    d, dmin = _fp16_at_least(step.max(-1) / 63), _fp16_at_least((-lo).max(-1) / 63)
    d32, dmin32 = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    sc = np.ceil(_div(step, np.broadcast_to(d32, step.shape))).clip(0, 63).astype(np.uint8)
    mn = np.round(_div(-lo, np.broadcast_to(dmin32, lo.shape))).clip(0, 63).astype(np.uint8)
    scale, offset = (d32 * sc)[..., None], (dmin32 * mn)[..., None]
    q = np.round(_div(x + offset, np.broadcast_to(scale, x.shape))).clip(0, 15).astype(np.uint8)
    packed = np.concatenate([sc[:, :4] | (sc[:, 4:] >> 4) << 6, mn[:, :4] | (mn[:, 4:] >> 4) << 6,
                             (sc[:, 4:] & 0xF) | (mn[:, 4:] & 0xF) << 4], axis=1)
    qs = (q[:, 0::2] | q[:, 1::2] << 4).reshape(-1, 128)  # 4 x 32 bytes: sub-block 2g low nibbles, 2g+1 high
    blocks = np.concatenate([d.reshape(-1, 1).view(np.uint8), dmin.reshape(-1, 1).view(np.uint8), packed, qs], axis=1)
    return blocks.reshape(*w.shape[:-1], -1)


def quantize_q6_k(w: np.ndarray) -> np.ndarray:
    """Q6_K blocks (ggml `block_q6_K`: 128 bytes of low 4 bits, 64 of high 2 bits, 16 int8 scales, fp16 d) of `w`
    (..., n) with n a multiple of 256. Value = d * scale_j * (q - 32) per 16-value sub-block j."""
    x = w.astype(np.float32).reshape(-1, 16, 16)
    step = np.abs(x).max(-1) / 31
    d = _fp16_at_least(step.max(-1) / 127)
    d32 = d.astype(np.float32)[:, None]
    sc = np.ceil(_div(step, np.broadcast_to(d32, step.shape))).clip(0, 127).astype(np.int8)
    scale = (d32 * sc)[..., None]
    q = (np.round(_div(x, np.broadcast_to(scale, x.shape))).clip(-32, 31) + 32).astype(np.uint8)
    q = q.reshape(-1, 2, 4, 32)  # per 128-value half: value l + 32k is q[:, half, k, l]
    low = q & 0xF
    ql = np.concatenate([low[:, :, 0] | low[:, :, 2] << 4, low[:, :, 1] | low[:, :, 3] << 4], axis=2)
    qh = q[:, :, 0] >> 4 | (q[:, :, 1] >> 4) << 2 | (q[:, :, 2] >> 4) << 4 | (q[:, :, 3] >> 4) << 6
    blocks = np.concatenate([ql.reshape(-1, 128), qh.reshape(-1, 64), sc.view(np.uint8),
                             d.reshape(-1, 1).view(np.uint8)], axis=1)
    return blocks.reshape(*w.shape[:-1], -1)


_OWN_QUANTIZERS = {"Q4_K": quantize_q4_k, "Q6_K": quantize_q6_k}


def quantize(w: torch.Tensor, qtype: str) -> np.ndarray:
    """`w` in GGUF type `qtype` as the array `GGUFWriter.add_tensor` takes (uint8 blocks for quantised types)."""
    import gguf

    data = w.detach().to(torch.float32).numpy()
    if qtype in _OWN_QUANTIZERS:
        return _OWN_QUANTIZERS[qtype](data)
    return gguf.quants.quantize(data, gguf.GGMLQuantizationType[qtype])


def write_gguf(path: str | Path, tensors: dict[str, torch.Tensor], arch: str,
               qtype: Callable[[str, torch.Tensor], str], file_type: str | None = None) -> None:
    """Write `tensors` as a GGUF file the way ComfyUI-GGUF's converter does (`general.architecture` = `arch`), each
    in the type `qtype(key, tensor)` names ('F32', 'F16', 'BF16', 'Q8_0', 'Q4_K', 'Q6_K', ...)."""
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path, arch=arch)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if file_type:
        writer.add_file_type(gguf.LlamaFileType[file_type])
    for key, t in tensors.items():
        name = qtype(key, t)
        writer.add_tensor(key, quantize(t, name), raw_dtype=gguf.GGMLQuantizationType[name])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
