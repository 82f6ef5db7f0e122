"""Which latent frames a method keeps part-way through sampling, and the temporal RoPE positions they then have.

Written once for the library's sampling hooks and for the ComfyUI nodes that do the same between two samplers:
- IF-Edit's Temporal Latent Dropout keeps frame 0 and every K-th one (and the last one with `keep_last`);
- ChronoEdit's temporal reasoning keeps the first and the last latent frame after its reasoning steps;
- ChronoEdit's own RoPE puts any clip of two latent frames at temporal positions 0 and 7 (`temporal_skip_len` 8 of
  diffusers' `ChronoEditRotaryPosEmbed`), as if the frames between had been dropped.
Position modes after a drop: "original" (each kept frame keeps its place on the timeline: 0, K, 2K, ...),
"compact" (renumbered 0..n-1) and, for two kept frames, "chronoedit" (0 and 7).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError

ROPE_MODES = ("original", "compact")
CHRONOEDIT_ROPE_MODES = ("chronoedit", "original", "compact")
CHRONOEDIT_SKIP = 8  # ChronoEdit's temporal_skip_len: a 2-latent clip sits at positions 0 and CHRONOEDIT_SKIP - 1


def kept_indices(num_latent_frames: int, k: int, keep_last: bool = False) -> list[int]:
    """Latent frames TLD keeps: 0, K, 2K, ... (and the last one when `keep_last`)."""
    kept = list(range(0, num_latent_frames, k))
    if keep_last and kept[-1] != num_latent_frames - 1:
        kept.append(num_latent_frames - 1)
    return kept


def output_frames(num_latent_frames: int) -> int:
    """Frames the Wan VAE decodes from `num_latent_frames` latents: 1 + 4 (F' - 1)."""
    return 1 + 4 * (num_latent_frames - 1)


def check_stride(k: int, num_latent_frames: int) -> None:
    """Refuse a TLD stride that is not a whole number >= 1, or that would keep nothing but the first frame."""
    if int(k) != k or k < 1:
        raise InputError(f"TLD stride K must be a whole number >= 1 (got {k}).", "The paper uses K=3.")
    if k > 1 and k > num_latent_frames - 1:
        raise InputError(f"TLD stride K={k} is larger than the clip: {output_frames(num_latent_frames)} frames are "
                         f"{num_latent_frames} latent frames, so K can be at most {num_latent_frames - 1}.",
                         "Lower K, or use more frames (the paper: 33 frames, K=3).")


def chronoedit_positions(num_latent_frames: int) -> list[int] | None:
    """ChronoEdit's temporal positions for a clip: [0, 7] for two latent frames, else None (Wan's 0..F-1)."""
    return [0, CHRONOEDIT_SKIP - 1] if num_latent_frames == 2 else None


@dataclass(frozen=True)
class FramePlan:
    """`kept`: indices into the current latent frames; `positions`: the temporal positions of the kept frames
    afterwards; `before`: the positions the frames had (0..F-1 unless an earlier drop changed them)."""

    kept: list[int]
    positions: list[int]
    before: list[int]

    @property
    def changes_nothing(self) -> bool:
        return self.kept == list(range(len(self.before))) and self.positions == self.before

    def describe(self) -> str:
        return f"kept latent frames {self.kept} of {len(self.before)} at temporal positions {self.positions}"


def plan_frames(kept: list[int], before: list[int] | None, num_latent_frames: int, rope: str) -> FramePlan:
    """The plan for keeping frames `kept` of a clip whose frames sit at `before` (None: 0..F-1)."""
    before = list(range(num_latent_frames)) if before is None else list(before)
    if len(before) != num_latent_frames:
        raise InputError(f"{len(before)} temporal positions were recorded for {num_latent_frames} latent frames.",
                         "Connect the latent that came out of the sampler right before this node.")
    if rope == "original":
        positions = [before[i] for i in kept]
    elif rope == "compact":
        positions = list(range(len(kept)))
    elif rope == "chronoedit" and len(kept) == 2:
        positions = chronoedit_positions(2)
    else:
        modes = CHRONOEDIT_ROPE_MODES if len(kept) == 2 else ROPE_MODES
        raise InputError(f"Unknown temporal positions '{rope}' for {len(kept)} kept frames.",
                         f"Use one of: {', '.join(modes)}.")
    return FramePlan(list(kept), positions, before)


def tld_plan(num_latent_frames: int, k: int, keep_last: bool = False, rope: str = "original",
             before: list[int] | None = None) -> FramePlan:
    """IF-Edit's Temporal Latent Dropout on a clip of `num_latent_frames` latents."""
    check_stride(k, num_latent_frames)
    return plan_frames(kept_indices(num_latent_frames, k, keep_last), before, num_latent_frames, rope)


def reasoning_plan(num_latent_frames: int, rope: str = "chronoedit", before: list[int] | None = None) -> FramePlan:
    """ChronoEdit's end of temporal reasoning: keep the first and the last latent frame."""
    if num_latent_frames < 2:
        raise InputError("Temporal reasoning needs a clip of at least 2 latent frames (5 video frames).",
                         "ChronoEdit reasons on 29 frames (8 latents) and then keeps the first and the last.")
    return plan_frames([0, num_latent_frames - 1], before, num_latent_frames, rope)
