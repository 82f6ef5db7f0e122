"""Command line: `videoprior-edit demo | edit | edit-tail | edit-byg-image | edit-byg-video | edit-imvideoedit |
batch EDITOR | zoo | models check | models download | train-video4edit | train-byg | train-imvideoedit |
build-imvideoedit-pairs`."""

from __future__ import annotations

import argparse
import sys

from .errors import InputError, VPEError
from .placement import PLACEMENTS

TRAINERS = ("videoprior_edit.video4edit.train", "videoprior_edit.byg.train", "videoprior_edit.imvideoedit.train",
            "videoprior_edit.imvideoedit.pairs")


def _demo(args) -> int:
    from .demo import run_demo

    report = run_demo(args.out, args.models, args.image, args.instruction, args.seed, args.placement, args.vlm,
                      args.vlm_model, args.api_key_env, refine=args.refine)
    print("\n".join(report["model_set"]))
    print(f"placement: {report['placement']}\nsettings: {report['settings']}")
    print(f"prompt ({report['rewriter']}): {report['prompt']}")
    for line in [f"warning: {w}" for w in report["rewriter_warnings"]] + [f"note: {n}" for n in report["notes"]]:
        print(line)
    s = report["seconds"]
    print(f"edited {report['source_size'][0]}x{report['source_size'][1]} in {s['total']} s (load {s['load_models']}, "
          f"rewrite {s['rewrite']}, edit {s['edit']}, refine {s['refine']}; {report['frames']} frames decoded, "
          f"sharpest: frame {report['sharpest']['frame']})")
    print("outputs: " + "\n         ".join(report["outputs"].values()))
    return 0


def _edit(args) -> int:
    import numpy as np
    from PIL import Image

    from .batch import EDITORS
    from .batch.command import model_files, with_speed
    from .demo import load_edit_models, save_edit
    from .if_edit import edit_image
    from .placement import Placement
    from .sampling.condition import image_from_uint8

    files = model_files(args, EDITORS["if-edit"])
    models = with_speed(load_edit_models(files, args.precision, args.weight_storage, Placement(mode=args.placement)),
                        args)
    source = np.asarray(Image.open(args.image).convert("RGB"))
    result = edit_image(models, image_from_uint8(source), args.prompt, args.negative_prompt, args.frames,
                        args.steps, args.scheduler, args.shift, args.cfg, args.cfg_low, args.seed, args.k,
                        args.threshold, args.keep_last, args.rope, args.solver, args.size_mode, args.max_side)
    paths = save_edit(result, source, args.out, frames=not args.no_frames)
    print("\n".join(f"note: {n}" for n in result.notes))
    print("outputs: " + "\n         ".join(paths.values()))
    return 0


def _zoo(args) -> int:
    from .zoo import write_zoo

    zoo = write_zoo(args.out, seed=args.seed)
    print(f"tiny zoo written to {zoo.root} (ComfyUI models tree: {zoo.models})")
    return 0


def _check(args) -> int:
    from .manifest import check, format_report, load_manifest

    entries = load_manifest(args.manifest, trained=bool(args.workflow or args.ids))
    results = check(args.models, entries, verify_sha=args.sha256, ids=_ids(entries, args))
    print(format_report(results))
    return 0 if all(r.good for r in results) else 1


def _download(args) -> int:
    from .manifest import download, load_manifest, select

    entries = load_manifest(args.manifest, trained=True)
    ids = _ids(entries, args)
    if not ids:
        raise InputError("Nothing to download.", "Name model ids or groups (e.g. if-edit), or --workflow FILE.")
    for entry in select(entries, ids):
        if "made_by" in entry:
            print(f"train    {entry['folder']}/{entry['file']}  <- {entry['made_by']}")
            continue
        result = download(entry, args.models, verify_sha=not args.no_sha256)
        print(f"{result.status:8s} {result.path}")
    return 0


def _ids(entries: list[dict], args) -> list[str]:
    """The ids and groups named on the command line plus the models the --workflow files pick."""
    from .manifest import workflow_ids

    return list(args.ids) + (workflow_ids(entries, args.workflow) if args.workflow else [])


def _edit_parser(sub) -> None:
    from .batch import EDITORS
    from .batch.command import model_arguments, speed_arguments
    from .images import SIZE_MODES
    from .sampling import SCHEDULERS
    from .sampling.tld import ROPE_MODES, SOLVER_MODES

    e = sub.add_parser("edit", help="IF-Edit image edit: image + prompt -> edited.png and the clip's frames")
    e.add_argument("image", help="source image")
    e.add_argument("--prompt", required=True, help="how the picture evolves toward the edit")
    e.add_argument("--negative-prompt", default="")
    e.add_argument("--out", default="edit_output", help="output folder (default: edit_output)")
    model_arguments(e, EDITORS["if-edit"], zoo_default="tiny_zoo")
    e.add_argument("--precision", default="bf16", choices=("bf16", "fp16", "fp32"))
    e.add_argument("--weight-storage", default="default", choices=("default", "fp8_e4m3fn"))
    e.add_argument("--placement", default="one_expert", choices=PLACEMENTS)
    e.add_argument("--frames", type=int, default=33)
    e.add_argument("--steps", type=int, default=8)
    e.add_argument("--scheduler", default="lightning", choices=SCHEDULERS)
    e.add_argument("--shift", type=float, default=5.0)
    e.add_argument("--cfg", type=float, default=1.0, help="guidance, high-noise expert / single model")
    e.add_argument("--cfg-low", type=float, default=1.0, help="guidance, low-noise expert")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--k", type=int, default=3, help="TLD stride (1 = off)")
    e.add_argument("--threshold", type=float, default=0.9, help="TLD threshold (fraction of 1000 timesteps)")
    e.add_argument("--keep-last", action="store_true", help="TLD: also keep the last latent frame")
    e.add_argument("--rope", default="original", choices=ROPE_MODES)
    e.add_argument("--solver", default="slice", choices=SOLVER_MODES)
    e.add_argument("--size-mode", default="resize", choices=SIZE_MODES)
    e.add_argument("--max-side", type=int, default=832)
    e.add_argument("--no-frames", action="store_true", help="write only edited.png, not every frame")
    speed_arguments(e)
    e.set_defaults(run=_edit)


def _editor_parsers(sub) -> None:
    """`edit-tail`, `edit-byg-image`, `edit-byg-video`, `edit-imvideoedit` and `batch EDITOR` (`batch.command`)."""
    from .batch.command import add_parsers

    add_parsers(sub)


def _trainer_parsers(sub) -> None:
    """The trainers' subcommands (each module registers its own arguments)."""
    import importlib

    for module in TRAINERS:
        importlib.import_module(module).add_parser(sub)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="videoprior-edit", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="IF-Edit image-edit demo (rewrite, edit, sharpest frame, refine) on the "
                       "tiny zoo, or on real weights with --models")
    d.add_argument("--models", help="a ComfyUI models folder with the real Wan2.2-I2V files (default: tiny zoo)")
    d.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    d.add_argument("--image", help="source image (default: a generated test picture)")
    d.add_argument("--instruction", default="take the paper card out of her hand")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--placement", choices=PLACEMENTS, help="memory placement (default: one_expert)")
    d.add_argument("--vlm", help="prompt rewriter: a local Qwen-VL folder, or the URL of an OpenAI-compatible server "
                   "(e.g. http://127.0.0.1:11434/v1); default: the template rewriter (no VLM)")
    d.add_argument("--vlm-model", default="", help="model name on the --vlm server (e.g. qwen3-vl:8b)")
    d.add_argument("--api-key-env", default="", help="name of the environment variable holding the server's API key")
    d.add_argument("--refine", action=argparse.BooleanOptionalAction, default=True,
                   help="still-video refinement of the sharpest frame (default: on)")
    d.set_defaults(run=_demo)
    _edit_parser(sub)
    _editor_parsers(sub)
    _trainer_parsers(sub)
    z = sub.add_parser("zoo", help="write the tiny random-weight model zoo")
    z.add_argument("--out", required=True)
    z.add_argument("--seed", type=int, default=0)
    z.set_defaults(run=_zoo)
    m = sub.add_parser("models", help="check or download the real weights listed in models_manifest.json")
    msub = m.add_subparsers(dest="action", required=True)
    c = msub.add_parser("check", help="present / missing / wrong size / checksum, and where to get each file")
    c.add_argument("ids", nargs="*", help="model ids or groups (default: all)")
    c.add_argument("--models", required=True, help="ComfyUI models folder")
    c.add_argument("--sha256", action="store_true", help="also verify checksums (reads every byte)")
    c.add_argument("--manifest", help="another manifest file")
    c.add_argument("--workflow", action="append", metavar="FILE", help="the models a ComfyUI workflow (.json, UI or "
                   "API format) uses; repeatable")
    c.set_defaults(run=_check)
    g = msub.add_parser("download", help="download with huggingface_hub: resumable, verified, never overwrites")
    g.add_argument("ids", nargs="*", help="model ids or groups (e.g. if-edit)")
    g.add_argument("--models", required=True, help="ComfyUI models folder")
    g.add_argument("--no-sha256", action="store_true", help="skip checksum verification after download")
    g.add_argument("--manifest", help="another manifest file")
    g.add_argument("--workflow", action="append", metavar="FILE", help="the models a ComfyUI workflow uses; repeatable")
    g.set_defaults(run=_download)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except VPEError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        _end_distributed()


def _end_distributed() -> None:
    """Under torchrun / accelerate launch (batch, trainers): leave the process group before exiting; a gloo group left
    to the interpreter's exit can abort the process after the work is done."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
