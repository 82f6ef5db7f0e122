"""IF-Edit's image editor: the edit is where a short image-to-video clip from the source ends.

Wan2.2-I2V-A14B (two experts) with the Lightning LoRAs, 33 frames, 8 Lightning steps at CFG 1, and Temporal Latent
Dropout (K=3 from the expert switch at t=900) are the paper's settings and the defaults here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..images import fit_image, round_frames
from ..sampling import Guidance, SamplingHook, TemporalLatentDropout, sample_i2v
from ..sampling.condition import (
    decode_tail,
    denormalize_latents,
    image_from_pixels,
)

WAN_NEGATIVE = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
                "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，"
                "杂乱的背景，三条腿，背景人很多，倒着走")  # Wan's published default negative prompt


@dataclass
class EditResult:
    """frames: every decoded frame `(N, H, W, 3)` in [0, 1] at the source's size (N = 1 + 4(F'-1) with F' the latent
    frames left after TLD); last_frame `(1, H, W, 3)`; latents: the final normalised latents `(1, 16, F', h, w)` at
    the model size and their temporal `positions`; notes: what was adjusted and what TLD kept."""

    frames: torch.Tensor
    last_frame: torch.Tensor
    latents: torch.Tensor
    positions: list[int]
    raw_latents: torch.Tensor
    notes: list[str] = field(default_factory=list)
    size: tuple[int, int] = (0, 0)  # (width, height) the model ran at


def edit_image(models, image: torch.Tensor, prompt: str, negative_prompt: str = "", frames: int = 33, steps: int = 8,
               scheduler: str = "lightning", shift: float = 5.0, cfg_high: float = 1.0, cfg_low: float = 1.0,
               seed: int = 0, tld_k: int = 3, tld_threshold: float = 0.9, keep_last: bool = False,
               rope: str = "original", solver: str = "slice", size_mode: str = "resize", max_side: int = 0,
               progress=None, hooks: Sequence[SamplingHook] = (), tail_latents: int = 0) -> EditResult:
    """Edit `image` (IMAGE `(1, H, W, C)` in [0, 1]) as `prompt` describes (an evolution prompt works best).

    TLD is off with `tld_k=1`. Any size works (`size_mode`: resize / crop / pad to multiples of 16, after scaling the
    longer side to `max_side` when it is set); frames are rounded to 4k+1. `hooks` run after TLD's.
    `tail_latents` > 0 decodes only the frames of that many last latent frames (exactly; see `decode_tail`).
    """
    frames, frame_note = round_frames(frames)
    fitted, fit = fit_image(image[:1], size_mode, max_side)
    tld = TemporalLatentDropout(tld_k, tld_threshold, keep_last, rope, solver)
    tld.check((frames - 1) // 4 + 1, frames)
    batch = f"the image input holds {image.shape[0]} images; editing the first" if image.shape[0] > 1 else ""
    notes = [n for n in (frame_note, fit.note, batch, _lora_note(models, steps)) if n]
    result = sample_i2v(models, fitted, prompt, negative_prompt, frames, steps, scheduler, shift,
                        Guidance(cfg_high, cfg_low), seed, hooks=([tld] if tld_k > 1 else []) + list(hooks), progress=progress,
                        decode_video=tail_latents <= 0)
    video = result.video if tail_latents <= 0 else _decode_tail(models, result.latents, tail_latents)
    out = fit.restore(image_from_pixels(video))
    positions = result.positions or list(range(result.latents.shape[2]))
    raw = denormalize_latents(models.vae, result.latents.to(models.vae.dtype)).cpu()
    return EditResult(out, out[-1:], result.latents.cpu(), positions, raw, notes + result.notes, fit.size)


def _decode_tail(models, latents: torch.Tensor, tail: int) -> torch.Tensor:
    from ..sampling.loop import placement_of

    place = placement_of(models)
    try:
        return decode_tail(place.activate(models, "vae"), latents, tail)
    finally:
        place.release(models, "vae")


def _lora_note(models, steps: int) -> str:
    if steps < 20 and not models.loras:
        return (f"{steps} steps without a Lightning LoRA give blurry results: apply the lightx2v 4/8-step LoRAs to both "
                "experts, or use 40 UniPC steps with CFG 3.5")
    return ""
