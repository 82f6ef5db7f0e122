"""Reading weight files safely: safetensors (sharded or single, with ComfyUI fp8_scaled dequantisation) and, where
the caller allows it, GGUF (`gguf.py`: quantised tensors stay quantised).

Nothing here builds a model; it gives keys, shapes and tensors. Pickle files (.ckpt/.pt/.pth/.bin) are refused
before a byte of them is unpickled, and truncated files are caught from the header before loading.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open

from .errors import ModelFileError

PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"}
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
_MAX_HEADER = 200 * 1024 * 1024
# ComfyUI's fp8_scaled files: a marker tensor plus a per-layer scale next to each fp8 weight.
FP8_MARKER = "scaled_fp8"
_FP8_SCALE_SUFFIXES = (".scale_weight", ".scale_input")
# Newer quantisation layouts we do not dequantise (refused with a message rather than loaded wrong).
_UNSUPPORTED_QUANT_SUFFIXES = (".weight_scale", ".comfy_quant", ".input_scale", ".weight_scale_2")


@dataclass(frozen=True)
class TensorInfo:
    dtype: torch.dtype
    shape: tuple[int, ...]
    file: Path
    span: tuple[int, int] = (0, 0)  # its bytes in `file`: [start, end) from the file's beginning
    quant: str | None = None  # GGUF quantisation type ("Q8_0", "Q4_K", ...); `shape` is then the dequantised shape


def refuse_pickle(path: Path) -> None:
    """Raise if `path` is a pickle-based checkpoint (by suffix or by its first bytes)."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelFileError(
            f"'{path.name}' is a pickle checkpoint ({path.suffix}); this pack never loads pickle files because "
            "they can run arbitrary code.",
            "Download the .safetensors version of this model (see models_manifest.json or "
            "`videoprior-edit models check`), or convert it yourself in a trusted environment.",
        )
    if path.is_file():
        with open(path, "rb") as f:
            head = f.read(9)
        if len(head) == 9 and head[8:9] == b"{":  # safetensors: u64 header length, then the JSON header
            return
        pickled = head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")  # protocol 2-5
        if head.startswith(b"PK\x03\x04") or pickled:
            raise ModelFileError(
                f"'{path.name}' is a pickle/zip checkpoint saved under a .safetensors name; it is refused.",
                "Use a real .safetensors file from the model's official source.",
            )


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse a safetensors header without loading tensors; detect truncated or corrupted files."""
    refuse_pickle(path)
    if not path.is_file():
        raise ModelFileError(f"Weight file not found: {path}", "Check the path or the ComfyUI models folder.")
    size = path.stat().st_size
    fix = "Delete it and download it again (`videoprior-edit models download` resumes and verifies)."
    with open(path, "rb") as f:
        raw = f.read(8)
        if raw[:4] == b"GGUF":
            raise ModelFileError(f"'{path.name}' is a GGUF file, not safetensors.",
                                 "Only the Wan and FLUX diffusion-model loaders read GGUF files.")
        if len(raw) < 8:
            raise ModelFileError(f"'{path.name}' is empty or truncated ({size} bytes).", fix)
        (n,) = struct.unpack("<Q", raw)
        if n > min(size - 8, _MAX_HEADER):
            raise ModelFileError(f"'{path.name}' is not a valid safetensors file (bad header length).", fix)
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelFileError(f"'{path.name}' has a corrupted safetensors header ({e}).", fix) from None
    meta = header.pop("__metadata__", None) or {}
    infos, end = {}, 0
    for key, entry in header.items():
        dtype = _DTYPES.get(entry.get("dtype"))
        if dtype is None:
            raise ModelFileError(f"'{path.name}': tensor '{key}' has unsupported dtype {entry.get('dtype')}.")
        begin, stop = entry["data_offsets"]
        infos[key] = TensorInfo(dtype, tuple(entry["shape"]), path, (8 + n + begin, 8 + n + stop))
        end = max(end, entry["data_offsets"][1])
    if 8 + n + end > size:
        raise ModelFileError(
            f"'{path.name}' is truncated: the header describes {8 + n + end:,} bytes but the file has {size:,} "
            "(an interrupted download?).", fix)
    return infos, meta


def find_shards(path: Path) -> list[Path]:
    """The safetensors files that make up one checkpoint: a file, an index json, or a folder of shards."""
    path = Path(path)
    if path.is_file() and path.name.endswith(".index.json"):
        index = json.loads(path.read_text())
        return [path.parent / name for name in sorted(set(index["weight_map"].values()))]
    if path.is_file():
        refuse_pickle(path)
        return [path]
    if path.is_dir():
        indexes = sorted(path.glob("*.safetensors.index.json"))
        if len(indexes) == 1:
            return find_shards(indexes[0])
        files = sorted(path.glob("*.safetensors"))
        if files:
            return files
        pickles = [p for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES]
        if pickles:
            refuse_pickle(pickles[0])
        raise ModelFileError(f"No .safetensors weights in folder {path}.",
                             "Point to a ComfyUI single file, a diffusers folder or an official sharded folder.")
    raise ModelFileError(f"Model path does not exist: {path}",
                         "Check the name; `videoprior-edit models check` lists where each file should go.")


class WeightFile:
    """One checkpoint (possibly sharded): keys and shapes from the headers, tensors loaded one at a time.

    A GGUF file is read only when `allow_gguf` (the diffusion-model loaders); elsewhere it is refused with a message
    naming what it holds. Its quantised tensors come back as `GGUFParameter`s (see `gguf.py`).
    """

    def __init__(self, path: str | Path, allow_gguf: bool = False):
        self.path = Path(path)
        self.gguf = None  # a gguf.GGUFContents when the file is GGUF
        if self.path.is_file() and self.path.suffix.lower() not in PICKLE_SUFFIXES:
            from .gguf import is_gguf

            if is_gguf(self.path):
                self._open_gguf(allow_gguf)
                return
            if self.path.suffix.lower() == ".gguf":
                refuse_pickle(self.path)
                raise ModelFileError(f"'{self.path.name}' has a .gguf name but is not a GGUF file (no GGUF header).",
                                     "The file is damaged or mislabelled: download it again from its source.")
        self.shards = find_shards(self.path)
        self.infos: dict[str, TensorInfo] = {}
        self.metadata: dict[str, str] = {}
        for shard in self.shards:
            infos, meta = read_header(shard)
            self.infos.update(infos)
            self.metadata.update(meta)
        self.fp8_scaled = FP8_MARKER in self.infos
        odd = [k for k in self.infos if k.endswith(_UNSUPPORTED_QUANT_SUFFIXES)]
        if odd:
            raise ModelFileError(
                f"'{self.path.name}' uses a quantisation layout this pack does not dequantise (e.g. '{odd[0]}').",
                "Use the fp16/bf16 file or ComfyUI's *_fp8_scaled / plain fp8_e4m3fn file of the same model.")

    def _open_gguf(self, allow: bool) -> None:
        from .gguf import FLOAT_TYPES, GGUFContents

        contents = GGUFContents(self.path)
        if not allow:
            from .models.wan_keys import describe_checkpoint

            raise ModelFileError(
                f"'{self.path.name}' is a GGUF file ({contents.summary}) holding "
                f"{describe_checkpoint(list(contents.types))}; this input takes .safetensors files only.",
                "GGUF files load as Wan or FLUX diffusion models (the model inputs). For this input use the "
                ".safetensors file of the same model (models_manifest.json lists them).")
        self.gguf, self.shards, self.metadata, self.fp8_scaled = contents, [self.path], contents.metadata, False
        self.infos = {}
        for key, qtype in contents.types.items():
            dtype, quant = (FLOAT_TYPES[qtype], None) if qtype in FLOAT_TYPES else (torch.uint8, qtype)
            self.infos[key] = TensorInfo(dtype, contents.shapes[key], self.path, contents.span(key), quant)

    def keys(self) -> list[str]:
        """Tensor names, without fp8_scaled bookkeeping tensors."""
        return [k for k in self.infos if k != FP8_MARKER and not k.endswith(_FP8_SCALE_SUFFIXES)]

    def shape(self, key: str) -> tuple[int, ...]:
        return self.infos[key].shape

    def tensors(self, keys: list[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (key, tensor) one at a time; fp8_scaled weights come back dequantised to float32, GGUF-quantised ones
        as `GGUFParameter`s (`gguf.dequantize` decodes them)."""
        wanted = set(self.keys() if keys is None else keys)
        if self.gguf is not None:
            yield from ((key, self.gguf.read(key)) for key in self.infos if key in wanted)
            return
        for shard in self.shards:
            with safe_open(str(shard), framework="pt") as f:
                names = set(f.keys())
                for key in f.keys():
                    if key not in wanted:
                        continue
                    t = f.get_tensor(key)
                    scale = key[: -len(".weight")] + ".scale_weight" if key.endswith(".weight") else None
                    if self.fp8_scaled and scale in self.infos:
                        s = f.get_tensor(scale) if scale in names else self._read(scale)  # scale in another shard
                        t = t.to(torch.float32) * s.to(torch.float32)
                    yield key, t

    def _read(self, key: str) -> torch.Tensor:
        with safe_open(str(self.infos[key].file), framework="pt") as f:
            return f.get_tensor(key)

    def state_dict(self, keys: list[str] | None = None) -> dict[str, torch.Tensor]:
        return dict(self.tensors(keys))


def save_file(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write safetensors (contiguous copies; the caller's tensors are not touched)."""
    from safetensors.torch import save_file as _save

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    _save({k: v.detach().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
