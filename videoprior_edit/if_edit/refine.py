"""IF-Edit's Self-Consistent Post-Refinement: the edit goes back into the same I2V model as a still clip, and the
sharpest frame of that clip is the final image.

Two ways to make the still clip:
- "i2v": a full image-to-video run from the frame with the still prompt (the paper);
- "sdedit": the frame repeated into a clip, VAE-encoded, noised to `strength` and denoised by the low-noise expert
  only (cheaper; keeps the picture closer to the input).
The clip's first frame is the input re-decoded, so the pick is made among the other frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import InputError
from ..images import fit_image, round_frames
from ..sampling import Guidance, TemporalLatentDropout, sample_i2v
from ..sampling.condition import (
    encode_mode,
    image_from_pixels,
    normalize_latents,
    pixels_from_image,
)
from ..sampling.loop import placement_of
from .sharpness import sharpest

STILL_PROMPT = ("A perfectly still video with enhanced clarity. The camera does not move and nothing in the scene "
                "moves; the same picture holds in sharp focus with fine detail and crisp textures, no motion blur, "
                "no change in lighting, colour or composition.")
MODES = ("i2v", "sdedit")


@dataclass
class RefineResult:
    """frame `(1, H, W, 3)`: the sharpest refined frame; index: its place in `clip` `(N, H, W, 3)`; scores `(N,)`
    for every clip frame (the first, the input re-decoded, is scored but never picked)."""

    frame: torch.Tensor
    index: int
    scores: torch.Tensor
    clip: torch.Tensor
    notes: list[str] = field(default_factory=list)


def refine_still(models, frame: torch.Tensor, prompt: str = STILL_PROMPT, negative_prompt: str = "",
                 mode: str = "i2v", frames: int = 9, steps: int = 8, strength: float = 0.5,
                 scheduler: str = "lightning", shift: float = 5.0, cfg: float = 1.0, seed: int = 0,
                 score: str = "variance", tld_k: int = 1, size_mode: str = "resize", max_side: int = 0,
                 progress=None) -> RefineResult:
    """Refine `frame` (IMAGE `(1, H, W, C)`) through a still clip; see the module docstring."""
    if mode not in MODES:
        raise InputError(f"Unknown refine mode '{mode}'.", f"Use one of: {', '.join(MODES)}.")
    frames, frame_note = round_frames(frames)
    fitted, fit = fit_image(frame[:1], size_mode, max_side)
    hooks = [TemporalLatentDropout(tld_k)] if tld_k > 1 else []
    for hook in hooks:
        hook.check((frames - 1) // 4 + 1, frames)
    start, expert = (None, None) if mode == "i2v" else (_still_latents(models, fitted, frames), _low_expert(models))
    result = sample_i2v(models, fitted, prompt, negative_prompt, frames, steps, scheduler, shift,
                        Guidance(cfg, cfg), seed, hooks=hooks, progress=progress, start_latents=start,
                        strength=strength if mode == "sdedit" else 1.0, expert=expert)
    clip = fit.restore(image_from_pixels(result.video))
    best, scores = sharpest(clip[1:], score)
    notes = [n for n in (frame_note, fit.note) if n] + result.notes
    notes.append(f"sharpest of the still clip: frame {best + 1} (frames 0-{len(clip) - 1}; {score} "
                 f"{scores[best].item():.1f})")
    return RefineResult(clip[best + 1:best + 2], best + 1, torch.cat([sharpest(clip[:1], score)[1], scores]), clip,
                        notes)


def _low_expert(models) -> str:
    return "transformer_2" if models.transformer_2 is not None else "transformer"


@torch.no_grad()
def _still_latents(models, frame: torch.Tensor, frames: int) -> torch.Tensor:
    """Normalised latents of a clip that repeats `frame` `frames` times."""
    place = placement_of(models)
    vae = place.activate(models, "vae")
    try:
        pixels = pixels_from_image(frame).unsqueeze(2).expand(-1, -1, frames, -1, -1)
        return normalize_latents(vae, encode_mode(vae, pixels).float())
    finally:
        place.release(models, "vae")
