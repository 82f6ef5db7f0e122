"""ImVideoEdit nodes: load a trained spatial-difference adapter, edit a video with it."""

from __future__ import annotations

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


class ImVideoEditAdapterLoader:
    """Loads an ImVideoEdit adapter file and checks it against the model set."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "wan_models": (WAN_MODELS, {"tooltip": (
                "The adapter's base: Wan2.1-T2V-1.3B (wan2.1_t2v_1.3B_fp16 + umt5_xxl + wan_2.1_vae) from Load Wan "
                "Models; an adapter trained on 14B needs Wan2.1-T2V-14B.")}),
            "adapter": (host.model_choices("loras"), {"tooltip": (
                "ImVideoEdit adapter file from models/loras (written by `videoprior-edit train-imvideoedit`: "
                "imvideoedit_adapter.safetensors). No weights are published: train one on image pairs.")}),
        }}

    RETURN_TYPES = (ADAPTER, "STRING")
    RETURN_NAMES = ("adapter", "info")
    OUTPUT_TOOLTIPS = ("The adapter, for ImVideoEdit Video Edit.", "What the adapter was trained on and its choices.")
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Loads a Predict-Update Spatial Difference Attention adapter (ImVideoEdit); a file made for "
                   "another base model is refused with the model it needs.")

    def load(self, wan_models, adapter):
        loaded = load_adapter(host.folders().path("loras", adapter), wan_models.transformer,
                              compute_dtype(wan_models.transformer))
        c = loaded.config
        info = (f"{c.describe()}, {len(c.blocks)} adapted blocks; source chunk: {c.source_latents} latents, "
                f"t={c.source_timestep}; joint RoPE: {c.joint_rope}")
        return {"ui": {"text": [info]}, "result": (loaded, info)}


class ImVideoEditVideoEdit:
    """Edits a video with a trained ImVideoEdit adapter: the frozen T2V model keeps the motion, the adapter edits
    each frame's content."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "wan_models": (WAN_MODELS, {"tooltip": "Wan2.1-T2V-1.3B (the adapter's base) from Load Wan Models."}),
            "adapter": (ADAPTER, {"tooltip": "From Load ImVideoEdit Adapter."}),
            "prompt": ("STRING", {"multiline": True, "default": "", "tooltip": (
                "The video AFTER the edit, as the training prompts were written ('a man in a red coat walks "
                "through the snowy street at night'), not an instruction.")}),
            "negative_prompt": ("STRING", {"multiline": True, "default": WAN_NEGATIVE, "tooltip": (
                "What to avoid (Wan's default shown); used when CFG is above 1.")}),
            "steps": ("INT", {"default": 50, "min": 1, "max": 200, "tooltip": (
                "Denoising steps (Wan2.1-T2V: 50).")}),
            "cfg": ("FLOAT", {"default": 5.0, "min": 0.0, "max": 20.0, "step": 0.1, "tooltip": (
                "Guidance scale (Wan2.1-T2V: 5); above 1 each step runs the model twice.")}),
            "shift": ("FLOAT", {"default": 3.0, "min": 0.1, "max": 20.0, "step": 0.1, "tooltip": (
                "Flow shift: 3.0 for 480p (Wan2.1-T2V-1.3B), 5.0 for 720p.")}),
            "scheduler": (list(SCHEDULERS), {"default": "unipc", "tooltip": (
                "unipc: Wan's default sampler; euler: flow-match Euler; lightning: linear sigmas.")}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                             "tooltip": "Noise seed."}),
        }, "optional": {
            "frames": ("IMAGE", {"tooltip": (
                "The source video as an IMAGE batch (one image per frame). Any frame count: it is padded to 4k+1 "
                "for Wan and the output has the same count.")}),
            "video": ("VIDEO", {"tooltip": (
                "The source video as a core VIDEO (Load Video); used when frames is not connected. Its frame rate "
                "goes to the fps output.")}),
            "fps": ("FLOAT", {"default": 16.0, "min": 1.0, "max": 120.0, "step": 0.01, "tooltip": (
                "Frame rate of the frames input, passed through to the fps output (a VIDEO brings its own).")}),
            "strength": ("FLOAT", {"default": 1.0, "min": 0.05, "max": 1.0, "step": 0.05, "tooltip": (
                "1 = start from noise (the paper). Lower = SDEdit: start from the source noised to this point and "
                "run only that share of the steps (keeps more of the source).")}),
            "size_mode": (list(SIZE_MODES), {"default": "resize", "tooltip": (
                "Wan needs multiples of 16: resize, crop (centre) or pad (cut off the results again).")}),
            "max_side": ("INT", {"default": 832, "min": 0, "max": 4096, "step": 16, "tooltip": (
                "Scale the video down so its longer side is at most this (832 = 480p). 0 = keep the size.")}),
        }}

    RETURN_TYPES = ("IMAGE", "FLOAT", "STRING")
    RETURN_NAMES = ("frames", "fps", "info")
    OUTPUT_TOOLTIPS = (("The edited video, as many frames as the source, at the size the model ran at: the longer "
                        "side scaled down to max_side, both sides brought to multiples of 16 (100x60 -> 96x64 with "
                        "resize). size_mode pad keeps the source's size when it was not scaled down."),
                       "The source's frame rate (connect to Create Video).", "What was adjusted.")
    FUNCTION = "edit"
    CATEGORY = CATEGORY
    DESCRIPTION = ("ImVideoEdit: edits a video with a spatial-difference adapter trained on image pairs; the frozen "
                   "Wan2.1-T2V keeps the motion. Progress per step; Cancel stops within a step.")

    def edit(self, wan_models, adapter, prompt, negative_prompt, steps, cfg, shift, scheduler, seed, frames=None,
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


NODE_CLASS_MAPPINGS = {"VPE_ImVideoEditAdapterLoader": ImVideoEditAdapterLoader,
                       "VPE_ImVideoEditVideoEdit": ImVideoEditVideoEdit}
NODE_DISPLAY_NAME_MAPPINGS = {"VPE_ImVideoEditAdapterLoader": "Load ImVideoEdit Adapter",
                              "VPE_ImVideoEditVideoEdit": "ImVideoEdit Video Edit"}
