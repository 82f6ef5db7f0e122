"""ComfyUI nodes of VideoPrior Edit: thin adapters over the `videoprior_edit` library."""

from . import (
    byg,
    host,
    if_edit,
    imvideoedit,
    loaders,
    lora,
    native,
    rewrite,
    scpr,
    video4edit,
)

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
for _module in (native, loaders, lora, if_edit, rewrite, scpr, video4edit, imvideoedit, byg):
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)

for _cls in NODE_CLASS_MAPPINGS.values():  # warnings and LoRA summaries shown on the node (see host.reported)
    _fn = getattr(_cls, _cls.FUNCTION)
    if not getattr(_fn, "vpe_reported", False):
        setattr(_cls, _cls.FUNCTION, host.reported(_fn))
