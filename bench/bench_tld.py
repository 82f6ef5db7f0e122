"""Temporal Latent Dropout speed: end-to-end edit time with K=1 vs K=3 (paper: 21 s -> 12 s, 1.75x).

Run: python bench/bench_tld.py [--size bench_large] [--repeat 3] [--threads 2]
Model: two Wan2.2-I2V experts of a test-only size (default "bench_large": 8 heads x 128, 6 blocks, FFN 4096,
110M parameters each) so that, as with the real 14B experts, the transformer and not the tiny VAE dominates the
run; tiny UMT5 and VAE; fp32 on CPU. IF-Edit settings: Lightning 8 steps, CFG 1, threshold 0.9 (TLD from step 3).
Rows: K=1 (TLD off), K=3 as the paper states it (frame 0 and every 3rd), K=3 also keeping the last frame.
Prints median end-to-end time (encode, sample, decode), the low-noise-stage time and the ratios to K=1.
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

CLIPS = [(128, 128, 33), (128, 128, 81)]
CONFIGS = [("K=1", 1, False), ("K=3", 3, False), ("K=3+last", 3, True)]


class StageTimer(SamplingHook):
    """Wall time of the low-noise stage (first low-noise step to the end of the last step)."""

    def __init__(self):
        self.low_start = None

    def before_step(self, state):
        if state.expert == "transformer_2" and self.low_start is None:
            self.low_start = time.perf_counter()


def run(models, image, frames: int, k: int, keep_last: bool) -> tuple[float, float]:
    """(end-to-end seconds, low-noise-stage seconds) of one edit."""
    timer, ends = StageTimer(), []
    t0 = time.perf_counter()
    edit_image(models, image, "a red cat walks out of the frame", frames=frames, steps=8, scheduler="lightning",
               cfg_high=1.0, cfg_low=1.0, tld_k=k, keep_last=keep_last, seed=0, hooks=[timer],
               progress=lambda n: ends.append(time.perf_counter()))
    return time.perf_counter() - t0, ends[-1] - timer.low_start


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="bench_large", help="test-only size in configs/wan_transformer.json")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = load_bench_set(write_bench_set(Path(tempfile.mkdtemp(prefix="vpe_bench_tld_")), args.size))
    print(f"experts ({args.size}): {parameters(models.transformer) / 1e6:.1f}M parameters each, fp32, "
          f"{torch.get_num_threads()} threads, median of {args.repeat}")
    print(f"{'clip WxHxF':>12} {'TLD':>9} | {'total':>7} {'vs K=1':>7} | {'low stage':>9} {'vs K=1':>7}")
    for w, h, frames in CLIPS:
        image = torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(0))
        run(models, image, frames, 1, False)  # warm-up
        base = None
        for label, k, keep_last in CONFIGS:
            samples = [run(models, image, frames, k, keep_last) for _ in range(args.repeat)]
            total, low = median(s[0] for s in samples), median(s[1] for s in samples)
            base = base or (total, low)
            print(f"{w}x{h}x{frames:<4} {label:>9} | {total:6.2f}s {base[0] / total:6.2f}x | {low:8.2f}s "
                  f"{base[1] / low:6.2f}x")


if __name__ == "__main__":
    main()
