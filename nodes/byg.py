"""ByG nodes: video editing on Wan T2V and image editing on FLUX.1-dev with source tokens concatenated, plus the
FLUX.1 loader and FLUX LoRA node they need."""

from __future__ import annotations

import torch
from comfy_api.latest import io

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


class ByGVideoEdit(io.ComfyNode):
    """Edits a clip with a ByG LoRA on Wan T2V: the source's clean tokens are concatenated to the noisy ones."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VPE_ByGVideoEdit",
            display_name="ByG Video Edit",
            category=CATEGORY,
            description=(
                "ByG video editing: Wan text-to-video with the source clip's clean latents concatenated to the "
                "noisy ones along tokens, at the same positions; needs a ByG LoRA (without one it is a T2V run that"
                " sees the source)."),
            inputs=[
                io.Custom(WAN_MODELS).Input("wan_models", tooltip=(
                    "A Wan text-to-video set (Wan2.2-T2V-A14B with both experts, or Wan2.1-T2V) with the ByG LoRA "
                    "added by Apply Wan LoRA.")),
                io.String.Input("instruction", multiline=True, default="", tooltip=(
                    "The edit instruction ('make it a cartoon').")),
                io.String.Input("negative_prompt", multiline=True, default="", tooltip="What to avoid (CFG > 1)."),
                io.Int.Input("steps", default=0, min=0, max=200, tooltip=(
                    "Denoising steps; 0 = Wan's default (Wan2.2-T2V-A14B: 40, Wan2.1-T2V: 50).")),
                io.Float.Input("cfg", default=0.0, min=0.0, max=20.0, step=0.1, tooltip=(
                    "Guidance scale (high-noise expert / single model); 0 = Wan's default (A14B: 4.0, Wan2.1: 5.0).")),
                io.Float.Input("cfg_low", default=0.0, min=0.0, max=20.0, step=0.1, tooltip=(
                    "Guidance on the low-noise expert (Wan2.2-A14B); 0 = Wan's default 3.0.")),
                io.Float.Input("shift", default=0.0, min=0.0, max=30.0, step=0.1, tooltip=(
                    "Flow shift; 0 = Wan's default (A14B: 12, Wan2.1: 5).")),
                io.Combo.Input("scheduler", options=list(SCHEDULERS), default="unipc", tooltip=(
                    "unipc: the paper's (Wan's default).")),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip=(
                    "Noise seed.")),
                io.Image.Input("frames", optional=True, tooltip=(
                    "The source clip as an IMAGE batch (wins over 'video' when both are connected). Cut to 4k+1 "
                    "frames.")),
                io.Video.Input("video", optional=True, tooltip=(
                    "The source clip as a VIDEO (e.g. Load Video). Cut to 4k+1 frames.")),
                io.Combo.Input("positions", options=list(VIDEO_POSITIONS), optional=True, default="same", tooltip=(
                    "same: the source frames share the noisy frames' temporal positions (ByG); offset: they follow "
                    "them in time.")),
                io.Combo.Input("source_timestep", options=list(SOURCE_TIMESTEPS), optional=True, default="same",
                               tooltip=("same: one timestep for all tokens; zero: the clean source tokens get t = 0 "
                                        "(the paper does not say which; use what the LoRA was trained with).")),
                io.Combo.Input("size_mode", options=list(SIZE_MODES), optional=True, default="resize", tooltip=(
                    "Sizes must be multiples of 16: resize, crop (centre) or pad (cut off the results again).")),
                io.Int.Input("max_side", optional=True, default=832, min=0, max=4096, step=16, tooltip=(
                    "Scale the frames down so the longer side is at most this (832 = Wan's native 480p). 0 = keep.")),
            ],
            outputs=[
                io.Image.Output(display_name="frames", tooltip=(
                    "The edited frames (4k+1 of them), at the size the model ran at: the longer side scaled down to"
                    " max_side, both sides brought to multiples of 16.")),
                io.Float.Output(display_name="frame_rate", tooltip=(
                    "The source's frame rate (16 for an IMAGE batch).")),
                io.String.Output(display_name="info", tooltip="What was adjusted."),
            ],
        )

    @classmethod
    def execute(cls, wan_models, instruction, negative_prompt, steps, cfg, cfg_low, shift, scheduler, seed,
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


class ByGImageEdit(io.ComfyNode):
    """Edits an image with a ByG LoRA on FLUX.1-dev: the source's tokens are concatenated to the noisy ones."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VPE_ByGImageEdit",
            display_name="ByG Image Edit",
            category=CATEGORY,
            description=(
                "ByG image editing: FLUX.1-dev with the source image's tokens concatenated to the noisy ones (same "
                "positions, or Kontext's offset)."),
            inputs=[
                io.Custom(FLUX_MODELS).Input("flux_models", tooltip=(
                    "FLUX.1-dev from Load FLUX Models, with the ByG LoRA added.")),
                io.Image.Input("image", tooltip="The source image (the first of a batch)."),
                io.String.Input("instruction", multiline=True, default="", tooltip="The edit instruction."),
                io.Int.Input("steps", default=DEFAULT_STEPS, min=1, max=200, tooltip="Steps (the paper: 20)."),
                io.Float.Input("guidance", default=DEFAULT_GUIDANCE, min=0.0, max=20.0, step=0.1, tooltip=(
                    "FLUX.1-dev's embedded guidance (3.5; Kontext uses 2.5).")),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip=(
                    "Noise seed.")),
                io.Combo.Input("positions", options=list(IMAGE_POSITIONS), optional=True, default="byg", tooltip=(
                    "byg: the source tokens get the noisy tokens' positions (ByG); kontext: FLUX.1-Kontext's offset"
                    " positions (first id channel 1).")),
                io.Combo.Input("size_mode", options=list(SIZE_MODES), optional=True, default="resize", tooltip=(
                    "Bring the size to multiples of 16.")),
                io.Int.Input("max_side", optional=True, default=1024, min=0, max=4096, step=16, tooltip=(
                    "Scale the image down so its longer side is at most this. 0 = keep the size.")),
            ],
            outputs=[
                io.Image.Output(display_name="edited", tooltip="The edited image."),
                io.String.Output(display_name="info", tooltip="What was adjusted."),
            ],
        )

    @classmethod
    def execute(cls, flux_models, image, instruction, steps, guidance, seed, positions="byg", size_mode="resize",
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


class FluxModelLoader(io.ComfyNode):
    """Loads FLUX.1-dev: transformer, CLIP-L, T5-XXL and the VAE."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VPE_FluxModelLoader",
            display_name="Load FLUX Models (VideoPrior Edit)",
            category="VideoPriorEdit/loaders",
            description=(
                "Loads FLUX.1-dev (BFL/ComfyUI single files or a diffusers folder) for the ByG image editor."),
            inputs=[
                io.Combo.Input("model", options=host.model_choices("diffusion_models"), tooltip=(
                    "flux1-dev.safetensors from models/diffusion_models (or a diffusers FLUX.1-dev folder).")),
                io.Combo.Input("clip_l", options=host.model_choices("text_encoders", optional=True), tooltip=(
                    "clip_l.safetensors; its tokenizer files go in models/text_encoders/flux_tokenizers/clip_l/.")),
                io.Combo.Input("t5xxl", options=host.model_choices("text_encoders", optional=True), tooltip=(
                    "t5xxl_fp16.safetensors; tokenizer files in models/text_encoders/flux_tokenizers/t5xxl/.")),
                io.Combo.Input("vae", options=host.model_choices("vae", optional=True), tooltip=(
                    "ae.safetensors (FLUX.1's VAE).")),
                io.Combo.Input("precision", options=list(DTYPES), default="bf16", tooltip=(
                    "Compute dtype (bf16 usual, fp32 exact).")),
                io.Combo.Input("weight_storage", options=list(WEIGHT_STORAGE), default="default", tooltip=(
                    "fp8_e4m3fn stores the transformer's linear weights in 8 bits.")),
                io.Combo.Input("placement", options=list(FLUX_PLACEMENTS), optional=True, default="one_model", tooltip=(
                    "Where the models live while editing. one_model: one big model on the GPU at a time (T5-XXL "
                    "while the prompt is encoded, then the transformer; ~24 GB bf16, ~12 GB with fp8 storage), the "
                    "rest in RAM. all_on_device: everything stays on the GPU except the text encoders after "
                    "encoding (~34 GB while encoding). block_offload: weights in RAM, one block at a time on the "
                    "GPU (~10 GB while T5 encodes, < 2 GB while sampling; slowest).")),
            ],
            outputs=[
                io.Custom(FLUX_MODELS).Output(display_name="flux_models", tooltip="The loaded FLUX.1 set."),
            ],
        )

    @classmethod
    def execute(cls, model, clip_l="none", t5xxl="none", vae="none", precision="bf16", weight_storage="default",
                placement="one_model"):
        host.free_memory()
        if placement not in FLUX_PLACEMENTS:
            raise InputError(f"Unknown placement '{placement}'.", f"Use one of {', '.join(FLUX_PLACEMENTS)}.")
        models = load_flux_models(_path("diffusion_models", model), _path("text_encoders", clip_l),
                                  _path("text_encoders", t5xxl), _path("vae", vae), precision, weight_storage,
                                  placement=Placement(FLUX_PLACEMENTS[placement], device=host.device()))
        return io.NodeOutput(models)


class FluxLoraLoader(io.ComfyNode):
    """Returns the FLUX set with one more LoRA; the input set is unchanged."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VPE_FluxLoraLoader",
            display_name="Apply FLUX LoRA (VideoPrior Edit)",
            category="VideoPriorEdit/loaders",
            description=(
                "Applies a FLUX.1 LoRA (BFL/kohya, diffusers/PEFT, OneTrainer keys), merged or unmerged; one "
                "summary line; a LoRA for another model is refused."),
            inputs=[
                io.Custom(FLUX_MODELS).Input("flux_models", tooltip=(
                    "A FLUX.1 set from Load FLUX Models (or another LoRA node).")),
                io.Combo.Input("lora", options=host.model_choices("loras"), tooltip=(
                    "LoRA from models/loras (e.g. a ByG FLUX LoRA).")),
                io.Float.Input("strength", default=1.0, min=-4.0, max=4.0, step=0.05, tooltip=(
                    "How strongly the LoRA applies (1 = as trained).")),
                io.Boolean.Input("merge", optional=True, default=True, tooltip=(
                    "On: merged into the weights (fastest; changing it later re-reads the model file). Off: kept "
                    "beside the weights, so strength changes and swaps read no model file.")),
            ],
            outputs=[
                io.Custom(FLUX_MODELS).Output(display_name="flux_models", tooltip=(
                    "The FLUX set with the LoRA (applied when the set runs).")),
            ],
        )

    @classmethod
    def execute(cls, flux_models, lora, strength, merge=True):
        return io.NodeOutput(with_flux_lora(flux_models, host.folders().path("loras", lora), strength, merge))


NODES = [ByGVideoEdit, ByGImageEdit, FluxModelLoader, FluxLoraLoader]
