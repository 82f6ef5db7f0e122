"""Native helper: bring a picture to a size a Wan graph takes (multiples of 16, longer side at most max_side)."""

from __future__ import annotations

from ...videoprior_edit.images import fit_image
from .. import host

FIT_MODES = ("resize", "crop")  # pad needs the padding cut off the results, which a native graph does not do


class FitImageForWan:
    """Scales an image for Wan and gives its width and height for WanImageToVideo."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The source picture, any size."}),
            "max_side": ("INT", {"default": 832, "min": 0, "max": 4096, "step": 16, "tooltip": (
                "Scale the picture down so its longer side is at most this (832 = Wan's 480p, 1280 = 720p). 0 = keep "
                "the size.")}),
            "size_mode": (list(FIT_MODES), {"default": "resize", "tooltip": (
                "Wan needs sides in multiples of 16: resize to the nearest ones (slight aspect change) or crop the "
                "centre.")}),
        }}

    RETURN_TYPES = ("IMAGE", "INT", "INT")
    RETURN_NAMES = ("image", "width", "height")
    OUTPUT_TOOLTIPS = ("The picture at the model's size.", "Its width (connect to WanImageToVideo's width).",
                       "Its height (connect to WanImageToVideo's height).")
    FUNCTION = "fit"
    CATEGORY = "VideoPriorEdit/image"
    DESCRIPTION = ("Brings a picture to a size Wan works at (sides in multiples of 16, longer side at most max_side) "
                   "and outputs that size for WanImageToVideo, so the clip keeps the picture's shape.")

    def fit(self, image, max_side, size_mode):
        fitted, fit = fit_image(image, size_mode, max_side)
        width, height = fit.size
        return host.node_output(fit.note or f"{width}x{height}: no change", (fitted, width, height))


NODE_CLASS_MAPPINGS = {"VPE_FitImageForWan": FitImageForWan}
NODE_DISPLAY_NAME_MAPPINGS = {"VPE_FitImageForWan": "Fit Image for Wan"}
