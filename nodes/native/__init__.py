"""Native nodes: the methods on ComfyUI's own MODEL / CONDITIONING / LATENT (models loaded by ComfyUI's loaders, GGUF
and quantised files included, core samplers and LoRA nodes around them). ComfyUI is imported only when they run."""

from . import byg, flux, frames, images, imvideoedit, lora, sampler

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
for _module in (frames, sampler, byg, flux, imvideoedit, lora, images):
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
