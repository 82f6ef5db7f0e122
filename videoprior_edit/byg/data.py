"""ByG training data: tuples (source media, source caption, target caption, instruction, inverse instruction).

JSONL, one object per line (paper, App. D; its VLM's field names are accepted as aliases):

    {"media": "clips/0001.mp4", "source_caption": "a cartoon fox runs through a forest",
     "target_caption": "a photorealistic fox runs through a forest", "instruction": "make it photorealistic",
     "inverse_instruction": "make it a cartoon"}

- `media` (aliases `source`, `image`, `video`): an image file (a 1-frame video), a folder of frame images (sorted by
  name) or a video file (read with imageio or PyAV when installed); relative paths are relative to the JSONL file.
- `source_caption` (`src_caption`), `target_caption` (`tgt_caption`), `instruction`, `inverse_instruction`
  (`reverse_instruction`). No target media: training is unpaired.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_ALIASES = {"media": ("media", "source", "image", "video"), "source_caption": ("source_caption", "src_caption"),
            "target_caption": ("target_caption", "tgt_caption"), "instruction": ("instruction",),
            "inverse_instruction": ("inverse_instruction", "reverse_instruction")}


@dataclass
class Example:
    media: Path
    source_caption: str
    target_caption: str
    instruction: str
    inverse_instruction: str

    def texts(self) -> tuple[str, str, str, str]:
        return self.source_caption, self.target_caption, self.instruction, self.inverse_instruction


def read_jsonl(path: str | Path) -> list[Example]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"No data file '{path}'.", "Give a JSONL file, one training tuple per line.")
    examples = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise InputError(f"{path.name} line {n} is not JSON ({e}).", "One JSON object per line.") from None
        fields = {}
        for name, aliases in _ALIASES.items():
            value = next((row[a] for a in aliases if row.get(a) not in (None, "")), None)
            if not isinstance(value, str):
                raise InputError(f"{path.name} line {n} has no '{name}'.",
                                 "Each line needs media, source_caption, target_caption, instruction, "
                                 "inverse_instruction.")
            fields[name] = value
        media = Path(fields.pop("media"))
        media = media if media.is_absolute() else path.parent / media
        if not media.exists():
            raise InputError(f"{path.name} line {n}: '{media}' does not exist.", "Paths are relative to the JSONL.")
        examples.append(Example(media, **fields))
    if not examples:
        raise InputError(f"{path.name} holds no examples.", "Write one JSON object per line.")
    return examples


def _cover(frames: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """`(F, H, W, 3)` in [0, 1] scaled to cover width x height, centre-cropped."""
    from ..images import resize

    h0, w0 = frames.shape[1:3]
    scale = max(width / w0, height / h0)
    w1, h1 = max(width, math.ceil(w0 * scale)), max(height, math.ceil(h0 * scale))
    frames = resize(frames, w1, h1)
    top, left = (h1 - height) // 2, (w1 - width) // 2
    return frames[:, top:top + height, left:left + width]


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _read_video(path: Path) -> list[np.ndarray]:
    try:
        import imageio.v3 as iio

        return list(iio.imread(path, index=None))
    except ImportError:
        pass
    try:
        import av
    except ImportError:
        raise InputError(f"Cannot read the video '{path.name}': neither imageio nor PyAV is installed.",
                         "pip install imageio[pyav] (or give a folder of frames).") from None
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def load_media(path: Path, width: int, height: int, num_frames: int) -> torch.Tensor:
    """Pixels `(3, F, H, W)` in [-1, 1]: an image gives F = 1; a video / frame folder gives its first `num_frames`
    frames (4k+1, fewer if the clip is shorter: cut down to the nearest 4k+1)."""
    if path.is_dir():
        frames = [_read_image(p) for p in sorted(path.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        frames = [_read_image(path)]
    else:
        frames = _read_video(path)
    if not frames:
        raise InputError(f"'{path}' holds no frames.", "Give an image, a video or a folder of frames.")
    count = 1 if len(frames) == 1 else min(num_frames, len(frames))
    count = (count - 1) // 4 * 4 + 1
    video = torch.from_numpy(np.stack(frames[:count])).float() / 255.0
    video = _cover(video, width, height)
    return video.permute(3, 0, 1, 2) * 2.0 - 1.0


# ----------------------------------------------------------------------------------------------- a demo data set
_EDITS = [  # (name, instruction, inverse, function on the picture)
    ("blue disc", "make the red disc blue", "make the blue disc red", lambda a: _recolor(a, (0.2, 0.3, 0.9))),
    ("green disc", "make the red disc green", "make the green disc red", lambda a: _recolor(a, (0.2, 0.8, 0.3))),
    ("inverted", "invert the colours", "invert the colours", lambda a: 1.0 - a),
]


def _recolor(img: np.ndarray, colour) -> np.ndarray:
    red = (img[..., 0] > 0.85) & (img[..., 1] < 0.25) & (img[..., 2] < 0.25)
    out = img.copy()
    out[red] = colour
    return out


def write_demo_dataset(folder: str | Path, width: int = 64, height: int = 64, count: int = 4) -> Path:
    """A tiny JSONL data set of generated pictures (the demo's test picture, shifted) with simple edits' captions;
    returns the JSONL path."""
    from PIL import Image

    from ..demo import synthetic_source

    folder = Path(folder)
    (folder / "media").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        base = np.roll(synthetic_source(width, height), shift=(i * height // 7, i * width // 5), axis=(0, 1))
        name, instruction, inverse, _ = _EDITS[i % len(_EDITS)]
        file = folder / "media" / f"{i:04d}.png"
        Image.fromarray(base).save(file)
        lines.append({"media": f"media/{file.name}",
                      "source_caption": "a red disc and a white bar on a colour gradient",
                      "target_caption": f"a {name} and a white bar on a colour gradient" if "disc" in name
                      else "an inverted picture of a disc and a bar",
                      "instruction": instruction, "inverse_instruction": inverse})
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path
