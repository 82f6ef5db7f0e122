"""Temporal Latent Dropout speed: end-to-end edit time with K=1 vs K=3 (paper: 21 s -> 12 s, 1.75x).

Run: python bench/bench_tld.py [--repeat 3] [--threads 2]
Model: two Wan2.2-I2V experts of the "bench" size (4 heads x 48, 4 blocks, FFN 768: 2.4M parameters each, so the
transformer dominates), tiny VAE and UMT5, fp32 on CPU; IF-Edit settings: Lightning 8 steps, CFG 1, threshold 0.9.
Prints, per clip size, the median end-to-end time for K=1 and K=3, the low-noise-stage time and the ratios.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_bench_set, median, parameters, write_bench_set

from videoprior_edit.if_edit import edit_image
from videoprior_edit.sampling import SamplingHook

SIZES = [(128, 128, 33), (128, 128, 81), (256, 256, 33)]


class StageTimer(SamplingHook):
    """Wall time of the low-noise stage (first low-noise step to the end of the last step)."""

    def __init__(self):
        self.low_start = None

    def before_step(self, state):
        if state.expert == "transformer_2" and self.low_start is None:
            self.low_start = time.perf_counter()


def run(models, image, frames: int, k: int) -> tuple[float, float]:
    """(end-to-end seconds, low-noise-stage seconds) of one edit."""
    timer, ends = StageTimer(), []
    t0 = time.perf_counter()
    edit_image(models, image, "a red cat walks out of the frame", frames=frames, steps=8, scheduler="lightning",
               cfg_high=1.0, cfg_low=1.0, tld_k=k, seed=0, hooks=[timer],
               progress=lambda n: ends.append(time.perf_counter()))
    return time.perf_counter() - t0, ends[-1] - timer.low_start


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="vpe_bench_tld_"))
    models = load_bench_set(write_bench_set(root))
    models.loras.append(("(bench: no LoRA needed)", 0.0, "both"))  # silences the few-steps advice note
    print(f"experts: {parameters(models.transformer) / 1e6:.2f}M parameters each, fp32, "
          f"{torch.get_num_threads()} threads, median of {args.repeat}")
    print(f"{'clip (WxHxF)':>14} | {'K=1 total':>9} | {'K=3 total':>9} | {'ratio':>5} | {'K=1 low':>8} | "
          f"{'K=3 low':>8} | {'low ratio':>9}")
    for w, h, frames in SIZES:
        image = torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(0))
        run(models, image, frames, 1)  # warm-up
        res = {}
        for k in (1, 3):
            samples = [run(models, image, frames, k) for _ in range(args.repeat)]
            res[k] = (median(s[0] for s in samples), median(s[1] for s in samples))
        print(f"{w}x{h}x{frames:>3} | {res[1][0]:8.2f}s | {res[3][0]:8.2f}s | {res[1][0] / res[3][0]:4.2f}x | "
              f"{res[1][1]:7.2f}s | {res[3][1]:7.2f}s | {res[1][1] / res[3][1]:8.2f}x")


if __name__ == "__main__":
    main()
