"""IF-Edit: image editing with an image-to-video model (evolution prompt, I2V edit with TLD, sharpest frame,
still-video refinement)."""

from .editor import WAN_NEGATIVE, EditResult, edit_image
from .refine import STILL_PROMPT, RefineResult, refine_still
from .sharpness import SCORES, sharpest, sharpness

__all__ = ["SCORES", "STILL_PROMPT", "WAN_NEGATIVE", "EditResult", "RefineResult", "edit_image", "refine_still",
           "sharpest", "sharpness"]
