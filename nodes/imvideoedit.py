"""ImVideoEdit nodes: load a trained spatial-difference adapter, edit a video with it."""

from __future__ import annotations

from comfy_api.latest import io

from ..videoprior_edit.errors import InputError
from ..videoprior_edit.if_edit import WAN_NEGATIVE
from ..videoprior_edit.images import SIZE_MODES
from ..videoprior_edit.imvideoedit import edit_video, load_adapter
from ..videoprior_edit.imvideoedit.editor import steps_to_run
from ..videoprior_edit.sampling import SCHEDULERS
from ..videoprior_edit.sampling.loop import compute_dtype
from . import host
from .loaders import WAN_MODELS

ADAPTER = "VPE_IMVIDEOEDIT_ADAPTER"
CATEGORY = "VideoPriorEdit/ImVideoEdit"


def video_frames(frames=None, video=None, fps: float = 16.0):
    """(IMAGE frames, fps) from an IMAGE batch or a core VIDEO (anything with `get_components()` giving `images`
    and `frame_rate`); the IMAGE input wins when both are connected."""
    if frames is not None:
        return frames, float(fps)
    if video is not None and hasattr(video, "get_components"):
        parts = video.get_components()
        return parts.images, float(parts.frame_rate)
    raise InputError("No source video.", "Connect frames (an IMAGE batch) or a VIDEO (e.g. from Load Video).")


class ImVideoEditAdapterLoader(io.ComfyNode):
    """Loads an ImVideoEdit adapter file and checks it against the model set."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VPE_ImVideoEditAdapterLoader",
            display_name="Load ImVideoEdit Adapter",
            category=CATEGORY,
            description=(
                "Loads a Predict-Update Spatial Difference Attention adapter (ImVideoEdit); a file made for another"
                " base model is refused with the model it needs."),
            inputs=[
                io.Custom(WAN_MODELS).Input("wan_models", tooltip=(
                    "The adapter's base: Wan2.1-T2V-1.3B (wan2.1_t2v_1.3B_fp16 + umt5_xxl + wan_2.1_vae) from Load "
                    "Wan Models; an adapter trained on 14B needs Wan2.1-T2V-14B.")),
                io.Combo.Input("adapter", options=host.model_choices("loras"), tooltip=(
                    "ImVideoEdit adapter file from models/loras (written by `videoprior-edit train-imvideoedit`: "
                    "imvideoedit_adapter.safetensors). No weights are published: train one on image pairs.")),
            ],
            outputs=[
                io.Custom(ADAPTER).Output(display_name="adapter", tooltip="The adapter, for ImVideoEdit Video Edit."),
                io.String.Output(display_name="info", tooltip="What the adapter was trained on and its choices."),
            ],
        )

    @classmethod
    def execute(cls, wan_models, adapter):
        loaded = load_adapter(host.folders().path("loras", adapter), wan_models.transformer,
                              compute_dtype(wan_models.transformer))
        c = loaded.config
        info = (f"{c.describe()}, {len(c.blocks)} adapted blocks; source chunk: {c.source_latents} latents, "
                f"t={c.source_timestep}; joint RoPE: {c.joint_rope}")
        return io.NodeOutput(loaded, info, ui={"text": [info]})


class ImVideoEditVideoEdit(io.ComfyNode):
    """Edits a video with a trained ImVideoEdit adapter: the frozen T2V model keeps the motion, the adapter edits
    each frame's content."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VPE_ImVideoEditVideoEdit",
            display_name="ImVideoEdit Video Edit",
            category=CATEGORY,
            description=(
                "ImVideoEdit: edits a video with a spatial-difference adapter trained on image pairs; the frozen "
                "Wan2.1-T2V keeps the motion. Progress per step; Cancel stops within a step."),
            inputs=[
                io.Custom(WAN_MODELS).Input("wan_models", tooltip=(
                    "Wan2.1-T2V-1.3B (the adapter's base) from Load Wan Models.")),
                io.Custom(ADAPTER).Input("adapter", tooltip="From Load ImVideoEdit Adapter."),
                io.String.Input("prompt", multiline=True, default="", tooltip=(
                    "The video AFTER the edit, as the training prompts were written ('a man in a red coat walks "
                    "through the snowy street at night'), not an instruction.")),
                io.String.Input("negative_prompt", multiline=True, default=WAN_NEGATIVE, tooltip=(
                    "What to avoid (Wan's default shown); used when CFG is above 1.")),
                io.Int.Input("steps", default=50, min=1, max=200, tooltip="Denoising steps (Wan2.1-T2V: 50)."),
                io.Float.Input("cfg", default=5.0, min=0.0, max=20.0, step=0.1, tooltip=(
                    "Guidance scale (Wan2.1-T2V: 5); above 1 each step runs the model twice.")),
                io.Float.Input("shift", default=3.0, min=0.1, max=20.0, step=0.1, tooltip=(
                    "Flow shift: 3.0 for 480p (Wan2.1-T2V-1.3B), 5.0 for 720p.")),
                io.Combo.Input("scheduler", options=list(SCHEDULERS), default="unipc", tooltip=(
                    "unipc: Wan's default sampler; euler: flow-match Euler; lightning: linear sigmas.")),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip=(
                    "Noise seed.")),
                io.Image.Input("frames", optional=True, tooltip=(
                    "The source video as an IMAGE batch (one image per frame). Any frame count: it is padded to "
                    "4k+1 for Wan and the output has the same count.")),
                io.Video.Input("video", optional=True, tooltip=(
                    "The source video as a core VIDEO (Load Video); used when frames is not connected. Its frame "
                    "rate goes to the fps output.")),
                io.Float.Input("fps", optional=True, default=16.0, min=1.0, max=120.0, step=0.01, tooltip=(
                    "Frame rate of the frames input, passed through to the fps output (a VIDEO brings its own).")),
                io.Float.Input("strength", optional=True, default=1.0, min=0.05, max=1.0, step=0.05, tooltip=(
                    "1 = start from noise (the paper). Lower = SDEdit: start from the source noised to this point "
                    "and run only that share of the steps (keeps more of the source).")),
                io.Combo.Input("size_mode", options=list(SIZE_MODES), optional=True, default="resize", tooltip=(
                    "Wan needs multiples of 16: resize, crop (centre) or pad (cut off the results again).")),
                io.Int.Input("max_side", optional=True, default=832, min=0, max=4096, step=16, tooltip=(
                    "Scale the video down so its longer side is at most this (832 = 480p). 0 = keep the size.")),
            ],
            outputs=[
                io.Image.Output(display_name="frames", tooltip=(
                    "The edited video, as many frames as the source, at the size the model ran at: the longer side "
                    "scaled down to max_side, both sides brought to multiples of 16 (100x60 -> 96x64 with resize). "
                    "size_mode pad keeps the source's size when it was not scaled down.")),
                io.Float.Output(display_name="fps", tooltip="The source's frame rate (connect to Create Video)."),
                io.String.Output(display_name="info", tooltip="What was adjusted."),
            ],
        )

    @classmethod
    def execute(cls, wan_models, adapter, prompt, negative_prompt, steps, cfg, shift, scheduler, seed, frames=None,
                video=None, fps=16.0, strength=1.0, size_mode="resize", max_side=832):
        source, rate = video_frames(frames, video, fps)
        host.free_memory()
        progress = host.Progress(steps_to_run(steps, strength), "ImVideoEdit")
        try:
            result = edit_video(wan_models, adapter, source, prompt, negative_prompt, steps, cfg, shift, scheduler,
                                seed, strength, size_mode, max_side, progress=progress)
        finally:
            progress.close()
        info = "\n".join(result.notes) or "no adjustments"
        return host.node_output(info, (result.frames, rate, info), preview=result.frames)


NODES = [ImVideoEditAdapterLoader, ImVideoEditVideoEdit]
