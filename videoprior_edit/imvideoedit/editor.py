"""ImVideoEdit video editing: a source video and an edit prompt -> the edited video, with the shared Wan loop.

Every transformer call gets the batch `[source; target]` (`SourceChunk`): the source video's VAE latents (clean,
t = 0 by default: see `adapter.py`) in front of the noisy target; the target's prediction is what the solver sees.
Wan2.1-T2V defaults: 50 UniPC steps, CFG 5, shift 3 (480p). Frame counts that are not 4k+1 are padded with the
last frame and cut back afterwards, so the output has the source's frame count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import InputError
from ..images import fit_image
from ..sampling import (
    Embeds,
    Guidance,
    SamplerState,
    SamplingHook,
    denoise,
    encode_prompts,
)
from ..sampling.condition import (
    decode,
    encode_mode,
    image_from_pixels,
    normalize_latents,
    pixels_from_image,
)
from ..sampling.loop import compute_dtype, placement_of, start_from
from ..sampling.schedules import NUM_TRAIN_TIMESTEPS, make_scheduler, set_schedule
from .adapter import AdapterConfig, ImVideoEditAdapter, applied, check_base


@dataclass
class VideoEdit:
    """frames `(N, H, W, 3)` in [0, 1]: the source's frame count, at the model size (the source's with pad), the
    final latents, notes."""

    frames: torch.Tensor
    latents: torch.Tensor
    notes: list[str] = field(default_factory=list)


def source_input(config: AdapterConfig, source: torch.Tensor, t: torch.Tensor,
                 noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The source chunk and its timesteps `(B,)` for target timesteps `t` `(B,)` (same in training and editing)."""
    if config.source_latents == "noised":
        sigma = (t.float() / NUM_TRAIN_TIMESTEPS).view(-1, *[1] * (source.dim() - 1)).to(source.device)
        source = (1 - sigma) * source + sigma * noise.to(source)
    t_source = torch.zeros_like(t) if config.source_timestep == "zero" else t
    return source, t_source


class SourceChunk(SamplingHook):
    """Runs the adapted model on `[source; target]` and hands the target's prediction back to the loop."""

    def __init__(self, adapter: ImVideoEditAdapter, source: torch.Tensor, device=None, dtype=None,
                 noise: torch.Tensor | None = None):
        self.adapter, self.source, self.noise = adapter, source, noise
        self.device, self.dtype = device, dtype

    def model_input(self, state: SamplerState, x, timestep, positions):
        source, t_source = source_input(self.adapter.config, self.source.to(x.device), timestep, self.noise)
        return torch.cat([source.to(x.dtype), x]), torch.cat([t_source, timestep]), positions

    def model_output(self, state: SamplerState, prediction):
        return prediction.chunk(2)[1]

    def forward_context(self, state: SamplerState, model):
        return applied(model, self.adapter, self.device, self.dtype)


def pad_frames(frames: torch.Tensor) -> tuple[torch.Tensor, str]:
    """Frames `(N, ...)` padded to 4k+1 with copies of the last frame, and a note when padded."""
    n = frames.shape[0]
    padded = -(-(n - 1) // 4) * 4 + 1
    if padded == n:
        return frames, ""
    extra = frames[-1:].expand(padded - n, *frames.shape[1:])
    return torch.cat([frames, extra]), f"{n} frames padded to {padded} (Wan makes 4k+1) and cut back"


def check_request(models, adapter: ImVideoEditAdapter, frames: torch.Tensor, strength: float) -> None:
    """Clear messages before anything heavy runs."""
    if models.family != "t2v" or models.transformer_2 is not None:
        raise InputError(f"{models.name} is not a single text-to-video model; ImVideoEdit runs on Wan2.1-T2V.",
                         f"Load {adapter.config.base} (the adapter's base) in Load Wan Models.")
    check_base(adapter.config, models.transformer)
    if frames.dim() != 4 or frames.shape[0] < 1:
        raise InputError(f"Expected video frames (N, H, W, C), got shape {tuple(frames.shape)}.",
                         "Connect an IMAGE batch or a VIDEO.")
    if not 0 < strength <= 1:
        raise InputError(f"Strength must be in (0, 1] (got {strength}).", "1 = from noise; lower keeps more.")


def edit_video(models, adapter: ImVideoEditAdapter, frames: torch.Tensor, prompt: str, negative_prompt: str = "",
               steps: int = 50, cfg: float = 5.0, shift: float = 3.0, scheduler: str = "unipc", seed: int = 0,
               strength: float = 1.0, size_mode: str = "resize", max_side: int = 832,
               progress: Callable[[int], None] | None = None, hooks: Sequence[SamplingHook] = ()) -> VideoEdit:
    """Edit a video (IMAGE frames `(N, H, W, C)` in [0, 1]) with an ImVideoEdit adapter on its Wan2.1-T2V base.

    `prompt` describes the video after the edit; `strength` < 1 starts SDEdit-style from the source latents
    noised to that point of the schedule (only the remaining steps run); `hooks` run after the source chunk's."""
    check_request(models, adapter, frames, strength)
    fitted, fit = fit_image(frames, size_mode, max_side)
    padded, pad_note = pad_frames(fitted)
    place = placement_of(models)
    device = place.compute_device
    try:
        embeds = _embeds(models, prompt, negative_prompt, cfg, device)
        source = _encode(models, place, padded, device)
        sched = make_scheduler(scheduler, shift)
        timesteps = set_schedule(sched, scheduler, steps, device=device)
        generator = torch.Generator("cpu").manual_seed(int(seed))
        latents = torch.randn(source.shape, generator=generator).to(device)
        source_noise = torch.randn(source.shape, generator=generator).to(device)
        if strength < 1:
            timesteps, latents = start_from(sched, timesteps, strength, source, latents)
        hook = SourceChunk(adapter, source, device, compute_dtype(models.transformer), source_noise)
        state = SamplerState(latents=latents, condition=None, scheduler=sched)
        with torch.no_grad():
            denoise(models, state, embeds, timesteps, Guidance(cfg), [hook, *hooks], progress)
            video = decode(place.activate(models, "vae"), state.latents)
        place.release(models, "vae")
    finally:
        place.finish(models)
    out = fit.restore(image_from_pixels(video)[: frames.shape[0]])
    sdedit = f"SDEdit from the source: {len(timesteps)} of {steps} steps" if strength < 1 else ""
    notes = [n for n in (fit.note, pad_note, sdedit) if n]
    return VideoEdit(out, state.latents.cpu(), notes)


def steps_to_run(steps: int, strength: float) -> int:
    """How many denoising steps an edit runs (for progress bars)."""
    return max(1, round(steps * strength)) if strength < 1 else steps


def _embeds(models, prompt: str, negative_prompt: str, cfg: float, device) -> Embeds:
    positive, negative = encode_prompts(models, prompt, (negative_prompt or "") if cfg > 1 else None)
    return Embeds(positive.to(device), None if negative is None else negative.to(device))


def _encode(models, place, frames: torch.Tensor, device) -> torch.Tensor:
    """Normalised VAE latents `(1, 16, F', h, w)` (float32) of frames `(N, H, W, 3)`."""
    vae = place.activate(models, "vae")
    pixels = pixels_from_image(frames).permute(1, 0, 2, 3).unsqueeze(0)
    with torch.no_grad():
        latents = normalize_latents(vae, encode_mode(vae, pixels).float()).to(device)
    place.release(models, "vae")
    return latents
