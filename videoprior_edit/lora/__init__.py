"""LoRAs for Wan (2.1 / 2.2, T2V / I2V, each expert) and FLUX.1 transformers, in every common file layout.

Formats (detected from the keys, per key): musubi-tuner / kohya (`lora_unet_*`, full or partial), original Wan /
lightx2v / Kijai / ComfyUI (`diffusion_model.*`: lora_down/up or lora_A/B, `.alpha`, `diff`, `diff_b`, `diff_m`,
`head`, `img_emb`, `k_img`/`v_img`), diffusers / PEFT (`transformer.*`, alpha from the file's metadata), LyCORIS
(`lycoris_*`) and OneTrainer (`lora_transformer_*`) names, BFL / kohya FLUX names (fused qkv and `linear1` split into
diffusers' to_q/to_k/to_v/proj_mlp). fp32/fp16/bf16 files; safetensors only; nothing the caller passes is modified.

Two ways to apply, per LoRA:
- merged (`merge=True`, default): added to the weights, no cost at run time; undoing it re-reads the weights;
- unmerged (`merge=False`): kept beside the weights (a forward hook per Linear, tensors as buffers that move with
  the model), strength changes and removal are instant and read no file.

On a bare transformer (Wan or FLUX): `apply_lora`, `set_lora_strength`, `remove_lora`, `unmerged_loras`.
On a Wan model set: `add_lora` / `with_lora` record the LoRA in `models.loras`; `sync_loras` (called by the
sampling loop and the placement) makes each expert hold exactly what the running set lists. Every load logs one
summary line (matched modules, examples of what did not match); a LoRA for another base model is refused with the
model it looks made for.
"""

from .apply import (
    LoraLayer,
    LoraReport,
    ParamPatch,
    apply_lora,
    forget_loras,
    remove_lora,
    set_lora_strength,
    unmerged_loras,
)
from .formats import LoraDelta, LoraFile, read_lora
from .sets import EXPERTS, add_lora, lora_entry, sync_loras, wanted_loras, with_lora

__all__ = ["EXPERTS", "LoraDelta", "LoraFile", "LoraLayer", "LoraReport", "ParamPatch", "add_lora", "apply_lora",
           "forget_loras", "lora_entry", "read_lora", "remove_lora", "set_lora_strength", "sync_loras",
           "unmerged_loras", "wanted_loras", "with_lora"]
