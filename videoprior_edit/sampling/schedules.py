"""Schedulers for Wan's flow-matching models, with the shift always set explicitly.

- `unipc`: UniPC multistep (2nd order, bh2), Wan's default sampler (official: shift 5.0, 40 steps for I2V-A14B).
- `euler`: flow-match Euler with the scheduler's own spacing.
- `lightning`: flow-match Euler on linear sigmas 1 -> 0 (then shifted), the schedule the Wan2.2 Lightning LoRAs were
  distilled on; 8 steps at shift 5 give t = 1000, 972.2, 937.5, 892.9, 833.3, 750, 625, 416.7.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError

SCHEDULERS = ("unipc", "euler", "lightning")
NUM_TRAIN_TIMESTEPS = 1000


def make_scheduler(kind: str, shift: float):
    """A fresh scheduler (it keeps per-run solver state, so use one per run)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if not shift > 0:
        raise InputError(f"Shift must be positive (got {shift}).", "Wan uses 5.0 (3.0 for 480p T2V), Lightning 5.0.")
    if kind == "unipc":
        return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift,
                                       num_train_timesteps=NUM_TRAIN_TIMESTEPS)
    if kind in ("euler", "lightning"):
        return FlowMatchEulerDiscreteScheduler(shift=shift, num_train_timesteps=NUM_TRAIN_TIMESTEPS)
    raise InputError(f"Unknown scheduler '{kind}'.", f"Use one of: {', '.join(SCHEDULERS)}.")


def set_schedule(scheduler, kind: str, steps: int, device=None) -> torch.Tensor:
    """Set `steps` timesteps on `scheduler` the way `kind` prescribes; returns the timesteps."""
    if int(steps) != steps or steps < 1:
        raise InputError(f"Steps must be a whole number >= 1 (got {steps}).", "Use 8 with Lightning, 40 without.")
    if kind == "lightning":
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, int(steps) + 1)[:-1], device=device)
    else:
        scheduler.set_timesteps(int(steps), device=device)
    return scheduler.timesteps


def lightning_timesteps(steps: int = 8, shift: float = 5.0) -> torch.Tensor:
    """The Lightning schedule's timesteps (for display and tests)."""
    scheduler = make_scheduler("lightning", shift)
    return set_schedule(scheduler, "lightning", steps)
