"""VideoPrior Edit for ComfyUI: video diffusion models (Wan2.1/2.2, FLUX.1-dev) as image and video editors.

ComfyUI imports this folder as a package (under whatever name the folder has); the nodes live in `nodes/`, the
library in `videoprior_edit/` (also installable with `pip install -e .` for Python and the command line).
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"  # shows each node's report (settings used, warnings, LoRA summaries) on the node

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
