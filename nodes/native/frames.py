"""Native frame-dropping nodes: IF-Edit's Temporal Latent Dropout and ChronoEdit's temporal reasoning, placed between
two ComfyUI samplers on ComfyUI's own MODEL / CONDITIONING / LATENT, and ChronoEdit's temporal positions."""

from __future__ import annotations

from ...videoprior_edit.sampling.frames import (
    CHRONOEDIT_ROPE_MODES,
    ROPE_MODES,
    output_frames,
    reasoning_plan,
    tld_plan,
)
from .. import host
from .patches import (
    drop_frames,
    latent_frames,
    latent_positions,
    with_chronoedit_positions,
)

IF_EDIT = "VideoPriorEdit/IF-Edit"
VIDEO4EDIT = "VideoPriorEdit/Video4Edit"
LATENT_TIP = "The latent from the first sampler (KSamplerAdvanced with return_with_leftover_noise enabled)."
MODEL_OUT_TIP = "The model for the next sampler, with the kept frames' temporal positions."
FRAMES_INPUTS = {
    "positive": ("CONDITIONING", {"tooltip": "The positive conditioning from WanImageToVideo (its I2V condition is "
                                             "sliced the same way)."}),
    "negative": ("CONDITIONING", {"tooltip": "The negative conditioning from WanImageToVideo (sliced alike)."}),
    "latent": ("LATENT", {"tooltip": LATENT_TIP}),
}
FRAMES_OUTPUTS = ("MODEL", "CONDITIONING", "CONDITIONING", "LATENT")
FRAMES_NAMES = ("model", "positive", "negative", "latent")
FRAMES_TIPS = (MODEL_OUT_TIP, "Positive conditioning for the kept frames.", "Negative conditioning for the kept frames.",
               ("The kept latent frames, for the second sampler (add_noise disabled, start_at_step = the first "
               "sampler's end_at_step)."))


def frames_report(plan, frames: int) -> str:
    return (f"{plan.describe()}; the clip now decodes to {output_frames(len(plan.kept))} frames "
            f"(was {output_frames(frames)})")


class TemporalLatentDropout:
    """IF-Edit's Temporal Latent Dropout between the high-noise and the low-noise sampler."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The low-noise expert (the model of the second sampler), after its LoRAs."}),
            **FRAMES_INPUTS,
            "k": ("INT", {"default": 3, "min": 1, "max": 40, "tooltip": (
                "Keep latent frame 0 and every K-th one (the paper: 3; 33 frames keep latents [0, 3, 6]). 1 = keep "
                "all: everything passes through unchanged.")}),
            "keep_last": ("BOOLEAN", {"default": False, "tooltip": (
                "Also keep the last latent frame ([0, 3, 6, 8] for 33 frames): it holds the most evolved state the "
                "high-noise expert laid out; one more latent of work. Off = the paper.")}),
            "rope": (list(ROPE_MODES), {"default": "original", "tooltip": (
                "Temporal positions of the kept frames: original (0, K, 2K, ...: the timeline the layout was made "
                "on) or compact (0, 1, 2, ...).")}),
        }}

    RETURN_TYPES = FRAMES_OUTPUTS
    RETURN_NAMES = FRAMES_NAMES
    OUTPUT_TOOLTIPS = FRAMES_TIPS
    FUNCTION = "drop"
    CATEGORY = IF_EDIT
    DESCRIPTION = ("IF-Edit's Temporal Latent Dropout: once the high-noise expert has laid out the clip, the low-noise "
                   "expert refines only every K-th latent frame (about 1.75x faster in the paper, same edit). Put it "
                   "between the two KSamplerAdvanced of a Wan2.2-I2V-A14B graph.")

    def drop(self, model, positive, negative, latent, k, keep_last, rope):
        frames = latent_frames(latent)
        plan = tld_plan(frames, k, keep_last, rope, latent_positions(latent))
        if k == 1:
            return host.node_output("K=1: nothing dropped", (model, positive, negative, latent))
        return host.node_output(frames_report(plan, frames), drop_frames(model, positive, negative, latent, plan))


class ChronoEditTemporalReasoning:
    """The end of ChronoEdit's temporal reasoning: keep the first and the last latent frame."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model of the second sampler (ChronoEdit-14B, after its LoRAs)."}),
            **FRAMES_INPUTS,
            "rope": (list(CHRONOEDIT_ROPE_MODES), {"default": "chronoedit", "tooltip": (
                "Temporal positions of the two kept frames: chronoedit (0 and 7, what ChronoEdit always uses for a "
                "two-frame clip), original (0 and the last frame's position) or compact (0 and 1).")}),
        }}

    RETURN_TYPES = FRAMES_OUTPUTS
    RETURN_NAMES = FRAMES_NAMES
    OUTPUT_TOOLTIPS = FRAMES_TIPS
    FUNCTION = "keep"
    CATEGORY = VIDEO4EDIT
    DESCRIPTION = ("ChronoEdit's temporal reasoning (diffusers ChronoEditPipeline's enable_temporal_reasoning): the "
                   "first sampler denoises a longer clip (29 frames) for a few steps so the model reasons through the "
                   "change over time; this node then keeps only the first and the last latent frame, and the second "
                   "sampler finishes the edit on those two.")

    def keep(self, model, positive, negative, latent, rope):
        frames = latent_frames(latent)
        plan = reasoning_plan(frames, rope, latent_positions(latent))
        if plan.changes_nothing:
            return host.node_output("the clip has 2 latent frames: nothing to drop", (model, positive, negative,
                                                                                       latent))
        return host.node_output(frames_report(plan, frames), drop_frames(model, positive, negative, latent, plan))


class ChronoEditPositions:
    """ChronoEdit's temporal RoPE on a native model: a two-frame clip sits at positions 0 and 7."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL", {"tooltip": "ChronoEdit-14B (a Wan2.1-I2V-14B fine-tune)."})}}

    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with ChronoEdit's temporal positions for two-frame clips.",)
    FUNCTION = "patch"
    CATEGORY = VIDEO4EDIT
    DESCRIPTION = ("ChronoEdit samples its 5-frame (two latent frames) edit clips at temporal positions 0 and 7, as if "
                   "the frames between had been dropped; Wan's own RoPE uses 0 and 1. Put this after the ChronoEdit "
                   "model loader (and its LoRAs). Longer clips keep Wan's positions.")

    def patch(self, model):
        return (with_chronoedit_positions(model),)


NODE_CLASS_MAPPINGS = {"VPE_TemporalLatentDropout": TemporalLatentDropout,
                       "VPE_ChronoEditTemporalReasoning": ChronoEditTemporalReasoning,
                       "VPE_ChronoEditPositions": ChronoEditPositions}
NODE_DISPLAY_NAME_MAPPINGS = {"VPE_TemporalLatentDropout": "Temporal Latent Dropout (IF-Edit)",
                              "VPE_ChronoEditTemporalReasoning": "End Temporal Reasoning (ChronoEdit)",
                              "VPE_ChronoEditPositions": "ChronoEdit Temporal Positions"}
