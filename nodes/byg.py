"""ByG nodes: video editing on Wan T2V and image editing on FLUX.1-dev with source tokens concatenated, plus the
FLUX.1 loader and FLUX LoRA node they need."""

from __future__ import annotations

import torch

from ..videoprior_edit.byg import (
    edit_image,
    edit_video,
    load_flux_models,
    with_flux_lora,
)
from ..videoprior_edit.byg.image import DEFAULT_GUIDANCE, DEFAULT_STEPS
from ..videoprior_edit.byg.image import POSITION_MODES as IMAGE_POSITIONS
from ..videoprior_edit.byg.video import POSITION_MODES as VIDEO_POSITIONS
from ..videoprior_edit.byg.video import SOURCE_TIMESTEPS
from ..videoprior_edit.errors import InputError
from ..videoprior_edit.images import SIZE_MODES
from ..videoprior_edit.models.core import DTYPES, WEIGHT_STORAGE
from ..videoprior_edit.placement import Placement
from ..videoprior_edit.sampling import SCHEDULERS
from . import host
from .loaders import WAN_MODELS

CATEGORY = "VideoPriorEdit/ByG"
FLUX_MODELS = "VPE_FLUX_MODELS"
FLUX_PLACEMENTS = {"one_model": "one_expert", "all_on_device": "all_on_device", "block_offload": "block_offload"}


def _path(kind: str, name: str):
    return None if name in (None, "", "none") else host.folders().path(kind, name)


def video_frames(frames=None, video=None) -> tuple[torch.Tensor, float | None]:
    """(frames `(N, H, W, 3)`, frame rate or None) of an IMAGE batch or a ComfyUI VIDEO (duck-typed:
    `get_components()` with `images` and `frame_rate`); the IMAGE input wins when both are connected."""
    if frames is not None:
        return frames, None
    if video is not None and hasattr(video, "get_components"):
        components = video.get_components()
        rate = getattr(components, "frame_rate", None)
        return components.images, None if rate is None else float(rate)
    raise InputError("No source video.", "Connect frames (an IMAGE batch) or a VIDEO (e.g. from Load Video).")


class ByGVideoEdit:
    """Edits a clip with a ByG LoRA on Wan T2V: the source's clean tokens are concatenated to the noisy ones."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "wan_models": (WAN_MODELS, {"tooltip": (
                "A Wan text-to-video set (Wan2.2-T2V-A14B with both experts, or Wan2.1-T2V) with the ByG LoRA added "
                "by Apply Wan LoRA.")}),
            "instruction": ("STRING", {"multiline": True, "default": "", "tooltip": (
                "The edit instruction ('make it a cartoon').")}),
            "negative_prompt": ("STRING", {"multiline": True, "default": "", "tooltip": "What to avoid (CFG > 1)."}),
            "steps": ("INT", {"default": 0, "min": 0, "max": 200, "tooltip": (
                "Denoising steps; 0 = Wan's default (Wan2.2-T2V-A14B: 40, Wan2.1-T2V: 50).")}),
            "cfg": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 20.0, "step": 0.1, "tooltip": (
                "Guidance scale (high-noise expert / single model); 0 = Wan's default (A14B: 4.0, Wan2.1: 5.0).")}),
            "cfg_low": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 20.0, "step": 0.1, "tooltip": (
                "Guidance on the low-noise expert (Wan2.2-A14B); 0 = Wan's default 3.0.")}),
            "shift": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 30.0, "step": 0.1, "tooltip": (
                "Flow shift; 0 = Wan's default (A14B: 12, Wan2.1: 5).")}),
            "scheduler": (list(SCHEDULERS), {"default": "unipc", "tooltip": "unipc: the paper's (Wan's default)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                             "tooltip": "Noise seed."}),
        }, "optional": {
            "frames": ("IMAGE", {"tooltip": (
                "The source clip as an IMAGE batch (wins over 'video' when both are connected). Cut to 4k+1 frames.")}),
            "video": ("VIDEO", {"tooltip": "The source clip as a VIDEO (e.g. Load Video). Cut to 4k+1 frames."}),
            "positions": (list(VIDEO_POSITIONS), {"default": "same", "tooltip": (
                "same: the source frames share the noisy frames' temporal positions (ByG); offset: they follow "
                "them in time.")}),
            "source_timestep": (list(SOURCE_TIMESTEPS), {"default": "same", "tooltip": (
                "same: one timestep for all tokens; zero: the clean source tokens get t = 0 (the paper does not "
                "say which; use what the LoRA was trained with).")}),
            "size_mode": (list(SIZE_MODES), {"default": "resize", "tooltip": (
                "Sizes must be multiples of 16: resize, crop (centre) or pad (cut off the results again).")}),
            "max_side": ("INT", {"default": 832, "min": 0, "max": 4096, "step": 16, "tooltip": (
                "Scale the frames down so the longer side is at most this (832 = Wan's native 480p). 0 = keep.")}),
        }}

    RETURN_TYPES = ("IMAGE", "FLOAT", "STRING")
    RETURN_NAMES = ("frames", "frame_rate", "info")
    OUTPUT_TOOLTIPS = (("The edited frames (4k+1 of them), at the size the model ran at: the longer side scaled down "
                        "to max_side, both sides brought to multiples of 16."),
                       "The source's frame rate (16 for an IMAGE batch).", "What was adjusted.")
    FUNCTION = "edit"
    CATEGORY = CATEGORY
    DESCRIPTION = ("ByG video editing: Wan text-to-video with the source clip's clean latents concatenated to the "
                   "noisy ones along tokens, at the same positions; needs a ByG LoRA (without one it is a T2V run "
                   "that sees the source).")

    def edit(self, wan_models, instruction, negative_prompt, steps, cfg, cfg_low, shift, scheduler, seed,
             frames=None, video=None, positions="same", source_timestep="same", size_mode="resize", max_side=832):
        frames, rate = video_frames(frames, video)
        host.free_memory()
        opt = lambda v: v or None
        from ..videoprior_edit.byg.video import t2v_defaults

        total = int(steps) or t2v_defaults(wan_models)["steps"]
        progress = host.Progress(total, "ByG video edit")
        try:
            r = edit_video(wan_models, frames, instruction, negative_prompt, opt(steps), opt(cfg), opt(cfg_low),
                           opt(shift), scheduler, seed, positions, source_timestep, size_mode, max_side, progress)
        finally:
            progress.close()
        info = "\n".join(r.notes) or "no adjustments"
        return host.node_output(info, (r.frames, rate or 16.0, info), preview=r.frames)


class ByGImageEdit:
    """Edits an image with a ByG LoRA on FLUX.1-dev: the source's tokens are concatenated to the noisy ones."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "flux_models": (FLUX_MODELS, {"tooltip": "FLUX.1-dev from Load FLUX Models, with the ByG LoRA added."}),
            "image": ("IMAGE", {"tooltip": "The source image (the first of a batch)."}),
            "instruction": ("STRING", {"multiline": True, "default": "", "tooltip": "The edit instruction."}),
            "steps": ("INT", {"default": DEFAULT_STEPS, "min": 1, "max": 200, "tooltip": "Steps (the paper: 20)."}),
            "guidance": ("FLOAT", {"default": DEFAULT_GUIDANCE, "min": 0.0, "max": 20.0, "step": 0.1, "tooltip": (
                "FLUX.1-dev's embedded guidance (3.5; Kontext uses 2.5).")}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                             "tooltip": "Noise seed."}),
        }, "optional": {
            "positions": (list(IMAGE_POSITIONS), {"default": "byg", "tooltip": (
                "byg: the source tokens get the noisy tokens' positions (ByG); kontext: FLUX.1-Kontext's offset "
                "positions (first id channel 1).")}),
            "size_mode": (list(SIZE_MODES), {"default": "resize", "tooltip": "Bring the size to multiples of 16."}),
            "max_side": ("INT", {"default": 1024, "min": 0, "max": 4096, "step": 16, "tooltip": (
                "Scale the image down so its longer side is at most this. 0 = keep the size.")}),
        }}

    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("edited", "info")
    OUTPUT_TOOLTIPS = ("The edited image.", "What was adjusted.")
    FUNCTION = "edit"
    CATEGORY = CATEGORY
    DESCRIPTION = ("ByG image editing: FLUX.1-dev with the source image's tokens concatenated to the noisy ones "
                   "(same positions, or Kontext's offset).")

    def edit(self, flux_models, image, instruction, steps, guidance, seed, positions="byg", size_mode="resize",
             max_side=1024):
        host.free_memory()
        progress = host.Progress(steps, "ByG image edit")
        try:
            r = edit_image(flux_models, image, instruction, steps, guidance, seed, positions, size_mode, max_side,
                           device=host.device(), progress=progress)
        finally:
            progress.close()
        info = "\n".join(r.notes) or "no adjustments"
        return host.node_output(info, (r.image, info), preview=r.image)


class FluxModelLoader:
    """Loads FLUX.1-dev: transformer, CLIP-L, T5-XXL and the VAE."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (host.model_choices("diffusion_models"), {"tooltip": (
                "flux1-dev.safetensors from models/diffusion_models (or a diffusers FLUX.1-dev folder).")}),
            "clip_l": (host.model_choices("text_encoders", optional=True), {"tooltip": (
                "clip_l.safetensors; its tokenizer files go in models/text_encoders/flux_tokenizers/clip_l/.")}),
            "t5xxl": (host.model_choices("text_encoders", optional=True), {"tooltip": (
                "t5xxl_fp16.safetensors; tokenizer files in models/text_encoders/flux_tokenizers/t5xxl/.")}),
            "vae": (host.model_choices("vae", optional=True), {"tooltip": "ae.safetensors (FLUX.1's VAE)."}),
            "precision": (list(DTYPES), {"default": "bf16", "tooltip": "Compute dtype (bf16 usual, fp32 exact)."}),
            "weight_storage": (list(WEIGHT_STORAGE), {"default": "default", "tooltip": (
                "fp8_e4m3fn stores the transformer's linear weights in 8 bits.")}),
        }, "optional": {
            "placement": (list(FLUX_PLACEMENTS), {"default": "one_model", "tooltip": (
                "Where the models live while editing. one_model: one big model on the GPU at a time (T5-XXL while "
                "the prompt is encoded, then the transformer; ~24 GB bf16, ~12 GB with fp8 storage), the rest in "
                "RAM. all_on_device: everything stays on the GPU except the text encoders after encoding (~34 GB "
                "while encoding). block_offload: weights in RAM, one block at a time on the GPU (~10 GB while T5 "
                "encodes, < 2 GB while sampling; slowest).")}),
        }}

    RETURN_TYPES = (FLUX_MODELS,)
    RETURN_NAMES = ("flux_models",)
    OUTPUT_TOOLTIPS = ("The loaded FLUX.1 set.",)
    FUNCTION = "load"
    CATEGORY = "VideoPriorEdit/loaders"
    DESCRIPTION = "Loads FLUX.1-dev (BFL/ComfyUI single files or a diffusers folder) for the ByG image editor."

    def load(self, model, clip_l="none", t5xxl="none", vae="none", precision="bf16", weight_storage="default",
             placement="one_model"):
        host.free_memory()
        if placement not in FLUX_PLACEMENTS:
            raise InputError(f"Unknown placement '{placement}'.", f"Use one of {', '.join(FLUX_PLACEMENTS)}.")
        models = load_flux_models(_path("diffusion_models", model), _path("text_encoders", clip_l),
                                  _path("text_encoders", t5xxl), _path("vae", vae), precision, weight_storage,
                                  placement=Placement(FLUX_PLACEMENTS[placement], device=host.device()))
        return (models,)


class FluxLoraLoader:
    """Returns the FLUX set with one more LoRA; the input set is unchanged."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "flux_models": (FLUX_MODELS, {"tooltip": "A FLUX.1 set from Load FLUX Models (or another LoRA node)."}),
            "lora": (host.model_choices("loras"), {"tooltip": "LoRA from models/loras (e.g. a ByG FLUX LoRA)."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -4.0, "max": 4.0, "step": 0.05, "tooltip": (
                "How strongly the LoRA applies (1 = as trained).")}),
        }, "optional": {
            "merge": ("BOOLEAN", {"default": True, "tooltip": (
                "On: merged into the weights (fastest; changing it later re-reads the model file). Off: kept "
                "beside the weights, so strength changes and swaps read no model file.")}),
        }}

    RETURN_TYPES = (FLUX_MODELS,)
    RETURN_NAMES = ("flux_models",)
    OUTPUT_TOOLTIPS = ("The FLUX set with the LoRA (applied when the set runs).",)
    FUNCTION = "apply"
    CATEGORY = "VideoPriorEdit/loaders"
    DESCRIPTION = ("Applies a FLUX.1 LoRA (BFL/kohya, diffusers/PEFT, OneTrainer keys), merged or unmerged; one "
                   "summary line; a LoRA for another model is refused.")

    def apply(self, flux_models, lora, strength, merge=True):
        return (with_flux_lora(flux_models, host.folders().path("loras", lora), strength, merge),)


NODE_CLASS_MAPPINGS = {"VPE_ByGVideoEdit": ByGVideoEdit, "VPE_ByGImageEdit": ByGImageEdit,
                       "VPE_FluxModelLoader": FluxModelLoader, "VPE_FluxLoraLoader": FluxLoraLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"VPE_ByGVideoEdit": "ByG Video Edit", "VPE_ByGImageEdit": "ByG Image Edit",
                              "VPE_FluxModelLoader": "Load FLUX Models (VideoPrior Edit)",
                              "VPE_FluxLoraLoader": "Apply FLUX LoRA (VideoPrior Edit)"}
