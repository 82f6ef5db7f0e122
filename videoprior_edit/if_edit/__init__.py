"""IF-Edit: image editing with an image-to-video model (evolution prompt, I2V edit with TLD)."""

from .editor import WAN_NEGATIVE, EditResult, decode_latents, edit_image

__all__ = ["WAN_NEGATIVE", "EditResult", "decode_latents", "edit_image"]
