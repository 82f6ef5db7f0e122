"""Wan checkpoint key layouts: original (Wan repos, ComfyUI files) <-> diffusers, and what a file contains.

One table serves both directions, so the test zoo writes exactly the layout real files have and the loader
reads it back through the same mapping (checked against diffusers' own converter in the tests).
"""

from __future__ import annotations

import re

ORIGINAL_PREFIXES = ("model.diffusion_model.", "diffusion_model.")

# (original, diffusers) prefixes outside the blocks; the longest match wins.
_TOP = [
    ("patch_embedding.", "patch_embedding."),
    ("text_embedding.0.", "condition_embedder.text_embedder.linear_1."),
    ("text_embedding.2.", "condition_embedder.text_embedder.linear_2."),
    ("time_embedding.0.", "condition_embedder.time_embedder.linear_1."),
    ("time_embedding.2.", "condition_embedder.time_embedder.linear_2."),
    ("time_projection.1.", "condition_embedder.time_proj."),
    ("head.head.", "proj_out."),
    ("head.modulation", "scale_shift_table"),
    ("img_emb.proj.0.", "condition_embedder.image_embedder.norm1."),
    ("img_emb.proj.1.", "condition_embedder.image_embedder.ff.net.0.proj."),
    ("img_emb.proj.3.", "condition_embedder.image_embedder.ff.net.2."),
    ("img_emb.proj.4.", "condition_embedder.image_embedder.norm2."),
    ("img_emb.emb_pos", "condition_embedder.image_embedder.pos_embed"),
]
# Inside `blocks.N.` (original norm3 is the cross-attention norm, diffusers calls it norm2).
_BLOCK = [("modulation", "scale_shift_table"), ("norm3.", "norm2."), ("ffn.0.", "ffn.net.0.proj."),
          ("ffn.2.", "ffn.net.2.")]
for _o, _d in (("self_attn.", "attn1."), ("cross_attn.", "attn2.")):
    _BLOCK += [(_o + a, _d + b) for a, b in (
        ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("o.", "to_out.0."), ("k_img.", "add_k_proj."),
        ("v_img.", "add_v_proj."), ("norm_q.", "norm_q."), ("norm_k.", "norm_k."), ("norm_k_img.", "norm_added_k."))]

_BLOCK_RE = re.compile(r"^(blocks\.\d+\.)(.*)$")


def _translate(key: str, table: list[tuple[str, str]], forward: bool) -> str | None:
    best = None
    for orig, diff in table:
        src, dst = (orig, diff) if forward else (diff, orig)
        if key.startswith(src) and (best is None or len(src) > len(best[0])):
            best = (src, dst)
    return None if best is None else best[1] + key[len(best[0]):]


def wan_key_to_diffusers(key: str) -> str | None:
    """Original Wan key -> diffusers key (None when the key has no place in a diffusers Wan model)."""
    for prefix in ORIGINAL_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
            break
    m = _BLOCK_RE.match(key)
    if m:
        rest = _translate(m.group(2), _BLOCK, forward=True)
        return None if rest is None else m.group(1) + rest
    return _translate(key, _TOP, forward=True)


def wan_key_to_original(key: str) -> str | None:
    """Diffusers Wan key -> original Wan key (the layout of ComfyUI and official files)."""
    m = _BLOCK_RE.match(key)
    if m:
        rest = _translate(m.group(2), _BLOCK, forward=False)
        return None if rest is None else m.group(1) + rest
    return _translate(key, _TOP, forward=False)


def is_diffusers_layout(keys) -> bool:
    return any(k.startswith("condition_embedder.") for k in keys)


# --- the Wan VAE (original -> diffusers is diffusers' `convert_wan_vae_to_diffusers`; this is the inverse) ---
_RES = {"norm1.gamma": "residual.0.gamma", "conv1": "residual.2", "norm2.gamma": "residual.3.gamma",
        "conv2": "residual.6", "conv_shortcut": "shortcut"}


def _res_to_original(rest: str) -> str:
    for d, o in _RES.items():
        if rest.startswith(d):
            return o + rest[len(d):]
    return rest


def wan_vae_key_to_original(key: str, num_res_blocks: int = 2) -> str:
    """Diffusers AutoencoderKLWan key -> key of the original Wan2.1 VAE file (`wan_2.1_vae.safetensors`)."""
    simple = {"quant_conv.": "conv1.", "post_quant_conv.": "conv2.", "encoder.conv_in.": "encoder.conv1.",
              "decoder.conv_in.": "decoder.conv1.", "encoder.norm_out.": "encoder.head.0.",
              "decoder.norm_out.": "decoder.head.0.", "encoder.conv_out.": "encoder.head.2.",
              "decoder.conv_out.": "decoder.head.2."}
    for d, o in simple.items():
        if key.startswith(d):
            return o + key[len(d):]
    m = re.match(r"^(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.*)$", key)
    if m:
        side, kind, i, rest = m.groups()
        if kind == "attentions":
            return f"{side}.middle.1.{rest}"
        return f"{side}.middle.{2 * int(i)}.{_res_to_original(rest)}"
    m = re.match(r"^encoder\.down_blocks\.(\d+)\.(.*)$", key)
    if m:
        return f"encoder.downsamples.{m.group(1)}.{_res_to_original(m.group(2))}"
    per_stage = num_res_blocks + 2  # resnets then one upsampler, flattened in the original
    m = re.match(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)$", key)
    if m:
        s, r, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        return f"decoder.upsamples.{s * per_stage + r}.{_res_to_original(rest)}"
    m = re.match(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)$", key)
    if m:
        return f"decoder.upsamples.{int(m.group(1)) * per_stage + num_res_blocks + 1}.{m.group(2)}"
    return key


# --- what is this file? (for error messages that name what was found) ---
def describe_checkpoint(keys) -> str:
    """A short human name for the kind of checkpoint these keys come from."""
    keys = list(keys)
    has = lambda s: any(s in k for k in keys)  # noqa: E731
    if any(".lora_" in k or k.startswith("lora_") or ".lora." in k for k in keys):
        return "a LoRA (load it with a LoRA node, not as a model)"
    if has("patch_embedding.") and has("blocks.0."):
        return "a Wan diffusion model (DiT)"
    if has("double_blocks.") or has("transformer_blocks.0.ff_context"):
        return "a FLUX diffusion model"
    if has("encoder.block.0.layer.0.SelfAttention"):
        return "a T5/UMT5 text encoder"
    if has("text_model.encoder.layers."):
        return "a CLIP text encoder"
    if has("vision_model.encoder.layers.") or has("visual.transformer."):
        return "a CLIP image encoder"
    if has("decoder.upsamples.") or has("decoder.up_blocks.0.upsamplers.0.time_conv"):
        return "a Wan video VAE"
    if has("decoder.up.") or has("decoder.up_blocks.0.resnets.0.norm1.weight"):
        return "an image VAE (FLUX/SD style)"
    if any(k.startswith("enc.blk.") for k in keys):
        return "a T5/UMT5 text encoder (llama.cpp tensor names)"
    if any(k.startswith("blk.") for k in keys):
        return "a language model (llama.cpp tensor names)"
    return f"an unrecognised checkpoint ({len(keys)} tensors, e.g. {keys[:2]})"
