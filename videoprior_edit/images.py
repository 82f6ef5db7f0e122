"""Image and clip geometry: sizes in multiples of 16 (Wan and FLUX), Wan frame counts of the form 4k+1."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import InputError

SIZE_MODES = ("resize", "crop", "pad")
MULTIPLE = 16


@dataclass
class Fit:
    """How an image was brought to the model's size, and how to bring results back."""

    original: tuple[int, int]  # (width, height) given
    size: tuple[int, int]  # (width, height) the model runs at
    mode: str
    scaled: tuple[int, int] | None = None  # (width, height) after max_side scaling, if it scaled
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)  # left, right, top, bottom (pad mode)

    @property
    def note(self) -> str:
        (w0, h0), (w, h) = self.original, self.size
        if (w0, h0) == (w, h):
            return ""
        parts = [f"{w0}x{h0}"] + ([f"scaled to {self.scaled[0]}x{self.scaled[1]}"] if self.scaled else [])
        if self.scaled != (w, h):
            how = {"resize": "resized to", "crop": "centre-cropped to", "pad": "padded to"}[self.mode]
            parts.append(f"{how} {w}x{h} (the model needs sides in multiples of {MULTIPLE})")
        if self.mode == "pad" and any(self.pad):
            parts.append("padding cropped off the results")
        return ", ".join(parts)

    def restore(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames `(N, H, W, C)` at the model size -> without the padding (pad mode); otherwise unchanged."""
        left, right, top, bottom = self.pad
        return frames[:, top:frames.shape[1] - bottom, left:frames.shape[2] - right]


def _scaled(width: int, height: int, max_side: int) -> tuple[int, int]:
    if not max_side or max(width, height) <= max_side:
        return width, height
    s = max_side / max(width, height)
    return max(1, round(width * s)), max(1, round(height * s))


def resize(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """IMAGE `(B, H, W, C)` resized with antialiased bicubic filtering, clamped to [0, 1]."""
    if image.shape[1:3] == (height, width):
        return image
    x = F.interpolate(image.permute(0, 3, 1, 2).float(), size=(height, width), mode="bicubic", antialias=True,
                      align_corners=False)
    return x.clamp(0, 1).permute(0, 2, 3, 1)


def fit_image(image: torch.Tensor, mode: str = "resize", max_side: int = 0) -> tuple[torch.Tensor, Fit]:
    """Bring an IMAGE `(B, H, W, C)` to multiples of 16 (after scaling its longer side down to `max_side`, if set).

    resize: nearest multiples of 16 (slight aspect change); crop: centre crop down to multiples of 16;
    pad: replicate-pad up to multiples of 16 (the padding is cropped off the results again).
    """
    if mode not in SIZE_MODES:
        raise InputError(f"Unknown size mode '{mode}'.", f"Use one of: {', '.join(SIZE_MODES)}.")
    if image.dim() != 4 or image.shape[-1] not in (1, 3, 4) or min(image.shape[1:3]) < 1:
        raise InputError(f"Expected an IMAGE (batch, height, width, channels), got shape {tuple(image.shape)}.",
                         "Connect an image (e.g. from Load Image).")
    image = image[..., :3] if image.shape[-1] != 1 else image.expand(-1, -1, -1, 3)
    h0, w0 = image.shape[1:3]
    w, h = _scaled(w0, h0, max_side)
    scaled = (w, h) if (w, h) != (w0, h0) else None
    image = resize(image, w, h) if scaled else image
    if mode == "resize":
        tw, th = (max(MULTIPLE, round(v / MULTIPLE) * MULTIPLE) for v in (w, h))
        return resize(image, tw, th), Fit((w0, h0), (tw, th), mode, scaled)
    if mode == "crop":
        if w < MULTIPLE or h < MULTIPLE:
            raise InputError(f"The image ({w}x{h}) is smaller than {MULTIPLE} pixels.", "Use 'pad' or a larger image.")
        tw, th = (v // MULTIPLE * MULTIPLE for v in (w, h))
        top, left = (h - th) // 2, (w - tw) // 2
        return image[:, top:top + th, left:left + tw], Fit((w0, h0), (tw, th), mode, scaled)
    tw, th = (-(-v // MULTIPLE) * MULTIPLE for v in (w, h))
    pad = ((tw - w) // 2, tw - w - (tw - w) // 2, (th - h) // 2, th - h - (th - h) // 2)
    padded = F.pad(image.permute(0, 3, 1, 2), pad, mode="replicate").permute(0, 2, 3, 1)
    return padded, Fit((w0, h0), (tw, th), mode, scaled, pad)


def round_frames(frames: int) -> tuple[int, str]:
    """A frame count Wan can make (4k+1, as diffusers rounds), with a note when it changed."""
    if int(frames) != frames or frames < 5:
        raise InputError(f"{frames} frames is too short: Wan clips have 4k+1 frames, at least 5 (2 latent frames).",
                         "Use 5 or more; IF-Edit uses 33, Video4Edit/ChronoEdit 5.")
    rounded = int(frames) // 4 * 4 + 1
    note = "" if rounded == frames else f"{frames} frames -> {rounded} (Wan clips have 4k+1 frames)"
    return rounded, note
