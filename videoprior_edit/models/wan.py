"""Loading Wan components (DiT experts, UMT5 text encoder, VAE, CLIP image encoder) from the files artists have.

Every loader: open safetensors (single file, diffusers folder or official shards), identify what the file is
from its keys and shapes, pick the shipped config, build the model empty and fill it in the chosen dtype.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


from ..errors import ModelFileError
from ..weights import WeightFile
from .configs import config_data, find_size, sized_config
from .core import apply_weight_storage, build_empty, fill, parse_dtype
from .wan_keys import describe_checkpoint, is_diffusers_layout, wan_key_to_diffusers

EXPERT_FOLDERS = {"high": ("transformer", "high_noise_model"), "low": ("transformer_2", "low_noise_model")}


@dataclass(frozen=True)
class WanInfo:
    """What a Wan DiT checkpoint is: family (t2v, i2v, flf2v, i2v-a14b), size and the matching real variants."""

    family: str
    size: str
    config: dict
    variants: tuple[str, ...]
    names: str

    @property
    def description(self) -> str:
        return f"{self.names} ({self.config['in_channels']} input channels, {self.size})"


def _family_description(family: str) -> str:
    data = config_data("wan_transformer")
    names = [v["name"] for v in data["variants"].values() if v["family"] == family]
    return " / ".join(names) or family


def component_path(path: Path, folders: tuple[str, ...]) -> Path:
    """Inside a diffusers pipeline folder or an official repo, the subfolder holding one component."""
    path = Path(path)
    if path.is_dir() and not any(path.glob("*.safetensors*")):
        for name in folders:
            if (path / name).is_dir():
                return path / name
    return path


def inspect_wan(wf: WeightFile) -> WanInfo:
    """Identify a Wan DiT checkpoint from its keys and shapes."""
    keys = wf.keys()
    diff = {(k if is_diffusers_layout(keys) else wan_key_to_diffusers(k)): k for k in keys}
    pe = diff.get("patch_embedding.weight")
    if pe is None or "blocks.0.ffn.net.0.proj.weight" not in diff:
        raise ModelFileError(f"'{wf.path.name}' is {describe_checkpoint(keys)}, not a Wan diffusion model.",
                             "Pick a Wan file from models/diffusion_models (e.g. wan2.2_i2v_high_noise_14B_fp16).")
    shape = lambda k: wf.shape(diff[k])  # noqa: E731
    dim, in_ch = shape("patch_embedding.weight")[:2]
    layers = len({int(m.group(1)) for k in diff if k and (m := re.match(r"blocks\.(\d+)\.", k))})
    ffn = shape("blocks.0.ffn.net.0.proj.weight")[0]
    image = "condition_embedder.image_embedder.norm1.weight" in diff
    flf = "condition_embedder.image_embedder.pos_embed" in diff
    data = config_data("wan_transformer")
    family = next((f for f, v in data["families"].items()
                   if (v["in_channels"], v["image_encoder"], v["flf2v"]) == (in_ch, image, flf)), None)
    size = next((s for s, v in data["sizes"].items() if (v["num_attention_heads"] * v["attention_head_dim"],
                                                         v["num_layers"], v["ffn_dim"]) == (dim, layers, ffn)), None)
    if family is None or size is None:
        raise ModelFileError(
            f"'{wf.path.name}' is a Wan-like model that matches no known variant (input channels {in_ch}, hidden "
            f"size {dim}, {layers} blocks, FFN {ffn}, image encoder {'yes' if image else 'no'}).",
            "Supported: Wan2.1-T2V-1.3B/14B, Wan2.1-I2V-14B, Wan2.1-FLF2V-14B, Wan2.2-T2V/I2V-A14B experts.")
    fam = data["families"][family]
    if "unsupported" in fam:
        raise ModelFileError(f"'{wf.path.name}' is {_family_description(family)}. {fam['unsupported']}",
                             "Use a Wan2.1 or Wan2.2-A14B model instead.")
    config = {**data["base"], **data["sizes"][size], "in_channels": in_ch}
    config.pop("test_only", None)
    if image:
        config["added_kv_proj_dim"] = dim
        config["image_dim"] = shape("condition_embedder.image_embedder.norm1.weight")[0]
        if flf:
            config["pos_embed_seq_len"] = shape("condition_embedder.image_embedder.pos_embed")[1]
    else:
        config["image_dim"] = None
    config["text_dim"] = shape("condition_embedder.text_embedder.linear_1.weight")[1]
    variants = tuple(v for v, d in data["variants"].items() if d["family"] == family and d["size"] == size)
    names = " / ".join(data["variants"][v]["name"] for v in variants) or f"tiny test {_family_description(family)}"
    return WanInfo(family, size, config, variants, names)


def diffusers_tensors(wf: WeightFile, tensors):
    """(diffusers key, tensor) for a Wan DiT checkpoint's (key, tensor) pairs; keys with no diffusers place dropped."""
    convert = (lambda k: k) if is_diffusers_layout(wf.keys()) else wan_key_to_diffusers
    return ((name, t) for k, t in tensors if (name := convert(k)) is not None)


def quantized_layout(wf: WeightFile) -> list:
    """The quantised tensors of a GGUF Wan DiT as meta tensors under their diffusers keys (for models built empty)."""
    if wf.gguf is None:
        return []
    return list(diffusers_tensors(wf, ((k, wf.gguf.meta(k)) for k, i in wf.infos.items() if i.quant)))


def expert_hint(path: Path) -> str | None:
    """'high' or 'low' when the file name (else its folder's name) says which Wan2.2 expert it is.

    Whole words only ("high", "low", "transformer_2"), so folders like `workflows/` or `flow_models/` say nothing.
    """
    for name in (Path(path).name, Path(path).parent.name):
        words = set(re.split(r"[^a-z0-9]+", name.lower()))
        if name == "transformer_2" or "low" in words:
            return "low" if "high" not in words else None
        if "high" in words:
            return "high"
    return None


def load_wan_transformer(path: str | Path, dtype="bf16", weight_storage: str = "default",
                         expect: tuple[str, ...] | None = None, slot: str = "model"):
    """Load a Wan DiT (`WanTransformer3DModel`) from a single file (safetensors or GGUF), diffusers folder or
    official shards.

    `expect` lists acceptable families (e.g. ("i2v-a14b",)); another kind raises an error naming both. GGUF-quantised
    Linears stay quantised and are dequantised per layer at run time (`weight_storage` applies to the others).
    """
    from diffusers import WanTransformer3DModel

    dtype = parse_dtype(dtype)
    apply_weight_storage([], weight_storage)  # reject an unknown choice before reading gigabytes
    wf = WeightFile(path, allow_gguf=True)
    info = inspect_wan(wf)
    if expect and info.family not in expect:
        wanted = " or ".join(_family_description(f) for f in expect)
        raise ModelFileError(f"'{wf.path.name}' is {info.description}, but the {slot} input needs {wanted}.",
                             "Pick a matching file for this input (see the node's tooltip).")
    model = build_empty(lambda: WanTransformer3DModel(**info.config))
    fill(model, diffusers_tensors(wf, wf.tensors()), dtype, wf.path.name)
    apply_weight_storage(model.blocks, weight_storage)
    model.vpe_info = info
    return model


# ----------------------------------------------------------------------------------------------- UMT5
def inspect_umt5(wf: WeightFile) -> dict:
    """The UMT5 config for a text-encoder checkpoint (ComfyUI file or diffusers `text_encoder/`)."""
    keys = wf.keys()
    if "shared.weight" not in keys or "encoder.block.0.layer.0.SelfAttention.q.weight" not in keys:
        raise ModelFileError(f"'{wf.path.name}' is {describe_checkpoint(keys)}, not the UMT5 text encoder.",
                             "Pick umt5_xxl_fp16.safetensors (or its fp8 version) from models/text_encoders.")
    if "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" not in keys:
        raise ModelFileError(f"'{wf.path.name}' is a T5 encoder (e.g. FLUX's t5xxl), not Wan's UMT5-XXL.",
                             "Wan needs umt5_xxl_fp16.safetensors.")
    vocab, d_model = wf.shape("shared.weight")
    layers = len({k.split(".")[2] for k in keys if k.startswith("encoder.block.")})
    data = config_data("umt5")
    size = find_size(data["sizes"], vocab_size=vocab, d_model=d_model, num_layers=layers)
    if size is None:
        raise ModelFileError(f"'{wf.path.name}': a UMT5 encoder of unknown size (vocab {vocab}, width {d_model}, "
                             f"{layers} blocks).", "Wan uses UMT5-XXL: umt5_xxl_fp16.safetensors.")
    return sized_config("umt5", size)


def load_umt5(path: str | Path, dtype="bf16", tokenizer_path: str | Path | None = None):
    """Load Wan's UMT5 text encoder and its tokenizer (from the file's `spiece_model` or a tokenizer folder)."""
    from transformers import UMT5Config, UMT5EncoderModel

    from ..tokenizer import load_umt5_tokenizer

    path = component_path(Path(path), ("text_encoder",))
    wf = WeightFile(path)
    config = UMT5Config(**inspect_umt5(wf))
    model = build_empty(lambda: UMT5EncoderModel(config))
    fill(model, wf.tensors(), parse_dtype(dtype), wf.path.name, ignore=lambda k: k == "spiece_model")
    return model, load_umt5_tokenizer(wf, tokenizer_path)


# ----------------------------------------------------------------------------------------------- VAE
def load_wan_vae(path: str | Path, dtype="fp32"):
    """Load the Wan2.1 video VAE (`AutoencoderKLWan`); keep it in float32 unless memory forces otherwise."""
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    path = component_path(Path(path), ("vae",))
    wf = WeightFile(path)
    keys = wf.keys()
    conv_in = next((k for k in ("encoder.conv1.weight", "encoder.conv_in.weight") if k in keys), None)
    quant = next((k for k in ("conv1.weight", "quant_conv.weight") if k in keys), None)
    head = next((k for k in ("decoder.head.2.weight", "decoder.conv_out.weight") if k in keys), None)
    if conv_in is None or quant is None or head is None:
        raise ModelFileError(f"'{wf.path.name}' is {describe_checkpoint(keys)}, not the Wan video VAE.",
                             "Pick wan_2.1_vae.safetensors from models/vae.")
    z_dim = wf.shape(quant)[0] // 2
    if z_dim != 16:
        raise ModelFileError(f"'{wf.path.name}' is a Wan2.2 VAE ({z_dim} latent channels, for TI2V-5B).",
                             "Wan2.1 and Wan2.2-A14B use wan_2.1_vae.safetensors (16 channels).")
    base_dim = wf.shape(conv_in)[0]
    data = config_data("wan_vae")
    size = find_size(data["sizes"], base_dim=base_dim)
    if size is None:
        raise ModelFileError(f"'{wf.path.name}': Wan VAE of unknown width {base_dim}.", "Use wan_2.1_vae.safetensors.")
    sd = wf.state_dict()
    if conv_in == "encoder.conv1.weight":
        sd = convert_wan_vae_to_diffusers(sd)
    model = build_empty(lambda: AutoencoderKLWan(**sized_config("wan_vae", size)))
    return fill(model, sd.items(), parse_dtype(dtype), wf.path.name)


# ----------------------------------------------------------------------------------------------- CLIP
def load_clip_vision(path: str | Path, dtype="bf16"):
    """Load the CLIP ViT-H/14 image encoder of Wan2.1-I2V/FLF2V (transformers `CLIPVisionModel`) and its processor."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    path = component_path(Path(path), ("image_encoder",))
    wf = WeightFile(path)
    keys = wf.keys()
    prefix = next((p for p in ("vision_model.", "") if p + "embeddings.class_embedding" in keys), None)
    if prefix is None:
        raise ModelFileError(f"'{wf.path.name}' is {describe_checkpoint(keys)}, not a CLIP image encoder in "
                             "transformers layout.", "Pick clip_vision_h.safetensors from models/clip_vision.")
    hidden = wf.shape(prefix + "embeddings.class_embedding")[0]
    layers = len({k[len(prefix):].split(".")[2] for k in keys if k.startswith(prefix + "encoder.layers.")})
    data = config_data("clip_vision")
    size = find_size(data["sizes"], hidden_size=hidden, num_hidden_layers=layers)
    if size is None:
        raise ModelFileError(f"'{wf.path.name}': CLIP image encoder of unknown size ({hidden} wide, {layers} layers).",
                             "Wan2.1-I2V/FLF2V use CLIP ViT-H/14: clip_vision_h.safetensors.")
    model = build_empty(lambda: CLIPVisionModel(CLIPVisionConfig(**sized_config("clip_vision", size))))
    tensors = ((k[len(prefix):], t) for k, t in wf.tensors() if k.startswith(prefix))
    fill(model, tensors, parse_dtype(dtype), wf.path.name, ignore=lambda k: k.endswith("position_ids"))
    return model, clip_image_processor()


def clip_image_processor():
    """The CLIP image preprocessing of Wan2.1-I2V (224 px, OpenAI mean/std), without torchvision."""
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(**config_data("clip_vision")["image_processor"])
