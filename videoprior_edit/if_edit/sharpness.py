"""Frame sharpness from the Laplacian (IF-Edit's frame selection), in torch, batched, matching OpenCV.

Scores (higher = sharper), over the whole frame or a region (MASK):
- `variance`: variance of the Laplacian, OpenCV's focus measure `cv2.Laplacian(grey, cv2.CV_64F).var()`; exact
  on uint8 grey (kernel [[0,1,0],[1,-4,1],[0,1,0]], border REFLECT_101, population variance, float64);
- `energy`: mean squared Laplacian response. The paper writes s = 1/HW * sum of the Laplacian; taken literally
  the signed sum telescopes to about zero for any image, so this reads "response" as its energy;
- `mean_abs`: mean absolute Laplacian, what most re-implementations use.
Grey conversion is OpenCV's: BT.601 weights in 15-bit fixed point on uint8 (`precision="uint8"`, exact), or
0.299 R + 0.587 G + 0.114 B in float32 (`precision="float"`, no rounding of the frames first).
"""

from __future__ import annotations

from fractions import Fraction

import torch
import torch.nn.functional as F

from ..errors import InputError

SCORES = ("variance", "energy", "mean_abs")
_KERNEL = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))


def grey(frames: torch.Tensor, precision: str = "uint8") -> torch.Tensor:
    """IMAGE frames `(N, H, W, C)` in [0, 1] -> grey `(N, H, W)` float32 on 0..255, as OpenCV's RGB2GRAY computes
    it (uint8: whole numbers, exactly OpenCV's)."""
    rgb = frames[..., :3] if frames.shape[-1] >= 3 else frames[..., :1].expand(*frames.shape[:-1], 3)
    if precision == "uint8":
        q = (rgb.clamp(0, 1) * 255).round().to(torch.int32)
        return ((q[..., 0] * 9798 + q[..., 1] * 19235 + q[..., 2] * 3735 + 16384) >> 15).to(torch.float32)
    if precision == "float":
        x = rgb.float() * 255
        return 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    raise InputError(f"Unknown precision '{precision}'.", "Use 'uint8' (OpenCV-exact) or 'float'.")


def laplacian(grey_frames: torch.Tensor) -> torch.Tensor:
    """The 4-neighbour Laplacian with reflect-101 borders (OpenCV's default), same shape and dtype."""
    x = grey_frames.unsqueeze(1)
    for pad, size in (((1, 1, 0, 0), x.shape[-1]), ((0, 0, 1, 1), x.shape[-2])):  # a 1-pixel axis reflects onto itself
        x = F.pad(x, pad, mode="reflect" if size > 1 else "replicate")
    padded = x
    kernel = torch.tensor(_KERNEL, dtype=x.dtype, device=x.device).view(1, 1, 3, 3)
    return F.conv2d(padded, kernel).squeeze(1)


def sharpness(frames: torch.Tensor, score: str = "variance", mask: torch.Tensor | None = None,
              precision: str = "uint8") -> torch.Tensor:
    """One score per frame, `(N,)` float64. `mask` (a ComfyUI MASK `(H, W)` or `(N, H, W)`, > 0.5 = inside)
    limits the statistics to a region; the Laplacian itself always sees the whole frame."""
    if score not in SCORES:
        raise InputError(f"Unknown sharpness score '{score}'.", f"Use one of: {', '.join(SCORES)}.")
    if frames.dim() != 4 or frames.shape[0] == 0:
        raise InputError(f"Expected IMAGE frames (N, H, W, C), got shape {tuple(frames.shape)}.",
                         "Connect an IMAGE batch (e.g. the editor's frames).")
    lap = laplacian(grey(frames, precision))  # uint8 grey: small integers, exact in float32
    if score == "variance" and precision == "uint8":  # integer Laplacian: exact sums, one rounding at the end
        values, inside = lap.to(torch.int64), _region(mask, lap).to(torch.int64)
        s1, s2 = (values * inside).sum(dim=(1, 2)), (values * values * inside).sum(dim=(1, 2))
        n = inside.sum(dim=(1, 2))
        exact = [Fraction(b * c - a * a, c * c) for a, b, c in zip(s1.tolist(), s2.tolist(), n.tolist())]
        return torch.tensor([float(v) for v in exact], dtype=torch.float64)
    lap = lap.to(torch.float64)
    weights = _region(mask, lap)
    count = weights.sum(dim=(1, 2))
    mean = (lap * weights).sum(dim=(1, 2)) / count
    if score == "variance":
        return ((lap - mean.view(-1, 1, 1)) ** 2 * weights).sum(dim=(1, 2)) / count
    if score == "energy":
        return (lap ** 2 * weights).sum(dim=(1, 2)) / count
    return (lap.abs() * weights).sum(dim=(1, 2)) / count


def _region(mask: torch.Tensor | None, lap: torch.Tensor) -> torch.Tensor:
    if mask is None:
        return torch.ones_like(lap)
    mask = mask if mask.dim() == 3 else mask.unsqueeze(0)
    if tuple(mask.shape[-2:]) != tuple(lap.shape[-2:]):
        raise InputError(f"The mask is {mask.shape[-1]}x{mask.shape[-2]}, the frames {lap.shape[-1]}x{lap.shape[-2]}.",
                         "Give the mask the frames' size.")
    inside = (mask.to(lap.device) > 0.5).to(lap.dtype).expand_as(lap)
    if (inside.sum(dim=(1, 2)) == 0).any():
        raise InputError("The mask selects no pixel.", "Paint the region to score, or disconnect the mask.")
    return inside


def sharpest(frames: torch.Tensor, score: str = "variance", mask: torch.Tensor | None = None,
             precision: str = "uint8") -> tuple[int, torch.Tensor]:
    """(index of the sharpest frame, all scores); ties go to the later frame (the edit is at the end)."""
    scores = sharpness(frames, score, mask, precision)
    best = int(len(scores) - 1 - torch.argmax(scores.flip(0)))
    return best, scores
