"""ByG video editing on a native Wan text-to-video MODEL: the source clip's clean latents ride after the noisy ones.

The token layout and positions are the library's (`videoprior_edit.byg.video.source_positions`); on a ComfyUI MODEL
they are a diffusion-model wrapper (concatenate along frames, optional per-frame timestep 0 for the source, slice
the prediction back) plus the temporal positions patch of `patches.py`. Why not core's `time_dim_concat`: it appends
a latent along time with RoPE continuing after the clip, which is only the "offset" layout and cannot give the
source tokens their own timestep; Bernini-R's `context_latents` rotate the reference by a source id on top of its
own positions, which is not ByG's "same positions" either.
"""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ...videoprior_edit.byg.video import (
    POSITION_MODES,
    SOURCE_TIMESTEPS,
    source_positions,
)
from ...videoprior_edit.errors import InputError
from .. import host
from .patches import with_clip_positions

WRAPPER_KEY = "vpe_byg_source_tokens"


class SourceTokens:
    """DIFFUSION_MODEL wrapper: [noisy frames, source frames] in, the noisy frames' prediction out."""

    def __init__(self, source: torch.Tensor, source_timestep: str):
        self.source, self.source_timestep = source, source_timestep

    def __call__(self, executor, x, timestep, context, clip_fea=None, time_dim_concat=None, transformer_options=None,
                 **kwargs):
        transformer_options = {} if transformer_options is None else transformer_options
        frames = x.shape[2]
        if tuple(self.source.shape[1:]) != tuple(x.shape[1:]):
            raise InputError(f"The ByG source latent {tuple(self.source.shape)} does not fit the clip being sampled "
                             f"{tuple(x.shape)}.", "Sample the empty latent the ByG node outputs (same size and "
                             "frames as the source), on a text-to-video model.")
        source = self.source.to(x.device, x.dtype).expand(x.shape[0], -1, -1, -1, -1)
        joined = torch.cat([x, source], dim=2)
        if self.source_timestep == "zero":  # per-frame timesteps: t on the clip, 0 on the clean source
            t = timestep.reshape(x.shape[0], -1).expand(x.shape[0], frames)
            timestep = torch.cat([t, torch.zeros_like(t)], dim=1)
        out = executor(joined, timestep, context, clip_fea, time_dim_concat, transformer_options, **kwargs)
        return out[:, :, :frames]


def patch_source_tokens(model, source_latent: dict, positions: str = "same", source_timestep: str = "same"):
    """(a clone of MODEL that sees the source clip's tokens, an empty LATENT of the source's shape)."""
    import comfy.patcher_extension

    if positions not in POSITION_MODES or source_timestep not in SOURCE_TIMESTEPS:
        raise InputError(f"Unknown ByG option positions='{positions}' / source_timestep='{source_timestep}'.",
                         f"positions: {', '.join(POSITION_MODES)}; source_timestep: {', '.join(SOURCE_TIMESTEPS)}.")
    samples = source_latent["samples"]
    channels = model.get_model_object("diffusion_model").patch_embedding.weight.shape[1]
    if samples.ndim != 5 or channels != samples.shape[1]:
        raise InputError(f"ByG video needs a text-to-video Wan model and a video latent (model input channels "
                         f"{channels}, latent {tuple(samples.shape)}).", "Load Wan2.2-T2V-A14B (each expert) or "
                         "Wan2.1-T2V, and VAE Encode the source clip with the Wan VAE.")
    source = model.model.process_latent_in(samples.float())  # the model's normalised latent space
    frames = samples.shape[2]
    patched = model.clone()
    patched.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY)
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY,
                                 SourceTokens(source, source_timestep))
    if positions == "same":
        patched = with_clip_positions(patched, {2 * frames: source_positions(frames, "same")})
    return patched, {"samples": torch.zeros_like(samples)}


class ByGSourceTokens(io.ComfyNode):
    """Puts the source clip's tokens beside the noisy ones on a Wan T2V model (ByG video editing)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VPE_ByGSourceTokens",
            display_name="ByG Source Tokens (video)",
            category="VideoPriorEdit/ByG",
            description=(
                "ByG video editing on your own Wan text-to-video model: the source clip's clean latents are "
                "concatenated after the noisy ones (same temporal positions by default), the prediction is sliced "
                "back. With a ByG LoRA the model edits the clip as the prompt says."),
            inputs=[
                io.Model.Input("model", tooltip=(
                    "A Wan text-to-video model with its ByG editing LoRA (Wan2.2-T2V-A14B: one node per expert; "
                    "Wan2.1-T2V).")),
                io.Latent.Input("source", tooltip="The source clip, VAE Encoded with the Wan VAE (4k+1 frames)."),
                io.Combo.Input("positions", options=list(POSITION_MODES), default="same", tooltip=(
                    "Temporal positions of the source frames: same (ByG: the noisy frames' positions) or offset "
                    "(after the clip, as Kontext offsets its image).")),
                io.Combo.Input("source_timestep", options=list(SOURCE_TIMESTEPS), default="same", tooltip=(
                    "same: every token at the step's timestep; zero: the clean source tokens at t=0. Use what the "
                    "LoRA was trained with.")),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip=(
                    "The model that sees the source tokens; sample with it as usual (KSampler / KSamplerAdvanced).")),
                io.Latent.Output(display_name="latent", tooltip=(
                    "An empty latent of the source's size and frames: the latent to sample.")),
            ],
        )

    @classmethod
    def execute(cls, model, source, positions, source_timestep):
        patched, latent = patch_source_tokens(model, source, positions, source_timestep)
        frames = source["samples"].shape[2]
        info = (f"source: {frames} latent frames at temporal positions "
                f"{source_positions(frames, positions)[frames:]}; source timestep {source_timestep}")
        return host.node_output(info, (patched, latent))


NODES = [ByGSourceTokens]
