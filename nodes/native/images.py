"""Native helper: bring a picture to a size a Wan graph takes (multiples of 16, longer side at most max_side)."""

from __future__ import annotations

from comfy_api.latest import io

from ...videoprior_edit.images import fit_image
from .. import host

FIT_MODES = ("resize", "crop")  # pad needs the padding cut off the results, which a native graph does not do


class FitImageForWan(io.ComfyNode):
    """Scales an image for Wan and gives its width and height for WanImageToVideo."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VPE_FitImageForWan",
            display_name="Fit Image for Wan",
            category="VideoPriorEdit/image",
            description=(
                "Brings a picture to a size Wan works at (sides in multiples of 16, longer side at most max_side) "
                "and outputs that size for WanImageToVideo, so the clip keeps the picture's shape."),
            inputs=[
                io.Image.Input("image", tooltip="The source picture, any size."),
                io.Int.Input("max_side", default=832, min=0, max=4096, step=16, tooltip=(
                    "Scale the picture down so its longer side is at most this (832 = Wan's 480p, 1280 = 720p). 0 ="
                    " keep the size.")),
                io.Combo.Input("size_mode", options=list(FIT_MODES), default="resize", tooltip=(
                    "Wan needs sides in multiples of 16: resize to the nearest ones (slight aspect change) or crop "
                    "the centre.")),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The picture at the model's size."),
                io.Int.Output(display_name="width", tooltip="Its width (connect to WanImageToVideo's width)."),
                io.Int.Output(display_name="height", tooltip="Its height (connect to WanImageToVideo's height)."),
            ],
        )

    @classmethod
    def execute(cls, image, max_side, size_mode):
        fitted, fit = fit_image(image, size_mode, max_side)
        width, height = fit.size
        return host.node_output(fit.note or f"{width}x{height}: no change", (fitted, width, height))


NODES = [FitImageForWan]
