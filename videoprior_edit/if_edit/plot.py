"""A small score-per-frame chart (artists would rather look than read), drawn with Pillow."""

from __future__ import annotations

import numpy as np
import torch

BAR, BEST, TEXT, BACKGROUND, GRID = (110, 140, 190), (235, 120, 40), (230, 230, 230), (32, 32, 36), (60, 60, 66)


def score_plot(scores, best: int, title: str = "sharpness per frame", width: int = 512,
               height: int = 192) -> torch.Tensor:
    """IMAGE `(1, height, width, 3)`: one bar per frame, the chosen frame highlighted, min/max labelled."""
    from PIL import Image, ImageDraw

    values = [float(v) for v in scores]
    picture = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(picture)
    left, right, top, bottom = 8, width - 8, 24, height - 20
    low, high = min(values + [0.0]), max(values) if max(values) > 0 else 1.0
    span = (high - low) or 1.0
    step = (right - left) / max(len(values), 1)
    draw.line([(left, bottom), (right, bottom)], fill=GRID)
    for i, v in enumerate(values):
        x0, x1 = left + i * step + step * 0.15, left + (i + 1) * step - step * 0.15
        y = bottom - (v - low) / span * (bottom - top)
        draw.rectangle([x0, min(y, bottom - 1), max(x1, x0 + 1), bottom], fill=BEST if i == best else BAR)
    draw.text((left, 4), f"{title}: best frame {best} ({values[best]:.1f})", fill=TEXT)
    draw.text((left, bottom + 4), f"frame 0 .. {len(values) - 1}   min {min(values):.1f}   max {max(values):.1f}",
              fill=TEXT)
    return torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0)[None]
