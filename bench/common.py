"""Shared by the benchmarks: a Wan2.2-I2V model set of a bench size, written to disk in ComfyUI's layout and
loaded through the pack's own loader (so the benchmark measures the code artists run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from videoprior_edit.models.sets import load_wan_models
from videoprior_edit.weights import save_file
from videoprior_edit.zoo import Zoo, _original_wan, tiny_wan_transformer, write_zoo


def write_bench_set(root: Path, size: str = "bench", seed: int = 0) -> dict[str, Path]:
    """Two Wan2.2-I2V experts of `size` (configs/wan_transformer.json) + the tiny zoo's UMT5 and VAE."""
    zoo = Zoo(root / "zoo")
    if not (zoo.root / "zoo.json").is_file():
        write_zoo(zoo.root, seed)
    files = {"text_encoder": zoo.file("umt5"), "vae": zoo.file("vae")}
    for slot, seed_offset in (("model", 1), ("model_low", 2)):
        path = root / f"{size}_wan2.2_i2v_{'high' if slot == 'model' else 'low'}_noise.safetensors"
        if not path.is_file():
            save_file(_original_wan(tiny_wan_transformer("i2v-a14b", seed + seed_offset, size)), path)
        files[slot] = path
    return files


def write_bench_t2v(root: Path, size: str = "bench_large") -> dict[str, Path]:
    """A Wan2.1-T2V of `size` + the tiny zoo's UMT5 and VAE (their text width matches the test-only sizes)."""
    zoo = Zoo(root / "zoo")
    if not (zoo.root / "zoo.json").is_file():
        write_zoo(zoo.root, 0)
    path = root / f"{size}_wan2.1_t2v_1.3B.safetensors"
    if not path.is_file():
        save_file(_original_wan(tiny_wan_transformer("t2v", 3, size)), path)
    return {"model": path, "text_encoder": zoo.file("umt5"), "vae": zoo.file("vae")}


def load_bench_set(files: dict[str, Path], dtype: str = "fp32", placement=None):
    kwargs = {} if placement is None else {"placement": placement}
    return load_wan_models(files["model"], files["model_low"], files["text_encoder"], files["vae"], dtype=dtype,
                           **kwargs)


def parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def median(values) -> float:
    values = sorted(values)
    return values[len(values) // 2]


def memory(field: str) -> int:
    """A /proc/self/status memory field (VmHWM: peak resident, VmRSS: resident now) in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status (this benchmark needs Linux)")


def in_fresh_process(script: str, *args: str) -> dict:
    """Run `script` with `args` in a new Python process (its peak memory starts from zero) and return the JSON object
    it prints last."""
    done = subprocess.run([sys.executable, script, *args], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.splitlines()[-1])
