"""ComfyUI nodes of VideoPrior Edit: thin adapters over the `videoprior_edit` library."""

from . import byg, if_edit, imvideoedit, loaders, lora, rewrite, scpr, video4edit

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
for _module in (loaders, lora, if_edit, rewrite, scpr, video4edit, imvideoedit, byg):
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
