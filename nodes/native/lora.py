"""A LoRA loader for ComfyUI's own Wan MODELs that reads every format the library reads.

The library rewrites the LoRA in the layout ComfyUI's loader understands (`videoprior_edit.lora.original`); ComfyUI's
own `comfy.lora.load_lora` turns that into weight patches and `ModelPatcher.add_patches` puts them on a MODEL clone,
exactly as core's LoraLoaderModelOnly does. So the patched weights equal core's wherever core reads the file, and
DynamicVRAM, low-VRAM loading and other LoRA nodes treat them like core's.
"""

from __future__ import annotations

import logging

from ...videoprior_edit.lora import read_lora
from ...videoprior_edit.lora.original import (
    core_reads,
    describe_shapes,
    original_layout,
)
from .. import host

log = logging.getLogger("videoprior_edit.lora")
PREFIX = "diffusion_model."


def patch_lora(model, path, strength: float):
    """(a clone of MODEL with the LoRA at `path` as ComfyUI weight patches, the one-line report)."""
    import comfy.lora

    lora = read_lora(path)
    state = model.model.state_dict()
    shapes = {k[len(PREFIX):]: tuple(v.shape) for k, v in state.items() if k.startswith(PREFIX)}
    tensors, report = original_layout(lora, shapes, target=f"MODEL ({describe_shapes(shapes)})")
    core_names = comfy.lora.model_lora_keys_unet(model.model, {})
    patches = comfy.lora.load_lora(tensors, core_names, log_missing=False)
    patched = model.clone()
    held = {key: patches.pop(key) for key in list(patches) if _held_by_parent(patched, key)}
    applied = patched.add_patches(patches, strength) + _object_patches(patched, held, strength)
    patches.update(held)
    report.strength, report.how = strength, "patched into"
    line = report.summary()
    read_by_core = core_reads(lora, core_names)
    if read_by_core < report.matched:
        line += (f" ComfyUI's own LoRA loader reads {read_by_core} of these {report.matched} modules from this "
                 "file.")
    if len(applied) != len(patches):
        line += f" {len(patches) - len(applied)} patches found no weight in the MODEL."
    return patched, line


def _held_by_parent(model, key: str) -> bool:
    """Whether `key` is a parameter of a module that also has sub-modules with parameters (Wan's per-block and head
    `modulation` tables): ComfyUI's patcher only patches parameters of leaf modules, so it would skip it."""
    owner = model.get_model_object(key.rsplit(".", 1)[0])
    return any(True for child in owner.children() for _ in child.parameters())


def _object_patches(model, held: dict, strength: float) -> list[str]:
    """Full deltas of parameters ComfyUI's patcher skips, applied as object patches (the parameter replaced by
    `own + strength * diff` while the MODEL is loaded; the forward casts it like the original). Stacks: a second LoRA
    starts from what the first set."""
    import torch

    done = []
    for key, patch in held.items():
        if not (isinstance(patch, tuple) and patch[0] == "diff"):
            continue
        own = model.get_model_object(key)
        delta = patch[1][0].to(own.device, torch.float32).reshape(own.shape)
        value = (own.detach().float() + strength * delta).to(own.dtype)
        model.add_object_patch(key, torch.nn.Parameter(value, requires_grad=False))
        done.append(key)
    return done


class LoraLoaderModelOnly:
    """Adds a LoRA in any common format to a MODEL as ComfyUI weight patches."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "A Wan model from a ComfyUI loader (Load Diffusion Model, a GGUF loader, "
                                           "...) or another LoRA node. For Wan2.2-A14B use one node per expert."}),
            "lora_name": (host.model_choices("loras"), {"tooltip": (
                "LoRA from models/loras: lightx2v / Kijai (incl. diff, diff_b, diff_m), musubi-tuner / kohya "
                "(full or partial), diffusers / PEFT (alpha from the metadata, `.default` adapter names), "
                "ai-toolkit, OneTrainer or LyCORIS names.")}),
            "strength_model": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01, "tooltip": (
                "How strongly the LoRA applies (1 = as trained; negative values push the other way).")}),
        }}

    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with the LoRA as weight patches (ComfyUI merges them when it loads the model).",)
    FUNCTION = "load"
    CATEGORY = "VideoPriorEdit/LoRA"
    DESCRIPTION = ("Loads a Wan LoRA in any common key format, including those ComfyUI's own LoRA loader drops "
                   "(diffusers/PEFT names, lightx2v diff_m, adapter-named keys), as ComfyUI weight patches. One "
                   "summary line says how many modules matched; a LoRA made for another model is refused with the "
                   "model it seems made for.")

    def load(self, model, lora_name, strength_model):
        if strength_model == 0:
            return host.node_output("strength 0: the model passes through unchanged", (model,))
        patched, line = patch_lora(model, host.folders().path("loras", lora_name), strength_model)
        log.info(line)
        return host.node_output(line, (patched,))


NODE_CLASS_MAPPINGS = {"VPE_LoraLoaderModelOnly": LoraLoaderModelOnly}
NODE_DISPLAY_NAME_MAPPINGS = {"VPE_LoraLoaderModelOnly": "Load LoRA, any format (VideoPrior Edit)"}
