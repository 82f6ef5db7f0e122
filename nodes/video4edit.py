"""Video4Edit nodes: the tail-frame editor (Video4Edit students, ChronoEdit, Wan2.1-I2V) and the FLF2V teacher."""

from __future__ import annotations

from comfy_api.latest import io

from ..videoprior_edit.images import SIZE_MODES
from ..videoprior_edit.sampling import SCHEDULERS
from ..videoprior_edit.video4edit import edit_tail_frame, teacher_trajectory
from ..videoprior_edit.video4edit.editor import POSITIONS
from . import host
from .loaders import WAN_MODELS

CATEGORY = "VideoPriorEdit/Video4Edit"


def _sampling_inputs(steps: int, cfg: float, shift: float, what: str) -> list:
    return [
        io.Int.Input("steps", default=steps, min=1, max=200, tooltip=f"Denoising steps ({what})."),
        io.Float.Input("cfg", default=cfg, min=0.0, max=20.0, step=0.1, tooltip=(
            "Guidance scale; above 1 each step runs the model twice (with the negative prompt).")),
        io.Float.Input("shift", default=shift, min=0.1, max=30.0, step=0.1, tooltip="Flow shift."),
        io.Combo.Input("scheduler", options=list(SCHEDULERS), default="unipc", tooltip=(
            "unipc: Wan's default sampler; euler: flow-match Euler; lightning: linear sigmas (distilled models).")),
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                     tooltip="Noise seed."),
    ]


def _size_inputs() -> list:
    return [
        io.Combo.Input("size_mode", options=list(SIZE_MODES), optional=True, default="resize", tooltip=(
            "Sizes must be multiples of 16: resize, crop (centre) or pad (cut off the results again).")),
        io.Int.Input("max_side", optional=True, default=1280, min=0, max=4096, step=16, tooltip=(
            "Scale the image down so its longer side is at most this (1280 = 720p). 0 = keep the size.")),
    ]


class TailFrameEditor(io.ComfyNode):
    """The edit is the last frame of a very short clip from the source image."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VPE_TailFrameEditor",
            display_name="Tail-Frame Edit (Video4Edit / ChronoEdit)",
            category=CATEGORY,
            description=(
                "Video4Edit / ChronoEdit: image editing as a very short video from the source image; the last frame"
                " is the edit."),
            inputs=[
                io.Custom(WAN_MODELS).Input("wan_models", tooltip=(
                    "An I2V model with CLIP: ChronoEdit-14B (chrono_edit_14B_fp16 + clip_vision_h), a Video4Edit "
                    "student, or Wan2.1-I2V-14B. Add chronoedit_distill_lora with Apply Wan LoRA for 8 steps.")),
                io.Image.Input("image", tooltip="The source image."),
                io.String.Input("instruction", multiline=True, default="", tooltip=(
                    "A concise edit instruction ('turn the car blue').")),
                io.String.Input("negative_prompt", multiline=True, default="", tooltip="What to avoid (CFG > 1)."),
                io.Int.Input("frames", default=5, min=5, max=81, tooltip=(
                    "Clip length; 5 frames = 2 latent frames, the shortest clip with an edited frame (4k+1).")),
                *_sampling_inputs(50, 5.0, 5.0, "ChronoEdit: 50; with its distill LoRA: 8 with CFG 1, shift 2"),
                io.Boolean.Input("decode_clip", default=False, tooltip=(
                    "Off: decode only the last latent frame (faster, less memory). On: decode the whole clip.")),
                *_size_inputs(),
                io.Combo.Input("temporal_positions", options=list(POSITIONS), optional=True, default="auto", tooltip=(
                    "auto: ChronoEdit models put a 2-latent clip's frames at temporal positions 0 and 7 (as "
                    "trained), others at 0 and 1. chronoedit / consecutive force one.")),
            ],
            outputs=[
                io.Image.Output(display_name="edited", tooltip="The edited image (the clip's last frame)."),
                io.Image.Output(display_name="clip", tooltip=(
                    "The clip (decode_clip on) or the last latent's 4 frames.")),
                io.String.Output(display_name="info", tooltip="What was adjusted."),
            ],
        )

    @classmethod
    def execute(cls, wan_models, image, instruction, negative_prompt, frames, steps, cfg, shift, scheduler, seed,
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


class FLF2VTeacher(io.ComfyNode):
    """The frames in between a before and an after image (Wan2.1-FLF2V)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VPE_FLF2VTeacher",
            display_name="Before/After Trajectory (FLF2V, Video4Edit teacher)",
            category=CATEGORY,
            description=(
                "Video4Edit's teacher: a first-last-frame video model rolls out a coherent trajectory from the "
                "source to the edited image (a morph artists can use; the data for distillation)."),
            inputs=[
                io.Custom(WAN_MODELS).Input("wan_models", tooltip="Wan2.1-FLF2V-14B-720P with clip_vision_h."),
                io.Image.Input("source", tooltip="The first frame (before)."),
                io.Image.Input("edited", tooltip="The last frame (after); resized to the source's size."),
                io.String.Input("prompt", multiline=True, default="", tooltip=(
                    "How the picture evolves from before to after ('the paint slowly turns from red to blue').")),
                io.String.Input("negative_prompt", multiline=True, default="", tooltip="What to avoid (CFG > 1)."),
                io.Int.Input("frames", default=33, min=5, max=161, tooltip="Clip length (4k+1)."),
                *_sampling_inputs(50, 5.0, 16.0, "Wan2.1-FLF2V's default: 50"),
                *_size_inputs(),
            ],
            outputs=[
                io.Image.Output(display_name="frames", tooltip="The clip from before to after."),
                io.String.Output(display_name="info", tooltip="What was adjusted."),
            ],
        )

    @classmethod
    def execute(cls, wan_models, source, edited, prompt, negative_prompt, frames, steps, cfg, shift, scheduler, seed,
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


NODES = [TailFrameEditor, FLF2VTeacher]
