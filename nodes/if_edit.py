"""IF-Edit nodes: the image-to-video editor with Temporal Latent Dropout."""

from __future__ import annotations

import logging

from comfy_api.latest import io

from ..videoprior_edit.if_edit import WAN_NEGATIVE, edit_image
from ..videoprior_edit.images import SIZE_MODES
from ..videoprior_edit.sampling import SCHEDULERS
from ..videoprior_edit.sampling.tld import ROPE_MODES, SOLVER_MODES
from . import host
from .loaders import WAN_MODELS

WAN_LATENTS = "VPE_WAN_LATENTS"
CATEGORY = "VideoPriorEdit/IF-Edit"
log = logging.getLogger(__name__)


class IFEditImageToVideo(io.ComfyNode):
    """Edits an image by letting an image-to-video model play the change out; the edit is at the end of the clip."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VPE_IFEditImageToVideo",
            display_name="I2V Edit with Temporal Latent Dropout (IF-Edit)",
            category=CATEGORY,
            description=(
                "IF-Edit: the image becomes the first frame of a short video that plays out the prompt; the last "
                "frame is the edit. Temporal Latent Dropout skips redundant frames once the layout is set."),
            inputs=[
                io.Custom(WAN_MODELS).Input("wan_models", tooltip=(
                    "Wan2.2-I2V-A14B (both experts) from Load Wan Models; Wan2.1-I2V with CLIP also works.")),
                io.Image.Input("image", tooltip=(
                    "The source image (first frame of the clip). Any size: see size_mode.")),
                io.String.Input("prompt", multiline=True, default="", tooltip=(
                    "How the picture evolves over time toward the edit, e.g. 'She releases her grip, the card "
                    "floats out of frame, her hands become empty; lighting and pose unchanged'. Connect the prompt "
                    "rewriter here.")),
                io.String.Input("negative_prompt", multiline=True, default=WAN_NEGATIVE, tooltip=(
                    "What to avoid (Wan's default shown). Only used when a CFG scale is above 1.")),
                io.Int.Input("frames", default=33, min=5, max=161, tooltip=(
                    "Clip length. Wan makes 4k+1 frames; other values are rounded (32 -> 33) and the info output "
                    "says so. The paper uses 33.")),
                io.Int.Input("steps", default=8, min=1, max=200, tooltip=(
                    "Denoising steps: 8 with the Lightning LoRAs (the paper), about 40 without.")),
                io.Float.Input("cfg_high_noise", default=1.0, min=0.0, max=20.0, step=0.1, tooltip=(
                    "Guidance of the high-noise expert (single model: the only scale). 1 = off (Lightning); 3.5 is "
                    "Wan's default without Lightning. Above 1 each step runs the model twice.")),
                io.Float.Input("cfg_low_noise", default=1.0, min=0.0, max=20.0, step=0.1, tooltip=(
                    "Guidance of the low-noise expert (Wan2.2-A14B); ignored for single models.")),
                io.Float.Input("shift", default=5.0, min=0.1, max=20.0, step=0.1, tooltip=(
                    "Flow-matching shift: 5.0 for Wan2.2-I2V and Lightning. Higher spends more steps at high noise.")),
                io.Combo.Input("scheduler", options=list(SCHEDULERS), default="lightning", tooltip=(
                    "lightning: Euler on the schedule the Lightning LoRAs were distilled on (use with them); unipc:"
                    " Wan's default sampler for 20-50 steps; euler: flow-match Euler.")),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip=(
                    "Noise seed.")),
                io.Boolean.Input("temporal_latent_dropout", default=True, tooltip=(
                    "IF-Edit's TLD: after the layout is set (threshold), denoise only every K-th latent frame. "
                    "About 1.75x faster in the paper with the same quality.")),
                io.Int.Input("tld_k", default=3, min=1, max=40, tooltip=(
                    "Keep latent frame 0 and every K-th one (the paper: 3). 1 = keep all.")),
                io.Float.Input("tld_threshold", default=0.9, min=0.01, max=1.0, step=0.01, tooltip=(
                    "Drop frames once the timestep falls below threshold x 1000. 0.9 = Wan2.2-I2V's switch to the "
                    "low-noise expert (the paper).")),
                io.Boolean.Input("tld_keep_last", default=False, tooltip=(
                    "Also keep the last latent frame (33 frames, K=3: [0, 3, 6, 8] instead of the paper's [0, 3, "
                    "6]). It holds the most evolved state the layout stage planned, so the clip ends where it was "
                    "meant to; costs one more latent frame of work. Off = the paper.")),
                io.Combo.Input("tld_rope", options=list(ROPE_MODES), default="original", tooltip=(
                    "Temporal positions of the kept frames: original (0, K, 2K, ...: the timeline the layout was "
                    "made on) or compact (0, 1, 2, ...).")),
                io.Combo.Input("tld_solver_state", options=list(SOLVER_MODES), optional=True, default="slice", tooltip=(
                    "UniPC's multistep history at the drop: slice it to the kept frames (keeps second order) or "
                    "reset (first order for one step). No effect with Euler/Lightning.")),
                io.Combo.Input("size_mode", options=list(SIZE_MODES), optional=True, default="resize", tooltip=(
                    "Wan needs sizes in multiples of 16: resize (slight aspect change), crop (centre) or pad (edge "
                    "pixels; the padding is cut off the results).")),
                io.Int.Input("max_side", optional=True, default=832, min=0, max=4096, step=16, tooltip=(
                    "Scale the image down so its longer side is at most this (832 = Wan's 480p). 0 = keep the size.")),
            ],
            outputs=[
                io.Image.Output(display_name="frames", tooltip=(
                    "Every decoded frame of the clip (fewer with TLD: 1 + 4(kept latents - 1)).")),
                io.Image.Output(display_name="last_frame", tooltip="The clip's last frame: the edit."),
                io.Custom(WAN_LATENTS).Output(display_name="wan_latents", tooltip=(
                    "The final latents with their frame positions, for Sharpest Frame / Still-Video Refiner.")),
                io.Latent.Output(display_name="latent", tooltip=(
                    "The final latents as a ComfyUI LATENT (raw VAE scale).")),
                io.String.Output(display_name="info", tooltip="What was adjusted (size, frames) and what TLD kept."),
            ],
        )

    @classmethod
    def execute(cls, wan_models, image, prompt, negative_prompt, frames, steps, cfg_high_noise, cfg_low_noise, shift,
                scheduler, seed, temporal_latent_dropout, tld_k, tld_threshold, tld_keep_last, tld_rope,
                tld_solver_state="slice", size_mode="resize", max_side=832):
        host.free_memory()  # ComfyUI's own models make room; this pack's set is placed by its placement policy
        progress = host.Progress(steps, "I2V edit")
        try:
            result = edit_image(wan_models, image, prompt, negative_prompt, frames, steps, scheduler, shift,
                                cfg_high_noise, cfg_low_noise, seed, tld_k if temporal_latent_dropout else 1,
                                tld_threshold, tld_keep_last, tld_rope, tld_solver_state, size_mode, max_side,
                                progress=progress)
        finally:
            progress.close()
        info = "\n".join(result.notes) or "no adjustments"
        log.info("I2V edit: %s", info.replace("\n", "; "))
        latents = {"latents": result.latents, "positions": result.positions, "size": result.size}
        return host.node_output(info, (result.frames, result.last_frame, latents, {"samples": result.raw_latents},
                                       info), preview=result.frames)


NODES = [IFEditImageToVideo]
