"""Native nodes: the methods on ComfyUI's own MODEL / CONDITIONING / LATENT (models loaded by ComfyUI's loaders, GGUF
and quantised files included, core samplers and LoRA nodes around them). ComfyUI's model code is imported only when
they run."""

from . import byg, flux, frames, images, imvideoedit, lora, sampler

NODES = [node for module in (frames, sampler, byg, flux, imvideoedit, lora, images) for node in module.NODES]
