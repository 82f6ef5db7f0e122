"""ByG cost: the editor's transformer call (source tokens concatenated) vs a plain text-to-video call, the trainer's
steps and their peak memory with and without gradient checkpointing, and the real models' LoRA / training memory.

Run: python bench/bench_byg.py [--size bench_large] [--repeat 2] [--threads 2]
Model: a Wan2.1-T2V of a test-only size (default "bench_large": 8 heads x 128, 6 blocks, 110M parameters), random
weights, written in ComfyUI's layout and loaded by the pack's loader, with the tiny zoo's UMT5 and VAE; fp32 on
CPU. Rows:
- inference (clip 256x256x9: 3 latent frames of 16x16 tokens): plain = the T2V model on the noisy clip; plain 2F =
  the T2V model on twice the frames (what a doubled sequence costs by itself); byg same / zero = the editor's call
  (`byg.family.edit_velocity`: [noisy, source] at the same positions, the source at the same timestep / at 0).
- training (a 128x128 picture, rank-64 LoRA on attn+ffn): one optimizer step of `ByGTrainer` (bootstrapping 10 +
  clean 10 EMA steps as the paper, base-model prior, cycle) and one identity step. Memory: each in a fresh
  process, peak resident memory above the state after the trainer is built (the peak only grows).
Times: median of `repeat` rounds, the modes interleaved within each round.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import in_fresh_process, median, memory, parameters, write_bench_t2v

from videoprior_edit.byg.family import FluxFamily, WanFamily, edit_velocity
from videoprior_edit.byg.train import ByGConfig, ByGTrainer, lora_parameters
from videoprior_edit.models.sets import load_wan_models

CLIP = (256, 256, 9)  # W x H x frames for the inference rows
PICTURE = 128  # training picture side
INFER = ("infer_plain", "infer_plain_2F", "infer_byg_same", "infer_byg_zero")
TRAIN = ("train_edit_step", "train_edit_step_checkpointed", "train_identity_step")


# ----------------------------------------------------------------------------------------------- inference
def inference_runs(files: dict) -> dict:
    model = load_wan_models(files["model"], None, files["text_encoder"], files["vae"], dtype="fp32").transformer
    w, h, frames = CLIP
    g = torch.Generator().manual_seed(0)
    f = (frames - 1) // 4 + 1
    noisy, source = (torch.randn(1, 16, f, h // 8, w // 8, generator=g) for _ in range(2))
    text, sigma = torch.randn(1, 512, model.config.text_dim, generator=g), torch.tensor([0.6])

    def plain(x):
        return lambda: model(hidden_states=x, timestep=sigma * 1000, encoder_hidden_states=text, return_dict=False)

    def byg(mode):
        return lambda: edit_velocity(model, noisy, source, sigma, text, mode, "same")

    runs = {"infer_plain": plain(noisy), "infer_plain_2F": plain(torch.cat([noisy, source], 2)),
            "infer_byg_same": byg("same"), "infer_byg_zero": byg("zero")}
    return {k: _no_grad(v) for k, v in runs.items()}


def _no_grad(fn):
    def run():
        with torch.no_grad():
            fn()
    return run


# ----------------------------------------------------------------------------------------------- training
def trainer_config(root: Path, files: dict, checkpointing: bool) -> ByGConfig:
    from videoprior_edit.byg.data import write_demo_dataset

    data = write_demo_dataset(root / "data", PICTURE, PICTURE, count=2)
    return ByGConfig(data=str(data), model=str(files["model"]), text_encoder=str(files["text_encoder"]),
                     vae=str(files["vae"]), output=str(root / "run"), width=PICTURE, height=PICTURE, num_frames=1,
                     precision="fp32", mixed_precision="no", gradient_checkpointing=checkpointing,
                     identity_warmup_steps=0, identity_probability=0.0, save_every=10**9, log_every=10**9)


def training_runs(trainer: ByGTrainer) -> dict:
    edit_cfg = trainer.cfg

    def step(identity: bool, checkpointed: bool):
        def run():
            trainer.cfg = replace(edit_cfg, identity_probability=1.0 if identity else 0.0)
            trainer.transformer.gradient_checkpointing = checkpointed
            trainer.step_once()
        return run

    return {"train_edit_step": step(False, False), "train_edit_step_checkpointed": step(False, True),
            "train_identity_step": step(True, False)}


def peak_memory(files: dict, mode: str, root: Path) -> dict:
    """Peak resident memory above the built state for one mode (its own process: the peak only grows)."""
    if mode.startswith("infer"):
        run = inference_runs(files)[mode]
        extra = {}
    else:
        trainer = ByGTrainer(trainer_config(root, files, True))
        run = training_runs(trainer)[mode]
        extra = {"lora_parameters": sum(p.numel() for p in lora_parameters(trainer.transformer).values()),
                 "model_parameters": parameters(trainer.transformer)}
    base = memory("VmRSS")
    run()
    run()
    return {"mode": mode, "peak_above_loaded": memory("VmHWM") - base, **extra}


def timings(files: dict, root: Path, repeat: int) -> dict[str, float]:
    runs = {**inference_runs(files), **training_runs(ByGTrainer(trainer_config(root, files, True)))}
    times = {mode: [] for mode in runs}
    for run in runs.values():
        run()  # warm-up
    for _ in range(repeat):
        for mode, run in runs.items():
            start = time.perf_counter()
            run()
            times[mode].append(time.perf_counter() - start)
    return {mode: median(v) for mode, v in times.items()}


# ----------------------------------------------------------------------------------------------- real sizes
def _meta_counts(model, modules: list[str], rank: int) -> tuple[int, int]:
    linears = dict(model.named_modules())
    lora = sum(rank * (linears[n].in_features + linears[n].out_features) for n in modules)
    return parameters(model), lora


def real_sizes(rank: int = 64) -> list[str]:
    """Exact parameter counts (models built on the meta device from the real configs) and what they mean for
    training memory: bf16 base + fp32 LoRA with its EMA, gradient and two AdamW moments (20 bytes a parameter)."""
    from diffusers import FluxTransformer2DModel, WanTransformer3DModel

    from videoprior_edit.models.configs import config_data

    wan, flux = config_data("wan_transformer"), config_data("flux")["transformer"]
    counts = {}
    for size in ("1.3B", "14B"):
        with torch.device("meta"):
            m = WanTransformer3DModel(**{**wan["base"], **wan["sizes"][size], "image_dim": None})
        counts[f"Wan2.1-T2V-{size}"] = _meta_counts(m, WanFamily.lora_modules(m, "attn+ffn"), rank)
    base, lora = counts["Wan2.1-T2V-14B"]
    counts["Wan2.2-T2V-A14B (both experts)"] = (2 * base, 2 * lora)
    dev = {k: v for k, v in flux["variants"]["dev"].items() if k in ("in_channels", "guidance_embeds")}
    with torch.device("meta"):
        m = FluxTransformer2DModel(**{**flux["base"], **flux["sizes"]["12B"], **dev})
    counts["FLUX.1-dev"] = _meta_counts(m, FluxFamily.lora_modules(m, "attn+ffn"), rank)
    lines = [f"real sizes, rank-{rank} LoRA on attn+ffn (activations come on top of every figure):"]
    for name, (m, n) in counts.items():
        weights, state = 2 * m, 20 * n
        lines.append(f"  {name}: base {m / 1e9:.2f}B, LoRA {n / 1e6:.0f}M ({n / m:.2%}), LoRA file bf16 "
                     f"{2 * n / 1e9:.2f} GB; one GPU: base {weights / 1e9:.1f} GB + LoRA/EMA/grad/AdamW "
                     f"{state / 1e9:.1f} GB = {(weights + state) / 1e9:.1f} GB; FSDP over 8 GPUs: "
                     f"{(weights + state) / 8e9:.1f} GB each")
    return lines


# ----------------------------------------------------------------------------------------------- main
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="bench_large", help="test-only size in configs/wan_transformer.json")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="vpe_bench_byg_"))
    files = write_bench_t2v(root, args.size)
    if args.one:
        print(json.dumps(peak_memory(files, args.one, root / args.one)))
        return
    rows = {mode: _subprocess(mode, root, args) for mode in INFER + TRAIN}
    for mode, seconds in timings(files, root / "timings", args.repeat).items():
        rows[mode]["seconds"] = seconds
    _report(rows, args)


def _subprocess(mode: str, root: Path, args) -> dict:
    return in_fresh_process(__file__, "--one", mode, "--root", str(root), "--threads", str(args.threads),
                            "--size", args.size)


def _report(rows: dict, args) -> None:
    t = rows["train_edit_step"]
    print(f"Wan2.1-T2V ({args.size}): {t['model_parameters'] / 1e6:.1f}M parameters (LoRA "
          f"{t['lora_parameters'] / 1e6:.1f}M), fp32, {args.threads} threads, median of {args.repeat}; inference "
          f"{CLIP[0]}x{CLIP[1]}x{CLIP[2]}, training one {PICTURE}x{PICTURE} picture")
    print(f"{'row':<30} {'time':>10} {'vs ref':>8} {'peak +':>11} {'vs ref':>8}   ref")
    for mode in INFER + TRAIN:
        ref = "infer_plain" if mode.startswith("infer") else "train_edit_step"
        r, q = rows[mode], rows[ref]
        print(f"{mode:<30} {r['seconds'] * 1000:8.1f}ms {r['seconds'] / q['seconds']:7.2f}x "
              f"{r['peak_above_loaded'] / 2**20:8.1f}MiB {r['peak_above_loaded'] / max(1, q['peak_above_loaded']):7.2f}x"
              f"   {ref}")
    print("\n".join(real_sizes()))


if __name__ == "__main__":
    main()
