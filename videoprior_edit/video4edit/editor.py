"""Video4Edit / ChronoEdit-style editing: the edit is the tail frame of a very short image-to-video clip, and the
FLF2V teacher's trajectory from the source (first frame) to the edited image (last frame).

Published ChronoEdit-14B defaults: 50 UniPC steps, CFG 5, shift 5; with its distillation LoRA 8 steps, CFG 1,
shift 2. Wan2.1-FLF2V's official defaults: 50 steps, CFG 5, shift 16 (720p).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import InputError
from ..images import fit_image, resize, round_frames
from ..sampling import Guidance, SamplerState, SamplingHook, sample_i2v
from ..sampling.condition import decode_tail, image_from_pixels
from ..sampling.frames import (
    CHRONOEDIT_ROPE_MODES,
    chronoedit_positions,
    reasoning_plan,
)
from ..sampling.loop import placement_of

POSITIONS = ("auto", "consecutive", "chronoedit")
PRESETS = {"chronoedit": {"steps": 50, "cfg": 5.0, "shift": 5.0},
           "chronoedit_distilled": {"steps": 8, "cfg": 1.0, "shift": 2.0},
           "flf2v": {"steps": 50, "cfg": 5.0, "shift": 16.0}}


@dataclass
class TailEdit:
    """edited `(1, H, W, 3)`: the clip's last frame; clip `(N, H, W, 3)`: the whole clip with `decode_clip`, else
    the last latent's 4 frames; latents: the final normalised latents."""

    edited: torch.Tensor
    clip: torch.Tensor
    latents: torch.Tensor
    notes: list[str] = field(default_factory=list)


class ChronoEditPositions(SamplingHook):
    """ChronoEdit's temporal RoPE: a clip of two latent frames sits at positions 0 and 7, as if the frames between
    had been dropped (its `ChronoEditRotaryPosEmbed`); longer clips keep 0..F-1."""

    def start(self, state: SamplerState) -> None:
        state.positions = chronoedit_positions(state.num_frames)


class TemporalReasoning(SamplingHook):
    """ChronoEdit's temporal reasoning (diffusers `ChronoEditPipeline(enable_temporal_reasoning=True)`): the clip is
    sampled in full for the first `steps` steps (the model reasons through the change over time), then only its first
    and last latent frames go on (`frames.reasoning_plan`; solver history sliced alike), at ChronoEdit's positions."""

    def __init__(self, steps: int, rope: str = "chronoedit"):
        if rope not in CHRONOEDIT_ROPE_MODES:
            raise InputError(f"Unknown temporal positions '{rope}'.", f"Use one of: {', '.join(CHRONOEDIT_ROPE_MODES)}.")
        self.steps, self.rope = steps, rope

    def before_step(self, state: SamplerState) -> None:
        if state.step == self.steps and state.num_frames > 2:
            plan = reasoning_plan(state.num_frames, self.rope, state.positions)
            state.select_frames(plan.kept, positions=plan.positions)
            state.notes.append(f"temporal reasoning for {self.steps} steps, then {plan.describe()}")


def is_chronoedit(models) -> bool:
    """Whether the set's model is ChronoEdit (by its file or folder name, or a ChronoEdit diffusers config)."""
    source = Path(models.sources.get("model", ""))
    config = source / "config.json" if source.is_dir() else None
    named = "chrono" in str(source).lower()
    return named or bool(config and config.is_file() and "ChronoEdit" in config.read_text())


def edit_tail_frame(models, image: torch.Tensor, instruction: str, negative_prompt: str = "", frames: int = 5,
                    steps: int = 50, cfg: float = 5.0, shift: float = 5.0, scheduler: str = "unipc", seed: int = 0,
                    decode_clip: bool = False, size_mode: str = "resize", max_side: int = 0,
                    positions: str = "auto", reasoning_steps: int = 0, progress=None) -> TailEdit:
    """Edit `image` (IMAGE `(1, H, W, C)`) with an I2V model as the last frame of a `frames`-long clip (5 = two
    latent frames, the shortest useful clip). Only the last latent's frames are decoded unless `decode_clip`.
    `positions`: "chronoedit" uses ChronoEdit's temporal RoPE (see `ChronoEditPositions`), "consecutive" Wan's,
    "auto" picks ChronoEdit's for ChronoEdit models. `reasoning_steps` > 0: ChronoEdit's temporal reasoning (a
    longer clip, e.g. 29 frames, for that many steps, then only its first and last latent; see
    `TemporalReasoning`)."""
    if positions not in POSITIONS:
        raise InputError(f"Unknown positions '{positions}'.", f"Use one of: {', '.join(POSITIONS)}.")
    frames, frame_note = round_frames(frames)
    if reasoning_steps and frames <= 5:
        raise InputError(f"Temporal reasoning needs a clip longer than {frames} frames.",
                         "ChronoEdit reasons on 29 frames; or set the reasoning steps to 0.")
    fitted, fit = fit_image(image[:1], size_mode, max_side)
    chrono = positions == "chronoedit" or (positions == "auto" and is_chronoedit(models))
    hooks = [ChronoEditPositions()] if chrono else []
    if reasoning_steps:
        hooks.append(TemporalReasoning(reasoning_steps, "chronoedit" if chrono else "original"))
    result = sample_i2v(models, fitted, instruction, negative_prompt, frames, steps, scheduler, shift, Guidance(cfg),
                        seed, progress=progress, decode_video=decode_clip, hooks=hooks)
    video = result.video if decode_clip else _tail(models, result.latents)
    clip = fit.restore(image_from_pixels(video))
    notes = [n for n in (frame_note, fit.note) if n] + (["ChronoEdit temporal positions"] if chrono else [])
    notes += result.notes
    return TailEdit(clip[-1:], clip, result.latents.cpu(), notes)


def _tail(models, latents: torch.Tensor) -> torch.Tensor:
    place = placement_of(models)
    try:
        return decode_tail(place.activate(models, "vae"), latents, 1)
    finally:
        place.release(models, "vae")


def teacher_trajectory(models, source: torch.Tensor, edited: torch.Tensor, prompt: str, negative_prompt: str = "",
                       frames: int = 33, steps: int = 50, cfg: float = 5.0, shift: float = 16.0,
                       scheduler: str = "unipc", seed: int = 0, size_mode: str = "resize", max_side: int = 0,
                       progress=None) -> tuple[torch.Tensor, list[str]]:
    """The in-between frames from `source` to `edited` (FLF2V: first and last frame given), `(N, H, W, 3)`.

    `edited` is brought to the source's model size; an evolution prompt ("the car slowly turns blue...") guides the
    motion."""
    if models.transformer.vpe_info.family != "flf2v":
        raise InputError(f"{models.name} is not a first-last-frame model.",
                         "Load Wan2.1-FLF2V-14B-720P (wan2.1_flf2v_720p_14B_fp16) with clip_vision_h.")
    frames, frame_note = round_frames(frames)
    first, fit = fit_image(source[:1], size_mode, max_side)
    last = resize(fit_image(edited[:1], size_mode, max_side)[0], *fit.size)
    result = sample_i2v(models, first, prompt, negative_prompt, frames, steps, scheduler, shift, Guidance(cfg), seed,
                        last_image=last, progress=progress)
    return fit.restore(image_from_pixels(result.video)), [n for n in (frame_note, fit.note) if n]
