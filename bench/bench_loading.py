"""Model build + load time and peak memory for the tiny zoo, per layout and dtype.

Run: python bench/bench_loading.py [--repeat 3]
Each load runs in a fresh process: peak RSS added by the first load (lazy imports included), then the time
of a second, warm load (median over --repeat processes). Prints the ratios measured in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROWS = {
    "expert, ComfyUI single file, fp32": "load_wan_transformer(zoo.file('wan22_i2v_high'), 'fp32')",
    "expert, ComfyUI single file, bf16": "load_wan_transformer(zoo.file('wan22_i2v_high'), 'bf16')",
    "expert, single file, fp8 storage": "load_wan_transformer(zoo.file('wan22_i2v_high'), 'bf16', 'fp8_e4m3fn')",
    "expert, official shards, fp32": "load_wan_transformer(zoo.wan22_i2v_official / 'high_noise_model', 'fp32')",
    "expert, diffusers from_pretrained": "WanTransformer3DModel.from_pretrained(zoo.wan22_i2v_diffusers, "
                                         "subfolder='transformer')",
    "Wan2.2-I2V set (2 experts+UMT5+VAE)": "load_wan_models(zoo.file('wan22_i2v_high'), zoo.file('wan22_i2v_low'), "
                                            "zoo.file('umt5'), zoo.file('vae'))",
}


def child(root: str, expr: str) -> None:
    """One measurement in this process: warm-up load, then the timed load; prints JSON."""
    import psutil
    import torch  # noqa: F401
    from diffusers import WanTransformer3DModel  # noqa: F401

    from videoprior_edit.models.sets import load_wan_models  # noqa: F401
    from videoprior_edit.models.wan import load_wan_transformer  # noqa: F401
    from videoprior_edit.zoo import Zoo

    zoo = Zoo(__import__("pathlib").Path(root))  # noqa: F841
    before = psutil.Process().memory_info().rss
    first = eval(expr)  # also the warm-up of the timed load below
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    del first
    t = time.perf_counter()
    out = eval(expr)  # noqa: F841
    seconds = time.perf_counter() - t
    print(json.dumps({"seconds": seconds, "added_peak": max(0, peak - before)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    from videoprior_edit.zoo import write_zoo

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        write_zoo(tmp)
        print(f"write tiny zoo: {time.perf_counter() - t:.2f} s")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
        results = {}
        print(f"{'load':40s} {'median s':>9s} {'added peak MiB':>15s}")
        for name, expr in ROWS.items():
            runs = [json.loads(subprocess.run([sys.executable, __file__, "--child", tmp, expr], env=env, text=True,
                                              capture_output=True, check=True).stdout.strip().splitlines()[-1])
                    for _ in range(args.repeat)]
            results[name] = (statistics.median(r["seconds"] for r in runs), max(r["added_peak"] for r in runs))
            print(f"{name:40s} {results[name][0]:9.4f} {results[name][1] / 2**20:15.1f}")
        ours = results["expert, ComfyUI single file, fp32"][0]
        print(f"ratio single-file load / diffusers from_pretrained: "
              f"{ours / results['expert, diffusers from_pretrained'][0]:.2f}x")
        print(f"ratio official shards / single file: {results['expert, official shards, fp32'][0] / ours:.2f}x")


if __name__ == "__main__":
    main()
