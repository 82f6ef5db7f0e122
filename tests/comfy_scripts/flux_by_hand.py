"""Run with ComfyUI's Python (tests/test_native_flux.py does): the ByG-patched native FLUX MODEL's prediction vs the
unpatched Flux model run by hand on [noisy tokens, source tokens] with the position ids built here, and vs the
library's `flux_velocity` on diffusers' FLUX from the same file. Prints one JSON line of max abs differences.

Usage: python flux_by_hand.py COMFYUI_TREE PACK_FOLDER FLUX_FILE
"""

import json
import sys

from in_comfyui import start

tree, pack_dir, model_file = sys.argv[1:4]
pack = start(tree, pack_dir)
import comfy.model_management as mm
import comfy.sd
import torch

node = pack.nodes.native.flux
flux_velocity = pack.videoprior_edit.byg.image.flux_velocity
library = pack.videoprior_edit.models.flux.load_flux_transformer(model_file, "fp32")


def pack_tokens(z):
    """(B, C, h, w) -> (B, h/2 * w/2, 4C): 2x2 patches, row-major, channels then the patch's rows and columns."""
    b, c, h, w = z.shape
    return z.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), 4 * c)


def unpack_tokens(tokens, h, w):
    b, _, d = tokens.shape
    return tokens.reshape(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, h, w)


def grid_ids(h, w, first):
    """Ids (h*w, 3) of a token grid: (first, row, column)."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([torch.full_like(rows, first), rows, cols], dim=-1).reshape(h * w, 3).float()


model = comfy.sd.load_diffusion_model(model_file)
flux = model.model.diffusion_model
g = torch.Generator().manual_seed(0)
raw = torch.randn(1, 16, 6, 8, generator=g)  # the source image's latent (raw VAE scale): 3 x 4 tokens
x = torch.randn(2, 16, 6, 8, generator=g)  # the noisy latent, a batch of two (cond and uncond)
t = torch.tensor([0.7, 0.7])
context = torch.randn(2, 7, flux.params.context_in_dim, generator=g)
y = torch.randn(2, flux.params.vec_in_dim, generator=g)
guidance = torch.tensor([3.5, 3.5])
noisy_ids = grid_ids(3, 4, 0)
out = {}
for positions in ("byg", "kontext"):
    patched, latent = node.patch_source_tokens(model, {"samples": raw}, positions)
    mm.load_models_gpu([patched])
    options = {**patched.model_options["transformer_options"], "wrappers": patched.wrappers}
    with torch.no_grad():
        ours = patched.model.diffusion_model(x, t, context, y=y, guidance=guidance, transformer_options=options)
        # by hand, on the unpatched model: [noisy, source] tokens and their ids built here
        source = model.model.process_latent_in(raw).expand(2, -1, -1, -1)
        tokens = torch.cat([pack_tokens(x), pack_tokens(source)], dim=1)
        ids = torch.cat([noisy_ids, grid_ids(3, 4, 0 if positions == "byg" else 1)]).expand(2, -1, -1)
        txt_ids = torch.zeros(2, context.shape[1], 3)
        hand = flux.forward_orig(tokens, ids, context, txt_ids, t, y, guidance, transformer_options={})
        hand = unpack_tokens(hand[:, :12], 6, 8)
        plain = flux(x, t, context, y=y, guidance=guidance)  # no source tokens at all
        theirs = flux_velocity(library, x, t, {"embeds": context, "pooled": y}, source[:1], positions, 3.5)
    out[positions] = (ours - hand).abs().max().item()
    out[f"{positions}/scale"] = hand.abs().max().item()
    out[f"{positions}/vs_no_source"] = (ours - plain).abs().max().item()
    out[f"{positions}/vs_library"] = (ours - theirs).abs().max().item()
    out[f"{positions}/prediction"] = ours
    out["latent_shape"] = list(latent["samples"].shape)
out["byg_vs_kontext"] = (out.pop("byg/prediction") - out.pop("kontext/prediction")).abs().max().item()
print(json.dumps(out))
