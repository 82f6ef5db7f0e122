"""ByG image editing on a native FLUX.1-dev MODEL: the source image's clean latent tokens ride after the noisy ones.

The position modes are the library's (`videoprior_edit.byg.image`: `POSITION_MODES`, `source_ids`). On a ComfyUI
MODEL they are one diffusion-model wrapper that hands the source latent to ComfyUI's Flux model as its Kontext
`ref_latents` with `ref_latents_method="offset"`: core packs the source tokens after the noisy ones, gives them
FLUX.1-Kontext's ids (first id channel 1, the noisy tokens' rows and columns) and slices the prediction back to the
noisy tokens. That is the "kontext" mode as it stands. No `ref_latents_method` gives the "byg" mode (ids equal to the
noisy tokens'): offset and index set the first channel to 1, uxo moves rows and columns past the image,
index_timestep_zero is index with timestep 0 on the reference, and `rope_options` shifts move noisy and source tokens
alike. So for "byg" the wrapper also puts a `post_input` patch in front of that call's patches: it sets the source
tokens' ids to `source_ids(noisy ids, "byg")` before the model turns the ids into RoPE.
"""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ...videoprior_edit.byg.image import POSITION_MODES, source_ids
from ...videoprior_edit.errors import InputError
from .. import host

WRAPPER_KEY = "vpe_byg_image_source_tokens"
CORE_METHOD = "offset"  # core's ref_latents_method whose ids for one reference are the "kontext" mode's


class SourceTokens:
    """DIFFUSION_MODEL wrapper: the source latent as the Flux model's only reference latent; ids per `positions`."""

    def __init__(self, source: torch.Tensor, positions: str):
        self.source, self.positions = source, positions

    def __call__(self, executor, x, timestep, context, y=None, guidance=None, ref_latents=None, control=None,
                 transformer_options=None, **kwargs):
        if ref_latents:
            raise InputError("The conditioning already carries reference latents (ReferenceLatent): ByG Source "
                             "Tokens puts the source image in itself.", "Remove the ReferenceLatent nodes.")
        batch = x.shape[0]
        if tuple(self.source.shape[1:]) != tuple(x.shape[1:]) or batch % self.source.shape[0]:
            raise InputError(f"The ByG source latent {tuple(self.source.shape)} does not fit the latent being "
                             f"sampled {tuple(x.shape)}.", "Sample the empty latent the ByG node outputs.")
        source = self.source.to(x.device, x.dtype).repeat(batch // self.source.shape[0], 1, 1, 1)
        options = dict(transformer_options or {})
        if self.positions == "byg":
            patches = dict(options.get("patches", {}))
            patches["post_input"] = [same_ids, *patches.get("post_input", [])]
            options["patches"] = patches
        kwargs["ref_latents_method"] = CORE_METHOD
        return executor(x, timestep, context, y, guidance, [source], control, options, **kwargs)


def same_ids(inputs: dict) -> dict:
    """`post_input` patch: the source tokens (right after the noisy ones) get the noisy tokens' ids."""
    ids = inputs["img_ids"]
    reference = inputs["transformer_options"]["reference_image_num_tokens"]
    noisy = ids.shape[1] - sum(reference)
    ids = ids.clone()
    ids[:, noisy:noisy + reference[0]] = source_ids(ids[:, :noisy], "byg")
    return {**inputs, "img_ids": ids}


def check_flux(model, samples: torch.Tensor) -> None:
    """A FLUX.1 MODEL (3 RoPE axes, 2x2 patches) and an image latent of its VAE, or a message saying what to load."""
    import comfy.ldm.flux.model

    flux = model.get_model_object("diffusion_model")
    params = getattr(flux, "params", None)
    is_flux1 = isinstance(flux, comfy.ldm.flux.model.Flux) and params.patch_size == 2 and len(params.axes_dim) == 3
    if not is_flux1 or samples.ndim != 4 or samples.shape[1] != params.in_channels:
        raise InputError(f"ByG image needs a FLUX.1-dev model and an image latent of the FLUX VAE (got "
                         f"{type(flux).__name__}, latent {tuple(samples.shape)}).",
                         "Load flux1-dev.safetensors with Load Diffusion Model and VAE Encode the source picture with "
                         "ae.safetensors.")


def patch_source_tokens(model, source_latent: dict, positions: str = "byg"):
    """(a clone of MODEL that sees the source image's tokens, an empty LATENT of the source's shape)."""
    import comfy.patcher_extension

    if positions not in POSITION_MODES:
        raise InputError(f"Unknown ByG position mode '{positions}'.", f"Use one of: {', '.join(POSITION_MODES)}.")
    samples = source_latent["samples"]
    check_flux(model, samples)
    source = model.model.process_latent_in(samples.float())  # the model's normalised latent space
    patched = model.clone()
    wrappers = comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL
    patched.remove_wrappers_with_key(wrappers, WRAPPER_KEY)
    patched.add_wrapper_with_key(wrappers, WRAPPER_KEY, SourceTokens(source, positions))
    return patched, {"samples": torch.zeros_like(samples)}


class ByGImageSourceTokens(io.ComfyNode):
    """Puts the source image's tokens beside the noisy ones on a FLUX.1-dev model (ByG image editing)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VPE_ByGImageSourceTokens",
            display_name="ByG Source Tokens (image, FLUX)",
            category="VideoPriorEdit/ByG",
            description=(
                "ByG image editing on your own FLUX.1-dev model: the source picture's clean latent tokens are "
                "concatenated after the noisy ones (same position ids by default, or Kontext's), the prediction is "
                "sliced back. With a ByG LoRA the model edits the picture as the prompt says."),
            inputs=[
                io.Model.Input("model", tooltip="FLUX.1-dev (Load Diffusion Model) after its ByG editing LoRA."),
                io.Latent.Input("source", tooltip=(
                    "The source picture, VAE Encoded with the FLUX VAE (ae.safetensors); sides in multiples of 16 "
                    "(Fit Image for Wan does that).")),
                io.Combo.Input("positions", options=list(POSITION_MODES), default="byg", tooltip=(
                    "Position ids of the source tokens: byg (the noisy tokens' own ids, the paper) or kontext "
                    "(FLUX.1-Kontext's: first id channel 1). Use what the LoRA was trained with.")),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip=(
                    "The model that sees the source tokens; sample with it as usual (KSampler).")),
                io.Latent.Output(display_name="latent", tooltip=(
                    "An empty latent of the source's size: the latent to sample.")),
            ],
        )

    @classmethod
    def execute(cls, model, source, positions):
        patched, latent = patch_source_tokens(model, source, positions)
        _, _, h, w = source["samples"].shape
        tokens = ((h + 1) // 2) * ((w + 1) // 2)
        ids = "the noisy tokens' ids" if positions == "byg" else "Kontext ids (first channel 1)"
        return host.node_output(f"source: {tokens} tokens after the {tokens} noisy ones, {ids}", (patched, latent))


NODES = [ByGImageSourceTokens]
