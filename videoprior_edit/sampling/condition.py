"""Conditions for Wan's image-to-video models, computed exactly as diffusers' `WanImageToVideoPipeline` does.

- the I2V condition: VAE-encode `[first image, zeros..., (last image)]` (mode of the latent distribution), normalise
  with the VAE's latents_mean/std, prepend a 4-channel mask (1 on the given frames) -> `(B, 20, F', h, w)`;
- CLIP image embeddings (`hidden_states[-2]`) for Wan2.1-I2V, FLF2V and ChronoEdit-style models;
- VAE latents <-> pixels in the VAE's raw scale and the normalised scale the transformer works in.
"""

from __future__ import annotations

import numpy as np
import torch

TEMPORAL_SCALE = 4  # frames per latent frame (after the first)
SPATIAL_SCALE = 8


def latent_frames(num_frames: int) -> int:
    return (num_frames - 1) // TEMPORAL_SCALE + 1


def _stats(vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, 1/std) shaped for broadcasting, built in the same order of operations as diffusers."""
    z = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(like.device, like.dtype)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(like.device, like.dtype)
    return mean, inv_std


def normalize_latents(vae, raw: torch.Tensor) -> torch.Tensor:
    mean, inv_std = _stats(vae, raw)
    return (raw - mean) * inv_std


def denormalize_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Normalised (transformer) latents -> the VAE's raw scale (what ComfyUI's LATENT holds)."""
    mean, inv_std = _stats(vae, latents)
    return latents / inv_std + mean


def vae_device(vae) -> torch.device:
    return next(vae.parameters()).device


@torch.no_grad()
def encode_mode(vae, video: torch.Tensor) -> torch.Tensor:
    """Raw-scale latents (mode) of a pixel video `(B, 3, F, H, W)` in [-1, 1]."""
    return vae.encode(video.to(device=vae_device(vae), dtype=vae.dtype)).latent_dist.mode()


@torch.no_grad()
def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Normalised latents `(B, 16, F', h, w)` -> pixels `(B, 3, 1 + 4(F'-1), H, W)` in [-1, 1] (float32 VAE)."""
    latents = latents.to(device=vae_device(vae), dtype=vae.dtype)
    return vae.decode(denormalize_latents(vae, latents), return_dict=False)[0]


@torch.no_grad()
def decode_tail(vae, latents: torch.Tensor, tail: int = 1, exact: bool = True) -> torch.Tensor:
    """Pixels of the last `tail` latent frames only, `(B, 3, N, H, W)` in [-1, 1].

    exact: the Wan VAE is causal, so the tail's frames depend on the decoder's cache of every earlier latent; the
    earlier latents are run through the decoder to build that cache but their pixels are dropped as they come, so
    the result equals the last 4*tail frames of a full decode while only the tail's pixels are ever held.
    Not exact (faster): the tail is decoded on its own; its first latent then decodes as a clip's first frame, so
    N = 1 + 4 (tail - 1) and the pixels differ (README: measured difference).
    """
    latents = latents.to(device=vae_device(vae), dtype=vae.dtype)
    frames = latents.shape[2]
    tail = max(1, min(int(tail), frames))
    z = denormalize_latents(vae, latents)
    if not exact:
        return vae.decode(z[:, :, frames - tail:], return_dict=False)[0]
    keep = 4 * tail if tail < frames else 1 + 4 * (frames - 1)
    if vae.use_tiling or vae.config.patch_size is not None or tail == frames:
        return vae.decode(z, return_dict=False)[0][:, :, -keep:]  # tiled decoding keeps its own per-tile caches
    vae.clear_cache()  # the decoder's per-latent loop, as AutoencoderKLWan._decode runs it
    x, kept = vae.post_quant_conv(z), []
    for i in range(frames):
        vae._conv_idx = [0]
        out = vae.decoder(x[:, :, i:i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=i == 0)
        if i >= frames - tail:
            kept.append(out)
    vae.clear_cache()
    return torch.clamp(torch.cat(kept, dim=2), min=-1.0, max=1.0)


def i2v_condition(vae, first: torch.Tensor, num_frames: int, last: torch.Tensor | None = None,
                  device=None, dtype=torch.float32) -> torch.Tensor:
    """The 20-channel I2V condition for a clip of `num_frames` frames starting at `first` (and ending at `last`,
    FLF2V). `first` / `last` are pixels `(B, 3, H, W)` in [-1, 1]."""
    batch, _, height, width = first.shape
    frames = [first.unsqueeze(2), first.new_zeros(batch, 3, num_frames - (1 if last is None else 2), height, width)]
    if last is not None:
        frames.append(last.unsqueeze(2))
    latent = encode_mode(vae, torch.cat(frames, dim=2)).to(device=device, dtype=dtype)
    latent = normalize_latents(vae, latent)
    return torch.cat([_mask(batch, num_frames, height, width, last is not None).to(latent.device), latent], dim=1)


def _mask(batch: int, num_frames: int, height: int, width: int, has_last: bool) -> torch.Tensor:
    """The 4-channel frame mask: 1 where a frame is given (the first frame counts four times)."""
    h, w = height // SPATIAL_SCALE, width // SPATIAL_SCALE
    mask = torch.ones(batch, 1, num_frames, h, w)
    mask[:, :, 1:num_frames - 1 if has_last else num_frames] = 0
    first = torch.repeat_interleave(mask[:, :, 0:1], dim=2, repeats=TEMPORAL_SCALE)
    mask = torch.cat([first, mask[:, :, 1:]], dim=2)
    return mask.view(batch, -1, TEMPORAL_SCALE, h, w).transpose(1, 2)


def to_pil(image: torch.Tensor):
    """A ComfyUI IMAGE frame `(H, W, C)` in [0, 1] -> an RGB PIL image (for the CLIP image processor)."""
    from PIL import Image

    return Image.fromarray((image.detach().cpu().float().clamp(0, 1) * 255).round().to(torch.uint8).numpy())


@torch.no_grad()
def clip_embeds(image_encoder, processor, images: list) -> torch.Tensor:
    """CLIP `hidden_states[-2]` of the images, batched together as one sequence (FLF2V passes first and last)."""
    inputs = processor(images=images, return_tensors="pt").to(next(image_encoder.parameters()).device)
    return image_encoder(**inputs, output_hidden_states=True).hidden_states[-2]


def pixels_from_image(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE `(B, H, W, C)` in [0, 1] -> model pixels `(B, 3, H, W)` in [-1, 1] (float32)."""
    return image[..., :3].permute(0, 3, 1, 2).float() * 2.0 - 1.0


def image_from_pixels(video: torch.Tensor) -> torch.Tensor:
    """Decoded video `(B, 3, F, H, W)` in [-1, 1] -> ComfyUI IMAGE frames `(B*F, H, W, 3)` in [0, 1]."""
    frames = (video / 2 + 0.5).clamp(0, 1)
    return frames.permute(0, 2, 3, 4, 1).reshape(-1, *frames.shape[3:], frames.shape[1]).float().cpu()


def image_from_uint8(array: np.ndarray) -> torch.Tensor:
    """uint8 RGB `(H, W, 3)` -> IMAGE `(1, H, W, 3)` with the same /255 rounding as diffusers' image processor."""
    return torch.from_numpy(array.astype(np.float32) / 255.0)[None]
