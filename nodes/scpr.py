"""IF-Edit's Self-Consistent Post-Refinement nodes: tail frames, sharpest frame, still-video refiner."""

from __future__ import annotations

import json

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


class DecodeLastFrames:
    """Decodes only the frames of the last latent frame(s): the candidates for the edit."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "wan_models": (WAN_MODELS, {"tooltip": "The model set the latents came from (its VAE decodes them)."}),
            "wan_latents": (WAN_LATENTS, {"tooltip": "The I2V editor's wan_latents output."}),
            "tail_latents": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": (
                "How many of the last latent frames to decode; each gives 4 frames.")}),
            "exact": ("BOOLEAN", {"default": True, "tooltip": (
                "On: the same pixels as decoding the whole clip (the causal VAE runs through the earlier latents "
                "but keeps only the tail's frames). Off: decode the tail alone, faster, slightly different, and its "
                "first latent gives 1 frame instead of 4.")}),
        }}

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    OUTPUT_TOOLTIPS = ("The decoded tail frames, for Sharpest Frame.",)
    FUNCTION = "decode"
    CATEGORY = CATEGORY
    DESCRIPTION = "Decodes the last latent frame(s) of an edit: the candidate frames for the sharpest-frame pick."

    def decode(self, wan_models, wan_latents, tail_latents, exact):
        place = placement_of(wan_models)
        try:
            vae = place.activate(wan_models, "vae")
            return (image_from_pixels(decode_tail(vae, wan_latents["latents"], tail_latents, exact)),)
        finally:
            place.release(wan_models, "vae")


class SharpestFrame:
    """Picks the sharpest frame of a batch by a Laplacian score."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "Frames to choose from (a clip, or the decoded tail frames)."}),
            "score": (list(SCORES), {"default": "variance", "tooltip": SCORE_TOOLTIP}),
        }, "optional": {
            "mask": ("MASK", {"tooltip": "Only score this region (white = inside), e.g. the edited object."}),
            "candidates": ("INT", {"default": 0, "min": 0, "max": 4096, "tooltip": (
                "Only the last N frames compete: 4 = the frames of the clip's last latent (IF-Edit's candidates "
                "after a VAE Decode of the whole clip). 0 = every frame.")}),
            "skip_first": ("BOOLEAN", {"default": False, "tooltip": (
                "Never pick the first frame: on for a still-video refinement, whose first frame is the input "
                "re-decoded.")}),
        }}

    RETURN_TYPES = ("IMAGE", "INT", "STRING", "IMAGE")
    RETURN_NAMES = ("frame", "index", "scores", "plot")
    OUTPUT_TOOLTIPS = ("The sharpest frame.", "Its index in the batch (0 = first).",
                       "All scores as JSON.", "A chart of the score per frame, the pick highlighted.")
    FUNCTION = "pick"
    CATEGORY = CATEGORY
    DESCRIPTION = "IF-Edit's frame selection: the frame with the highest Laplacian sharpness, no VLM needed."

    def pick(self, images, score, mask=None, candidates=0, skip_first=False):
        first = max(int(skip_first), images.shape[0] - candidates if candidates else 0)
        if first >= images.shape[0]:
            first = images.shape[0] - 1  # a single frame: nothing to choose from
        best, scores = sharpest(images[first:], score, None if mask is None else mask[first:] if mask.shape[0] > 1
                                else mask)
        best += first
        return images[best:best + 1], best, _scores_json(scores, best, score), score_plot(scores, best - first)


class StillVideoRefiner:
    """Feeds a frame back into the I2V model as a still clip and returns the clip's sharpest frame."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "wan_models": (WAN_MODELS, {"tooltip": "The same I2V model set as the edit (with its LoRAs)."}),
            "image": ("IMAGE", {"tooltip": "The frame to refine (e.g. Sharpest Frame's output)."}),
            "prompt": ("STRING", {"multiline": True, "default": STILL_PROMPT, "tooltip": (
                "What a still clip looks like; connect the prompt rewriter in still mode to describe the picture "
                "too.")}),
            "mode": (list(MODES), {"default": "i2v", "tooltip": (
                "i2v: a full image-to-video run from the frame (the paper). sdedit: the frame repeated into a clip, "
                "noised to 'strength' and cleaned by the low-noise expert only (cheaper, closer to the input).")}),
            "frames": ("INT", {"default": 9, "min": 5, "max": 81, "tooltip": "Length of the still clip (4k+1)."}),
            "steps": ("INT", {"default": 8, "min": 1, "max": 200, "tooltip": (
                "Denoising steps of the whole schedule (8 with Lightning); sdedit runs the last strength x steps.")}),
            "strength": ("FLOAT", {"default": 0.5, "min": 0.05, "max": 1.0, "step": 0.05, "tooltip": (
                "sdedit only: how much noise is added to the still clip (1 = start from noise).")}),
            "cfg": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 20.0, "step": 0.1, "tooltip": (
                "Guidance for both experts; 1 with Lightning LoRAs.")}),
            "shift": ("FLOAT", {"default": 5.0, "min": 0.1, "max": 20.0, "step": 0.1, "tooltip": "Flow shift."}),
            "scheduler": (list(SCHEDULERS), {"default": "lightning", "tooltip": "As in the I2V editor."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                             "tooltip": "Noise seed."}),
            "score": (list(SCORES), {"default": "variance", "tooltip": SCORE_TOOLTIP}),
        }}

    RETURN_TYPES = ("IMAGE", "IMAGE", "STRING", "INT", "STRING")
    RETURN_NAMES = ("refined_frame", "clip", "scores", "index", "info")
    OUTPUT_TOOLTIPS = ("The sharpest frame of the still clip: the final image.", "The whole still clip.",
                       "Scores of every clip frame as JSON (frame 0 is the input re-decoded and never picked).",
                       "Index of the refined frame in the clip.", "What was adjusted and picked.")
    FUNCTION = "refine"
    CATEGORY = CATEGORY
    DESCRIPTION = ("IF-Edit's Self-Consistent Post-Refinement: the same video model makes a still clip of the edit "
                   "and the sharpest frame of it removes the late-frame blur.")

    def refine(self, wan_models, image, prompt, mode, frames, steps, strength, cfg, shift, scheduler, seed, score):
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


NODE_CLASS_MAPPINGS = {"VPE_DecodeLastFrames": DecodeLastFrames, "VPE_SharpestFrame": SharpestFrame,
                       "VPE_StillVideoRefiner": StillVideoRefiner}
NODE_DISPLAY_NAME_MAPPINGS = {"VPE_DecodeLastFrames": "Decode Last Frames (IF-Edit)",
                              "VPE_SharpestFrame": "Sharpest Frame (IF-Edit)",
                              "VPE_StillVideoRefiner": "Still-Video Refiner (IF-Edit)"}
