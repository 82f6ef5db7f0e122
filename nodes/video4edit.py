"""Video4Edit nodes: the tail-frame editor (Video4Edit students, ChronoEdit, Wan2.1-I2V) and the FLF2V teacher."""

from __future__ import annotations

from ..videoprior_edit.images import SIZE_MODES
from ..videoprior_edit.sampling import SCHEDULERS
from ..videoprior_edit.video4edit import edit_tail_frame, teacher_trajectory
from ..videoprior_edit.video4edit.editor import POSITIONS
from . import host
from .loaders import WAN_MODELS

CATEGORY = "VideoPriorEdit/Video4Edit"


def _sampling_inputs(steps: int, cfg: float, shift: float, what: str) -> dict:
    return {
        "steps": ("INT", {"default": steps, "min": 1, "max": 200, "tooltip": (
            f"Denoising steps ({what}).")}),
        "cfg": ("FLOAT", {"default": cfg, "min": 0.0, "max": 20.0, "step": 0.1, "tooltip": (
            "Guidance scale; above 1 each step runs the model twice (with the negative prompt).")}),
        "shift": ("FLOAT", {"default": shift, "min": 0.1, "max": 30.0, "step": 0.1, "tooltip": "Flow shift."}),
        "scheduler": (list(SCHEDULERS), {"default": "unipc", "tooltip": (
            "unipc: Wan's default sampler; euler: flow-match Euler; lightning: linear sigmas (distilled models).")}),
        "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                     "tooltip": "Noise seed."}),
    }


_SIZE_INPUTS = {
    "size_mode": (list(SIZE_MODES), {"default": "resize", "tooltip": (
        "Sizes must be multiples of 16: resize, crop (centre) or pad (cut off the results again).")}),
    "max_side": ("INT", {"default": 1280, "min": 0, "max": 4096, "step": 16, "tooltip": (
        "Scale the image down so its longer side is at most this (1280 = 720p). 0 = keep the size.")}),
}


class TailFrameEditor:
    """The edit is the last frame of a very short clip from the source image."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "wan_models": (WAN_MODELS, {"tooltip": (
                "An I2V model with CLIP: ChronoEdit-14B (chrono_edit_14B_fp16 + clip_vision_h), a Video4Edit student, "
                "or Wan2.1-I2V-14B. Add chronoedit_distill_lora with Apply Wan LoRA for 8 steps.")}),
            "image": ("IMAGE", {"tooltip": "The source image."}),
            "instruction": ("STRING", {"multiline": True, "default": "", "tooltip": (
                "A concise edit instruction ('turn the car blue').")}),
            "negative_prompt": ("STRING", {"multiline": True, "default": "", "tooltip": "What to avoid (CFG > 1)."}),
            "frames": ("INT", {"default": 5, "min": 5, "max": 81, "tooltip": (
                "Clip length; 5 frames = 2 latent frames, the shortest clip with an edited frame (4k+1).")}),
            **_sampling_inputs(50, 5.0, 5.0, "ChronoEdit: 50; with its distill LoRA: 8 with CFG 1, shift 2"),
            "decode_clip": ("BOOLEAN", {"default": False, "tooltip": (
                "Off: decode only the last latent frame (faster, less memory). On: decode the whole clip.")}),
        }, "optional": {**_SIZE_INPUTS, "temporal_positions": (list(POSITIONS), {"default": "auto", "tooltip": (
            "auto: ChronoEdit models put a 2-latent clip's frames at temporal positions 0 and 7 (as trained), "
            "others at 0 and 1. chronoedit / consecutive force one.")})}}

    RETURN_TYPES = ("IMAGE", "IMAGE", "STRING")
    RETURN_NAMES = ("edited", "clip", "info")
    OUTPUT_TOOLTIPS = ("The edited image (the clip's last frame).",
                       "The clip (decode_clip on) or the last latent's 4 frames.", "What was adjusted.")
    FUNCTION = "edit"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Video4Edit / ChronoEdit: image editing as a very short video from the source image; the last "
                   "frame is the edit.")

    def edit(self, wan_models, image, instruction, negative_prompt, frames, steps, cfg, shift, scheduler, seed,
             decode_clip, size_mode="resize", max_side=1280, temporal_positions="auto"):
        host.free_memory()
        progress = host.Progress(steps, "tail-frame edit")
        try:
            r = edit_tail_frame(wan_models, image, instruction, negative_prompt, frames, steps, cfg, shift, scheduler,
                                seed, decode_clip, size_mode, max_side, temporal_positions, progress=progress)
        finally:
            progress.close()
        info = "\n".join(r.notes) or "no adjustments"
        return host.node_output(info, (r.edited, r.clip, info), preview=r.edited)


class FLF2VTeacher:
    """The frames in between a before and an after image (Wan2.1-FLF2V)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "wan_models": (WAN_MODELS, {"tooltip": "Wan2.1-FLF2V-14B-720P with clip_vision_h."}),
            "source": ("IMAGE", {"tooltip": "The first frame (before)."}),
            "edited": ("IMAGE", {"tooltip": "The last frame (after); resized to the source's size."}),
            "prompt": ("STRING", {"multiline": True, "default": "", "tooltip": (
                "How the picture evolves from before to after ('the paint slowly turns from red to blue').")}),
            "negative_prompt": ("STRING", {"multiline": True, "default": "", "tooltip": "What to avoid (CFG > 1)."}),
            "frames": ("INT", {"default": 33, "min": 5, "max": 161, "tooltip": "Clip length (4k+1)."}),
            **_sampling_inputs(50, 5.0, 16.0, "Wan2.1-FLF2V's default: 50"),
        }, "optional": dict(_SIZE_INPUTS)}

    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("frames", "info")
    OUTPUT_TOOLTIPS = ("The clip from before to after.", "What was adjusted.")
    FUNCTION = "roll_out"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Video4Edit's teacher: a first-last-frame video model rolls out a coherent trajectory from the "
                   "source to the edited image (a morph artists can use; the data for distillation).")

    def roll_out(self, wan_models, source, edited, prompt, negative_prompt, frames, steps, cfg, shift, scheduler, seed,
                 size_mode="resize", max_side=1280):
        host.free_memory()
        progress = host.Progress(steps, "FLF2V trajectory")
        try:
            clip, notes = teacher_trajectory(wan_models, source, edited, prompt, negative_prompt, frames, steps, cfg,
                                             shift, scheduler, seed, size_mode, max_side, progress)
        finally:
            progress.close()
        info = "\n".join(notes) or "no adjustments"
        return host.node_output(info, (clip, info), preview=clip)


NODE_CLASS_MAPPINGS = {"VPE_TailFrameEditor": TailFrameEditor, "VPE_FLF2VTeacher": FLF2VTeacher}
NODE_DISPLAY_NAME_MAPPINGS = {"VPE_TailFrameEditor": "Tail-Frame Edit (Video4Edit / ChronoEdit)",
                              "VPE_FLF2VTeacher": "Before/After Trajectory (FLF2V, Video4Edit teacher)"}
