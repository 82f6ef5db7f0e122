"""Native frame-dropping nodes: IF-Edit's Temporal Latent Dropout and ChronoEdit's temporal reasoning, placed between
two ComfyUI samplers on ComfyUI's own MODEL / CONDITIONING / LATENT, and ChronoEdit's temporal positions."""

from __future__ import annotations

from comfy_api.latest import io

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


def frames_inputs() -> list:
    """The conditioning and latent inputs both frame-dropping nodes take after `model`."""
    return [
        io.Conditioning.Input("positive", tooltip=(
            "The positive conditioning from WanImageToVideo (its I2V condition is sliced the same way).")),
        io.Conditioning.Input("negative", tooltip="The negative conditioning from WanImageToVideo (sliced alike)."),
        io.Latent.Input("latent", tooltip=LATENT_TIP),
    ]


def frames_outputs() -> list:
    return [
        io.Model.Output(display_name="model", tooltip=MODEL_OUT_TIP),
        io.Conditioning.Output(display_name="positive", tooltip="Positive conditioning for the kept frames."),
        io.Conditioning.Output(display_name="negative", tooltip="Negative conditioning for the kept frames."),
        io.Latent.Output(display_name="latent", tooltip=(
            "The kept latent frames, for the second sampler (add_noise disabled, start_at_step = the first "
            "sampler's end_at_step).")),
    ]


def frames_report(plan, frames: int) -> str:
    return (f"{plan.describe()}; the clip now decodes to {output_frames(len(plan.kept))} frames "
            f"(was {output_frames(frames)})")


class TemporalLatentDropout(io.ComfyNode):
    """IF-Edit's Temporal Latent Dropout between the high-noise and the low-noise sampler."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VPE_TemporalLatentDropout",
            display_name="Temporal Latent Dropout (IF-Edit)",
            category=IF_EDIT,
            description=(
                "IF-Edit's Temporal Latent Dropout: once the high-noise expert has laid out the clip, the low-noise"
                " expert refines only every K-th latent frame (about 1.75x faster in the paper, same edit). Put it "
                "between the two KSamplerAdvanced of a Wan2.2-I2V-A14B graph."),
            inputs=[
                io.Model.Input("model", tooltip=(
                    "The low-noise expert (the model of the second sampler), after its LoRAs.")),
                *frames_inputs(),
                io.Int.Input("k", default=3, min=1, max=40, tooltip=(
                    "Keep latent frame 0 and every K-th one (the paper: 3; 33 frames keep latents [0, 3, 6]). 1 = "
                    "keep all: everything passes through unchanged.")),
                io.Boolean.Input("keep_last", default=False, tooltip=(
                    "Also keep the last latent frame ([0, 3, 6, 8] for 33 frames): it holds the most evolved state "
                    "the high-noise expert laid out; one more latent of work. Off = the paper.")),
                io.Combo.Input("rope", options=list(ROPE_MODES), default="original", tooltip=(
                    "Temporal positions of the kept frames: original (0, K, 2K, ...: the timeline the layout was "
                    "made on) or compact (0, 1, 2, ...).")),
            ],
            outputs=frames_outputs(),
        )

    @classmethod
    def execute(cls, model, positive, negative, latent, k, keep_last, rope):
        frames = latent_frames(latent)
        plan = tld_plan(frames, k, keep_last, rope, latent_positions(latent))
        if k == 1:
            return host.node_output("K=1: nothing dropped", (model, positive, negative, latent))
        return host.node_output(frames_report(plan, frames), drop_frames(model, positive, negative, latent, plan))


class ChronoEditTemporalReasoning(io.ComfyNode):
    """The end of ChronoEdit's temporal reasoning: keep the first and the last latent frame."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VPE_ChronoEditTemporalReasoning",
            display_name="End Temporal Reasoning (ChronoEdit)",
            category=VIDEO4EDIT,
            description=(
                "ChronoEdit's temporal reasoning (diffusers ChronoEditPipeline's enable_temporal_reasoning): the "
                "first sampler denoises a longer clip (29 frames) for a few steps so the model reasons through the "
                "change over time; this node then keeps only the first and the last latent frame, and the second "
                "sampler finishes the edit on those two."),
            inputs=[
                io.Model.Input("model", tooltip="The model of the second sampler (ChronoEdit-14B, after its LoRAs)."),
                *frames_inputs(),
                io.Combo.Input("rope", options=list(CHRONOEDIT_ROPE_MODES), default="chronoedit", tooltip=(
                    "Temporal positions of the two kept frames: chronoedit (0 and 7, what ChronoEdit always uses "
                    "for a two-frame clip), original (0 and the last frame's position) or compact (0 and 1).")),
            ],
            outputs=frames_outputs(),
        )

    @classmethod
    def execute(cls, model, positive, negative, latent, rope):
        frames = latent_frames(latent)
        plan = reasoning_plan(frames, rope, latent_positions(latent))
        if plan.changes_nothing:
            return host.node_output("the clip has 2 latent frames: nothing to drop", (model, positive, negative,
                                                                                       latent))
        return host.node_output(frames_report(plan, frames), drop_frames(model, positive, negative, latent, plan))


class ChronoEditPositions(io.ComfyNode):
    """ChronoEdit's temporal RoPE on a native model: a two-frame clip sits at positions 0 and 7."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VPE_ChronoEditPositions",
            display_name="ChronoEdit Temporal Positions",
            category=VIDEO4EDIT,
            description=(
                "ChronoEdit samples its 5-frame (two latent frames) edit clips at temporal positions 0 and 7, as if"
                " the frames between had been dropped; Wan's own RoPE uses 0 and 1. Put this after the ChronoEdit "
                "model loader (and its LoRAs). Longer clips keep Wan's positions."),
            inputs=[
                io.Model.Input("model", tooltip="ChronoEdit-14B (a Wan2.1-I2V-14B fine-tune)."),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip=(
                    "The model with ChronoEdit's temporal positions for two-frame clips.")),
            ],
        )

    @classmethod
    def execute(cls, model):
        return io.NodeOutput(with_chronoedit_positions(model))


NODES = [TemporalLatentDropout, ChronoEditTemporalReasoning, ChronoEditPositions]
