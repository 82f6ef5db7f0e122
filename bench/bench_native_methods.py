"""ByG and ImVideoEdit on the native ComfyUI path: what the patched MODEL costs per model call, in one run.

Run: python bench/bench_native_methods.py [--size bench_large] [--repeat 5] [--threads 2]
It runs inside ComfyUI (like bench_native_tld.py). Model: a Wan2.1-T2V of a test-only size (default "bench_large":
8 heads x 128, 6 blocks, FFN 4096) loaded with ComfyUI's own loader; a clip of 128x128 x 33 frames (9 latents).
Rows, each the median of --repeat calls of the Wan model as a sampler calls it (cond and uncond, CFG > 1):
- plain call on the clip (F frames), and on a clip of 2F frames (what ByG's concatenated sequence costs);
- ByG Source Tokens (same positions / zero source timestep);
- ImVideoEdit adapter on every block (untrained: its added paths start at zero, the compute is the same) vs frozen.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import comfy_pack, in_comfyui, start_comfyui


def model_call(model, x, t, context):
    """One call of the MODEL's Wan model with its patches, wrappers and object patches, as ComfyUI samples it."""
    import comfy.model_management
    import torch

    comfy.model_management.load_models_gpu([model])
    options = {**model.model_options["transformer_options"], "wrappers": model.wrappers}
    with torch.no_grad():
        return model.model.diffusion_model(x, t, context, transformer_options=options)


def timed(fn, repeat: int) -> float:
    from common import median

    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return median(times)


def main(argv=None) -> None:
    in_comfyui(__file__)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="bench_large", help="test-only size in configs/wan_transformer.json")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    start_comfyui(args.threads)
    import comfy.sd
    import torch
    from common import write_bench_t2v

    pack = comfy_pack()
    root = Path(tempfile.mkdtemp(prefix="vpe_bench_native_methods_"))
    files = write_bench_t2v(root, args.size)
    model = comfy.sd.load_diffusion_model(str(files["model"]))
    g = torch.Generator().manual_seed(0)
    x, x2 = torch.randn(2, 16, 9, 16, 16, generator=g), torch.randn(2, 16, 18, 16, 16, generator=g)
    t, context = torch.tensor([600.0, 600.0]), torch.randn(2, 512, 4096, generator=g)
    source = {"samples": torch.randn(1, 16, 9, 16, 16, generator=g)}
    byg, _ = pack.nodes.native.byg.patch_source_tokens(model, source, "same", "same")
    byg_zero, _ = pack.nodes.native.byg.patch_source_tokens(model, source, "same", "zero")
    adapter = root / "imvideoedit_adapter.safetensors"
    make_adapter(pack, files["model"], adapter)
    ive, _, _ = pack.nodes.native.imvideoedit.patch_adapter(model, adapter, source)
    rows = [("plain call, F frames", lambda: model_call(model, x, t, context)),
            ("plain call, 2F frames", lambda: model_call(model, x2, t, context)),
            ("ByG source tokens (same t)", lambda: model_call(byg, x, t, context)),
            ("ByG source tokens (zero t)", lambda: model_call(byg_zero, x, t, context)),
            ("ImVideoEdit adapter, all blocks", lambda: model_call(ive, x, t, context))]
    count = sum(q.numel() for q in model.model.diffusion_model.parameters())
    print(f"native ComfyUI Wan2.1-T2V ({args.size}, {count / 1e6:.1f}M parameters), 128x128 x 33 frames, batch 2, "
          f"{torch.get_num_threads()} threads, median of {args.repeat}")
    base = None
    for label, fn in rows:
        seconds = timed(fn, args.repeat)
        base = base or seconds
        print(f"{label:34} {seconds:7.3f}s  {seconds / base:5.2f}x the plain call", flush=True)


def make_adapter(pack, model_file: Path, path: Path) -> None:
    """An untrained ImVideoEdit adapter on every block of the bench model, written by the library."""
    lib = sys.modules["comfyui-videoprior-edit.videoprior_edit.imvideoedit"]
    wan = sys.modules["comfyui-videoprior-edit.videoprior_edit.models.wan"]
    lib.save_adapter(lib.create_adapter(wan.load_wan_transformer(model_file, "fp32")), path, "fp32")


if __name__ == "__main__":
    main()
