"""The models manifest: which real files the workflows use, where they come from, and checking/downloading them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelFileError

MANIFEST = Path(__file__).resolve().parent.parent / "models_manifest.json"


def load_manifest(path: str | Path | None = None, trained: bool = False) -> list[dict]:
    """The manifest's downloadable entries (the pack's own `models_manifest.json` unless a path is given); with
    `trained`, also the files no one publishes that the pack's trainers make (`made_by` instead of `source`)."""
    path = Path(path or MANIFEST)
    if not path.is_file():
        raise ModelFileError(f"Manifest not found: {path}", "Run from a clone of the pack or pass --manifest.")
    data = json.loads(path.read_text())
    return data["models"] + (data.get("trained", []) if trained else [])


def source_url(entry: dict) -> str:
    src = entry["source"]
    return f"https://huggingface.co/{src['repo']}/resolve/main/{src['path']}"


def sha256_of(path: Path, chunk: int = 16 * 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Check:
    entry: dict
    path: Path
    status: str  # ok | missing | wrong_size | bad_checksum | present (nothing published to verify against)
    detail: str = ""

    @property
    def good(self) -> bool:
        """The file is there and nothing published contradicts it."""
        return self.status in ("ok", "present")


def check_file(entry: dict, models_dir: Path, verify_sha: bool = False) -> Check:
    """Check the file of `entry` where it belongs in a models folder."""
    return verify(entry, Path(models_dir) / entry["folder"] / entry["file"], verify_sha)


def verify(entry: dict, path: Path, verify_sha: bool = False) -> Check:
    """Check the file at `path` against the size and sha256 that `entry` publishes."""
    if not path.is_file():
        where = f"train it: {entry['made_by']}" if "made_by" in entry else f"get it from {source_url(entry)}"
        return Check(entry, path, "missing", where)
    size, want = path.stat().st_size, entry.get("size_bytes")
    if want is not None and size != want:
        return Check(entry, path, "wrong_size", f"{size:,} bytes, expected {want:,} (partial download?)")
    if verify_sha and entry.get("sha256"):
        got = sha256_of(path)
        if got != entry["sha256"]:
            return Check(entry, path, "bad_checksum", f"sha256 {got[:12]}…, expected {entry['sha256'][:12]}…")
    if want is None and not (verify_sha and entry.get("sha256")):
        return Check(entry, path, "present", "no published size/checksum to verify against")
    return Check(entry, path, "ok")


def check(models_dir: str | Path, entries: list[dict], verify_sha: bool = False,
          ids: list[str] | None = None) -> list[Check]:
    """Check a models folder against manifest entries (all, or the given ids)."""
    return [check_file(e, Path(models_dir), verify_sha) for e in select(entries, ids)]


def select(entries: list[dict], ids: list[str] | None) -> list[dict]:
    if not ids:
        return entries
    known = {e["id"]: e for e in entries}
    groups = {g for e in entries for g in e.get("groups", [])}
    unknown = [i for i in ids if i not in known and i not in groups]
    if unknown:
        raise ModelFileError(f"Unknown model id(s) {unknown}.",
                             f"Use ids from models_manifest.json or a group: {', '.join(sorted(groups))}.")
    return [e for e in entries if e["id"] in ids or set(e.get("groups", [])) & set(ids)]


def workflow_ids(entries: list[dict], workflow_files: list[str | Path]) -> list[str]:
    """The manifest ids of the model files the workflows pick; a file the manifest lacks is an error that names it."""
    import json

    from .workflow import workflow_model_files

    by_file, ids, unknown = {e["file"]: e["id"] for e in entries}, [], []
    for path in workflow_files:
        try:
            names = workflow_model_files(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError) as e:
            raise ModelFileError(f"Cannot read the workflow {path} ({e}).", "Give a ComfyUI workflow .json file.") \
                from None
        ids += [by_file[n] for n in names if n in by_file]
        unknown += [f"{Path(path).name}: {n}" for n in names if n not in by_file]
    if unknown:
        raise ModelFileError(f"Not in the manifest: {', '.join(unknown)}.",
                             "Pick files from models_manifest.json in the workflow (or check them by hand).")
    return list(dict.fromkeys(ids))


def format_report(results: list[Check]) -> str:
    marks = {"ok": "ok     ", "present": "present", "missing": "MISSING", "wrong_size": "SIZE!  ",
             "bad_checksum": "SHA256!"}
    lines = [f"{marks[r.status]}  {r.entry['folder']}/{r.entry['file']}" + (f"  ({r.detail})" if r.detail else "")
             for r in results]
    todo = [r for r in results if r.status in ("missing", "wrong_size", "bad_checksum")]
    train = [r for r in todo if "made_by" in r.entry]
    todo = [r for r in todo if "made_by" not in r.entry]
    if train:
        lines.append(f"\n{len(train)} file(s) to train (no one publishes them):")
        lines += [f"  {r.path}\n    <- {r.entry['made_by']}" for r in train]
    if todo:
        lines.append(f"\n{len(todo)} file(s) to fetch: `videoprior-edit models download "
                     f"{' '.join(r.entry['id'] for r in todo)} --models <models dir>` or by hand:")
        lines += [f"  {source_url(r.entry)}\n    -> {r.path}" for r in todo]
    return "\n".join(lines)


def download(entry: dict, models_dir: str | Path, verify_sha: bool = True, endpoint: str | None = None) -> Check:
    """Fetch one file from its source (resumable, verified); a good existing file is never overwritten.

    `endpoint`: another Hugging Face-compatible server (default: HF_ENDPOINT or huggingface.co)."""
    current = check_file(entry, Path(models_dir), verify_sha)
    if current.good:
        return current
    if "made_by" in entry:
        raise ModelFileError(f"{entry['file']} is not published anywhere: the pack's trainer makes it.",
                             f"Train it: {entry['made_by']}; put it in {Path(models_dir) / entry['folder']}.")
    from huggingface_hub import hf_hub_download

    staging = Path(models_dir) / ".vpe_downloads"
    try:
        got = Path(hf_hub_download(entry["source"]["repo"], entry["source"]["path"], local_dir=staging,
                                   token=os.environ.get("HF_TOKEN") or None, endpoint=endpoint))
    except Exception as e:  # network, auth (gated repos), offline mode
        raise ModelFileError(
            f"Could not download {entry['file']} from {entry['source']['repo']}: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}",
            f"Check the internet connection (and HF_TOKEN for gated repos), or fetch {source_url(entry)} by hand "
            f"into {Path(models_dir) / entry['folder']}.") from None
    staged = verify(entry, got, verify_sha)
    if not staged.good:
        raise ModelFileError(f"Downloaded {entry['file']} does not verify: {staged.detail}.",
                             "It was left in .vpe_downloads; delete it and try again.")
    current.path.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(got), current.path)  # replaces only a missing or bad file
    return Check(entry, current.path, staged.status, staged.detail)


def zoo_manifest(models_dir: str | Path) -> list[dict]:
    """Manifest entries describing a written tiny zoo (sizes and sha256 of its files), for tests and checks."""
    entries = []
    for path in sorted(Path(models_dir).rglob("*.safetensors")):
        rel = path.relative_to(models_dir)
        entries.append({"id": path.stem, "name": path.stem, "architecture": "tiny test model",
                        "purpose": ["tests"], "folder": rel.parent.as_posix(), "file": rel.name,
                        "source": {"repo": "local/tiny-zoo", "path": rel.as_posix()},
                        "size_bytes": path.stat().st_size, "sha256": sha256_of(path), "license": "apache-2.0",
                        "groups": ["tiny-zoo"]})
    return entries
