"""Shared by the benchmarks: a Wan2.2-I2V model set of a bench size, written to disk in ComfyUI's layout and
loaded through the pack's own loader (so the benchmark measures the code artists run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # the benchmarks run from a checkout, in this venv or ComfyUI's
    sys.path.insert(0, str(REPO))

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


SHARED = REPO.parent / "shared" / "comfyui"


def in_comfyui(script: str) -> None:
    """Run `script` in ComfyUI's Python with its tree, this repository and bench/ importable: re-starts it once with
    $COMFYUI_PYTHON or the venv ../shared/comfyui/setup.sh builds; the tree is $COMFYUI_PATH or ../shared/comfyui/src."""
    tree = Path(os.environ.get("COMFYUI_PATH", SHARED / "src"))
    if os.environ.get("VPE_IN_COMFYUI"):
        sys.path[:0] = [str(tree), str(REPO), str(REPO / "bench")]
        return
    python = os.environ.get("COMFYUI_PYTHON") or subprocess.run(
        ["bash", str(SHARED / "setup.sh")], check=True, capture_output=True, text=True).stdout.split()[-1]
    env = {**os.environ, "VPE_IN_COMFYUI": "1", "PYTHONPATH": ""}
    sys.exit(subprocess.run([python, script, *sys.argv[1:]], env=env, check=False).returncode)


def comfy_pack():
    """The pack imported as ComfyUI imports a custom-node folder (its `nodes` package is not ComfyUI's `nodes`)."""
    import importlib.util

    name = "comfyui-videoprior-edit"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def start_comfyui(threads: int) -> None:
    """ComfyUI's modules on CPU, quiet (inside `in_comfyui`)."""
    sys.argv = [sys.argv[0], "--cpu"]  # ComfyUI reads its own options from the command line
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.utils
    import torch

    comfy.utils.PROGRESS_BAR_ENABLED = False
    torch.set_num_threads(threads)
