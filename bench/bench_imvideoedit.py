"""ImVideoEdit cost: per-step time and peak memory of the adapted model vs the frozen Wan2.1-T2V, for inference and
a training step, plus the real models' adapter sizes and the 1.3B trainer's weight/optimizer memory.

Run: python bench/bench_imvideoedit.py [--size bench_large] [--repeat 3] [--threads 2]
Model: a Wan2.1-T2V of a test-only size (default "bench_large": 8 heads x 128, 6 blocks, 110M parameters), random
weights, written in ComfyUI's layout and loaded by the pack's loader; fp32 on CPU. Times: median of `repeat`
rounds, the modes interleaved within each round. Memory: each mode in a fresh process (peak resident memory only
grows); "peak +" is the peak above the resident memory after loading and creating the adapter. Rows:
- inference: one transformer call of a denoising step. frozen = the T2V model on the target clip (batch 1);
  frozen x2 = the same model on [source; target] (what the source chunk alone costs); adapted = [source; target]
  with the Spatial Difference Attention in every block.
- training: one forward + backward of a single-frame pair (the trainer's sample). frozen = forward + backward
  through the frozen model to its input (no weights to train); adapted = the trainer's step (adapter gradients),
  with and without gradient checkpointing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import in_fresh_process, median, memory, parameters, write_bench_t2v

from videoprior_edit.imvideoedit import applied, create_adapter
from videoprior_edit.models.sets import load_wan_models

INFERENCE = (256, 256, 9)  # clip W x H x frames: 3 latent frames of 16 x 16 tokens
TRAINING = (448, 256, 1)  # one frame, the paper's 480x832 aspect scaled down
MODES = ("infer_frozen", "infer_frozen_x2", "infer_adapted", "train_frozen", "train_adapted",
         "train_adapted_checkpointed")


def _inputs(clip, batch: int, text_dim: int):
    w, h, frames = clip
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 16, (frames - 1) // 4 + 1, h // 8, w // 8, generator=g)
    return x, torch.tensor([0.0, 600.0][2 - batch:]), torch.randn(batch, 512, text_dim, generator=g)


def _call(model, x, t, text):
    return model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]


def _setup(files: dict):
    models = load_wan_models(files["model"], None, files["text_encoder"], files["vae"], dtype="fp32")
    model = models.transformer
    model.enable_gradient_checkpointing()  # toggled per mode below
    return model, create_adapter(model).requires_grad_(True)  # inference modes run under no_grad


def _mode_fn(model, adapter, mode: str):
    training = mode.startswith("train")
    x, t, text = _inputs(TRAINING if training else INFERENCE, 1 if mode.endswith("frozen") else 2,
                         model.config.text_dim)
    step = _step_fn(model, adapter, mode, x, t, text)

    def run():
        model.gradient_checkpointing = mode.endswith("checkpointed")
        step()

    return run


def peak_memory(files: dict, mode: str) -> dict:
    """Peak resident memory above the loaded state for one mode (run in its own process: the peak only grows)."""
    model, adapter = _setup(files)
    run = _mode_fn(model, adapter, mode)
    base = memory("VmRSS")
    run()
    run()
    return {"mode": mode, "peak_above_loaded": memory("VmHWM") - base, "adapter_parameters": parameters(adapter),
            "model_parameters": parameters(model)}


def timings(files: dict, repeat: int) -> dict[str, float]:
    """Median seconds per mode, the modes interleaved round by round (load on the machine hits all alike)."""
    model, adapter = _setup(files)
    runs = {mode: _mode_fn(model, adapter, mode) for mode in MODES}
    times = {mode: [] for mode in MODES}
    for mode in MODES:
        runs[mode]()  # warm-up
    for _ in range(repeat):
        for mode in MODES:
            start = time.perf_counter()
            runs[mode]()
            times[mode].append(time.perf_counter() - start)
    return {mode: median(v) for mode, v in times.items()}


def _step_fn(model, adapter, mode: str, x, t, text):
    adapted = "adapted" in mode

    def step():
        with applied(model, adapter) if adapted else contextlib.nullcontext():
            if mode.startswith("infer"):
                with torch.no_grad():
                    _call(model, x, t, text)
                return
            inp = x.clone().requires_grad_(not adapted)
            out = _call(model, inp, t, text)
            out.chunk(2)[-1].square().mean().backward()
            adapter.zero_grad(set_to_none=True)

    return step


def real_sizes() -> list[str]:
    """Adapter parameters for the real Wan2.1-T2V sizes (built on the meta device) and the 1.3B trainer's
    weight + gradient + AdamW memory (fp32 adapter, bf16 frozen base)."""
    from diffusers import WanTransformer3DModel

    from videoprior_edit.imvideoedit import AdapterConfig, ImVideoEditAdapter
    from videoprior_edit.models.configs import config_data

    data, lines = config_data("wan_transformer"), []
    for size in ("1.3B", "14B"):
        c = {**data["base"], **data["sizes"][size], "image_dim": None}
        dim, layers = c["num_attention_heads"] * c["attention_head_dim"], c["num_layers"]
        with torch.device("meta"):
            m = parameters(WanTransformer3DModel(**c))
            n = parameters(ImVideoEditAdapter(AdapterConfig(size, "t2v", size, dim, c["num_attention_heads"], layers,
                                                            list(range(layers)), dim)))
        lines.append(f"Wan2.1-T2V-{size}: base {m / 1e9:.2f}B, adapter {n / 1e9:.2f}B parameters ({n / m:.2f}x); "
                     f"adapter file bf16 {2 * n / 1e9:.1f} GB; training weights + grads + AdamW (fp32 adapter, "
                     f"bf16 base) {(16 * n + 2 * m) / 1e9:.1f} GB")
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="bench_large", help="test-only size in configs/wan_transformer.json")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--files", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(peak_memory({k: Path(v) for k, v in json.loads(args.files).items()}, args.one)))
        return
    files = write_bench_t2v(Path(tempfile.mkdtemp(prefix="vpe_bench_ive_")), args.size)
    rows = {mode: _subprocess(files, mode, args) for mode in MODES}
    for mode, seconds in timings(files, args.repeat).items():
        rows[mode]["seconds"] = seconds
    _report(rows, args)


def _subprocess(files: dict, mode: str, args) -> dict:
    return in_fresh_process(__file__, "--one", mode, "--files", json.dumps({k: str(v) for k, v in files.items()}),
                            "--threads", str(args.threads), "--size", args.size)


def _report(rows: dict, args) -> None:
    first = rows["infer_frozen"]
    print(f"Wan2.1-T2V ({args.size}): {first['model_parameters'] / 1e6:.1f}M parameters, adapter "
          f"{first['adapter_parameters'] / 1e6:.1f}M ({first['adapter_parameters'] / first['model_parameters']:.2f}x); "
          f"fp32, {args.threads} threads, median of {args.repeat}")
    print(f"inference {INFERENCE[0]}x{INFERENCE[1]}x{INFERENCE[2]}, training {TRAINING[0]}x{TRAINING[1]} single frame")
    print(f"{'step':<36} {'time':>9} {'vs frozen':>9} {'peak +':>10} {'vs frozen':>9}")
    for mode in MODES:
        r, ref = rows[mode], rows["infer_frozen" if mode.startswith("infer") else "train_frozen"]
        print(f"{mode:<36} {r['seconds'] * 1000:7.1f}ms {r['seconds'] / ref['seconds']:8.2f}x "
              f"{r['peak_above_loaded'] / 2**20:8.1f}MiB {r['peak_above_loaded'] / max(1, ref['peak_above_loaded']):8.2f}x")
    print("\n".join(real_sizes()))


if __name__ == "__main__":
    main()
