"""Test-only ComfyUI nodes (linked into the test server's custom_nodes, never shipped): load the tiny zoo's UMT5 and
CLIP vision files with ComfyUI's own model code.

Why: ComfyUI's CLIPLoader and CLIPVisionLoader pick a model size from the file's keys (UMT5-XXL is recognised by its
24th block, CLIP ViT-H by its 31st layer) and build it from a fixed config, so the zoo's tiny stand-ins cannot go
through them. These nodes build ComfyUI's own T5 / CLIP-vision classes (`comfy.text_encoders.wan`, `comfy.sd.CLIP`,
`comfy.clip_vision.ClipVisionModel`) with the zoo's sizes read from the file's shapes, in float32; every other step
of a graph (CLIPTextEncode, CLIPVisionEncode, samplers, VAE) is ComfyUI's, unchanged. Tests put them where a shipped
workflow has CLIPLoader / CLIPVisionLoader.
"""

import json
import types

import comfy.clip_vision
import comfy.sd
import comfy.text_encoders.wan
import comfy.utils
import folder_paths
import torch


def umt5_config(sd: dict) -> dict:
    """A UMT5 config matching the file's shapes (ComfyUI's json holds the XXL sizes)."""
    d_model = sd["shared.weight"].shape[1]
    heads = sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape[1]
    inner = sd["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0]
    layers = len({k.split(".")[2] for k in sd if k.startswith("encoder.block.")})
    return {"d_model": d_model, "num_heads": heads, "d_kv": inner // heads, "num_layers": layers,
            "d_ff": sd["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0],
            "vocab_size": sd["shared.weight"].shape[0]}


class TinyTextEncoderLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip_name": (folder_paths.get_filename_list("text_encoders"), {"tooltip": "UMT5 file"}),
                             "type": (["wan"], {"tooltip": "only wan"})}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, clip_name, type="wan"):
        sd = comfy.utils.load_torch_file(folder_paths.get_full_path_or_raise("text_encoders", clip_name))
        target = types.SimpleNamespace(clip=comfy.text_encoders.wan.te(), tokenizer=comfy.text_encoders.wan.WanT5Tokenizer,
                                       params={})
        spiece = sd.pop("spiece_model")
        clip = comfy.sd.CLIP(target, tokenizer_data={"spiece_model": spiece}, state_dict=[sd],
                             model_options={"umt5xxl_model_config": umt5_config(sd), "dtype": torch.float32})
        return (clip,)


class TinyClipVisionLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip_name": (folder_paths.get_filename_list("clip_vision"), {"tooltip": "CLIP file"})}}

    RETURN_TYPES = ("CLIP_VISION",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, clip_name):
        sd = comfy.utils.load_torch_file(folder_paths.get_full_path_or_raise("clip_vision", clip_name))
        hidden = sd["vision_model.embeddings.class_embedding"].shape[0]
        with open(comfy.clip_vision.__file__.replace("clip_vision.py", "clip_vision_config_h.json")) as f:
            config = json.load(f)
        config.update(hidden_size=hidden, num_attention_heads=2, torch_dtype="float32",  # heads: the zoo's config
                      intermediate_size=sd["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
                      num_hidden_layers=len({k.split(".")[3] for k in sd if k.startswith("vision_model.encoder.layers.")}),
                      projection_dim=sd["visual_projection.weight"].shape[0])
        model = comfy.clip_vision.ClipVisionModel(config)
        model.load_sd(sd)
        return (model,)


NODE_CLASS_MAPPINGS = {"VPETest_TinyTextEncoderLoader": TinyTextEncoderLoader,
                       "VPETest_TinyClipVisionLoader": TinyClipVisionLoader}
