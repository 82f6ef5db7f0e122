"""Swapping a LoRA vs loading the base model (ByG: try strengths and LoRA files without reloading Wan).

Run: python bench/bench_lora_swap.py [--size bench_large] [--rank N] [--repeat 7] [--threads T]

Base: `load_wan_models` of a Wan2.2-A14B set of `--size` (two experts + the tiny UMT5 and VAE) from ComfyUI single
files (warm: a first load is done and discarded; every weight is touched after loading, so a lazily mapped file
counts as read). LoRA operations on the high-noise expert, a LoRA on every attention and FFN Linear of every block
(the Lightning/ByG layout), fp32 like the model; each time is the median of `--repeat`:
- unmerged, change strength: `set_lora_strength` (no file read; checked to leave every LoRA tensor as it was);
- unmerged, swap: `remove_lora` A + `apply_lora(B, merge=False)` (B read from its file);
- node, unmerged: what the LoRA node and the sampler run, `sync_loras(with_lora(models, file, s, merge=False))` on a
  set whose expert holds the previous file: the same file at a new strength (reads nothing, tensors checked
  untouched), or the other file (read, checked against the expert, swapped in);
- merged, swap: `apply_lora(A, -s)` + `apply_lora(B, s)` on the weights (both files read; no base re-read);
- node, merged change: `with_lora` + `sync_loras` (reads the expert's file again, then merges).
Prints each time and its ratio to the base load. Target (issue 5): < 5% for the quick swaps artists use, the
unmerged ones (strength change, another file of the same shape), at the real-size-equivalent rank.

Which rank. A LoRA's share of the model is rank * sum(in + out) / parameters over the Linears it covers, so it
depends on the model's width: the bench sizes are narrow (bench_large: hidden 1024, FFN 4096, 6 blocks), where a
rank-64 LoRA is 9.3% of an expert, while on the real Wan2.2-A14B expert (hidden 5120, FFN 13824, 40 blocks) the
rank-64 Lightning LoRA is 2.15% of it (computed here from the real config on the meta device, and printed). So
rank 64 here would measure a LoRA four times heavier, relative to the model, than the real one. The bench measures:
- the real-size-equivalent rank (the default; `--rank N` measures N instead): LoRA/expert bytes here equal to
  the real ratio, LoRA and model in the same dtype (here both fp32);
- the file-bytes-equivalent rank: the shipped files are an fp32 LoRA (1.23 GB) for an fp16 expert (28.6 GB), 4.3%
  of its bytes (the unmerged path reads the LoRA's file bytes);
- the raw rank 64 (9.3%; about the shipped LoRA's share of an fp8_scaled expert file, 8.6%).
Caveats: the base load maps the cached files (about a page fault per 64 KiB) while a LoRA is copied out of its file
into new memory (a page fault per 4 KiB when the allocator hands out fresh pages, none when it reuses freed ones: the
swap times vary with that), so per byte a LoRA costs more than the base here; per-module costs (a Python
step per Linear) weigh more here than at real size (60 LoRA'd Linears for a 0.44 GB expert here, 400 for a 28.6 GB
one there). Merged swaps compute every up @ down product and pass over every changed weight: on CPU that is GEMM and
memory time, not file time (fast on a GPU), reported as is, without a target.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import load_bench_set, write_bench_set

REAL_RANK = 64  # the Wan2.2 Lightning (lightx2v) LoRAs
REAL_FILES = ("wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors",  # fp32, rank 64
              "wan2.2_i2v_high_noise_14B_fp16.safetensors")  # the expert it is for


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def lora_shape(model) -> tuple[int, int]:
    """(parameters of the model, LoRA parameters per unit of rank) for a Lightning-layout LoRA on a Wan model."""
    from videoprior_edit.models.wan_keys import wan_key_to_diffusers
    from videoprior_edit.zoo import LIGHTNING_MODULES

    params = dict(model.named_parameters())
    per_rank = 0
    for i in range(len(model.blocks)):
        for module in LIGHTNING_MODULES:
            out_features, in_features = params[wan_key_to_diffusers(f"blocks.{i}.{module}.weight")].shape
            per_rank += out_features + in_features
    return sum(p.numel() for p in params.values()), per_rank


def real_expert():
    """The Wan2.2-I2V-A14B expert's architecture, on the meta device (no memory, no file)."""
    import torch
    from diffusers import WanTransformer3DModel

    from videoprior_edit.models.configs import config_data

    data = config_data("wan_transformer")
    variant = data["variants"]["wan2.2-i2v-a14b"]
    config = {**data["base"], **data["sizes"][variant["size"]],
              "in_channels": data["families"][variant["family"]]["in_channels"], "image_dim": None}
    with torch.device("meta"):
        return WanTransformer3DModel(**config)


def real_file_bytes() -> tuple[int, int]:
    """(LoRA, expert) file sizes of the shipped Lightning LoRA and its fp16 expert, from the models manifest."""
    from videoprior_edit.manifest import load_manifest

    sizes = {e["file"]: e["size_bytes"] for e in load_manifest()}
    return sizes[REAL_FILES[0]], sizes[REAL_FILES[1]]


def measure(expert, files, root: Path, rank: int, repeat: int) -> dict[str, float]:
    from videoprior_edit.lora import (
        LoraLayer,
        apply_lora,
        remove_lora,
        set_lora_strength,
        sync_loras,
        with_lora,
    )
    from videoprior_edit.weights import save_file
    from videoprior_edit.zoo import tiny_lightning_lora

    loras = []
    for seed in (1, 2):
        path = root / f"lora_r{rank}_{seed}.safetensors"
        save_file(tiny_lightning_lora(expert, seed, rank=rank, alpha=rank / 2), path)
        loras.append(str(path))
    a, b = loras
    out = {"MB": Path(a).stat().st_size / 2**20}

    def lora_tensors(module):  # (name, tensor, address, version) of every unmerged LoRA tensor
        return [(n, t, t.data_ptr(), t._version) for m in module.modules() if isinstance(m, LoraLayer)
                for n, t in m._buffers.items()]

    def untouched(before, after) -> bool:
        return len(before) > 0 and len(before) == len(after) and all(
            x[0] == y[0] and x[1] is y[1] and x[2:] == y[2:] for x, y in zip(before, after))

    apply_lora(expert, a, 1.0, merge=False, name="a")
    before = lora_tensors(expert)
    strengths = iter([0.5, 1.0] * repeat)
    out["strength"] = timed(lambda: set_lora_strength(expert, "a", next(strengths)), repeat)
    out["strength untouched"] = untouched(before, lora_tensors(expert))
    names = ["a", "b"]

    def swap_unmerged():
        old, new = names
        remove_lora(expert, old)
        apply_lora(expert, b if new == "b" else a, 1.0, merge=False, name=new)
        names.reverse()

    swap_unmerged()  # warm (B's file in the page cache, allocator)
    out["unmerged"] = timed(swap_unmerged, repeat)
    remove_lora(expert, names[0])

    fresh = load_bench_set(files)  # a model set as the LoRA node gets it (no LoRA listed yet)
    node = lambda path, strength: sync_loras(with_lora(fresh, path, strength, "high", merge=False), "transformer")
    node(a, 1.0)
    before = lora_tensors(fresh.transformer)
    strengths = iter([0.5, 1.0] * repeat)  # the same file at another strength
    out["node strength"] = timed(lambda: node(a, next(strengths)), repeat)
    out["node strength untouched"] = untouched(before, lora_tensors(fresh.transformer))
    files_ = iter([b, a] * (repeat + 1))  # the other file each time
    node(next(files_), 1.0)
    out["node unmerged"] = timed(lambda: node(next(files_), 1.0), repeat)

    current = [a, b]

    def swap_merged():
        apply_lora(expert, current[0], -1.0, merge=True)
        apply_lora(expert, current[1], 1.0, merge=True)
        current.reverse()

    apply_lora(expert, a, 1.0, merge=True)
    out["merged"] = timed(swap_merged, repeat)

    with_a = with_lora(fresh, a, 1.0, "high")
    sync_loras(with_a, "transformer")
    with_b = with_lora(fresh, b, 1.0, "high")  # now B is merged: every call below is a change
    sets = [with_a, with_b]

    def set_change():
        sync_loras(sets[0], "transformer")
        sets.reverse()

    out["node merged"] = timed(set_change, max(2, repeat // 2))
    return out


def main() -> None:
    import torch

    from videoprior_edit.zoo import LIGHTNING_MODULES

    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="bench_large")
    parser.add_argument("--rank", type=int, default=0, help="LoRA rank (default: the real-size-equivalent one)")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)

    real_params, real_per_rank = lora_shape(real_expert())
    real_ratio = REAL_RANK * real_per_rank / real_params  # same dtype
    lora_bytes, expert_bytes = real_file_bytes()
    file_ratio = lora_bytes / expert_bytes  # the shipped files: fp32 LoRA, fp16 expert
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = write_bench_set(root, args.size)

        def load_base():  # load, then touch every weight: a lazily mapped file is only read when first used
            loaded = load_bench_set(files)
            for module in (loaded.transformer, loaded.transformer_2):
                sum(float(p.view(-1)[:: 1024].sum()) for p in module.parameters())
            return loaded

        load_base()  # warm-up (imports, page cache)
        base = timed(load_base, args.repeat)
        models = load_bench_set(files)
        expert = models.transformer
        params, per_rank = lora_shape(expert)
        equivalent = max(1, round(real_ratio * params / per_rank))
        by_file = max(1, round(file_ratio * params / per_rank))
        labels = {args.rank or equivalent: "real-size equivalent" if not args.rank else "asked for"}
        labels.setdefault(by_file, "real-size equivalent in file bytes (fp32 LoRA, fp16 expert)")
        labels.setdefault(REAL_RANK, "raw")
        results = {r: measure(expert, files, root, r, args.repeat) for r in labels}

    share = lambda r: 100 * r * per_rank / params
    print(f"base: Wan2.2-A14B set of size '{args.size}' ({params / 1e6:.0f} M parameters per expert, fp32, 2 experts "
          f"+ UMT5 + VAE), {torch.get_num_threads()} threads, median of {args.repeat}; LoRA on {len(expert.blocks)} "
          f"blocks x {len(LIGHTNING_MODULES)} Linears")
    print(f"real Wan2.2-A14B expert: {real_params / 1e9:.2f} B parameters; its rank-{REAL_RANK} Lightning LoRA is "
          f"{100 * real_ratio:.2f}% of it ({100 * file_ratio:.2f}% in file bytes: {lora_bytes / 1e9:.2f} GB fp32 "
          f"LoRA / {expert_bytes / 1e9:.1f} GB fp16 expert)")
    print(f"here: rank {REAL_RANK} is {share(REAL_RANK):.2f}% of the expert; the equivalent rank is {equivalent} "
          f"({share(equivalent):.2f}%), in file bytes {by_file} ({share(by_file):.2f}%)")
    print(f"{'operation':60s} {'seconds':>9s} {'vs base load':>13s}")
    print(f"{'load base model set (warm, every weight touched)':60s} {base:9.4f} {'100%':>13s}")
    for r, res in results.items():
        print(f"rank {r} ({share(r):.2f}% of the expert, {res['MB']:.1f} MB file), {labels[r]}")
        changed = {k: "" if res[k + " untouched"] else " (TENSORS CHANGED)" for k in ("strength", "node strength")}
        rows = ((f"unmerged: change strength{changed['strength']}", res["strength"], True),
                ("unmerged: swap to another LoRA file", res["unmerged"], True),
                (f"node, unmerged: change strength{changed['node strength']}", res["node strength"], True),
                ("node, unmerged: swap to another LoRA file", res["node unmerged"], True),
                ("merged: swap to another LoRA file (-A, +B)", res["merged"], False),
                ("node, merged: change (reads the expert again)", res["node merged"], False))
        for name, t, quick in rows:
            ok = ("  OK (< 5%)" if t / base < 0.05 else "  ABOVE 5%") if quick else ""
            print(f"  {name:58s} {t:9.4f} {100 * t / base:12.2f}%{ok}")


if __name__ == "__main__":
    main()
