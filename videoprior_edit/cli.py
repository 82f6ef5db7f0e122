"""Command line: `videoprior-edit demo | zoo | models check | models download`."""

from __future__ import annotations

import argparse
import sys

from .errors import VPEError


def _demo(args) -> int:
    from .demo import run_demo

    report = run_demo(args.out, args.models, args.image, args.instruction, args.seed)
    print("\n".join(report["model_set"]))
    print(f"instruction: {report['instruction']!r} -> {report['instruction_tokens']} tokens, "
          f"embeddings {report['prompt_embeddings_shape']}")
    print(f"source {report['source_size'][0]}x{report['source_size'][1]} -> latent {report['source_latent_shape']}")
    print(f"note: {report['status']}")
    print(f"outputs: {report['outputs']['source']}\n         {report['outputs']['report']}")
    return 0


def _zoo(args) -> int:
    from .zoo import write_zoo

    zoo = write_zoo(args.out, seed=args.seed)
    print(f"tiny zoo written to {zoo.root} (ComfyUI models tree: {zoo.models})")
    return 0


def _check(args) -> int:
    from .manifest import check, format_report, load_manifest

    results = check(args.models, load_manifest(args.manifest), verify_sha=args.sha256, ids=args.ids)
    print(format_report(results))
    return 0 if all(r.good for r in results) else 1


def _download(args) -> int:
    from .manifest import download, load_manifest, select

    for entry in select(load_manifest(args.manifest), args.ids):
        result = download(entry, args.models, verify_sha=not args.no_sha256)
        print(f"{result.status:8s} {result.path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="videoprior-edit", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="image-edit demo on the tiny zoo, or on real weights with --models")
    d.add_argument("--models", help="a ComfyUI models folder with the real Wan2.2-I2V files (default: tiny zoo)")
    d.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    d.add_argument("--image", help="source image (default: a generated test picture)")
    d.add_argument("--instruction", default="take the paper card out of her hand")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(run=_demo)
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
    c.set_defaults(run=_check)
    g = msub.add_parser("download", help="download with huggingface_hub: resumable, verified, never overwrites")
    g.add_argument("ids", nargs="+", help="model ids or groups (e.g. if-edit)")
    g.add_argument("--models", required=True, help="ComfyUI models folder")
    g.add_argument("--no-sha256", action="store_true", help="skip checksum verification after download")
    g.add_argument("--manifest", help="another manifest file")
    g.set_defaults(run=_download)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except VPEError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
