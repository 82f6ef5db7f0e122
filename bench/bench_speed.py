"""Speed options vs off, measured in one run: time ratio and largest result difference of each option.

Run: python bench/bench_speed.py [--size bench_large] [--repeat 3] [--threads 2] [--frames 33] [--cfg 1]
Model: two Wan2.2-I2V experts of a test-only size (default "bench_large", 110M parameters each, fp32 on CPU; random
weights), tiny UMT5 and VAE. Edit: IF-Edit's defaults (videoprior_edit.if_edit.edit_image: Lightning 8 steps, 3 on
the high-noise expert and 5 on the low-noise one, CFG 1, TLD K=3) at 128x128.
Options (videoprior_edit.speed.Speed), each against off: every attention backend that runs here, compile (regional
torch.compile; its first run, which compiles, is reported apart from the steady-state ratio), the caches first_block
(default threshold and a higher one), magcache (its calibration run apart), taylorseer, taylorseer_lite.
Runs: a warm-up, the first run of compile (compiling) and of magcache (calibrating), then `repeat` rounds that run
every option once in turn (interleaved, so load from other processes hits all alike); medians. Columns: median
end-to-end edit time and its ratio to off (off / option: > 1 is faster), the same for the denoising loop alone, the
largest absolute difference of the final latents and of the frames ([0, 1]) to off, the forwards skipped per run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_bench_set, median, parameters, write_bench_set

from videoprior_edit.if_edit import edit_image
from videoprior_edit.sampling import SamplingHook
from videoprior_edit.speed import (
    Speed,
    apply_speed,
    available_attention,
    compile_problem,
)


class LoopTimer(SamplingHook):
    """Wall time from the loop's start to the end of its last step."""

    def __init__(self):
        self.start_time = self.end_time = None

    def start(self, state):
        self.start_time = time.perf_counter()


def configs(fbc_high: float) -> list[tuple[str, Speed]]:
    rows = [("off", Speed())]
    rows += [(f"attention {name}", Speed(attention=name)) for name in available_attention("cpu", torch.float32)]
    problem = compile_problem("cpu")
    if problem:
        print(f"compile: skipped ({problem})")
    else:
        rows.append(("compile", Speed(compile=True)))
    rows += [("first_block 0.05", Speed(cache="first_block")),
             (f"first_block {fbc_high:g}", Speed(cache="first_block", cache_threshold=fbc_high)),
             ("magcache", Speed(cache="magcache")), ("taylorseer", Speed(cache="taylorseer")),
             ("taylorseer_lite", Speed(cache="taylorseer_lite"))]
    return rows


def run(models, image, frames: int, cfg: float) -> dict:
    timer = LoopTimer()

    def progress(n):
        timer.end_time = time.perf_counter()

    t0 = time.perf_counter()
    result = edit_image(models, image, "a red cat walks out of the frame", frames=frames, steps=8,
                        scheduler="lightning", cfg_high=cfg, cfg_low=cfg, tld_k=3, seed=0, hooks=[timer],
                        progress=progress)
    total = time.perf_counter() - t0
    skipped = next((n.split(": ", 1)[1].split(" transformer")[0] for n in result.notes
                    if "transformer forwards skipped" in n), "")
    return {"total": total, "loop": timer.end_time - timer.start_time, "latents": result.latents,
            "frames": result.frames, "skipped": skipped}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="bench_large", help="test-only size in configs/wan_transformer.json")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--frames", type=int, default=33)
    p.add_argument("--cfg", type=float, default=1.0, help="CFG of both experts (IF-Edit: 1; > 1 runs two branches)")
    p.add_argument("--fbc-high", type=float, default=1.25,
                   help="a second first_block threshold, one that skips: on these random weights the first block's "
                   "output changes by 70-130%% a step, so the default 0.05 never skips")
    p.add_argument("--warm-compile-cache", action="store_true",
                   help="use torch's usual inductor cache (default: a new, empty one, so compile time is a first time)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.warm_compile_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="vpe_bench_inductor_")
    started = time.perf_counter()
    models = load_bench_set(write_bench_set(Path(tempfile.mkdtemp(prefix="vpe_bench_speed_")), args.size))
    image = torch.rand(1, 128, 128, 3, generator=torch.Generator().manual_seed(0))
    rows = configs(args.fbc_high)
    print(f"{date.today()}  experts ({args.size}): {parameters(models.transformer) / 1e6:.1f}M parameters each, fp32, "
          f"{torch.get_num_threads()} threads; IF-Edit 8 Lightning steps, CFG {args.cfg:g}, TLD K=3, "
          f"128x128x{args.frames}; median of {args.repeat}, interleaved")

    apply_speed(models, Speed())
    run(models, image, args.frames, args.cfg)  # process warm-up
    first = {}
    for label, speed in rows:  # the first run of compile (compiles) and magcache (calibrates)
        if speed.compile or speed.cache == "magcache":
            apply_speed(models, speed)
            first[label] = run(models, image, args.frames, args.cfg)
    samples = {label: [] for label, _ in rows}
    for _ in range(args.repeat):
        for label, speed in rows:
            apply_speed(models, speed)
            samples[label].append(run(models, image, args.frames, args.cfg))
    apply_speed(models, Speed())

    ref = samples["off"][0]
    base_total = median(s["total"] for s in samples["off"])
    base_loop = median(s["loop"] for s in samples["off"])
    print(f"{'option':<22} | {'total':>7} {'vs off':>7} | {'loop':>7} {'vs off':>7} | {'max|d| latents':>14} "
          f"{'max|d| frames':>13} | {'skipped':>7} | changes results")
    changed, same = [], []
    for label, _ in rows:
        runs = samples[label]
        total, loop = median(s["total"] for s in runs), median(s["loop"] for s in runs)
        d_lat = max(_diff(s["latents"], ref["latents"]) for s in runs)
        d_img = max(_diff(s["frames"], ref["frames"]) for s in runs)
        (changed if d_lat > 0 or d_img > 0 else same).append(label)
        print(f"{label:<22} | {total:6.2f}s {base_total / total:6.2f}x | {loop:6.2f}s {base_loop / loop:6.2f}x | "
              f"{d_lat:14.3g} {d_img:13.3g} | {runs[-1]['skipped'] or '-':>7} | "
              f"{'YES' if d_lat > 0 or d_img > 0 else 'no'}")
    if "compile" in first:
        steady = median(s["total"] for s in samples["compile"])
        print(f"compile: first run {first['compile']['total']:.2f}s = {first['compile']['total'] - steady:.2f}s "
              f"compiling ({'warm' if args.warm_compile_cache else 'empty'} inductor cache) + {steady:.2f}s steady "
              "state; each new clip size compiles again")
    cal = first["magcache"]
    print(f"magcache: calibration run {cal['total']:.2f}s ({base_total / cal['total']:.2f}x, skipped "
          f"{cal['skipped'] or '-'}, max|d| latents {_diff(cal['latents'], ref['latents']):.3g}); the rows above "
          "use the calibrated ratios")
    offs = sorted(s["total"] for s in samples["off"])
    print(f"noise: off's own {len(offs)} runs spread {offs[0]:.2f}-{offs[-1]:.2f}s ({offs[-1] / offs[0]:.2f}x); ratios "
          "within that are no effect")
    print(f"change results (difference > 0): {', '.join(changed) or 'none'}")
    print(f"identical to off: {', '.join(same)}")
    print(f"bench wall time {time.perf_counter() - started:.0f}s")


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return (a.float() - b.float()).abs().max().item()


if __name__ == "__main__":
    main()
