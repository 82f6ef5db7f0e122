"""Run with ComfyUI's Python (tests/test_native_byg.py does): the ImVideoEdit adapter on a native Wan2.1-T2V MODEL
vs (a) the unpatched MODEL, untrained adapter, and (b) the library's adapter on the diffusers model from the same
file, trained-like adapter, and (c) the adapter on a Wan model of another family (WRONG_BASE_FILE, e.g. Wan2.1-I2V):
the message it is refused with. Prints one JSON line of max abs differences, scales and that message.

Usage: python imvideoedit_check.py COMFYUI_TREE PACK_FOLDER WAN_T2V_FILE OUT_DIR WRONG_BASE_FILE
"""

import json
import sys
from pathlib import Path

from in_comfyui import start

tree, pack_dir, model_file, out_dir, wrong_file = sys.argv[1:6]
pack = start(tree, pack_dir)
import comfy.model_management as mm
import comfy.sd
import torch

native = pack.nodes.native.imvideoedit
lib = sys.modules["comfyui-videoprior-edit.videoprior_edit.imvideoedit"]
wan_loader = sys.modules["comfyui-videoprior-edit.videoprior_edit.models.wan"]

diffusers_model = wan_loader.load_wan_transformer(model_file, "fp32")
untrained = lib.create_adapter(diffusers_model, blocks=[0, 1])
trained = lib.create_adapter(diffusers_model, blocks=[1], source_timestep="zero", joint_rope="offset")
g = torch.Generator().manual_seed(1)
with torch.no_grad():
    for p in trained.parameters():
        p.add_(0.05 * torch.randn(p.shape, generator=g))
files = {name: lib.save_adapter(a, Path(out_dir) / f"{name}.safetensors", "fp32")
         for name, a in (("untrained", untrained), ("trained", trained))}

model = comfy.sd.load_diffusion_model(model_file)
raw = torch.randn(1, 16, 3, 6, 8, generator=g)
x = torch.randn(2, 16, 3, 6, 8, generator=g)
t = torch.tensor([600.0, 600.0])
context = torch.randn(2, 512, 4096, generator=g)


def native_call(path):
    patched, latent, _ = native.patch_adapter(model, path, {"samples": raw})
    mm.load_models_gpu([patched])
    options = {**patched.model_options["transformer_options"], "wrappers": patched.wrappers}
    with torch.no_grad():
        return patched.model.diffusion_model(x, t, context, transformer_options=options), latent


out = {}
with torch.no_grad():
    mm.load_models_gpu([model])
    plain = model.model.diffusion_model(x, t, context, transformer_options={})
    ours, latent = native_call(files["untrained"])
    out["untrained_vs_plain"] = (ours - plain).abs().max().item()
    ours, _ = native_call(files["trained"])
    source = model.model.process_latent_in(raw).expand(2, -1, -1, -1, -1)
    with lib.applied(diffusers_model, trained):
        both = diffusers_model(hidden_states=torch.cat([source, x]), timestep=torch.cat([torch.zeros(2), t]),
                               encoder_hidden_states=context, return_dict=False)[0]
    out["trained_vs_library"] = (ours - both.chunk(2)[1]).abs().max().item()
    out["trained_vs_plain"] = (ours - plain).abs().max().item()
    out["scale"] = plain.abs().max().item()
    out["latent_shape"] = list(latent["samples"].shape)
try:
    native.patch_adapter(comfy.sd.load_diffusion_model(wrong_file), files["untrained"], {"samples": raw})
    out["wrong_base"] = "accepted"
except sys.modules["comfyui-videoprior-edit.videoprior_edit.errors"].ModelFileError as error:
    out["wrong_base"] = f"{type(error).__name__}: {error}"
print(json.dumps(out))
