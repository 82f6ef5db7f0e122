"""Run with ComfyUI's Python (tests/test_native_byg.py does): the ByG-patched native MODEL's prediction vs the
unpatched Wan model run by hand on the concatenated sequence. Prints one JSON line of max abs differences.

Usage: python byg_by_hand.py COMFYUI_TREE PACK_FOLDER WAN_T2V_FILE
"""

import json
import sys

from in_comfyui import start

tree, pack_dir, model_file = sys.argv[1:4]
pack = start(tree, pack_dir)
import comfy.model_management as mm
import comfy.sd
import torch

byg = pack.nodes.native.byg

model = comfy.sd.load_diffusion_model(model_file)
g = torch.Generator().manual_seed(0)
raw = torch.randn(1, 16, 3, 6, 8, generator=g)  # a source clip's latent (raw VAE scale): 3 latent frames
x = torch.randn(2, 16, 3, 6, 8, generator=g)  # the noisy clip, a batch of two (cond and uncond)
t = torch.tensor([700.0, 700.0])
context = torch.randn(2, 512, 4096, generator=g)
out = {}
for positions in ("same", "offset"):
    for source_timestep in ("same", "zero"):
        patched, latent = byg.patch_source_tokens(model, {"samples": raw}, positions, source_timestep)
        mm.load_models_gpu([patched])  # applies the MODEL's object patches (the positions)
        options = {**patched.model_options["transformer_options"], "wrappers": patched.wrappers}
        wan = patched.model.diffusion_model
        with torch.no_grad():
            ours = wan(x, t, context, transformer_options=options)
            # by hand, on the unpatched model: [noisy, source] along frames, RoPE positions and timesteps built here
            source = model.model.process_latent_in(raw).expand(2, -1, -1, -1, -1)
            joined = torch.cat([x, source], dim=2)
            own = type(wan).rope_encode.__get__(wan)
            clip = own(3, 6, 8, device=x.device, dtype=x.dtype)
            freqs = torch.cat([clip, clip], dim=1) if positions == "same" else own(6, 6, 8, device=x.device,
                                                                                     dtype=x.dtype)
            steps = t if source_timestep == "same" else torch.cat([t.view(2, 1).expand(2, 3), torch.zeros(2, 3)], 1)
            hand = wan.forward_orig(joined, steps, context, freqs=freqs, transformer_options={})[:, :, :3]
        out[f"{positions}/{source_timestep}"] = (ours - hand).abs().max().item()
        out[f"{positions}/{source_timestep}/scale"] = hand.abs().max().item()
        out["latent_shape"] = list(latent["samples"].shape)
print(json.dumps(out))
