"""Overhead of the pack's sampling loop (TLD off) against diffusers' WanImageToVideoPipeline on the same modules.

Run: python bench/bench_overhead.py [--repeat 5] [--threads 2]
Same model set (two "bench"-size Wan2.2-I2V experts, tiny UMT5/VAE, fp32, CPU), same inputs and seed: 128x128,
33 frames, 8 UniPC steps, CFG 3.5 (two forwards per step). Runs alternate; prints both medians and ours/diffusers
(target <= 1.03), and checks the outputs are identical.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_bench_set, median, parameters, write_bench_set

from videoprior_edit.demo import synthetic_source
from videoprior_edit.sampling import Guidance, make_scheduler, sample_i2v
from videoprior_edit.sampling.condition import image_from_pixels, image_from_uint8

W, H, FRAMES, STEPS = 128, 128, 33, 8


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from diffusers import WanImageToVideoPipeline

    models = load_bench_set(write_bench_set(Path(tempfile.mkdtemp(prefix="vpe_bench_overhead_"))))
    source = synthetic_source(W, H)
    pipe = WanImageToVideoPipeline(tokenizer=models.tokenizer, text_encoder=models.text_encoder, vae=models.vae,
                                   scheduler=make_scheduler("unipc", 5.0), transformer=models.transformer,
                                   transformer_2=models.transformer_2, boundary_ratio=models.boundary_ratio)
    pipe.set_progress_bar_config(disable=True)

    def ours():
        video = sample_i2v(models, image_from_uint8(source), "a red cat", "blurry", FRAMES, STEPS, "unipc", 5.0,
                           Guidance(3.5, 3.5), seed=0).video
        return image_from_pixels(video).numpy()

    def theirs():
        pipe.scheduler = make_scheduler("unipc", 5.0)
        return pipe(image=Image.fromarray(source), prompt="a red cat", negative_prompt="blurry", height=H, width=W,
                    num_frames=FRAMES, num_inference_steps=STEPS, guidance_scale=3.5, guidance_scale_2=3.5,
                    generator=torch.Generator("cpu").manual_seed(0), output_type="np").frames[0]

    same = np.array_equal(ours(), theirs())  # also the warm-up
    times = {"ours": [], "diffusers": []}
    for _ in range(args.repeat):
        for name, fn in (("ours", ours), ("diffusers", theirs)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    a, b = median(times["ours"]), median(times["diffusers"])
    print(f"experts: {parameters(models.transformer) / 1e6:.2f}M parameters each, fp32, {torch.get_num_threads()} "
          f"threads; {W}x{H}x{FRAMES}, {STEPS} UniPC steps, CFG 3.5; median of {args.repeat}")
    print(f"ours {a:.3f} s | diffusers {b:.3f} s | ours/diffusers {a / b:.3f} | identical frames: {same}")


if __name__ == "__main__":
    main()
