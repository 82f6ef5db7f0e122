"""Peak memory of a two-expert run: everything resident vs one expert at a time (the other parked on disk).

Run: python bench/bench_placement.py [--threads 2]
Model: two Wan2.2-I2V experts of the "bench_large" size (8 heads x 128, 6 blocks, FFN 4096: 0.40 GB each in fp32),
the tiny zoo's UMT5 and VAE, written in ComfyUI's single-file layout and loaded through `load_wan_models`. Each mode
runs in a fresh process on CPU (so the compute device is RAM): load, then the access pattern of a two-expert run
(text encoder: activate, encode, release; high-noise expert: activate, one forward; low-noise expert: activate, one
forward; VAE: activate). Prints the peak resident memory (VmHWM) per mode, the part above the process's
memory after its imports, and their ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_bench_set, memory, parameters, write_bench_set

from videoprior_edit.placement import Placement
from videoprior_edit.text import PromptEncoder

MODES = ("all_on_device", "one_expert_disk")
SIZE = "bench_large"


def two_expert_run(models) -> int:
    """The placement calls of a two-expert run, with one forward per expert; returns the expert's parameters."""
    place = models.placement
    encoder = PromptEncoder(place.activate(models, "text_encoder"), models.tokenizer)
    text = encoder("a red cat walks out of the frame")[:, :16]
    place.release(models, "text_encoder")
    x = torch.randn(1, 36, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for name in ("transformer", "transformer_2"):
            model = place.activate(models, name)
            latents = model(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=text,
                            return_dict=False)[0]
    place.activate(models, "vae")
    place.finish(models)
    assert latents.shape == x[:, :16].shape
    return parameters(models.transformer_2)


def child(mode: str, files: str, threads: int) -> None:
    """One mode in this process; prints JSON."""
    torch.set_num_threads(threads)
    from diffusers import AutoencoderKLWan, WanTransformer3DModel  # noqa: F401  (imported before the baseline)
    from transformers import UMT5EncoderModel  # noqa: F401

    baseline = memory("VmRSS")
    t = time.perf_counter()
    models = load_bench_set({k: Path(v) for k, v in json.loads(files).items()}, "fp32", Placement(mode, device="cpu"))
    n = two_expert_run(models)
    print(json.dumps({"peak": memory("VmHWM"), "baseline": baseline, "expert_bytes": 4 * n,
                      "seconds": time.perf_counter() - t}))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(*args.child, args.threads)
    with tempfile.TemporaryDirectory(prefix="vpe_bench_placement_") as tmp:
        t = time.perf_counter()
        files = json.dumps({k: str(v) for k, v in write_bench_set(Path(tmp), SIZE).items()})
        print(f"write the {SIZE} two-expert set: {time.perf_counter() - t:.1f} s")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
        res = {}
        for mode in MODES:
            out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--child", mode, files],
                                 env=env, text=True, capture_output=True, check=True).stdout
            res[mode] = json.loads(out.strip().splitlines()[-1])
            r = res[mode]
            print(f"{mode:16s} peak {r['peak'] / 1e9:.2f} GB (above imports {(r['peak'] - r['baseline']) / 1e9:.2f} GB)"
                  f", {r['seconds']:.1f} s")
    one, all_ = res["one_expert_disk"], res["all_on_device"]
    added = {mode: r["peak"] - r["baseline"] for mode, r in res.items()}
    print(f"one expert at a time: peak {one['peak'] / 1e9:.2f} GB; all on device: {all_['peak'] / 1e9:.2f} GB; "
          f"ratio {one['peak'] / all_['peak']:.2f}; one expert = {one['expert_bytes'] / 1e9:.2f} GB")
    print(f"above the imports: {added['one_expert_disk'] / 1e9:.2f} GB vs {added['all_on_device'] / 1e9:.2f} GB; "
          f"ratio {added['one_expert_disk'] / added['all_on_device']:.2f}")


if __name__ == "__main__":
    main()
