"""Batch items: a JSONL or CSV manifest, or a folder of sources with one prompt.

A manifest row (JSONL object or CSV row with a header) holds:
- the source: `image`, `video`, `source` or `media` (a path, relative to the manifest's folder);
- the text: `instruction` (IF-Edit rewrites it into an evolution prompt) or `prompt` (used as it is);
- optionally `name` (or `output`): the output's file name without extension (default: the source's name);
- any of the editor's options (`seed`, `steps`, `negative_prompt`, ...), which override the command line's.
A row that cannot run (not JSON, no source, no text) becomes an item with a `problem`, reported as its failure.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError

SOURCE_KEYS = ("image", "video", "source", "media")
NAME_KEYS = ("name", "output")
MEDIA_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".mp4", ".mov", ".mkv", ".webm", ".avi")
_BAD_NAME = re.compile(r"[\\/:*?\"<>|\x00-\x1f]")


@dataclass
class Item:
    """One edit: `index` in the manifest, output `name`, `source` path, `text` and whether it is an `instruction`
    or a `prompt` (`text_kind`), per-item `options`, `line` in the manifest, and a `problem` when it cannot run."""

    index: int
    name: str
    source: Path | None
    text: str
    text_kind: str = "prompt"
    options: dict = field(default_factory=dict)
    line: int = 0
    problem: str = ""


def read_manifest(path: str | Path) -> list[Item]:
    """The items of a .jsonl or .csv manifest (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"No manifest file '{path}'.", "Give a .jsonl or .csv file, or --folder DIR with --prompt.")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise InputError(f"'{path.name}' is not a .jsonl or .csv manifest.", "Name it items.jsonl or items.csv.")
    rows = _jsonl_rows(path) if suffix == ".jsonl" else _csv_rows(path)
    items = [_item(i, line, row, path.resolve().parent) for i, (line, row) in enumerate(rows)]
    if not items:
        raise InputError(f"'{path.name}' lists no items.", "One item per line (JSONL) or per row under a header (CSV).")
    return unique_names(items)


def read_folder(folder: str | Path, text: str, text_kind: str = "prompt",
                suffixes: tuple[str, ...] = MEDIA_SUFFIXES, frame_folders: bool = False) -> list[Item]:
    """One item per source in `folder` (files with `suffixes`, and with `frame_folders` its sub-folders, sorted by
    name), all with the same text."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"No folder '{folder}'.", "Give a folder of images or videos with --folder.")
    if not text or not text.strip():
        raise InputError("--folder needs the text to apply to every source.", "Add --prompt \"...\" or "
                         "--instruction \"...\".")
    files = sorted(p for p in folder.iterdir() if (p.is_file() and p.suffix.lower() in suffixes)
                   or (frame_folders and p.is_dir() and not p.name.startswith(".")))
    if not files:
        raise InputError(f"'{folder}' holds no {'/'.join(s[1:] for s in suffixes)} files.",
                         "Put the sources in it, or point --folder elsewhere.")
    return unique_names([Item(i, p.stem, p, text, text_kind) for i, p in enumerate(files)])


def _jsonl_rows(path: Path):
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            row = f"line {n} is not JSON ({e})"
        yield n, row if isinstance(row, (dict, str)) else f"line {n} is not a JSON object"


def _csv_rows(path: Path):
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        for row in reader:
            extra = row.pop(None, None)
            yield reader.line_num, (f"line {reader.line_num} has more cells than the header" if extra else
                                    {k.strip(): v for k, v in row.items() if k and v not in (None, "")})


def _item(index: int, line: int, row: dict | str, base: Path) -> Item:
    if isinstance(row, str):
        return Item(index, f"line{line:04d}", None, "", line=line, problem=row)
    row = dict(row)
    source, instruction, prompt, name = (_take(row, keys) for keys in (SOURCE_KEYS, ("instruction",), ("prompt",),
                                                                        NAME_KEYS))
    path = None if source is None else (Path(source) if Path(source).is_absolute() else base / source)
    problem = ""
    if path is None:
        problem = f"line {line} names no source ({', '.join(SOURCE_KEYS)})"
    elif instruction is not None and prompt is not None:
        problem = f"line {line} gives both an instruction and a prompt; give one"
    elif instruction is None and prompt is None:
        problem = f"line {line} has no instruction or prompt"
    name = _name(name, path, line)
    if not isinstance(name, str):
        name, problem = f"line{line:04d}", problem or name[0]
    text = instruction if instruction is not None else prompt
    return Item(index, name, path, "" if text is None else str(text),
                "instruction" if instruction is not None else "prompt", row, line, problem)


def _take(row: dict, keys: tuple[str, ...]):
    found = [row.pop(k) for k in keys if k in row]
    return next((v for v in found if v not in (None, "")), None)


def _name(name, path: Path | None, line: int):
    """The output name, or a 1-tuple with the problem of a bad one."""
    if name is None:
        return path.stem if path is not None else f"line{line:04d}"
    name = str(name).strip()
    stem = Path(name).stem if Path(name).suffix.lower() in MEDIA_SUFFIXES else name
    if not stem or _BAD_NAME.search(stem) or stem.startswith("."):
        return (f"line {line}: '{name}' cannot be an output name (a plain file name: no folders, not starting "
                "with '.')",)
    return stem


def unique_names(items: list[Item]) -> list[Item]:
    """Later items whose name repeats an earlier one get `-<line or index>` appended."""
    seen: set[str] = set()
    for item in items:
        name, n = item.name, item.line or item.index
        while name in seen:
            name, n = f"{item.name}-{n}", n + 1
        item.name = name
        seen.add(name)
    return items
