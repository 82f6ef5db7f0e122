"""ByG video editing on Wan text-to-video models (Wan2.2-T2V-A14B two experts, Wan2.1-T2V).

The source clip's clean latents are concatenated after the noisy latents along the token sequence (the ByG paper,
appendix B). Wan's temporal patch is 1, so concatenating along frames is concatenating along tokens:
`cat([noisy, source], dim=2)`; the transformer's prediction is sliced back to the first F frames.

Options the paper leaves open:
- `positions`: "same" (ByG: the source frames get the noisy frames' temporal RoPE positions, `range(F) * 2`) or
  "offset" (the source frames follow the noisy ones in time, positions F..2F-1, as Kontext offsets its image ids);
- `source_timestep`: "same" (one timestep for every token, Wan's usual scalar call) or "zero" (a `(B, seq)`
  timestep: t for the noisy tokens, 0 for the clean source tokens).

Defaults are the paper's inference settings: UniPC with Wan2.2's default configuration (T2V-A14B: 40 steps, shift
12, guidance 4.0 on the high-noise and 3.0 on the low-noise expert; Wan2.1-T2V: 50 steps, shift 5, guidance 5) at
Wan's native 480p size (longer side 832).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import InputError
from ..images import fit_image, round_frames
from ..sampling.condition import (
    decode,
    encode_mode,
    image_from_pixels,
    normalize_latents,
    pixels_from_image,
)
from ..sampling.loop import Embeds, Guidance, denoise, encode_prompts, placement_of
from ..sampling.schedules import make_scheduler, set_schedule
from ..sampling.state import SamplerState, SamplingHook

POSITION_MODES = ("same", "offset")
SOURCE_TIMESTEPS = ("same", "zero")
# Wan's own T2V defaults (wan/configs): UniPC, steps, shift, guidance (high-noise / single, low-noise expert).
T2V_DEFAULTS = {"two_experts": {"steps": 40, "shift": 12.0, "cfg": 4.0, "cfg_low": 3.0},
                "single": {"steps": 50, "shift": 5.0, "cfg": 5.0, "cfg_low": None}}
NATIVE_MAX_SIDE = 832  # 480x832, Wan's native 480p


def source_positions(frames: int, mode: str = "same", base: list[int] | None = None) -> list[int]:
    """Temporal RoPE positions of `[noisy frames, source frames]`: the noisy frames keep `base` (default 0..F-1);
    the source frames get the same positions ("same", ByG) or the next F ("offset")."""
    if mode not in POSITION_MODES:
        raise InputError(f"Unknown position mode '{mode}'.", f"Use one of: {', '.join(POSITION_MODES)}.")
    base = list(range(frames)) if base is None else list(base)
    return base + (base if mode == "same" else [max(base) + 1 + i for i in range(frames)])


class SourceTokens(SamplingHook):
    """Concatenates the clean source latents `(B, 16, F, h, w)` (normalised) after the noisy ones along frames, with
    positions from `source_positions` and, with `source_timestep="zero"`, a per-token timestep that is 0 on the
    source tokens; the prediction is sliced back to the noisy frames."""

    def __init__(self, source: torch.Tensor, positions: str = "same", source_timestep: str = "same"):
        if source_timestep not in SOURCE_TIMESTEPS:
            raise InputError(f"Unknown source timestep '{source_timestep}'.",
                             f"Use one of: {', '.join(SOURCE_TIMESTEPS)}.")
        source_positions(1, positions)  # checks the mode
        self.source, self.positions, self.source_timestep = source, positions, source_timestep

    def model_input(self, state: SamplerState, x, timestep, positions):
        if tuple(self.source.shape[2:]) != tuple(x.shape[2:]) or self.source.shape[1] != x.shape[1]:
            raise InputError(f"Source latents {tuple(self.source.shape)} do not fit the clip {tuple(x.shape)}.",
                             "Encode a source clip of the same size and frame count.")
        frames = x.shape[2]
        source = self.source.to(x.device, x.dtype).expand(x.shape[0], -1, -1, -1, -1)
        x = torch.cat([x, source], dim=2)
        if self.source_timestep == "zero":
            per_frame = (x.shape[3] // 2) * (x.shape[4] // 2)  # tokens per latent frame (spatial patch 2x2)
            noisy = timestep.reshape(-1, 1).expand(x.shape[0], frames * per_frame)
            timestep = torch.cat([noisy, torch.zeros_like(noisy)], dim=1)
        return x, timestep, source_positions(frames, self.positions, positions)

    def model_output(self, state: SamplerState, prediction):
        return prediction[:, :, :state.num_frames]


@dataclass
class VideoEdit:
    """frames `(N, H, W, 3)` in [0, 1] (the edited clip, at the source's size), latents: the final normalised
    latents `(1, 16, F, h, w)`, notes: what was adjusted."""

    frames: torch.Tensor
    latents: torch.Tensor
    notes: list[str] = field(default_factory=list)


def t2v_defaults(models) -> dict:
    return T2V_DEFAULTS["two_experts" if models.transformer_2 is not None else "single"]


def edit_video(models, frames: torch.Tensor, instruction: str, negative_prompt: str = "", steps: int | None = None,
               cfg: float | None = None, cfg_low: float | None = None, shift: float | None = None,
               scheduler: str = "unipc", seed: int = 0, positions: str = "same", source_timestep: str = "same",
               size_mode: str = "resize", max_side: int = NATIVE_MAX_SIDE,
               progress: Callable[[int], None] | None = None, decode_video: bool = True) -> VideoEdit:
    """Edit a clip with a ByG LoRA on a Wan T2V model set (Wan2.2-T2V-A14B or Wan2.1-T2V).

    `frames` is a ComfyUI IMAGE batch `(N, H, W, 3)` in [0, 1]; N is cut to 4k+1 (at least 5) and the frames are
    brought to multiples of 16 after scaling the longer side to `max_side` (default 832, 480p). None for steps /
    cfg / cfg_low / shift takes the model's defaults (`T2V_DEFAULTS`). Without a ByG LoRA the result is a plain
    T2V run whose attention also sees the source tokens.
    """
    family = models.transformer.vpe_info.family
    if family != "t2v":
        raise InputError(f"{models.name} is a {family.upper()} model; ByG video editing needs a text-to-video model.",
                         "Load Wan2.2-T2V-A14B (both experts) or Wan2.1-T2V with a ByG LoRA.")
    if frames.dim() != 4 or frames.shape[-1] not in (1, 3, 4):
        raise InputError(f"Expected frames (N, H, W, 3), got shape {tuple(frames.shape)}.", "Connect a video or "
                         "an IMAGE batch.")
    defaults = t2v_defaults(models)
    steps = defaults["steps"] if steps is None else steps
    shift = defaults["shift"] if shift is None else shift
    cfg = defaults["cfg"] if cfg is None else cfg
    cfg_low = (defaults["cfg_low"] if cfg_low is None else cfg_low) if models.transformer_2 is not None else None
    count, frame_note = round_frames(frames.shape[0])
    fitted, fit = fit_image(frames[:count], size_mode, max_side)
    guidance = Guidance(cfg, cfg_low)
    place = placement_of(models)
    device = place.compute_device
    try:
        uses_cfg = max(cfg, cfg_low if cfg_low is not None else cfg) > 1
        prompt, negative = encode_prompts(models, instruction, (negative_prompt or "") if uses_cfg else None)

        embeds = Embeds(prompt.to(device), None if negative is None else negative.to(device))
        vae = place.activate(models, "vae")
        pixels = pixels_from_image(fitted).permute(1, 0, 2, 3).unsqueeze(0)  # (1, 3, N, H, W)
        source = normalize_latents(vae, encode_mode(vae, pixels).to(device=device, dtype=torch.float32))
        place.release(models, "vae")
        sched = make_scheduler(scheduler, shift)
        timesteps = set_schedule(sched, scheduler, steps, device=device)
        generator = torch.Generator("cpu").manual_seed(int(seed))
        from diffusers.utils.torch_utils import randn_tensor

        noise = randn_tensor(tuple(source.shape), generator=generator, device=torch.device(device),
                             dtype=torch.float32)
        state = SamplerState(latents=noise, condition=None, scheduler=sched)
        hook = SourceTokens(source, positions, source_timestep)
        with torch.no_grad():
            denoise(models, state, embeds, timesteps, guidance, [hook], progress)
            out = None
            if decode_video:
                video = decode(place.activate(models, "vae"), state.latents)
                place.release(models, "vae")
                out = fit.restore(image_from_pixels(video))
    finally:
        place.finish(models)
    notes = [n for n in (frame_note, fit.note) if n] + state.notes
    return VideoEdit(out, state.latents, notes)
