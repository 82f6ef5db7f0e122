"""ByG editors: source conditioning by token concatenation (the ByG paper, appendix B) on Wan T2V (video) and
FLUX.1-dev (image), run with ByG LoRAs loaded through `videoprior_edit.lora`. The trainer that makes those LoRAs is
`byg.train` (`videoprior-edit train-byg`; model families in `byg.family`, several processes in `byg.parallel`)."""

from .flux import FluxModels, load_flux_models, sync_flux_loras, with_flux_lora
from .image import ImageEdit, edit_image
from .video import SourceTokens, VideoEdit, edit_video, source_positions

__all__ = ["FluxModels", "ImageEdit", "SourceTokens", "VideoEdit", "edit_image", "edit_video", "load_flux_models",
           "source_positions", "sync_flux_loras", "with_flux_lora"]
