"""ByG image editing on FLUX.1-dev: the source image's VAE tokens are concatenated after the noisy tokens (the ByG
paper, appendix B) and the prediction is sliced back to the noisy tokens.

Position modes: "byg" (the source tokens get the noisy tokens' ids: "the same positional encodings") or "kontext"
(FLUX.1-Kontext's ids: the first id channel is 1 for the source tokens). The sampler follows diffusers'
`FluxKontextPipeline` step for step (prompt encoding, VAE encoding with the latent mode, seeded noise, packing,
FlowMatchEuler with FLUX's resolution-dependent shift `mu`, guidance embedding, slicing), so in "kontext" mode it
reproduces that pipeline exactly when everything runs in one dtype. Defaults: the paper's 20 steps; guidance 3.5
(FLUX.1-dev's default; Kontext's own is 2.5).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InputError
from ..images import fit_image
from ..models.flux import scheduler_config
from .flux import sync_flux_loras

POSITION_MODES = ("byg", "kontext")
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 3.5
NATIVE_MAX_SIDE = 1024


@dataclass
class ImageEdit:
    """image `(B, H, W, 3)` in [0, 1] at the source's size; latents: the final packed latents; notes."""

    image: torch.Tensor
    latents: torch.Tensor
    notes: list[str] = field(default_factory=list)


def calculate_shift(seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5,
                    max_shift: float = 1.15) -> float:
    """FLUX's time shift `mu` for `seq_len` image tokens (as diffusers' Flux pipelines compute it)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return seq_len * m + (base_shift - m * base_seq_len)


def latent_ids(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """FLUX's ids `(h*w, 3)` for a packed grid of `height x width` tokens: (0, row, column)."""
    ids = torch.zeros(height, width, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(height)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(width)[None, :]
    return ids.reshape(height * width, 3).to(device=device, dtype=dtype)


def source_ids(noisy_ids: torch.Tensor, mode: str) -> torch.Tensor:
    """The source tokens' ids: the noisy tokens' ("byg") or those with the first channel set to 1 ("kontext")."""
    if mode not in POSITION_MODES:
        raise InputError(f"Unknown position mode '{mode}'.", f"Use one of: {', '.join(POSITION_MODES)}.")
    ids = noisy_ids.clone()
    if mode == "kontext":
        ids[..., 0] = 1
    return ids


def pack(latents: torch.Tensor) -> torch.Tensor:
    """`(B, C, h, w)` -> `(B, h/2 * w/2, 4C)` (2x2 patches)."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(latents: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of `pack` for a latent grid `h x w`."""
    b, _, c = latents.shape
    x = latents.view(b, h // 2, w // 2, c // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c // 4, h, w)


@torch.no_grad()
def encode_flux_prompts(models, prompts: list[str], max_sequence_length: int | None = None, device=None,
                        place=None) -> list[dict[str, torch.Tensor]]:
    """Per prompt {"embeds": T5 `(1, L, D)`, "pooled": CLIP `(1, P)`} on `device`, as diffusers' Flux pipelines.
    Each encoder runs once for all prompts: where it is, or where `place` (a `Placement`) puts it, released after."""
    pooled = run_placed(models, place, "text_encoder", lambda clip: [_clip_pooled(models, clip, p, device)
                                                                   for p in prompts])
    embeds = run_placed(models, place, "text_encoder_2", lambda t5: [_t5_embeds(models, t5, p, max_sequence_length,
                                                                              device) for p in prompts])
    return [{"embeds": e, "pooled": c} for e, c in zip(embeds, pooled)]


def run_placed(models, place, name: str, encode):
    """`encode(models.<name>)`: where the module is, or on the device `place` puts it on (released after)."""
    if place is None:
        return encode(getattr(models, name))
    try:
        return encode(place.activate(models, name))
    finally:
        place.release(models, name)


def _clip_pooled(models, clip, prompt: str, device) -> torch.Tensor:
    ids = models.tokenizer([prompt], padding="max_length", max_length=models.tokenizer.model_max_length,
                           truncation=True, return_tensors="pt").input_ids
    return clip(ids.to(clip.device), output_hidden_states=False).pooler_output.to(dtype=clip.dtype, device=device)


def _t5_embeds(models, t5, prompt: str, max_sequence_length: int | None, device) -> torch.Tensor:
    length = max_sequence_length or models.transformer.vpe_info.max_sequence_length
    ids = models.tokenizer_2([prompt], padding="max_length", max_length=length, truncation=True,
                             return_tensors="pt").input_ids
    return t5(ids.to(t5.device), output_hidden_states=False)[0].to(dtype=t5.dtype, device=device)


def flux_velocity(transformer, noisy: torch.Tensor, sigma: torch.Tensor, text: dict, source: torch.Tensor | None = None,
                  positions: str = "byg", guidance: float = 3.5) -> torch.Tensor:
    """FLUX's velocity on latents `(B, 16, h, w)` (the editor's and the trainer's): packed 2x2 tokens, with the
    source image's tokens concatenated after them when `source` is given (ids: "byg" = the noisy tokens',
    "kontext" = first channel 1); the prediction is sliced to the noisy tokens and unpacked. `text`: see
    `encode_flux_prompts`."""
    dtype = transformer.x_embedder.weight.dtype
    b, _, h, w = noisy.shape
    tokens = pack(noisy.float())
    n = tokens.shape[1]
    ids = latent_ids(h // 2, w // 2, noisy.device, torch.float32)
    if source is not None:
        if tuple(source.shape[1:]) != tuple(noisy.shape[1:]):
            raise InputError(f"Source latents {tuple(source.shape)} do not fit {tuple(noisy.shape)}.",
                             "Encode the source at the training size.")
        tokens = torch.cat([tokens, pack(source.float().expand(b, -1, -1, -1))], dim=1)
        ids = torch.cat([ids, source_ids(ids, positions)], dim=0)
    embed = None
    if transformer.config.guidance_embeds:
        embed = torch.full((b,), float(guidance), device=noisy.device, dtype=torch.float32)
    text_ids = torch.zeros(text["embeds"].shape[1], 3, device=noisy.device)
    out = transformer(hidden_states=tokens.to(dtype), timestep=sigma.to(noisy.device, torch.float32), guidance=embed,
                      pooled_projections=text["pooled"].to(dtype), encoder_hidden_states=text["embeds"].to(dtype),
                      txt_ids=text_ids, img_ids=ids, return_dict=False)[0]
    return unpack(out[:, :n].float(), h, w)


@torch.no_grad()
def encode_flux_image(vae, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels `(B, 3, H, W)` in [-1, 1] -> scaled FLUX latents `(B, 16, H/8, W/8)` (latent mode)."""
    device = next(vae.parameters()).device
    latents = vae.encode(pixels.to(device=device, dtype=vae.dtype)).latent_dist.mode()
    return (latents - vae.config.shift_factor) * vae.config.scaling_factor


@torch.no_grad()
def decode_flux(vae, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents `(B, 16, h, w)` -> IMAGE `(B, H, W, 3)` in [0, 1]."""
    device = next(vae.parameters()).device
    z = latents.to(device=device, dtype=vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
    image = vae.decode(z, return_dict=False)[0]
    return (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu()


def flux_scheduler(image_tokens: int, steps: int, device):
    """FlowMatch Euler with FLUX's resolution-dependent shift `mu`, set to `steps` steps (as diffusers' pipelines)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(**scheduler_config())
    cfg = scheduler.config
    mu = calculate_shift(image_tokens, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                         cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, int(steps)), device=device, mu=mu)
    scheduler.set_begin_index(0)
    return scheduler


def edit_image(models, image: torch.Tensor, instruction: str, steps: int = DEFAULT_STEPS,
               guidance: float = DEFAULT_GUIDANCE, seed: int | torch.Generator = 0, positions: str = "byg",
               size_mode: str = "resize", max_side: int = NATIVE_MAX_SIDE, device=None,
               progress: Callable[[int], None] | None = None, max_sequence_length: int | None = None,
               decode_image: bool = True) -> ImageEdit:
    """Edit an IMAGE `(B, H, W, 3)` in [0, 1] (the first image is used) with a FLUX.1-dev set carrying a ByG LoRA.

    The image is brought to multiples of 16 (after scaling its longer side to `max_side`); the edit has the same
    size. Without a LoRA (`positions="kontext"`, FLUX.1-Kontext-dev weights) this is FLUX.1-Kontext editing.
    """
    if int(steps) != steps or steps < 1:
        raise InputError(f"Steps must be a whole number >= 1 (got {steps}).", "ByG uses 20.")
    source_ids(torch.zeros(1, 3), positions)  # checks the mode
    sync_flux_loras(models)
    place = models.placement
    if place is not None:
        device = place.compute_device
    elif device is None:
        device = next(models.transformer.parameters()).device
    device = torch.device(device)
    fitted, fit = fit_image(image[:1], size_mode, max_side)
    (text,) = encode_flux_prompts(models, [instruction], max_sequence_length, device, place)
    pixels = fitted[..., :3].permute(0, 3, 1, 2).float() * 2.0 - 1.0
    source = run_placed(models, place, "vae", lambda vae: encode_flux_image(vae, pixels)).to(device, torch.float32)
    h, w = source.shape[2:]
    from diffusers.utils.torch_utils import randn_tensor

    generator = seed if isinstance(seed, torch.Generator) else torch.Generator("cpu").manual_seed(int(seed))
    latents = randn_tensor((1, 16, h, w), generator=generator, device=device, dtype=torch.float32)
    scheduler = flux_scheduler((h // 2) * (w // 2), steps, device)
    transformer = place.activate(models, "transformer") if place is not None else models.transformer
    with torch.no_grad():
        for t in scheduler.timesteps:  # the scheduler's step is elementwise: latents stay unpacked
            velocity = flux_velocity(transformer, latents, t.expand(1).float() / 1000, text, source, positions,
                                     guidance)
            latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
            if progress is not None:
                progress(1)
    out = None
    if decode_image:
        out = fit.restore(run_placed(models, place, "vae", lambda vae: decode_flux(vae, latents)))
    if place is not None:
        place.finish(models)
    notes = [fit.note] if fit.note else []
    return ImageEdit(out, pack(latents), notes)
