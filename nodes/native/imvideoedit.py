"""ImVideoEdit on a native Wan2.1-T2V MODEL: the trained adapter as a model patch.

The adapter file loads with the library's config, checks and maths (`videoprior_edit.imvideoedit`): the Predict-
Update Spatial Difference Attention and the text gate are the library's `SpatialDifferenceAttention`, built here
from `comfy.ops` layers (cast to the compute dtype and device like the base weights) with ComfyUI's attention and
RoPE. On the MODEL clone:
- a diffusion-model wrapper runs every call on the batch [source; target] (the source clip's clean latents, t = 0 by
  default, `imvideoedit.editor.source_input`) and returns the target's prediction;
- a `patches_replace["dit"]` entry per adapted block runs ComfyUI's own block with its self-attention followed by
  the adapter module (the block's `self_attn` is shadowed for that call only; its weights and the module tree stay
  as ComfyUI loaded them, so LoRA patches and offloading are unaffected);
- the adapter's weights are an additional model of the MODEL, so ComfyUI loads and frees them with it.
"""

from __future__ import annotations

import torch
from comfy_api.latest import io
from torch import nn

from ...videoprior_edit.errors import InputError
from ...videoprior_edit.imvideoedit import read_config
from ...videoprior_edit.imvideoedit.adapter import ImVideoEditAdapter, check_identity
from ...videoprior_edit.imvideoedit.blocks import JointContext, Parts
from ...videoprior_edit.imvideoedit.editor import source_input
from ...videoprior_edit.weights import WeightFile
from .. import host

WRAPPER_KEY = "vpe_imvideoedit"


class ComfyAttention(nn.Module):
    """An attention with diffusers' WanAttention parameter names (what adapter files hold: to_q/k/v, to_out.0,
    norm_q/k) and call `(x, text, mask, rotary_emb)`, built from comfy.ops with ComfyUI's attention and RoPE."""

    def __init__(self, dim: int, heads: int, eps: float, ops):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = (ops.Linear(dim, dim) for _ in range(3))
        self.to_out = nn.ModuleList([ops.Linear(dim, dim)])
        self.norm_q, self.norm_k = (ops.RMSNorm(dim, eps=eps, elementwise_affine=True) for _ in range(2))

    def forward(self, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        from comfy.ldm.flux.math import apply_rope1
        from comfy.ldm.modules.attention import optimized_attention

        source = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = self.norm_q(self.to_q(hidden_states)), self.norm_k(self.to_k(source)), self.to_v(source)
        if rotary_emb is not None:
            b, s = q.shape[:2]
            q = apply_rope1(q.view(b, s, self.heads, -1), rotary_emb).view(b, s, -1)
            k = apply_rope1(k.view(b, s, self.heads, -1), rotary_emb).view(b, s, -1)
        return self.to_out[0](optimized_attention(q, k, v, heads=self.heads))


def comfy_parts():
    """The adapter's layers from comfy.ops (weights cast to the input's dtype and device when used)."""
    import comfy.ops

    ops = comfy.ops.manual_cast
    return Parts(attention=lambda dim, heads, eps, cross: ComfyAttention(dim, heads, eps, ops),
                 layer_norm=lambda dim, eps: ops.LayerNorm(dim, eps=eps), linear=ops.Linear)


def native_identity(model) -> dict:
    """What the MODEL is, in the terms an adapter's config records."""
    wan = model.get_model_object("diffusion_model")
    family = "t2v" if wan.patch_embedding.weight.shape[1] == 16 and getattr(wan, "img_emb", None) is None else "other"
    return {"base": "the loaded Wan model", "family": family, "size": "unknown", "dim": wan.dim,
            "heads": wan.num_heads, "layers": len(wan.blocks)}


def joint_rope(wan, grid: tuple[int, int, int], mode: str) -> torch.Tensor:
    """ComfyUI-format RoPE of the joint H x 2W layout (temporal position 0; columns 0..2W-1, or 0..W-1 twice)."""
    _, height, width = grid
    columns = torch.arange(2 * width) if mode == "offset" else torch.arange(width).repeat(2)
    ids = torch.zeros(height, 2 * width, 3)
    ids[..., 1] = torch.arange(height).view(-1, 1)
    ids[..., 2] = columns.view(1, -1)
    return wan.rope_embedder(ids.reshape(1, -1, 3).to(wan.patch_embedding.weight.device)).movedim(1, 2)


class SourceChunk:
    """DIFFUSION_MODEL wrapper: the call on [source; target] (text given to both), the target's prediction out."""

    def __init__(self, config, source: torch.Tensor, noise: torch.Tensor):
        self.config, self.source, self.noise = config, source, noise

    def __call__(self, executor, x, timestep, context, clip_fea=None, time_dim_concat=None, transformer_options=None,
                 **kwargs):
        transformer_options = {} if transformer_options is None else transformer_options
        if tuple(self.source.shape[1:]) != tuple(x.shape[1:]):
            raise InputError(f"The ImVideoEdit source latent {tuple(self.source.shape)} does not fit the clip being "
                             f"sampled {tuple(x.shape)}.", "Sample the latent the ImVideoEdit node outputs.")
        wan, batch = executor.class_obj, x.shape[0]
        source, t_source = source_input(self.config, self.source.to(x).expand(batch, -1, -1, -1, -1), timestep,
                                        self.noise.to(x).expand(batch, -1, -1, -1, -1))
        p_t, p_h, p_w = wan.patch_size
        grid = (x.shape[2] // p_t, x.shape[3] // p_h, x.shape[4] // p_w)
        run = JointContext(self.config.joint_rope, grid, joint_rope(wan, grid, self.config.joint_rope).to(x.dtype))
        options = {**transformer_options, WRAPPER_KEY: run}
        out = executor(torch.cat([source, x]), torch.cat([t_source, timestep]), torch.cat([context, context]),
                       clip_fea, time_dim_concat, options, **kwargs)
        return out.chunk(2)[1]


class AdaptedBlock:
    """patches_replace["dit"] entry for one block: ComfyUI's block, its self-attention followed by the adapter."""

    def __init__(self, block, module):
        self.block, self.module = block, module

    def __call__(self, args, extra):
        run = args["transformer_options"].get(WRAPPER_KEY)
        if run is None:
            raise InputError("The ImVideoEdit adapter ran without its source chunk.",
                             "Sample with the model the ImVideoEdit node outputs.")
        context = JointContext(run.rope_mode, run.grid, run.rope, args["txt"])
        own = self.block.self_attn
        module = self.module

        def adapted(x, freqs, transformer_options=None):
            return module(x, own(x, freqs, transformer_options=transformer_options or {}), context)

        self.block.__dict__["self_attn"] = adapted  # shadows the registered child for this call only
        try:
            return extra["original_block"](args)
        finally:
            del self.block.__dict__["self_attn"]


def load_native_adapter(path, model):
    """The adapter file's modules (comfy.ops layers, the file's dtype) after checking the MODEL is its base."""
    config = read_config(path)
    check_identity(config, native_identity(model), loader="Load Diffusion Model")
    adapter = ImVideoEditAdapter(config, comfy_parts())
    adapter.load_state_dict(dict(WeightFile(path).tensors()))
    return adapter.eval().requires_grad_(False)


def patch_adapter(model, path, source_latent: dict):
    """(a clone of MODEL running the adapter on [source; target], an empty LATENT of the source's shape)."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.patcher_extension

    adapter = load_native_adapter(path, model)
    samples = source_latent["samples"]
    if samples.ndim != 5 or samples.shape[1] != 16:
        raise InputError(f"ImVideoEdit needs the source video's Wan latent, got shape {tuple(samples.shape)}.",
                         "VAE Encode the source frames with the Wan VAE.")
    source = model.model.process_latent_in(samples.float())
    noise = torch.randn(source.shape, generator=torch.Generator().manual_seed(0))  # source_latents "noised" only
    patched = model.clone()
    patched.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY)
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY,
                                 SourceChunk(adapter.config, source, noise))
    for index in adapter.config.blocks:
        block = patched.get_model_object(f"diffusion_model.blocks.{index}")
        patched.set_model_patch_replace(AdaptedBlock(block, adapter.blocks[str(index)]), "dit", "double_block",
                                        index)
    holder = comfy.model_patcher.ModelPatcher(adapter, load_device=comfy.model_management.get_torch_device(),
                                              offload_device=comfy.model_management.unet_offload_device())
    patched.set_additional_models(WRAPPER_KEY, [holder])
    return patched, {"samples": torch.zeros_like(samples)}, adapter.config


class ImVideoEditAdapterNode(io.ComfyNode):
    """Adds a trained ImVideoEdit adapter and the source video to a Wan2.1-T2V MODEL."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VPE_ImVideoEditAdapter",  # was VPE_ImVideoEditAdapterNative (see nodes/replacements.py)
            display_name="ImVideoEdit Adapter",
            category="VideoPriorEdit/ImVideoEdit",
            description=(
                "ImVideoEdit on your own Wan2.1-T2V: the adapter's spatial-difference attention blocks and text "
                "gate run after each adapted block's self-attention, with the source video's clean latents in the "
                "batch; the frozen model keeps the motion."),
            inputs=[
                io.Model.Input("model", tooltip=(
                    "Wan2.1-T2V (1.3B or 14B, the adapter's base) from a ComfyUI loader.")),
                io.Combo.Input("adapter", options=host.model_choices("loras"), tooltip=(
                    "An ImVideoEdit adapter file from models/loras (written by `videoprior-edit "
                    "train-imvideoedit`).")),
                io.Latent.Input("source", tooltip="The source video, VAE Encoded with the Wan VAE."),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip=(
                    "The model with the adapter: it edits the source as the prompt describes; sample it as usual.")),
                io.Latent.Output(display_name="latent", tooltip=(
                    "An empty latent of the source's size and frames: the latent to sample.")),
            ],
        )

    @classmethod
    def execute(cls, model, adapter, source):
        patched, latent, config = patch_adapter(model, host.folders().path("loras", adapter), source)
        info = (f"ImVideoEdit adapter for {config.describe()} on {len(config.blocks)} blocks; source timestep "
                f"{config.source_timestep}, {config.source_latents} source latents, joint RoPE {config.joint_rope}")
        return host.node_output(info, (patched, latent))


NODES = [ImVideoEditAdapterNode]
