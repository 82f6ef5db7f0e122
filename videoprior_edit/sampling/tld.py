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
from .state import SamplerState, SamplingHook

ROPE_MODES = ("original", "compact")
SOLVER_MODES = ("slice", "reset")


def kept_indices(num_latent_frames: int, k: int, keep_last: bool = False) -> list[int]:
    """Latent frames TLD keeps: 0, K, 2K, ... (and the last one when `keep_last`)."""
    kept = list(range(0, num_latent_frames, k))
    if keep_last and kept[-1] != num_latent_frames - 1:
        kept.append(num_latent_frames - 1)
    return kept


def output_frames(num_latent_frames: int) -> int:
    """Frames the Wan VAE decodes from `num_latent_frames` latents: 1 + 4 (F' - 1)."""
    return 1 + 4 * (num_latent_frames - 1)


@dataclass
class TemporalLatentDropout(SamplingHook):
    """The TLD hook for the Wan sampling loop (K=1 turns it off)."""

    k: int = 3
    threshold: float = 0.9
    keep_last: bool = False
    rope: str = "original"
    solver: str = "slice"

    def __post_init__(self):
        if int(self.k) != self.k or self.k < 1:
            raise InputError(f"TLD stride K must be a whole number >= 1 (got {self.k}).", "The paper uses K=3.")
        if not 0 < self.threshold <= 1:
            raise InputError(f"TLD threshold must be in (0, 1] (got {self.threshold}).",
                             "It is a fraction of the 1000 training timesteps; 0.9 = Wan2.2-I2V's expert switch.")
        if self.rope not in ROPE_MODES or self.solver not in SOLVER_MODES:
            raise InputError(f"Unknown TLD option rope='{self.rope}' / solver='{self.solver}'.",
                             f"rope: {', '.join(ROPE_MODES)}; solver: {', '.join(SOLVER_MODES)}.")
        self.kept: list[int] | None = None

    def check(self, num_latent_frames: int, num_frames: int) -> None:
        """Refuse a K that would keep nothing but the first frame."""
        if self.k > 1 and self.k > num_latent_frames - 1:
            raise InputError(f"TLD stride K={self.k} is larger than the clip: {num_frames} frames are "
                             f"{num_latent_frames} latent frames, so K can be at most {num_latent_frames - 1}.",
                             "Lower K, or use more frames (the paper: 33 frames, K=3).")

    def start(self, state: SamplerState) -> None:
        self.kept = None
        self.check(state.num_frames, output_frames(state.num_frames))

    def before_step(self, state: SamplerState) -> None:
        if self.k == 1 or self.kept is not None or float(state.t) >= self.threshold * 1000:
            return
        self.kept = kept_indices(state.num_frames, self.k, self.keep_last)
        state.select_frames(self.kept, solver=self.solver, positions=self.rope)
        state.notes.append(f"TLD at step {state.step} (t={float(state.t):.1f}): kept latent frames {self.kept}")
