"""Temporal Latent Dropout on the native ComfyUI path: K=1 vs K=3 end to end and the low-noise stage, in one run.

Run: python bench/bench_native_tld.py [--size bench_large] [--repeat 3] [--threads 2]
It runs inside ComfyUI (the tree in $COMFYUI_PATH or ../shared/comfyui/src, with its own Python: the script
re-starts itself with it). Models: two Wan2.2-I2V experts of a test-only size (default "bench_large": 8 heads x 128,
6 blocks, FFN 4096, 110M parameters each) loaded with ComfyUI's own loader; the tiny zoo's VAE through ComfyUI's VAE;
random text embeddings. The graph is the native IF-Edit one: WanImageToVideo, KSamplerAdvanced (high-noise expert,
steps 0-2 of 8, euler / simple, shift 5, CFG 1), Temporal Latent Dropout, KSamplerAdvanced (low-noise expert, 3-7),
each node called as ComfyUI calls it. Prints the median times and their ratios to K=1.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import comfy_pack, in_comfyui, start_comfyui

CLIPS = [(128, 128, 33), (128, 128, 81)]
CONFIGS = [("K=1", 1, False), ("K=3", 3, False), ("K=3+last", 3, True)]


def load(size: str, root: Path):
    """(high, low, vae) as ComfyUI objects: the experts with shift 5 (ModelSamplingSD3), ComfyUI's VAE."""
    import comfy.sd
    import comfy.utils
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3
    from common import write_bench_set

    files = write_bench_set(root, size)
    experts = [ModelSamplingSD3().patch(comfy.sd.load_diffusion_model(str(files[k])), 5.0)[0]
               for k in ("model", "model_low")]
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(files["vae"])))
    return experts[0], experts[1], vae


def edit(models, tld, width: int, height: int, frames: int, k: int, keep_last: bool) -> tuple[float, float]:
    """(end-to-end seconds, low-noise-stage seconds) of one native edit; the TLD node's work counts to the stage."""
    import torch
    from comfy_extras.nodes_wan import WanImageToVideo

    import nodes

    high, low, vae = models
    text = [[torch.randn(1, 512, 4096, generator=torch.Generator().manual_seed(1)), {}]]
    image = torch.rand(1, height, width, 3, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    pos, neg, latent = WanImageToVideo.execute(text, text, vae, width, height, frames, 1, start_image=image).args
    (laid_out,) = nodes.common_ksampler(high, 7, 8, 1.0, "euler", "simple", pos, neg, latent, start_step=0,
                                        last_step=3, force_full_denoise=False)
    t1 = time.perf_counter()
    result = tld.execute(low, pos, neg, laid_out, k, keep_last, "original").args
    nodes.common_ksampler(result[0], 7, 8, 1.0, "euler", "simple", result[1], result[2], result[3],
                          disable_noise=True, start_step=3, last_step=10000, force_full_denoise=True)
    t2 = time.perf_counter()
    return t2 - t0, t2 - t1


def main(argv=None) -> None:
    in_comfyui(__file__)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="bench_large", help="test-only size in configs/wan_transformer.json")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    start_comfyui(args.threads)
    import torch
    from common import median

    tld = comfy_pack().nodes.native.frames.TemporalLatentDropout  # a V3 node: execute is a classmethod
    models = load(args.size, Path(tempfile.mkdtemp(prefix="vpe_bench_native_tld_")))
    count = sum(p.numel() for p in models[0].model.diffusion_model.parameters())
    print(f"native ComfyUI experts ({args.size}): {count / 1e6:.1f}M parameters each, "
          f"{torch.get_num_threads()} threads, median of {args.repeat}")
    print(f"{'clip WxHxF':>12} {'TLD':>9} | {'total':>7} {'vs K=1':>7} | {'low stage':>9} {'vs K=1':>7}")
    for w, h, frames in CLIPS:
        edit(models, tld, w, h, frames, 1, False)  # warm-up
        base = None
        for label, k, keep_last in CONFIGS:
            samples = [edit(models, tld, w, h, frames, k, keep_last) for _ in range(args.repeat)]
            total, low = median(s[0] for s in samples), median(s[1] for s in samples)
            base = base or (total, low)
            print(f"{w}x{h}x{frames:<4} {label:>9} | {total:6.2f}s {base[0] / total:6.2f}x | {low:8.2f}s "
                  f"{base[1] / low:6.2f}x", flush=True)


if __name__ == "__main__":
    main()
