"""What the sampling loop carries from step to step, and the hooks methods plug in with."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch


def _slice_frames(value, index: torch.Tensor, frames: int):
    """`value` with its frame axis (dim 2) index-selected, when it is a latent-shaped tensor (or a list of them)."""
    if isinstance(value, torch.Tensor) and value.dim() == 5 and value.shape[2] == frames:
        return value.index_select(2, index.to(value.device))
    if isinstance(value, list) and any(isinstance(v, torch.Tensor) for v in value):
        return [_slice_frames(v, index, frames) for v in value]
    return value


def _reset_solver(scheduler) -> None:
    """Forget a multistep solver's history: its next step is first order, as at the start of sampling."""
    if hasattr(scheduler, "model_outputs"):
        scheduler.model_outputs = [None] * len(scheduler.model_outputs)
    if hasattr(scheduler, "timestep_list"):
        scheduler.timestep_list = [None] * len(scheduler.timestep_list)
    for name in ("last_sample", "sample"):
        if isinstance(getattr(scheduler, name, None), torch.Tensor):
            setattr(scheduler, name, None)
    if hasattr(scheduler, "lower_order_nums"):
        scheduler.lower_order_nums = 0


@dataclass
class SamplerState:
    """Latents `(B, 16, F, h, w)` in float32 and the I2V condition `(B, 20, F, h, w)` (None for T2V), the scheduler
    with its solver state, and the temporal RoPE positions of the frames (None: 0..F-1, the model's own)."""

    latents: torch.Tensor
    condition: torch.Tensor | None
    scheduler: object
    positions: list[int] | None = None
    step: int = 0
    t: torch.Tensor | None = None
    expert: str = "transformer"
    notes: list[str] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return self.latents.shape[2]

    def frame_positions(self) -> list[int]:
        return list(range(self.num_frames)) if self.positions is None else list(self.positions)

    def select_frames(self, indices: list[int], solver: str = "slice",
                      positions: str | list[int] = "original") -> None:
        """Keep only latent frames `indices`, consistently in the latents, the condition and the solver state.

        solver: "slice" keeps the multistep history of the kept frames, "reset" restarts the solver at first order.
        positions: "original" keeps each kept frame's temporal RoPE position, "compact" renumbers them 0..n-1, a list
        gives the kept frames' positions (see `frames.FramePlan`).
        """
        frames, old_positions = self.num_frames, self.frame_positions()
        index = torch.tensor(indices, dtype=torch.long)
        self.latents = self.latents.index_select(2, index.to(self.latents.device))
        if self.condition is not None:
            self.condition = self.condition.index_select(2, index.to(self.condition.device))
        if solver == "reset":
            _reset_solver(self.scheduler)
        else:
            for name, value in list(vars(self.scheduler).items()):
                sliced = _slice_frames(value, index, frames)
                if sliced is not value:
                    setattr(self.scheduler, name, sliced)
        if isinstance(positions, list):
            self.positions = None if positions == list(range(len(indices))) else list(positions)
        else:
            self.positions = [old_positions[i] for i in indices] if positions == "original" else None


class SamplingHook:
    """Base class for method hooks; every method is optional.

    - `start(state)`: once before the first step (reset per-run state here).
    - `before_step(state)`: before each step; may call `state.select_frames` (TLD) or change `state.positions`.
    - `model_input(state, x, timestep, positions) -> (x, timestep, positions)`: the transformer's input for this
      step (e.g. extra tokens concatenated along frames with their own positions / per-token timesteps).
    - `model_output(state, prediction) -> prediction`: e.g. drop the extra tokens' prediction again.
    - `forward_context(state, model)`: a context manager around each transformer call (e.g. replaced blocks).
    """

    def start(self, state: SamplerState) -> None:
        pass

    def before_step(self, state: SamplerState) -> None:
        pass

    def model_input(self, state: SamplerState, x, timestep, positions):
        return x, timestep, positions

    def model_output(self, state: SamplerState, prediction):
        return prediction

    def forward_context(self, state: SamplerState, model):
        return contextlib.nullcontext()
