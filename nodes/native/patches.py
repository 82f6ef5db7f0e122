"""What the native nodes change on ComfyUI's own objects: a LATENT, I2V conditioning and a Wan MODEL clone.

The method logic (which frames, which positions) comes from `videoprior_edit.sampling.frames`; this module only
applies a plan the ComfyUI way: frames sliced out of the LATENT and out of the conditioning's `concat_latent_image` /
`concat_mask`, temporal RoPE positions put on a clone of the MODEL as an object patch of the Wan model's
`rope_encode` with a table {frames in the clip: their positions} (see `TemporalPositions`).
"""

from __future__ import annotations

import torch

from ...videoprior_edit.errors import InputError
from ...videoprior_edit.sampling.frames import FramePlan

POSITIONS = "vpe_positions"  # LATENT key: the temporal positions of its frames (absent: 0, 1, 2, ...)
SLICED_CONDITIONING = ("concat_latent_image", "concat_mask")  # the I2V condition, one entry per latent frame
_ROPE_PATCH = "diffusion_model.rope_encode"


def latent_frames(latent: dict) -> int:
    samples = latent["samples"]
    if samples.ndim != 5:
        raise InputError(f"This LATENT is not a video latent (shape {tuple(samples.shape)}).",
                         "Connect the latent of a Wan image-to-video graph (WanImageToVideo, then a sampler).")
    return samples.shape[2]


def drop_frames(model, positive, negative, latent: dict, plan: FramePlan):
    """(model, positive, negative, latent) keeping only `plan.kept` frames, at `plan.positions`; inputs unchanged."""
    frames = latent_frames(latent)
    index = torch.tensor(plan.kept, dtype=torch.long)
    out = dict(latent)
    out["samples"] = latent["samples"].index_select(2, index.to(latent["samples"].device))
    mask = latent.get("noise_mask")
    if isinstance(mask, torch.Tensor) and mask.ndim == 5 and mask.shape[2] == frames:
        out["noise_mask"] = mask.index_select(2, index.to(mask.device))
    out[POSITIONS] = list(plan.positions)
    return (with_positions(model, plan.positions), sliced_conditioning(positive, index, frames),
            sliced_conditioning(negative, index, frames), out)


def sliced_conditioning(conditioning, index: torch.Tensor, frames: int):
    """A copy of CONDITIONING whose per-latent-frame I2V entries keep only the frames `index`."""
    out = []
    for cond, options in conditioning:
        options = dict(options)
        for key in SLICED_CONDITIONING:
            value = options.get(key)
            if isinstance(value, torch.Tensor) and value.ndim == 5:
                if value.shape[2] != frames:
                    raise InputError(f"The conditioning's {key} has {value.shape[2]} latent frames, the latent "
                                     f"{frames}.", "Connect the positive/negative that came with this latent (from "
                                     "the same WanImageToVideo and the sampler before this node).")
                options[key] = value.index_select(2, index.to(value.device))
        out.append([cond, options])
    return out


def latent_positions(latent: dict) -> list[int] | None:
    positions = latent.get(POSITIONS)
    return None if positions is None else list(positions)


def with_positions(model, positions: list[int]):
    """A clone of the Wan MODEL that gives a clip of `len(positions)` latent frames those temporal RoPE positions."""
    return with_clip_positions(model, {len(positions): list(positions)})


def with_clip_positions(model, by_frames: dict[int, list[int]]):
    """A clone of the Wan MODEL whose clips of F latent frames get the temporal positions `by_frames[F]` (others
    their own): an object patch of `rope_encode`, composed with one already there."""
    model = model.clone()
    current = model.object_patches.get(_ROPE_PATCH)
    table = dict(current.by_frames) if isinstance(current, TemporalPositions) else {}
    table.update(by_frames)
    model.add_object_patch(_ROPE_PATCH, TemporalPositions(_own_rope_encode(model), table))
    return model


def with_chronoedit_positions(model):
    """A clone of the MODEL that puts any clip of two latent frames at ChronoEdit's temporal positions 0 and 7."""
    from ...videoprior_edit.sampling.frames import chronoedit_positions

    return with_clip_positions(model, {2: chronoedit_positions(2)})


def _own_rope_encode(model):
    """The Wan model's own `rope_encode` (bound to it), never a patched one."""
    diffusion_model = model.get_model_object("diffusion_model")
    if not hasattr(type(diffusion_model), "rope_encode"):
        raise InputError(f"The MODEL is {type(diffusion_model).__name__}, not a Wan video model.",
                         "Temporal positions apply to Wan models (Wan2.1 / Wan2.2 / ChronoEdit) loaded with a "
                         "ComfyUI model loader.")
    return type(diffusion_model).rope_encode.__get__(diffusion_model)


class TemporalPositions:
    """Stands in for a Wan model's `rope_encode` on a MODEL clone (ComfyUI object patch): a clip of F latent frames
    with an entry in `by_frames` gets those temporal positions, anything else the model's own.

    Why an object patch and not `rope_options`: rope_options hold one linspace for every call of the MODEL, so they
    cannot say [0, 3, 6, 8] (TLD keep_last), [0..F-1, 0..F-1] (ByG's source frames) or "0 and 7 only for two-frame
    clips" (ChronoEdit), nor combine those on one MODEL; a diffusion-model wrapper would have to re-run the model's
    forward itself. Replacing this one method keeps every other wrapper, patch and attention override working, and
    leaves rope_options to the user (ScaleROPE): each frame's rotation comes from the model's own `rope_encode` (one
    frame at temporal start p x scale_t, shifts applied), concatenated in token order (frame-major)."""

    def __init__(self, original, by_frames: dict[int, list[int]]):
        self.original, self.by_frames = original, by_frames

    def __call__(self, t, h, w, t_start=0, steps_t=None, *args, **kwargs):
        positions = self.by_frames.get(int(t))
        if positions is None or t_start != 0 or steps_t is not None or kwargs.get("source_id"):
            return self.original(t, h, w, t_start, steps_t, *args, **kwargs)
        rope = (kwargs.get("transformer_options") or {}).get("rope_options") or {}
        scale = rope.get("scale_t", 1.0)
        parts = [self.original(1, h, w, p * scale, None, *args, **kwargs) for p in positions]
        return torch.cat(parts, dim=1)
