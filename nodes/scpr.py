"""IF-Edit's Self-Consistent Post-Refinement nodes: tail frames, sharpest frame, still-video refiner."""

from __future__ import annotations

import json

from comfy_api.latest import io

from ..videoprior_edit.if_edit.plot import score_plot
from ..videoprior_edit.if_edit.refine import MODES, STILL_PROMPT, refine_still
from ..videoprior_edit.if_edit.sharpness import SCORES, sharpest
from ..videoprior_edit.sampling import SCHEDULERS
from ..videoprior_edit.sampling.condition import decode_tail, image_from_pixels
from ..videoprior_edit.sampling.loop import placement_of
from . import host
from .if_edit import CATEGORY, WAN_LATENTS
from .loaders import WAN_MODELS

SCORE_TOOLTIP = ("variance: variance of the Laplacian (OpenCV's focus measure, exact); energy: mean squared "
                 "Laplacian (the paper's mean Laplacian response); mean_abs: mean absolute Laplacian.")


def _scores_json(scores, best: int, score: str) -> str:
    return json.dumps({"score": score, "best": best, "scores": [round(float(s), 4) for s in scores]})


class DecodeLastFrames(io.ComfyNode):
    """Decodes only the frames of the last latent frame(s): the candidates for the edit."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VPE_DecodeLastFrames",
            display_name="Decode Last Frames (IF-Edit)",
            category=CATEGORY,
            description=(
                "Decodes the last latent frame(s) of an edit: the candidate frames for the sharpest-frame pick."),
            inputs=[
                io.Custom(WAN_MODELS).Input("wan_models", tooltip=(
                    "The model set the latents came from (its VAE decodes them).")),
                io.Custom(WAN_LATENTS).Input("wan_latents", tooltip="The I2V editor's wan_latents output."),
                io.Int.Input("tail_latents", default=1, min=1, max=64, tooltip=(
                    "How many of the last latent frames to decode; each gives 4 frames.")),
                io.Boolean.Input("exact", default=True, tooltip=(
                    "On: the same pixels as decoding the whole clip (the causal VAE runs through the earlier "
                    "latents but keeps only the tail's frames). Off: decode the tail alone, faster, slightly "
                    "different, and its first latent gives 1 frame instead of 4.")),
            ],
            outputs=[
                io.Image.Output(display_name="frames", tooltip="The decoded tail frames, for Sharpest Frame."),
            ],
        )

    @classmethod
    def execute(cls, wan_models, wan_latents, tail_latents, exact):
        place = placement_of(wan_models)
        try:
            vae = place.activate(wan_models, "vae")
            return io.NodeOutput(image_from_pixels(decode_tail(vae, wan_latents["latents"], tail_latents, exact)))
        finally:
            place.release(wan_models, "vae")


class SharpestFrame(io.ComfyNode):
    """Picks the sharpest frame of a batch by a Laplacian score."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VPE_SharpestFrame",
            display_name="Sharpest Frame (IF-Edit)",
            category=CATEGORY,
            description=(
                "IF-Edit's frame selection: the frame with the highest Laplacian sharpness, no VLM needed."),
            inputs=[
                io.Image.Input("images", tooltip="Frames to choose from (a clip, or the decoded tail frames)."),
                io.Combo.Input("score", options=list(SCORES), default="variance", tooltip=SCORE_TOOLTIP),
                io.Mask.Input("mask", optional=True, tooltip=(
                    "Only score this region (white = inside), e.g. the edited object.")),
                io.Int.Input("candidates", optional=True, default=0, min=0, max=4096, tooltip=(
                    "Only the last N frames compete: 4 = the frames of the clip's last latent (IF-Edit's candidates"
                    " after a VAE Decode of the whole clip). 0 = every frame.")),
                io.Boolean.Input("skip_first", optional=True, default=False, tooltip=(
                    "Never pick the first frame: on for a still-video refinement, whose first frame is the input "
                    "re-decoded.")),
            ],
            outputs=[
                io.Image.Output(display_name="frame", tooltip="The sharpest frame."),
                io.Int.Output(display_name="index", tooltip="Its index in the batch (0 = first)."),
                io.String.Output(display_name="scores", tooltip="All scores as JSON."),
                io.Image.Output(display_name="plot", tooltip="A chart of the score per frame, the pick highlighted."),
            ],
        )

    @classmethod
    def execute(cls, images, score, mask=None, candidates=0, skip_first=False):
        first = max(int(skip_first), images.shape[0] - candidates if candidates else 0)
        if first >= images.shape[0]:
            first = images.shape[0] - 1  # a single frame: nothing to choose from
        best, scores = sharpest(images[first:], score, None if mask is None else mask[first:] if mask.shape[0] > 1
                                else mask)
        best += first
        return io.NodeOutput(images[best:best + 1], best, _scores_json(scores, best, score),
                             score_plot(scores, best - first))


class StillVideoRefiner(io.ComfyNode):
    """Feeds a frame back into the I2V model as a still clip and returns the clip's sharpest frame."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VPE_StillVideoRefiner",
            display_name="Still-Video Refiner (IF-Edit)",
            category=CATEGORY,
            description=(
                "IF-Edit's Self-Consistent Post-Refinement: the same video model makes a still clip of the edit and"
                " the sharpest frame of it removes the late-frame blur."),
            inputs=[
                io.Custom(WAN_MODELS).Input("wan_models", tooltip=(
                    "The same I2V model set as the edit (with its LoRAs).")),
                io.Image.Input("image", tooltip="The frame to refine (e.g. Sharpest Frame's output)."),
                io.String.Input("prompt", multiline=True, default=STILL_PROMPT, tooltip=(
                    "What a still clip looks like; connect the prompt rewriter in still mode to describe the "
                    "picture too.")),
                io.Combo.Input("mode", options=list(MODES), default="i2v", tooltip=(
                    "i2v: a full image-to-video run from the frame (the paper). sdedit: the frame repeated into a "
                    "clip, noised to 'strength' and cleaned by the low-noise expert only (cheaper, closer to the "
                    "input).")),
                io.Int.Input("frames", default=9, min=5, max=81, tooltip="Length of the still clip (4k+1)."),
                io.Int.Input("steps", default=8, min=1, max=200, tooltip=(
                    "Denoising steps of the whole schedule (8 with Lightning); sdedit runs the last strength x "
                    "steps.")),
                io.Float.Input("strength", default=0.5, min=0.05, max=1.0, step=0.05, tooltip=(
                    "sdedit only: how much noise is added to the still clip (1 = start from noise).")),
                io.Float.Input("cfg", default=1.0, min=0.0, max=20.0, step=0.1, tooltip=(
                    "Guidance for both experts; 1 with Lightning LoRAs.")),
                io.Float.Input("shift", default=5.0, min=0.1, max=20.0, step=0.1, tooltip="Flow shift."),
                io.Combo.Input("scheduler", options=list(SCHEDULERS), default="lightning", tooltip=(
                    "As in the I2V editor.")),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip=(
                    "Noise seed.")),
                io.Combo.Input("score", options=list(SCORES), default="variance", tooltip=SCORE_TOOLTIP),
            ],
            outputs=[
                io.Image.Output(display_name="refined_frame", tooltip=(
                    "The sharpest frame of the still clip: the final image.")),
                io.Image.Output(display_name="clip", tooltip="The whole still clip."),
                io.String.Output(display_name="scores", tooltip=(
                    "Scores of every clip frame as JSON (frame 0 is the input re-decoded and never picked).")),
                io.Int.Output(display_name="index", tooltip="Index of the refined frame in the clip."),
                io.String.Output(display_name="info", tooltip="What was adjusted and picked."),
            ],
        )

    @classmethod
    def execute(cls, wan_models, image, prompt, mode, frames, steps, strength, cfg, shift, scheduler, seed, score):
        host.free_memory()
        progress = host.Progress(steps, "still refine")
        try:
            r = refine_still(wan_models, image, prompt, "", mode, frames, steps, strength, scheduler, shift, cfg,
                             seed, score, progress=progress)
        finally:
            progress.close()
        info = "\n".join(r.notes)
        return host.node_output(info, (r.frame, r.clip, _scores_json(r.scores, r.index, score), r.index, info),
                                preview=r.frame)


NODES = [DecodeLastFrames, SharpestFrame, StillVideoRefiner]
