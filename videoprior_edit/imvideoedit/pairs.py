"""ImVideoEdit training pairs: the pair-folder format, reading it, and building it from two image folders.

A pair folder:

    pairs/
      metadata.jsonl      one line per pair: {"source": "source/0001.png", "target": "target/0001.png",
                          "prompt": "the video after the edit: a red car on the coast road ..."}
      source/0001.png     the image before the edit
      target/0001.png     the image after the edit (same framing)

Paths are relative to the folder. `build_pairs` (command `videoprior-edit build-imvideoedit-pairs`) writes one from
a folder of sources, a folder of targets (matched by file name without extension) and a prompts file: `.json`
({"0001": "prompt", ...}), `.jsonl` ({"name": "0001", "prompt": "..."} per line) or `.tsv` / `.txt`
("0001<TAB>prompt" per line).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, VPEError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
METADATA = "metadata.jsonl"


@dataclass(frozen=True)
class Pair:
    source: Path
    target: Path
    prompt: str


def read_pairs(folder: str | Path) -> list[Pair]:
    """The pairs of a pair folder, in file order; missing files or fields are reported with their line."""
    folder = Path(folder)
    meta = folder / METADATA
    if not meta.is_file():
        raise InputError(f"No {METADATA} in {folder}.", "Build the folder with `videoprior-edit "
                         "build-imvideoedit-pairs --sources ... --targets ... --prompts ... --out ...`.")
    pairs = []
    for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            pair = Pair(folder / row["source"], folder / row["target"], str(row["prompt"]))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise InputError(f"{meta.name} line {n} is not a pair ({e}).",
                             'Each line: {"source": ..., "target": ..., "prompt": ...}.') from None
        for path in (pair.source, pair.target):
            if not path.is_file():
                raise InputError(f"{meta.name} line {n}: {path} does not exist.", "Fix the path or the line.")
        pairs.append(pair)
    if not pairs:
        raise InputError(f"{meta} lists no pairs.", "Add at least one pair.")
    return pairs


def _images(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise InputError(f"Image folder not found: {folder}", "Check the path.")
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def read_prompts(path: str | Path) -> dict[str, str]:
    """Name -> prompt from a .json, .jsonl or .tsv/.txt prompts file (names may carry an image extension)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        items = json.loads(text).items()
    elif path.suffix == ".jsonl":
        items = [(r["name"], r["prompt"]) for r in map(json.loads, filter(str.strip, text.splitlines()))]
    else:
        rows = [line.split("\t", 1) for line in text.splitlines() if line.strip()]
        bad = [i + 1 for i, r in enumerate(rows) if len(r) != 2]
        if bad:
            raise InputError(f"{path.name}: line {bad[0]} has no tab between name and prompt.",
                             "Write 'name<TAB>prompt' on each line.")
        items = rows
    return {_name(name): str(prompt).strip() for name, prompt in items}


def _name(name) -> str:
    """A prompts-file name without its image extension ("0001.png" -> "0001")."""
    name = str(name).strip()
    return Path(name).stem if Path(name).suffix.lower() in IMAGE_SUFFIXES else name


def build_pairs(sources: str | Path, targets: str | Path, prompts: str | Path, out: str | Path,
                link: bool = False, skip_missing: bool = False) -> list[Pair]:
    """Write a pair folder from matching file names; refuses unmatched names unless `skip_missing`."""
    src, tgt, text = _images(Path(sources)), _images(Path(targets)), read_prompts(prompts)
    names = sorted(set(src) | set(tgt) | set(text))
    missing = {n: [k for k, d in (("source", src), ("target", tgt), ("prompt", text)) if n not in d] for n in names}
    missing = {n: m for n, m in missing.items() if m}
    if missing and not skip_missing:
        first = ", ".join(f"{n} (no {'/'.join(m)})" for n, m in list(missing.items())[:5])
        raise InputError(f"{len(missing)} name(s) lack a source, target or prompt: {first}.",
                         "Fix the folders / prompts file, or pass --skip-missing to leave them out.")
    out = Path(out)
    rows = []
    for name in (n for n in names if n not in missing):
        row = {}
        for kind, path in (("source", src[name]), ("target", tgt[name])):
            dest = out / kind / path.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            _place(path, dest, link)
            row[kind] = f"{kind}/{path.name}"
        rows.append({**row, "prompt": text[name]})
    if not rows:
        raise InputError("No complete pairs (source, target and prompt with the same name).", "Check the names.")
    (out / METADATA).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return read_pairs(out)


def _place(source: Path, dest: Path, link: bool) -> None:
    if dest.exists():
        dest.unlink()
    if link:
        os.symlink(source.resolve(), dest)
    else:
        shutil.copy2(source, dest)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sources", required=True, help="folder of source images (before the edit)")
    p.add_argument("--targets", required=True, help="folder of edited images, same file names (any extension)")
    p.add_argument("--prompts", required=True, help="prompts file: .json {name: prompt}, .jsonl "
                   '{"name", "prompt"} lines, or .tsv/.txt name<TAB>prompt lines; the prompt describes the edited '
                   "image")
    p.add_argument("--out", required=True, help="the pair folder to write")
    p.add_argument("--link", action="store_true", help="symlink the images instead of copying them")
    p.add_argument("--skip-missing", action="store_true", help="leave out names without a source/target/prompt")


def run(args) -> int:
    pairs = build_pairs(args.sources, args.targets, args.prompts, args.out, args.link, args.skip_missing)
    print(f"{len(pairs)} pairs written to {Path(args.out) / METADATA}")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `build-imvideoedit-pairs` on a `videoprior-edit` subparsers object."""
    p = subparsers.add_parser("build-imvideoedit-pairs", help="ImVideoEdit: a training pair folder from a source "
                              "folder, an edited folder and a prompts file")
    add_arguments(p)
    p.set_defaults(run=run)
    return p


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m videoprior_edit.imvideoedit.pairs", description=__doc__)
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except VPEError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
