"""A LoRA loader for ComfyUI's own Wan and FLUX.1 MODELs that reads every format the library reads.

The library rewrites the LoRA in a layout ComfyUI's loader understands (`videoprior_edit.lora.original`: Wan's
original names; FLUX's diffusers names, which ComfyUI's key map sends to its fused qkv / linear1 weights with row
offsets and to the final layer with its scale/shift swap); ComfyUI's own `comfy.lora.load_lora` turns that into
weight patches and `ModelPatcher.add_patches` puts them on a MODEL clone, exactly as core's LoraLoaderModelOnly does.
So the patched weights equal core's wherever core reads the file, and DynamicVRAM, low-VRAM loading and other LoRA
nodes treat them like core's.
"""

from __future__ import annotations

import logging

from comfy_api.latest import io

from ...videoprior_edit.lora import read_lora
from ...videoprior_edit.lora.original import (
    core_reads,
    describe_shapes,
    flux_layout,
    original_layout,
)
from .. import host

log = logging.getLogger("videoprior_edit.lora")
PREFIX = "diffusion_model."


def patch_lora(model, path, strength: float):
    """(a clone of MODEL with the LoRA at `path` as ComfyUI weight patches, the one-line report)."""
    import comfy.lora

    lora = read_lora(path)
    shapes, flux = model_shapes(model)
    layout = flux_layout if flux else original_layout
    tensors, report = layout(lora, shapes, target=f"MODEL ({describe_shapes(shapes)})")
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


def model_shapes(model) -> tuple[dict[str, tuple[int, ...]], bool]:
    """(parameter shapes, is FLUX): a Wan MODEL's original names; a FLUX MODEL's diffusers names, from ComfyUI's own
    diffusers-to-BFL table (a name that is a row range of a fused weight gets that range's shape)."""
    import comfy.model_base
    import comfy.utils

    state = model.model.state_dict()
    shapes = {k[len(PREFIX):]: tuple(v.shape) for k, v in state.items() if k.startswith(PREFIX)}
    if not isinstance(model.model, comfy.model_base.Flux):
        return shapes, False
    diffusers = {}
    for name, to in comfy.utils.flux_to_diffusers(model.model.model_config.unet_config).items():
        key, rows = (to[0], to[1]) if isinstance(to, tuple) else (to, None)
        if key in shapes:
            shape = list(shapes[key])
            if rows is not None:
                shape[rows[0]] = rows[2]
            diffusers[name] = tuple(shape)
    return diffusers, True


def _held_by_parent(model, key) -> bool:
    """Whether `key` is a parameter of a module that also has sub-modules with parameters (Wan's per-block and head
    `modulation` tables): ComfyUI's patcher only patches parameters of leaf modules, so it would skip it. A key with
    a row range or a function (FLUX's fused weights) is a leaf's."""
    if isinstance(key, tuple):
        return False
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


class LoraLoaderModelOnly(io.ComfyNode):
    """Adds a LoRA in any common format to a MODEL as ComfyUI weight patches."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VPE_LoraLoaderModelOnly",
            display_name="Load LoRA, any format (VideoPrior Edit)",
            category="VideoPriorEdit/LoRA",
            description=(
                "Loads a Wan or FLUX.1 LoRA in any common key format, including those ComfyUI's own LoRA loader "
                "drops (diffusers/PEFT names, lightx2v diff_m, adapter-named keys), as ComfyUI weight patches. One "
                "summary line says how many modules matched; a LoRA made for another model is refused with the "
                "model it seems made for."),
            inputs=[
                io.Model.Input("model", tooltip=(
                    "A Wan or FLUX.1 model from a ComfyUI loader (Load Diffusion Model, a GGUF loader, ...) or "
                    "another LoRA node. For Wan2.2-A14B use one node per expert.")),
                io.Combo.Input("lora_name", options=host.model_choices("loras"), tooltip=(
                    "LoRA from models/loras: lightx2v / Kijai (incl. diff, diff_b, diff_m), musubi-tuner / kohya "
                    "(full or partial), diffusers / PEFT (alpha from the metadata, `.default` adapter names), "
                    "ai-toolkit, OneTrainer or LyCORIS names.")),
                io.Float.Input("strength_model", default=1.0, min=-100.0, max=100.0, step=0.01, tooltip=(
                    "How strongly the LoRA applies (1 = as trained; negative values push the other way).")),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip=(
                    "The model with the LoRA as weight patches (ComfyUI merges them when it loads the model).")),
            ],
        )

    @classmethod
    def execute(cls, model, lora_name, strength_model):
        if strength_model == 0:
            return host.node_output("strength 0: the model passes through unchanged", (model,))
        patched, line = patch_lora(model, host.folders().path("loras", lora_name), strength_model)
        log.info(line)
        return host.node_output(line, (patched,))


NODES = [LoraLoaderModelOnly]
