"""Running a batch: the items are split across processes by rank (`items[rank::world]`, so each is written by
exactly one), the models load once per process, items whose output exists are skipped, each output is written
atomically, and one record per attempt is appended to `summary.jsonl` right after it (a crash loses at most the item
in flight). Every process rewrites `summary.json` (all items, their latest record) when it stops."""

from __future__ import annotations

import gc
import json
import os
import sys
import traceback
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..errors import InputError, VPEError
from .editors import Clock, Edited, Editor
from .items import Item
from .media import atomic_target, read_image, read_video, write_image, write_video
from .options import resolve

SUMMARY_LOG = "summary.jsonl"
SUMMARY = "summary.json"
STATUSES = ("done", "failed", "interrupted", "pending")


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes, from `torchrun` / `accelerate launch`'s environment (RANK
    and WORLD_SIZE, else LOCAL_RANK and LOCAL_WORLD_SIZE); (0, 1) when run alone."""
    env = os.environ
    for rank, world in (("RANK", "WORLD_SIZE"), ("LOCAL_RANK", "LOCAL_WORLD_SIZE")):
        if rank in env and world in env:
            r, w = int(env[rank]), int(env[world])
            if not 0 <= r < w:
                raise InputError(f"{rank}={r} is not below {world}={w}.", "Start the processes with torchrun or "
                                 "accelerate launch.")
            return r, w
    return 0, 1


def rank_device() -> str | None:
    """The GPU of this process (`cuda:LOCAL_RANK`) when several processes share a machine's GPUs, else None."""
    import torch

    if rank_and_world()[1] > 1 and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"
    return None


def output_path(out: Path, editor: Editor, item: Item) -> Path:
    return Path(out) / f"{item.name}{editor.suffix}"


@dataclass
class BatchResult:
    """What this process did: items written, failed and skipped (already written), the failures' messages."""

    rank: int
    world: int
    written: int = 0
    failed: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    summary: Path | None = None


def run_batch(editor: Editor, items: list[Item], out: str | Path, load: Callable[[], object],
              options: Mapping | None = None, progress: bool = True) -> BatchResult:
    """Edit this process's share of `items` into `out` with `load()`'s models (called once, only when something is
    left to do). `options`: the command line's option values (each item's own override them). A failing item is
    recorded and the batch goes on; KeyboardInterrupt / SystemExit are recorded and raised."""
    out, options = Path(out), dict(options or {})
    out.mkdir(parents=True, exist_ok=True)
    rank, world = rank_and_world()
    mine = items[rank::world]
    pending = [i for i in mine if not output_path(out, editor, i).exists()]
    result = BatchResult(rank, world, skipped=len(mine) - len(pending))
    try:
        if pending:
            _run_pending(editor, pending, out, load, options, result, progress)
    finally:
        result.summary = write_summary(out, editor, items, options)
    return result


def _run_pending(editor, pending, out, load, options, result: BatchResult, progress: bool) -> None:
    clock = Clock()
    loaded = load()
    clock.lap("load")
    context = {"rank": result.rank, "load_seconds": clock.seconds["load"]}  # the load time goes with the first item
    with _bar(editor, result.skipped + len(pending), result, progress) as bar:
        for item in pending:
            record = process_item(editor, loaded, item, out, options, context)
            context = {"rank": result.rank}
            if record["status"] == "done":
                result.written += 1
            else:
                result.failed += 1
                result.failures.append((item.name, record["error"]))
                bar.write(f"failed: {item.name}: {record['error'].splitlines()[0]}", file=sys.stderr)
                bar.set_postfix(failed=result.failed)
            bar.update()


def _bar(editor: Editor, total: int, result: BatchResult, progress: bool):
    from tqdm.auto import tqdm

    desc = editor.name + (f" (rank {result.rank}/{result.world})" if result.world > 1 else "")
    return tqdm(total=total, initial=result.skipped, unit="item", desc=desc, disable=not progress,
                position=result.rank if result.world > 1 else None, dynamic_ncols=True)


def edit_item(editor: Editor, loaded, item: Item, options: Mapping, clock: Clock) -> tuple[Edited, dict, float]:
    """Read and edit one item (raises on any problem): the result, the item's settings and the output frame rate."""
    if item.problem:
        raise InputError(item.problem[:1].upper() + item.problem[1:] + ".", "Fix that line of the manifest.")
    settings = resolve(editor.options, options, item.options, editor.name)
    if editor.media == "image":
        source, fps = read_image(item.source), 0.0
    else:
        source, fps = read_video(item.source, settings["max_frames"], settings["fps"])
    clock.lap("read")
    return editor.run(loaded, item, source, settings, clock), settings, fps


def save_output(editor: Editor, edited: Edited, path: Path, fps: float) -> Path:
    """Write the result atomically (PNG for image editors, MP4 for video editors)."""
    return write_image(path, edited.output) if editor.media == "image" else write_video(path, edited.output, fps)


def process_item(editor: Editor, loaded, item: Item, out: Path, options: Mapping, context: Mapping = ()) -> dict:
    """Edit one item, write its output and append its record to summary.jsonl (also when it fails or is
    interrupted); returns the record."""
    clock = Clock()
    record = {"item": item.name, "index": item.index, "line": item.line, "source": str(item.source or ""),
              item.text_kind: item.text, "seed": item.options.get("seed", options.get("seed", 0)), **dict(context)}
    try:
        edited, settings, fps = edit_item(editor, loaded, item, options, clock)
        path = save_output(editor, edited, output_path(out, editor, item), fps)
        clock.lap("write")
        record.update(status="done", output=str(path), prompt=edited.prompt, seed=settings["seed"],
                      options=item.options, notes=edited.notes, **edited.extra)
    except (KeyboardInterrupt, SystemExit) as e:
        record.update(status="interrupted", error=f"stopped by {type(e).__name__}; run the same command again to "
                      "finish the batch")
        raise
    except Exception as e:  # one bad item never stops the batch
        record.update(status="failed", error=str(e) if isinstance(e, VPEError) else f"{type(e).__name__}: {e}")
        if not isinstance(e, VPEError):
            record["traceback"] = traceback.format_exc(limit=-4)
        _free_memory()
    finally:
        record.update(seconds={**clock.seconds, "total": clock.total()},
                      finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        append_record(out / SUMMARY_LOG, record)
    return record


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def append_record(path: Path, record: dict) -> None:
    """Append one JSON line with a single write (O_APPEND: processes appending at once do not interleave); a line
    a killed process left unfinished is ended first, so it cannot swallow this one."""
    line = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.lseek(fd, size - 1, os.SEEK_SET) >= 0 and os.read(fd, 1) != b"\n":
            line = b"\n" + line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_records(path: Path) -> list[dict]:
    """The records of summary.jsonl (a line cut short by a killed process is skipped)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def write_summary(out: Path, editor: Editor, items: list[Item], options: Mapping) -> Path:
    """summary.json: counts per status, the failures, and per item its status, output and latest record."""
    with _locked(out / ".summary.lock"):
        records = read_records(out / SUMMARY_LOG)
        latest = {r.get("item"): r for r in records}
        attempts = Counter(r.get("item") for r in records)
        rows = [_row(item, latest.get(item.name), output_path(out, editor, item), attempts[item.name])
                for item in items]
        counts = Counter(row["status"] for row in rows)
        summary = {"editor": editor.name, "items": len(items), **{s: counts.get(s, 0) for s in STATUSES},
                   "failures": [{"item": r["item"], "error": r.get("error", "")} for r in rows
                                if r["status"] == "failed"],
                   "options": dict(options), "results": rows}
        path = out / SUMMARY
        with atomic_target(path, shared=True) as temporary:
            temporary.write_text(json.dumps(summary, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    return path


def _row(item: Item, record: dict | None, path: Path, attempts: int) -> dict:
    row = {**(record or {}), "item": item.name, "attempts": attempts}
    row.pop("traceback", None)
    if path.exists():
        row.update(status="done", output=str(path))
        row.pop("error", None)
    else:
        row["status"] = record["status"] if record and record.get("status") in STATUSES[1:3] else "pending"
    return row


@contextmanager
def _locked(path: Path):
    """An exclusive lock on `path` (POSIX; elsewhere no lock: the summary is then rewritten last-writer-wins)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
