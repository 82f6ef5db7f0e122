"""Reading sources (images, videos, frame folders) and writing results atomically: a result is written under a
temporary name in its folder and renamed into place (`os.replace`), so a file with the final name is complete."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
DEFAULT_FPS = 16.0  # Wan's frame rate, for frame folders and single images


def _missing(path: Path | None) -> InputError:
    return InputError(f"The source '{path}' does not exist.",
                      "Fix the path; paths in a manifest are relative to the manifest's folder.")


def read_image(path: Path) -> torch.Tensor:
    """An image file as IMAGE `(1, H, W, 3)` in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    if path is None or not path.is_file():
        raise _missing(path)
    try:
        with Image.open(path) as picture:
            array = np.asarray(picture.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"Cannot read the image '{path}' ({e}).", "Give a PNG, JPEG, WebP or BMP file.") from None
    return torch.from_numpy(array.copy()).float().div(255).unsqueeze(0)


def read_video(path: Path, max_frames: int = 0, fps: float = 0.0) -> tuple[torch.Tensor, float]:
    """A video file, a folder of frame images (sorted by name) or one image as frames `(N, H, W, 3)` in [0, 1], with
    the frame rate (`fps` when > 0, else the file's, else 16). `max_frames` > 0 keeps the first that many."""
    if path is None or not path.exists():
        raise _missing(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        files = files[:max_frames] if max_frames > 0 else files
        frames, rate = (torch.cat([read_image(p) for p in files]) if files else None), DEFAULT_FPS
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        frames, rate = read_image(path), DEFAULT_FPS
    else:
        frames, rate = _decode(path, max_frames)
    if frames is None:
        raise InputError(f"'{path}' holds no frames.", "Give a video file, a folder of frame images or an image.")
    return frames, fps if fps > 0 else rate


def _decode(path: Path, max_frames: int) -> tuple[torch.Tensor | None, float]:
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise InputError(f"Cannot open the video '{path}'.", "Give an .mp4/.mov/.webm file OpenCV can read, or a "
                         "folder of frame images.")
    frames, rate = [], capture.get(cv2.CAP_PROP_FPS) or DEFAULT_FPS
    try:
        while max_frames <= 0 or len(frames) < max_frames:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    finally:
        capture.release()
    if not frames:
        return None, rate
    return torch.from_numpy(np.stack(frames)).float().div(255), float(rate)


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """Frames in [0, 1] -> uint8 (the same shape)."""
    return (frames.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def partial_path(path: Path, owner: str = "") -> Path:
    """The temporary name a result is written under before it is renamed to `path` (`owner` tells writers apart)."""
    return path.with_name(f".{path.stem}{'.' + owner if owner else ''}.partial{path.suffix}")


@contextmanager
def atomic_target(path: Path, shared: bool = False):
    """Yields a temporary path in `path`'s folder; renamed to `path` when the block ends without an error, deleted
    otherwise (a killed process leaves at most a `.NAME.partial.*` file, overwritten by the next attempt). `shared`:
    several processes may write `path` at once (the temporary name then holds the process id)."""
    temporary = partial_path(path, str(os.getpid()) if shared else "")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_image(path: Path, image: torch.Tensor) -> Path:
    """Write IMAGE `(1, H, W, 3)` (or `(H, W, 3)`) as a PNG, atomically."""
    from PIL import Image

    array = to_uint8(image[0] if image.dim() == 4 else image)
    with atomic_target(path) as temporary:
        Image.fromarray(array).save(temporary, format="PNG")
    return path


def write_video(path: Path, frames: torch.Tensor, fps: float) -> Path:
    """Write frames `(N, H, W, 3)` as an MP4 (MPEG-4 Part 2, what OpenCV's own FFmpeg writes everywhere),
    atomically."""
    import cv2

    array = to_uint8(frames)
    height, width = array.shape[1:3]
    with atomic_target(path) as temporary:
        writer = cv2.VideoWriter(str(temporary), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
        if not writer.isOpened():
            raise InputError(f"OpenCV cannot write '{path.name}'.", "Check that the output folder is writable.")
        try:
            for frame in array:
                writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        finally:
            writer.release()
    return path
