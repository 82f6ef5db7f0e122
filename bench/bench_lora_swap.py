"""Swapping a LoRA vs loading the base model (ByG: try strengths and LoRA files without reloading Wan).

Run: python bench/bench_lora_swap.py [--size bench_large] [--rank 64] [--repeat 5]
Base: `load_wan_models` of a Wan2.2-A14B set of `--size` (two experts + the tiny UMT5 and VAE) from ComfyUI single
files (warm: a first load is done and discarded; every weight is touched after
loading, so a lazily mapped file counts as read). LoRA operations on the high-noise expert, rank `--rank` on every
attention and FFN Linear of every block (the Lightning/ByG layout); each time is the median of `--repeat`:
- unmerged strength change: `set_lora_strength` (no file read);
- unmerged swap: `remove_lora` A + `apply_lora(B, merge=False)` (B read from its file);
- merged swap: `apply_lora(A, -s)` + `apply_lora(B, s)` on the weights (both files read; no base re-read);
- set-level merged change: `with_lora` + `sync_loras` as the nodes run it (re-reads the expert's file, then merges).
Prints each time and its ratio to the base load (target < 5%).
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

from common import load_bench_set, parameters, write_bench_set


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    import torch

    from videoprior_edit.lora import (
        apply_lora,
        remove_lora,
        set_lora_strength,
        sync_loras,
        with_lora,
    )
    from videoprior_edit.weights import save_file
    from videoprior_edit.zoo import tiny_lightning_lora

    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="bench_large")
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = write_bench_set(root, args.size)
        def load_base():  # load, then touch every weight: a lazily mapped file is only read when first used
            loaded = load_bench_set(files)
            for module in (loaded.transformer, loaded.transformer_2):
                sum(float(p.view(-1)[:: 1024].sum()) for p in module.parameters())
            return loaded

        load_base()  # warm-up (imports, page cache)
        base = timed(load_base, max(1, args.repeat // 2))
        models = load_bench_set(files)
        expert = models.transformer
        loras = []
        for seed in (1, 2):
            path = root / f"lora_{seed}.safetensors"
            save_file(tiny_lightning_lora(expert, seed, rank=args.rank, alpha=args.rank / 2), path)
            loras.append(str(path))
        a, b = loras
        size_mb = Path(a).stat().st_size / 2**20

        apply_lora(expert, a, 1.0, merge=False, name="a")
        strengths = iter([0.5, 1.0] * args.repeat)
        strength = timed(lambda: set_lora_strength(expert, "a", next(strengths)), args.repeat)
        names = ["a", "b"]

        def swap_unmerged():
            old, new = names
            remove_lora(expert, old)
            apply_lora(expert, b if new == "b" else a, 1.0, merge=False, name=new)
            names.reverse()

        unmerged = timed(swap_unmerged, args.repeat)
        remove_lora(expert, names[0])
        current = [a, b]

        def swap_merged():
            apply_lora(expert, current[0], -1.0, merge=True)
            apply_lora(expert, current[1], 1.0, merge=True)
            current.reverse()

        apply_lora(expert, a, 1.0, merge=True)
        merged = timed(swap_merged, args.repeat)

        fresh = load_bench_set(files)
        with_a = with_lora(fresh, a, 1.0, "high")
        sync_loras(with_a, "transformer")
        with_b = with_lora(fresh, b, 1.0, "high")  # now B is merged: every call below is a change
        sets = [with_a, with_b]

        def set_change():
            sync_loras(sets[0], "transformer")
            sets.reverse()

        set_level = timed(set_change, max(2, args.repeat // 2))

    print(f"base: Wan2.2-A14B set of size '{args.size}' ({parameters(models.transformer) / 1e6:.0f} M parameters per "
          f"expert, fp32, 2 experts + UMT5 + VAE); LoRA rank {args.rank} on {len(expert.blocks)} blocks x 10 Linears "
          f"({size_mb:.1f} MB per file)")
    print(f"{'operation':48s} {'seconds':>9s} {'vs base load':>13s}")
    print(f"{'load base model set':48s} {base:9.4f} {'100%':>13s}")
    for name, t in (("unmerged: change strength", strength), ("unmerged: swap to another LoRA file", unmerged),
                    ("merged: swap to another LoRA file (-A, +B)", merged),
                    ("set-level merged change (re-reads the expert)", set_level)):
        ok = "" if "re-reads" in name else ("  OK (< 5%)" if t / base < 0.05 else "  ABOVE 5%")
        print(f"{name:48s} {t:9.4f} {100 * t / base:12.2f}%{ok}")


if __name__ == "__main__":
    main()
