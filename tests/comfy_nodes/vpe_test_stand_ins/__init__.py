"""Test-only ComfyUI nodes (linked into the test server's custom_nodes, never shipped): load the tiny zoo's UMT5,
CLIP vision, FLUX text encoders (CLIP-L + T5) and FLUX VAE files with ComfyUI's own model code.

Why: ComfyUI's CLIPLoader, DualCLIPLoader and CLIPVisionLoader pick a model size from the file's keys (UMT5-XXL is
recognised by its 24th block, CLIP ViT-H by its 31st layer) and build it from a fixed config and ComfyUI's own
full-vocabulary tokenizers; its VAE loader builds every SD/FLUX-style image VAE with a 128-wide encoder. So the zoo's
tiny stand-ins cannot go through them. These nodes build ComfyUI's own classes (`comfy.text_encoders.wan`,
`comfy.text_encoders.flux`, `comfy.sd.CLIP`, `comfy.clip_vision.ClipVisionModel`, `comfy.sd.VAE`) with the zoo's sizes
read from the file's shapes (and the zoo's tokenizer folders), in float32; every other step of a graph
(CLIPTextEncode, CLIPVisionEncode, samplers, VAE Encode / Decode) is ComfyUI's, unchanged. Tests put them where a
shipped workflow has CLIPLoader / DualCLIPLoader / CLIPVisionLoader / VAELoader.
"""

import json
import types
from pathlib import Path

import comfy.clip_vision
import comfy.sd
import comfy.sd1_clip
import comfy.text_encoders.flux
import comfy.text_encoders.wan
import comfy.utils
import folder_paths
import torch
import transformers

PACK = Path(__file__).resolve().parents[3]  # this folder is tests/comfy_nodes/vpe_test_stand_ins of the pack


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


def zoo_config(component: str) -> dict:
    """The zoo's tiny FLUX `component` config from the pack's configs (for what the shapes do not tell: heads)."""
    data = json.loads((PACK / "videoprior_edit" / "configs" / "flux.json").read_text())[component]
    return {**data["base"], **data["sizes"]["tiny"]}


CLIP_VOCAB = 49408  # ComfyUI's CLIP text model builds its token table at this size whatever the config says


def clip_l_config(sd: dict, end_token: int) -> dict:
    """ComfyUI's CLIP-L config with the file's sizes (ComfyUI's json holds the full ones)."""
    layers = len({k.split(".")[3] for k in sd if k.startswith("text_model.encoder.layers.")})
    width = sd["text_model.embeddings.token_embedding.weight"].shape[1]
    return {"hidden_size": width, "num_hidden_layers": layers, "eos_token_id": end_token,
            "intermediate_size": sd["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
            "num_attention_heads": zoo_config("clip_l")["num_attention_heads"], "projection_dim": width}


def comfy_clip_l(sd: dict) -> dict:
    """The tiny CLIP-L as ComfyUI's class holds it: the token table padded with zero rows to ComfyUI's fixed size (the
    tiny tokenizer never reaches them) and an identity text projection (the file has none; FLUX uses the pooled
    output unprojected)."""
    key = "text_model.embeddings.token_embedding.weight"
    table = sd[key]
    return {**sd, key: torch.cat([table, table.new_zeros(CLIP_VOCAB - table.shape[0], table.shape[1])]),
            "text_projection.weight": torch.eye(table.shape[1], dtype=table.dtype)}


def t5_config(sd: dict) -> dict:
    """ComfyUI's T5-XXL config with the file's sizes (heads from block 0's relative attention bias)."""
    heads = sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape[1]
    inner = sd["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0]
    return {"d_model": sd["shared.weight"].shape[1], "num_heads": heads, "d_kv": inner // heads,
            "num_layers": len({k.split(".")[2] for k in sd if k.startswith("encoder.block.")}),
            "d_ff": sd["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0],
            "vocab_size": sd["shared.weight"].shape[0]}


class TinyFluxTokenizer(comfy.text_encoders.flux.FluxTokenizer):
    """ComfyUI's FLUX tokenizer pair read from the zoo's tokenizer folders (ComfyUI ships the full vocabularies)."""

    def __init__(self, folder: Path, widths: dict, embedding_directory=None, tokenizer_data=None):
        tokenizer_data = tokenizer_data or {}
        self.clip_l = comfy.sd1_clip.SDTokenizer(str(folder / "clip_l"), embedding_size=widths["l"],
                                                 embedding_directory=embedding_directory, tokenizer_data=tokenizer_data)
        self.t5xxl = comfy.sd1_clip.SDTokenizer(
            str(folder / "t5xxl"), embedding_size=widths["t5xxl"], embedding_key="t5xxl", pad_with_end=False,
            has_start_token=False, pad_to_max_length=False, max_length=99999999, min_length=256,
            tokenizer_class=transformers.T5Tokenizer, embedding_directory=embedding_directory,
            tokenizer_data=tokenizer_data)


def tiny_flux_clip(special_tokens: dict):
    """ComfyUI's FLUX text-encoder pair whose CLIP-L knows the tiny vocabulary's start and end tokens."""

    class TinyFluxClipModel(comfy.text_encoders.flux.FluxClipModel):
        def __init__(self, device="cpu", dtype=None, model_options=None):
            super().__init__(device=device, dtype=dtype, model_options=model_options or {})
            self.clip_l.special_tokens = special_tokens

    return TinyFluxClipModel


class TinyDualClipLoader:
    @classmethod
    def INPUT_TYPES(cls):
        names = folder_paths.get_filename_list("text_encoders")
        return {"required": {"clip_name1": (names, {"tooltip": "CLIP-L file"}),
                             "clip_name2": (names, {"tooltip": "T5-XXL file"}),
                             "type": (["flux"], {"tooltip": "only flux"})}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, clip_name1, clip_name2, type="flux"):
        paths = [Path(folder_paths.get_full_path_or_raise("text_encoders", n)) for n in (clip_name1, clip_name2)]
        sds = [comfy.utils.load_torch_file(str(p)) for p in paths]
        clip_sd = next(sd for sd in sds if "text_model.embeddings.token_embedding.weight" in sd)
        t5_sd = next(sd for sd in sds if "shared.weight" in sd)
        folder = paths[0].parent / "flux_tokenizers"  # the zoo's, beside its text encoder files
        widths = {"l": clip_sd["text_model.embeddings.token_embedding.weight"].shape[1],
                  "t5xxl": t5_sd["shared.weight"].shape[1]}
        words = TinyFluxTokenizer(folder, widths).clip_l
        special = {"start": words.start_token, "end": words.end_token, "pad": words.end_token}
        target = types.SimpleNamespace(clip=tiny_flux_clip(special), params={},
                                       tokenizer=lambda **kw: TinyFluxTokenizer(folder, widths, **kw))
        options = {"clip_l_model_config": clip_l_config(clip_sd, words.end_token), "t5xxl_model_config":
                   t5_config(t5_sd), "dtype": torch.float32}
        return (comfy.sd.CLIP(target, state_dict=[comfy_clip_l(clip_sd), t5_sd], model_options=options),)


def identity_quant_convs(sd: dict, latent: int) -> dict:
    """The 1x1 quant convs ComfyUI's AutoencoderKL has and the FLUX VAE lacks, as exact identities."""
    def eye(n: int) -> torch.Tensor:
        return torch.eye(n)[:, :, None, None]

    return {**sd, "quant_conv.weight": eye(2 * latent), "quant_conv.bias": torch.zeros(2 * latent),
            "post_quant_conv.weight": eye(latent), "post_quant_conv.bias": torch.zeros(latent)}


class TinyVAELoader:
    """The zoo's narrow FLUX VAE with ComfyUI's own AutoencoderKL at the file's widths (widths in multiples of 32:
    ComfyUI's GroupNorm has 32 groups); any other file (the Wan VAE, a full-size ae.safetensors) through core's
    VAELoader, so it can stand in for VAELoader in every workflow."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae_name": (folder_paths.get_filename_list("vae"), {"tooltip": "VAE file"})}}

    RETURN_TYPES = ("VAE",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, vae_name):
        sd = comfy.utils.load_torch_file(folder_paths.get_full_path_or_raise("vae", vae_name))
        width = sd.get("encoder.conv_in.weight", torch.empty(128)).shape[0]
        if "encoder.down.0.block.0.conv1.weight" not in sd or width == 128 or "quant_conv.weight" in sd:
            from nodes import VAELoader  # ComfyUI's nodes.py (this pack has a `nodes` package too)

            return VAELoader().load_vae(vae_name)
        levels = len({k.split(".")[2] for k in sd if k.startswith("encoder.down.")})
        ddconfig = {"double_z": True, "z_channels": sd["decoder.conv_in.weight"].shape[1], "resolution": 256,
                    "in_channels": 3, "out_ch": 3, "ch": width, "attn_resolutions": [], "dropout": 0.0,
                    "ch_mult": [sd[f"encoder.down.{i}.block.0.conv2.weight"].shape[0] // width for i in range(levels)],
                    "num_res_blocks": len({k.split(".")[4] for k in sd if k.startswith("encoder.down.0.block.")})}
        latent = ddconfig["z_channels"]
        vae = comfy.sd.VAE(sd=identity_quant_convs(sd, latent), config={"params": {"embed_dim": latent,
                                                                                  "ddconfig": ddconfig}})
        vae.latent_channels = latent
        return (vae,)


NODE_CLASS_MAPPINGS = {"VPETest_TinyTextEncoderLoader": TinyTextEncoderLoader,
                       "VPETest_TinyClipVisionLoader": TinyClipVisionLoader,
                       "VPETest_TinyDualCLIPLoader": TinyDualClipLoader,
                       "VPETest_TinyVAELoader": TinyVAELoader}
