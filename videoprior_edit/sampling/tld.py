"""Temporal Latent Dropout (IF-Edit): after the layout is set, denoise only every K-th latent frame.

Once the timestep falls below `threshold * 1000` (default 0.9, Wan2.2-I2V's switch to the low-noise expert), the
latents keep frame 0 and every K-th frame, once; the I2V condition and the solver's multistep state are sliced the
same way. The paper leaves three choices open; the defaults and why:
- keep_last = False, the paper's words ("the first frame and every K-th"): 33 frames (9 latents) keep [0, 3, 6]
  and run the low-noise stage on a third of the tokens. True also keeps the last latent ([0, 3, 6, 8]), which
  holds the most evolved state the high-noise expert laid out: the clip then ends where it was planned to end,
  for one more latent frame of work (measured in bench/bench_tld.py).
- rope = "original": kept frames keep their temporal positions (0, K, 2K, ...), so the low-noise expert sees the
  same timeline it was laid out on (as ChronoEdit does when it drops frames); "compact" renumbers them 0..n-1.
- solver = "slice": UniPC keeps its second-order history for the kept frames (the state is per element, so this is
  exact bookkeeping); "reset" restarts it at first order. Euler has no history; both are the same there.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError
from .frames import ROPE_MODES, check_stride, kept_indices, output_frames, tld_plan
from .state import SamplerState, SamplingHook

SOLVER_MODES = ("slice", "reset")
__all__ = ["ROPE_MODES", "SOLVER_MODES", "TemporalLatentDropout", "kept_indices", "output_frames"]


@dataclass
class TemporalLatentDropout(SamplingHook):
    """The TLD hook for the Wan sampling loop (K=1 turns it off). Which frames and positions: `frames.tld_plan`,
    shared with the ComfyUI node that does the same between two samplers."""

    k: int = 3
    threshold: float = 0.9
    keep_last: bool = False
    rope: str = "original"
    solver: str = "slice"

    def __post_init__(self):
        check_stride(self.k, self.k + 1)
        if not 0 < self.threshold <= 1:
            raise InputError(f"TLD threshold must be in (0, 1] (got {self.threshold}).",
                             "It is a fraction of the 1000 training timesteps; 0.9 = Wan2.2-I2V's expert switch.")
        if self.rope not in ROPE_MODES or self.solver not in SOLVER_MODES:
            raise InputError(f"Unknown TLD option rope='{self.rope}' / solver='{self.solver}'.",
                             f"rope: {', '.join(ROPE_MODES)}; solver: {', '.join(SOLVER_MODES)}.")
        self.kept: list[int] | None = None

    def check(self, num_latent_frames: int, num_frames: int) -> None:
        """Refuse a K that would keep nothing but the first frame."""
        check_stride(self.k, num_latent_frames)

    def start(self, state: SamplerState) -> None:
        self.kept = None
        self.check(state.num_frames, output_frames(state.num_frames))

    def before_step(self, state: SamplerState) -> None:
        if self.k == 1 or self.kept is not None or float(state.t) >= self.threshold * 1000:
            return
        plan = tld_plan(state.num_frames, self.k, self.keep_last, self.rope, state.positions)
        self.kept = plan.kept
        state.select_frames(plan.kept, solver=self.solver, positions=plan.positions)
        state.notes.append(f"TLD at step {state.step} (t={float(state.t):.1f}): kept latent frames {self.kept}")
