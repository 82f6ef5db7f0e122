"""VideoPrior Edit for ComfyUI: video diffusion models (Wan2.1/2.2, FLUX.1-dev) as image and video editors.

ComfyUI imports this folder as a package (under whatever name the folder has) and calls `comfy_entrypoint` (V3 nodes);
the nodes live in `nodes/`, the library in `videoprior_edit/` (also installable with `pip install -e .` for Python
and the command line, where ComfyUI is not needed).
"""

from .nodes import comfy_entrypoint

WEB_DIRECTORY = "./web"  # shows each node's report (settings used, warnings, LoRA summaries) on the node

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
