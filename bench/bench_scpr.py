"""IF-Edit post-refinement costs: scoring frames vs a denoising step, tail decoding vs a full decode.

Run: python bench/bench_scpr.py [--threads 2]
1. Time to score N frames (Laplacian variance, 480x832) vs one denoising step (one forward) of the "bench"
   Wan2.2-I2V expert at 128x128x33 (median of 5).
2. Peak resident memory of decoding a 256x256, 81-frame clip's last latent exactly (tail only) vs decoding the
   whole clip (tiny zoo VAE, each in a fresh process), and their times.
3. How far the fast tail decode (the last latent decoded on its own) is from the exact frames (tiny zoo VAE with
   random weights: a real VAE's difference needs real weights).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_bench_set, median, memory, write_bench_set

from videoprior_edit.if_edit.sharpness import sharpness
from videoprior_edit.models.wan import load_wan_vae
from videoprior_edit.sampling.condition import decode, decode_tail


def timed(fn, repeat: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return median(times)


def scoring_vs_step(root: Path) -> None:
    models = load_bench_set(write_bench_set(root, "bench"))
    x, text = torch.randn(1, 36, 9, 16, 16), torch.randn(1, 512, models.transformer.config.text_dim)
    with torch.no_grad():
        step = timed(lambda: models.transformer(hidden_states=x, timestep=torch.tensor([500.0]),
                                                encoder_hidden_states=text, return_dict=False))
    for n in (4, 9, 33):
        frames = torch.rand(n, 480, 832, 3)
        score = timed(lambda frames=frames: sharpness(frames))
        print(f"score {n:2d} frames 480x832: {score * 1000:7.1f} ms = {score / step:5.2f} x one denoising step "
              f"({step * 1000:.1f} ms, 2.8M-parameter expert, 128x128x33)")


def child(vae_path: str, mode: str) -> None:
    vae = load_wan_vae(vae_path, "fp32")
    latents = torch.randn(1, 16, 21, 32, 32, generator=torch.Generator().manual_seed(0))
    before = memory("VmRSS")
    t = time.perf_counter()
    with torch.no_grad():
        out = decode(vae, latents) if mode == "full" else decode_tail(vae, latents, 1)
    print(json.dumps({"seconds": time.perf_counter() - t, "peak": memory("VmHWM") - before,
                      "frames": out.shape[2]}))


def tail_memory(vae_path: Path) -> None:
    rows = {}
    for mode in ("full", "tail"):
        run = subprocess.run([sys.executable, __file__, "--child", str(vae_path), mode], capture_output=True,
                             text=True, check=True)
        rows[mode] = json.loads(run.stdout.strip().splitlines()[-1])
    for mode, r in rows.items():
        print(f"decode {mode:4s} (256x256, 21 latents): {r['frames']:2d} frames, peak +{r['peak'] / 2**20:6.1f} MiB, "
              f"{r['seconds']:.2f} s")
    print(f"tail / full: memory {rows['tail']['peak'] / rows['full']['peak']:.2f}, "
          f"time {rows['tail']['seconds'] / rows['full']['seconds']:.2f}")


def fast_difference(vae_path: Path) -> None:
    vae = load_wan_vae(vae_path, "fp32")
    latents = torch.randn(1, 16, 9, 16, 16, generator=torch.Generator().manual_seed(1))
    exact = decode_tail(vae, latents, 1)
    fast = decode_tail(vae, latents, 1, exact=False)
    diffs = [(fast[:, :, 0] - exact[:, :, i]).abs() for i in range(exact.shape[2])]
    best = min(range(len(diffs)), key=lambda i: diffs[i].mean())
    mse = float(((fast[:, :, 0] - exact[:, :, best]) / 2).pow(2).mean())
    print(f"fast tail: 1 frame (exact: 4); closest exact frame {best}: mean |diff| {diffs[best].mean():.4f}, "
          f"max {diffs[best].max():.4f} (pixels in [-1, 1]), PSNR {10 * torch.log10(torch.tensor(1 / mse)):.1f} dB")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        return child(*args.child)
    root = Path(tempfile.mkdtemp(prefix="vpe_bench_scpr_"))
    scoring_vs_step(root)
    vae = root / "zoo" / "models" / "vae" / "tiny_wan_2.1_vae.safetensors"
    tail_memory(vae)
    fast_difference(vae)


if __name__ == "__main__":
    main()
