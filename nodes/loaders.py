"""Model loader nodes: pick files from ComfyUI's model folders, get a checked model set."""

from __future__ import annotations

from comfy_api.latest import io

from ..videoprior_edit.models.core import DTYPES, WEIGHT_STORAGE
from ..videoprior_edit.models.sets import load_wan_models
from ..videoprior_edit.placement import PLACEMENTS, Placement
from . import host

WAN_MODELS = "VPE_WAN_MODELS"
CATEGORY = "VideoPriorEdit/loaders"


def _path(kind: str, name: str):
    return None if name in (None, "", "none") else host.folders().path(kind, name)


class WanModelLoader(io.ComfyNode):
    """Loads a Wan model set (one model or the two Wan2.2-A14B experts, UMT5, VAE, optional CLIP)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VPE_WanModelLoader",
            display_name="Load Wan Models (VideoPrior Edit)",
            category=CATEGORY,
            description=(
                "Loads Wan2.1 / Wan2.2 models from the files you already have; the variant is detected from the "
                "weights and a wrong file gets an error that says what it is."),
            inputs=[
                io.Combo.Input("model", options=host.model_choices("diffusion_models"), tooltip=(
                    "Wan diffusion model from models/diffusion_models: for Wan2.2-A14B the HIGH-noise expert "
                    "(wan2.2_i2v_high_noise_14B_fp16 / _fp8_scaled); for Wan2.1 the single model; or a diffusers / "
                    "official repo folder (its other parts are then used when the inputs below are 'none').")),
                io.Combo.Input("model_low_noise", options=host.model_choices("diffusion_models", optional=True),
                               tooltip=("Wan2.2-A14B only: the LOW-noise expert (wan2.2_i2v_low_noise_14B_*). 'none' "
                                        "for Wan2.1 models.")),
                io.Combo.Input("text_encoder", options=host.model_choices("text_encoders", optional=True), tooltip=(
                    "UMT5-XXL text encoder from models/text_encoders (umt5_xxl_fp16 or umt5_xxl_fp8_e4m3fn_scaled);"
                    " its tokenizer is read from the file.")),
                io.Combo.Input("vae", options=host.model_choices("vae", optional=True), tooltip=(
                    "Wan2.1 VAE (wan_2.1_vae.safetensors).")),
                io.Combo.Input("clip_vision", options=host.model_choices("clip_vision", optional=True), tooltip=(
                    "CLIP ViT-H image encoder (clip_vision_h.safetensors): needed by Wan2.1-I2V, FLF2V and "
                    "ChronoEdit; 'none' for Wan2.2 and T2V models.")),
                io.Combo.Input("precision", options=list(DTYPES), default="bf16", tooltip=(
                    "Compute dtype of the diffusion models and text encoder. bf16 is the usual choice; fp16 on GPUs"
                    " without bf16; fp32 for exact reference runs (2x memory). The VAE always runs in fp32.")),
                io.Combo.Input("weight_storage", options=list(WEIGHT_STORAGE), default="default", tooltip=(
                    "fp8_e4m3fn stores the diffusion models' linear weights in 8 bits (half of bf16's memory) and "
                    "computes in the chosen precision; 'default' keeps the precision above. fp8_scaled files are "
                    "dequantised on load either way.")),
                io.Combo.Input("placement", options=list(PLACEMENTS), optional=True, default="one_expert", tooltip=(
                    "Where the models live while sampling. all_on_device: fastest, needs VRAM for everything (>80 "
                    "GB for Wan2.2-A14B in bf16). one_expert: one expert (or the text encoder) on the GPU at a "
                    "time, the rest in RAM; swapped once per run at the expert switch (~29 GB bf16, ~15 GB with fp8"
                    " storage). one_expert_disk: like one_expert, but what waits is dropped and re-read from its "
                    "file (for 32 GB of RAM; slower). block_offload: weights in RAM, one block at a time on the GPU"
                    " (~12 GB while the text encoder runs, < 2 GB while sampling; slowest).")),
                io.Boolean.Input("vae_tiling", optional=True, default=False, tooltip=(
                    "Encode/decode the video in tiles: less VRAM at 720p and above, slightly slower.")),
            ],
            outputs=[
                io.Custom(WAN_MODELS).Output(display_name="wan_models", tooltip=(
                    "The loaded Wan model set, for the VideoPrior Edit sampler and editor nodes.")),
            ],
        )

    @classmethod
    def execute(cls, model, model_low_noise="none", text_encoder="none", vae="none", clip_vision="none",
                precision="bf16", weight_storage="default", placement="one_expert", vae_tiling=False):
        host.free_memory()
        models = load_wan_models(
            _path("diffusion_models", model), _path("diffusion_models", model_low_noise),
            _path("text_encoders", text_encoder), _path("vae", vae), _path("clip_vision", clip_vision),
            dtype=precision, weight_storage=weight_storage,
            placement=Placement(placement, device=host.device(), vae_tiling=vae_tiling))
        return io.NodeOutput(models)


NODES = [WanModelLoader]
