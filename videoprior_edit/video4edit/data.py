"""Video4Edit training triplets: the dataset folder, reading it, the student's training clip, a tiny generated set.

A dataset folder holds one triplet (source image, edited image, instruction) per line of `metadata.jsonl`:

    my_edits/
      metadata.jsonl
      source/0001.png           the picture before the edit
      edited/0001.png           the same picture after the edit (same framing)
      trajectories/0001/        optional: frames from source to edited (000.png, 001.png, ... in name order)

    {"source": "source/0001.png", "edited": "edited/0001.png", "instruction": "make the car blue",
     "evolution": "the car's red paint slowly shifts to a deep blue; the street, the light and the camera stay still"}

Fields (paths relative to the folder, absolute paths work too):
- `source`, `edited` (or `target`): the two images, any size and format PIL reads; both are scaled to cover the
  training size and centre-cropped, so keep them framed alike.
- `instruction` (or `prompt`): the short edit command a user would type; the student learns from it.
- `evolution` (optional; or `evolution_prompt`): the same edit told as a video caption, "how the picture changes over
  time" (the paper's offline evolution prompt). The teacher (Wan2.1-FLF2V) is guided by it. Without it the
  instruction is used.
- `trajectory` (optional): a folder of frames from the source to the edited image, e.g. saved from the
  Before/After Trajectory node. Without it the trainer rolls the teacher out once and caches the frames.
- `name` (optional): an id for logs, renders and the cache (default: the source file's name without extension).

`metadata.csv` with a header row of the same column names works as well (for spreadsheets); blank lines are skipped.
`write_tiny_dataset` writes a small generated folder (a test picture and colour changes) for the tiny zoo.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InputError
from ..images import resize

METADATA = ("metadata.jsonl", "metadata.csv")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# How the middle frames of the student's clip are formed (first frame = source, last frame = edited, always exact):
CLIP_MODES = ("teacher", "teacher_tail", "blend", "hold")
_ALIASES = {"edited": ("edited", "target"), "instruction": ("instruction", "prompt"),
            "evolution": ("evolution", "evolution_prompt")}


@dataclass(frozen=True)
class Triplet:
    """One training example: source and edited image, the instruction, the teacher's evolution prompt (empty: use
    the instruction), an optional folder of trajectory frames, and a name."""

    source: Path
    edited: Path
    instruction: str
    evolution: str = ""
    trajectory: Path | None = None
    name: str = ""

    @property
    def teacher_prompt(self) -> str:
        return self.evolution or self.instruction


def read_triplets(folder: str | Path) -> list[Triplet]:
    """The triplets of a dataset folder (`metadata.jsonl`, else `metadata.csv`), in file order; a missing file or
    field is reported with its line."""
    folder = Path(folder)
    meta = next((folder / m for m in METADATA if (folder / m).is_file()), None)
    if meta is None:
        raise InputError(f"No metadata.jsonl or metadata.csv in {folder}.",
                         'Write one line per triplet: {"source": "source/0001.png", "edited": "edited/0001.png", '
                         '"instruction": "...", "evolution": "..."} (see videoprior_edit/video4edit/data.py).')
    rows = _rows(meta)
    triplets, names = [], set()
    for line, row in rows:
        try:
            triplet = _triplet(folder, row)
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{meta.name} line {line} is not a triplet ({e}).",
                             "Each row needs source, edited and instruction (evolution, trajectory, name optional).")
        for path in (triplet.source, triplet.edited):
            if not path.is_file():
                raise InputError(f"{meta.name} line {line}: {path} does not exist.", "Fix the path or the line.")
        if triplet.trajectory is not None and not triplet.trajectory.is_dir():
            raise InputError(f"{meta.name} line {line}: trajectory folder {triplet.trajectory} does not exist.",
                             "Fix the path, or leave the field out to let the teacher roll out the frames.")
        if not triplet.instruction.strip():
            raise InputError(f"{meta.name} line {line}: the instruction is empty.", "Write the edit instruction.")
        if triplet.name in names:
            raise InputError(f"{meta.name} line {line}: the name '{triplet.name}' is used twice.",
                             "Give each triplet its own name (or distinct source file names).")
        names.add(triplet.name)
        triplets.append(triplet)
    if not triplets:
        raise InputError(f"{meta} lists no triplets.", "Add at least one line.")
    return triplets


def _rows(meta: Path) -> list[tuple[int, dict]]:
    text = meta.read_text(encoding="utf-8-sig")
    if meta.suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        return [(i + 2, row) for i, row in enumerate(reader) if any((v or "").strip() for v in row.values())]
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise InputError(f"{meta.name} line {n} is not JSON ({e}).", "One JSON object per line.") from None
    return rows


def _field(row: dict, key: str, required: bool = True) -> str:
    for name in _ALIASES.get(key, (key,)):
        value = row.get(name)
        if value is not None and str(value).strip():
            return str(value).strip()
    if required:
        raise KeyError(f"no '{key}'")
    return ""


def _triplet(folder: Path, row: dict) -> Triplet:
    if not isinstance(row, dict):
        raise TypeError("not an object")
    source = folder / _field(row, "source")
    trajectory = _field(row, "trajectory", required=False)
    return Triplet(source, folder / _field(row, "edited"), _field(row, "instruction"),
                   _field(row, "evolution", required=False), folder / trajectory if trajectory else None,
                   _field(row, "name", required=False) or source.stem)


# ----------------------------------------------------------------------------------------------- images
def cover(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """IMAGE `(B, h, w, 3)` scaled to cover `width` x `height`, then centre-cropped to it."""
    h0, w0 = image.shape[1:3]
    scale = max(width / w0, height / h0)
    w1, h1 = max(width, math.ceil(w0 * scale)), max(height, math.ceil(h0 * scale))
    image = resize(image, w1, h1)
    top, left = (h1 - height) // 2, (w1 - width) // 2
    return image[:, top:top + height, left:left + width]


def load_image(path: str | Path, width: int, height: int) -> torch.Tensor:
    """An image file as IMAGE `(1, height, width, 3)` in [0, 1] (cover + centre crop)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        array = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return cover(torch.from_numpy(array)[None], width, height)


def frame_files(folder: str | Path) -> list[Path]:
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"No frames (png/jpg/webp) in {folder}.", "Save the trajectory's frames as images there.")
    return files


def load_frames(folder: str | Path, width: int, height: int) -> torch.Tensor:
    """The frames of a trajectory folder, in name order, as IMAGE `(N, height, width, 3)`."""
    return torch.cat([load_image(p, width, height) for p in frame_files(folder)])


def save_frames(frames: torch.Tensor, folder: str | Path) -> None:
    """IMAGE frames `(N, H, W, 3)` -> folder/000.png, 001.png, ..."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        Image.fromarray((frame.clamp(0, 1) * 255).round().to(torch.uint8).numpy()).save(folder / f"{i:03d}.png")


def student_clip(source: torch.Tensor, edited: torch.Tensor, frames: int, mode: str = "teacher",
                 trajectory: torch.Tensor | None = None) -> torch.Tensor:
    """The student's training clip `(frames, H, W, 3)`: first frame the source, last frame the edited image (both
    exact), the frames between formed by `mode`:

    - teacher: the teacher's trajectory resampled uniformly to the clip's length (frame i of the clip is trajectory
      frame round(i (N-1) / (frames-1))): the whole evolution at a lower frame rate, the paper's "degenerate
      temporal process";
    - teacher_tail: the trajectory's last frames (the settled end of the evolution);
    - blend: a cross-fade from source to edited (no teacher rollout);
    - hold: the edited image repeated (no teacher rollout; the tail latent is a still of the result).
    """
    if mode not in CLIP_MODES:
        raise InputError(f"Unknown clip mode '{mode}'.", f"Use one of: {', '.join(CLIP_MODES)}.")
    source, edited = source[:1].float(), edited[:1].float()
    if mode in ("teacher", "teacher_tail"):
        if trajectory is None or trajectory.shape[0] < frames:
            got = 0 if trajectory is None else trajectory.shape[0]
            raise InputError(f"Clip mode '{mode}' needs a trajectory of at least {frames} frames (got {got}).",
                             "Give a longer trajectory (teacher frames), or use clip mode blend / hold.")
        n = trajectory.shape[0]
        if mode == "teacher":
            index = [round(i * (n - 1) / (frames - 1)) for i in range(frames)]
        else:
            index = [0] + list(range(n - frames + 1, n))
        clip = trajectory[index].float().clone()
    elif mode == "blend":
        a = torch.linspace(0, 1, frames).view(-1, 1, 1, 1)
        clip = (1 - a) * source + a * edited
    else:
        clip = torch.cat([source, edited.expand(frames - 1, -1, -1, -1)])
    clip[0], clip[-1] = source[0], edited[0]
    return clip


# ----------------------------------------------------------------------------------------------- tiny dataset
TINY_EDITS = (("blue", (0.15, 0.3, 0.9)), ("green", (0.2, 0.75, 0.3)), ("yellow", (0.95, 0.85, 0.15)),
              ("purple", (0.55, 0.2, 0.75)))


def write_tiny_dataset(folder: str | Path, count: int = 2, width: int = 64, height: int = 48) -> list[Triplet]:
    """A small dataset folder for the tiny zoo: the demo's test picture (a red disc and a bar on a gradient), shifted
    per triplet, and the disc recoloured (instruction "make the disc blue", an evolution prompt to match)."""
    import numpy as np
    from PIL import Image

    from ..demo import synthetic_source

    folder = Path(folder)
    rows = []
    for i in range(count):
        colour_name, colour = TINY_EDITS[i % len(TINY_EDITS)]
        source = np.roll(synthetic_source(width, height), shift=3 * i, axis=1)
        disc = (source[..., 0] > 200) & (source[..., 1] < 80) & (source[..., 2] < 80)  # the red disc
        edited = source.copy()
        edited[disc] = (np.array(colour) * 255).round().astype(np.uint8)
        name = f"{i:04d}"
        for kind, array in (("source", source), ("edited", edited)):
            (folder / kind).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(folder / kind / f"{name}.png")
        rows.append({"source": f"source/{name}.png", "edited": f"edited/{name}.png",
                     "instruction": f"make the disc {colour_name}",
                     "evolution": f"the red disc slowly turns {colour_name}; the bar and the background stay still"})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return read_triplets(folder)
