"""ByG's loss terms (Bootstrap Your Generator, Sec. 4), as pure functions of velocities and latents.

Flow matching as Wan trains it: x_sigma = (1 - sigma) x0 + sigma eps, velocity v = eps - x0, so a velocity gives the
one-step clean estimate x0_hat = x_sigma - sigma v.

- prior (Sec. 4.2): the frozen base model's edit direction d = v_base(x, c_tgt) - v_base(x, c_src); the student's
  own shift from the source-caption velocity, v_student - v_base(x, c_src), is aligned with d by cosine
  (1 - cos, per sample, over all latent elements), plus an MSE anchor |v_student - v_base(x, c_tgt)|^2 with weight
  lambda that bounds the velocity's magnitude. The base velocities are targets (no gradient).
- cycle (Sec. 4.3): the reverse edit (inverse instruction), conditioned on the forward edit's result, must give the
  source's flow-matching velocity: |v_rev - (eps' - x_src)|^2.
- gradient routing (Eq. 4): the reverse pass *sees* the EMA model's clean estimate but *learns through* the
  forward one-step prediction: cond = x0_ema + (x0_hat - sg(x0_hat)) (value: x0_ema exactly; gradient: d/d x0_hat).
- identity: source as input and condition, inverse instruction: |v - (eps - x_src)|^2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def one_step_estimate(noisy: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x0_hat = x_sigma - sigma v (sigma per sample)."""
    return noisy - _per_sample(sigma, noisy) * velocity


def route_gradients(clean: torch.Tensor, one_step: torch.Tensor) -> torch.Tensor:
    """Straight-through gradient routing: the value of `clean` (the EMA's clean estimate, which never gets a
    gradient), the gradient of `one_step` (x0_hat = x_t - sigma v_forward)."""
    return clean.detach() + (one_step - one_step.detach())


def direction_loss(student: torch.Tensor, base_target: torch.Tensor, base_source: torch.Tensor,
                   eps: float = 1e-8) -> torch.Tensor:
    """1 - cos(v_student - v_base(c_src), v_base(c_tgt) - v_base(c_src)), per sample over all elements, mean over
    the batch."""
    shift = (student.float() - base_source.detach().float()).flatten(1)
    direction = (base_target.detach().float() - base_source.detach().float()).flatten(1)
    return (1.0 - F.cosine_similarity(shift, direction, dim=1, eps=eps)).mean()


def anchor_loss(student: torch.Tensor, base_target: torch.Tensor) -> torch.Tensor:
    """MSE between the student's velocity and the frozen model's target-caption velocity."""
    return F.mse_loss(student.float(), base_target.detach().float())


def prior_loss(student: torch.Tensor, base_target: torch.Tensor, base_source: torch.Tensor,
               anchor_weight: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_prior = L_dir + lambda L_mse; returns the total and its parts."""
    direction = direction_loss(student, base_target, base_source)
    anchor = anchor_loss(student, base_target)
    return direction + anchor_weight * anchor, {"direction": direction, "anchor": anchor}


def flow_target(clean: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The flow-matching velocity that takes `noise` to `clean`: eps - x0."""
    return noise - clean


def velocity_loss(velocity: torch.Tensor, clean: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """|v - (eps - x0)|^2 (cycle and identity losses)."""
    return F.mse_loss(velocity.float(), flow_target(clean, noise).detach().float())


def noised(clean: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = _per_sample(sigma, clean)
    return (1 - s) * clean + s * noise


def _per_sample(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return sigma.to(like.device, like.dtype).view(-1, *([1] * (like.dim() - 1)))
