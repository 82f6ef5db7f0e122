"""Loading FLUX.1 components (transformer, CLIP-L, T5-XXL, VAE) from the files artists have.

Layouts: ComfyUI/BFL single files (`flux1-dev.safetensors`, `clip_l.safetensors`, `t5xxl_fp16.safetensors`,
`ae.safetensors`) and diffusers folders (a component folder, or a pipeline root with `model_index.json`).
Same pattern as `wan.py`: identify the file from its keys and shapes, pick the shipped config
(`configs/flux.json`), build the model empty and fill it in the chosen dtype. Nothing is downloaded.

Choices worth knowing:
- FLUX.1-schnell (no `guidance_in` weights) is accepted and loads with `guidance_embeds=False`;
  `model.vpe_info.variant` says "schnell". Pass `expect=("dev",)` to refuse it (the error names FLUX.1-schnell).
  FLUX.1-Kontext-dev has FLUX.1-dev's exact shapes and loads as "dev". Fill/Depth/Canny are refused by name.
- The transformer's BFL -> diffusers conversion is this module's own table (`flux_to_diffusers`), not diffusers'
  `convert_flux_transformer_checkpoint_to_diffusers`: that function hard-codes the 12B hidden size (3072) for
  the split of the single blocks' fused `linear1`, so it cannot convert any other width, and it empties the dict
  it is given (keys are popped, `model.diffusion_model.` prefixes renamed in place). The tests check that both
  give identical tensors on a checkpoint with the real FLUX.1 sizes.
- The VAE goes through diffusers' `convert_ldm_vae_checkpoint(checkpoint, config)` (it reads, never mutates).
- ComfyUI's CLIP-L and T5-XXL files carry no tokenizer: pass `tokenizer_path`, or keep the tokenizer files in
  `<models>/text_encoders/flux_tokenizers/clip_l/` and `.../t5xxl/` (diffusers folders use their siblings
  `tokenizer/` and `tokenizer_2/`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import torch

from ..errors import ModelFileError
from ..weights import WeightFile
from .configs import config_data, find_size, sized_config
from .core import apply_weight_storage, build_empty, fill, parse_dtype
from .wan import component_path
from .wan_keys import describe_checkpoint

FLUX_PREFIXES = ("model.diffusion_model.", "diffusion_model.")


def flux_config(component: str, size: str) -> dict:
    """`base` + the named size of one component of `configs/flux.json` (transformer, clip_l, t5xxl, vae)."""
    return sized_config("flux", size, component)


def scheduler_config() -> dict:
    """FLUX.1-dev's FlowMatchEulerDiscreteScheduler settings."""
    config = dict(config_data("flux")["scheduler"])
    config.pop("_doc", None)
    return config


# ------------------------------------------------------------------------------------- key layouts
# (BFL prefix, diffusers prefixes). Several diffusers names = the BFL tensor is their concatenation on dim 0.
_TOP = [
    ("img_in.", ("x_embedder.",)),
    ("txt_in.", ("context_embedder.",)),
    ("time_in.in_layer.", ("time_text_embed.timestep_embedder.linear_1.",)),
    ("time_in.out_layer.", ("time_text_embed.timestep_embedder.linear_2.",)),
    ("vector_in.in_layer.", ("time_text_embed.text_embedder.linear_1.",)),
    ("vector_in.out_layer.", ("time_text_embed.text_embedder.linear_2.",)),
    ("guidance_in.in_layer.", ("time_text_embed.guidance_embedder.linear_1.",)),
    ("guidance_in.out_layer.", ("time_text_embed.guidance_embedder.linear_2.",)),
    ("final_layer.linear.", ("proj_out.",)),
    ("final_layer.adaLN_modulation.1.", ("norm_out.linear.",)),  # (shift, scale) in BFL, (scale, shift) in diffusers
]
_DOUBLE = [
    ("img_mod.lin.", ("norm1.linear.",)),
    ("txt_mod.lin.", ("norm1_context.linear.",)),
    ("img_attn.qkv.", ("attn.to_q.", "attn.to_k.", "attn.to_v.")),
    ("txt_attn.qkv.", ("attn.add_q_proj.", "attn.add_k_proj.", "attn.add_v_proj.")),
    ("img_attn.norm.query_norm.scale", ("attn.norm_q.weight",)),
    ("img_attn.norm.key_norm.scale", ("attn.norm_k.weight",)),
    ("txt_attn.norm.query_norm.scale", ("attn.norm_added_q.weight",)),
    ("txt_attn.norm.key_norm.scale", ("attn.norm_added_k.weight",)),
    ("img_attn.proj.", ("attn.to_out.0.",)),
    ("txt_attn.proj.", ("attn.to_add_out.",)),
    ("img_mlp.0.", ("ff.net.0.proj.",)),
    ("img_mlp.2.", ("ff.net.2.",)),
    ("txt_mlp.0.", ("ff_context.net.0.proj.",)),
    ("txt_mlp.2.", ("ff_context.net.2.",)),
]
_SINGLE = [
    ("modulation.lin.", ("norm.linear.",)),
    ("linear1.", ("attn.to_q.", "attn.to_k.", "attn.to_v.", "proj_mlp.")),
    ("norm.query_norm.scale", ("attn.norm_q.weight",)),
    ("norm.key_norm.scale", ("attn.norm_k.weight",)),
    ("linear2.", ("proj_out.",)),
]
_BLOCKS = (("double_blocks.", "transformer_blocks.", _DOUBLE),
           ("single_blocks.", "single_transformer_blocks.", _SINGLE))
_SWAPPED = "final_layer.adaLN_modulation.1."


def _split_block(key: str, bfl_side: bool):
    for bfl, diff, table in _BLOCKS:
        m = re.match(rf"^{re.escape(bfl if bfl_side else diff)}(\d+)\.(.*)$", key)
        if m:
            return f"{bfl}{m.group(1)}.", f"{diff}{m.group(1)}.", table, m.group(2)
    return "", "", _TOP, key


def flux_key_to_diffusers(key: str) -> tuple[str, ...] | None:
    """BFL key (without prefix) -> its diffusers name(s); several names for a fused tensor; None if unknown."""
    bfl, diff, table, rest = _split_block(key, bfl_side=True)
    best = max((e for e in table if rest.startswith(e[0])), key=lambda e: len(e[0]), default=None)
    if best is None:
        return None
    return tuple(diff + d + rest[len(best[0]):] for d in best[1])


def flux_key_to_original(key: str) -> tuple[str, int, int] | None:
    """diffusers key -> (BFL key, part index, number of parts of the fused BFL tensor); None if unknown."""
    bfl, diff, table, rest = _split_block(key, bfl_side=False)
    best = max(((o, i, len(ds), d) for o, ds in table for i, d in enumerate(ds) if rest.startswith(d)),
               key=lambda e: len(e[3]), default=None)
    if best is None:
        return None
    o, i, n, d = best
    return bfl + o + rest[len(d):], i, n


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def flux_to_diffusers(tensors: Iterable[tuple[str, torch.Tensor]], hidden: int) -> Iterator[tuple[str, torch.Tensor]]:
    """Convert BFL transformer tensors (prefix already removed) to diffusers names, one tensor at a time.

    `hidden` is the model width (3072 for FLUX.1): fused q/k/v are split in `hidden` rows each, the single
    blocks' `linear1` in q, k, v and the MLP rest. Unknown keys pass through unchanged (the loader reports them).
    """
    for key, t in tensors:
        names = flux_key_to_diffusers(key)
        if names is None:
            yield key, t
        elif len(names) == 1:
            yield names[0], _swap_halves(t) if key.startswith(_SWAPPED) else t
        else:
            sizes = [hidden] * 3 + ([t.shape[0] - 3 * hidden] if len(names) == 4 else [])
            if sum(sizes) != t.shape[0] or min(sizes) <= 0:
                raise ModelFileError(f"Tensor '{key}' has {t.shape[0]} rows, which does not split into the "
                                     f"{len(names)} parts of a FLUX model {hidden} wide.",
                                     "The file is damaged or is not a FLUX.1 transformer.")
            for name, part in zip(names, torch.split(t, sizes, dim=0)):
                yield name, part.clone()  # own storage: no parameter keeps the whole fused tensor alive


def flux_to_original(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers FluxTransformer2DModel state dict -> BFL layout (the inverse of `flux_to_diffusers`)."""
    out: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[int, torch.Tensor]] = {}
    counts: dict[str, int] = {}
    for key, t in state_dict.items():
        found = flux_key_to_original(key)
        if found is None:
            raise KeyError(f"'{key}' has no place in the BFL FLUX layout")
        name, i, n = found
        if n == 1:
            out[name] = _swap_halves(t) if name.startswith(_SWAPPED) else t
        else:
            parts.setdefault(name, {})[i] = t
            counts[name] = n
    for name, got in parts.items():
        if len(got) != counts[name]:
            raise KeyError(f"'{name}' is missing parts: only {sorted(got)} of {counts[name]}")
        out[name] = torch.cat([got[i] for i in range(counts[name])], dim=0)
    return out


# ------------------------------------------------------------------------------------- transformer
@dataclass(frozen=True)
class FluxInfo:
    """What a FLUX transformer checkpoint is: variant (dev, schnell, ...), size and where its keys live."""

    variant: str
    size: str
    config: dict
    name: str
    layout: str  # "bfl" or "diffusers"
    prefix: str  # removed from every key before conversion

    @property
    def description(self) -> str:
        return f"{self.name} ({self.config['in_channels']} input channels, {self.size})"

    @property
    def max_sequence_length(self) -> int:
        return config_data("flux")["transformer"]["variants"][self.variant].get("max_sequence_length", 512)


def _count(keys, prefix: str) -> int:
    return len({m.group(1) for k in keys if (m := re.match(rf"^{re.escape(prefix)}(\d+)\.", k))})


def inspect_flux(wf: WeightFile) -> FluxInfo:
    """Identify a FLUX.1 transformer checkpoint from its keys and shapes (headers only)."""
    keys = wf.keys()
    prefix = next((p for p in FLUX_PREFIXES if any(k.startswith(p + "double_blocks.") for k in keys)), "")
    own = {k[len(prefix):]: k for k in keys if k.startswith(prefix)}
    if "img_in.weight" in own and "double_blocks.0.img_attn.qkv.weight" in own:
        layout = "bfl"
        names = {"in": "img_in.weight", "txt": "txt_in.weight", "vec": "vector_in.in_layer.weight",
                 "guid": "guidance_in.in_layer.weight", "out": "final_layer.linear.weight",
                 "qn": "double_blocks.0.img_attn.norm.query_norm.scale"}
        blocks = ("double_blocks.", "single_blocks.")
    elif "x_embedder.weight" in own and "transformer_blocks.0.attn.to_q.weight" in own:
        layout = "diffusers"
        names = {"in": "x_embedder.weight", "txt": "context_embedder.weight",
                 "vec": "time_text_embed.text_embedder.linear_1.weight",
                 "guid": "time_text_embed.guidance_embedder.linear_1.weight", "out": "proj_out.weight",
                 "qn": "transformer_blocks.0.attn.norm_q.weight"}
        blocks = ("transformer_blocks.", "single_transformer_blocks.")
    else:
        raise ModelFileError(f"'{wf.path.name}' is {describe_checkpoint(keys)}, not a FLUX.1 diffusion model.",
                             "Pick flux1-dev.safetensors (or its fp8 version) from models/diffusion_models.")
    missing = [n for n in ("in", "txt", "vec", "out", "qn") if names[n] not in own]
    if missing:
        raise ModelFileError(f"'{wf.path.name}' looks like a FLUX model but lacks '{names[missing[0]]}'.",
                             "The file is incomplete or a FLUX-like model this pack does not support.")
    shape = lambda n: wf.shape(own[names[n]])  # noqa: E731
    hidden, in_ch = shape("in")
    head_dim = shape("qn")[0]
    found = {"num_attention_heads": hidden // head_dim, "attention_head_dim": head_dim,
             "num_layers": _count(own, blocks[0]), "num_single_layers": _count(own, blocks[1]),
             "joint_attention_dim": shape("txt")[1], "pooled_projection_dim": shape("vec")[1]}
    guidance = names["guid"] in own
    data = config_data("flux")["transformer"]
    size = find_size(data["sizes"], **found)
    variant = next((n for n, v in data["variants"].items()
                    if (v["in_channels"], v["guidance_embeds"]) == (in_ch, guidance)), None)
    if size is None or variant is None:
        raise ModelFileError(
            f"'{wf.path.name}' is a FLUX-like model that matches no known variant (input channels {in_ch}, "
            f"guidance embedder {'yes' if guidance else 'no'}, width {hidden}, {found['num_layers']} double + "
            f"{found['num_single_layers']} single blocks, text width {found['joint_attention_dim']}).",
            "Supported: FLUX.1-dev (and Kontext-dev, same shapes) and FLUX.1-schnell.")
    v = data["variants"][variant]
    if "unsupported" in v:
        raise ModelFileError(f"'{wf.path.name}' is {v['name']}. {v['unsupported']}",
                             "Use flux1-dev.safetensors.")
    config = {**flux_config("transformer", size), "in_channels": in_ch, "guidance_embeds": guidance}
    out_ch = shape("out")[0]
    config["out_channels"] = None if out_ch == in_ch else out_ch
    name = v["name"] if size != "tiny" else f"tiny test {v['name']}"
    return FluxInfo(variant, size, config, name, layout, prefix)


def load_flux_transformer(path: str | Path, dtype="bf16", weight_storage: str = "default",
                          expect: tuple[str, ...] | None = None):
    """Load the FLUX.1 transformer (`FluxTransformer2DModel`) from a BFL/ComfyUI single file (safetensors or a
    city96-style GGUF; keys optionally prefixed `model.diffusion_model.`), a diffusers `transformer/` folder or a
    pipeline root. GGUF-quantised Linears stay quantised and are dequantised per layer at run time.

    `expect` lists acceptable variants ("dev", "schnell"); another one raises an error naming both.
    `weight_storage="fp8_e4m3fn"` stores the block Linears in float8 (compute stays in `dtype`).
    """
    from diffusers import FluxTransformer2DModel

    dtype = parse_dtype(dtype)
    apply_weight_storage([], weight_storage)  # reject an unknown choice before reading gigabytes
    wf = WeightFile(component_path(Path(path), ("transformer",)), allow_gguf=True)
    info = inspect_flux(wf)
    if expect and info.variant not in expect:
        variants = config_data("flux")["transformer"]["variants"]
        wanted = " or ".join(variants[v]["name"] for v in expect)
        raise ModelFileError(f"'{wf.path.name}' is {info.description}, but this input needs {wanted}.",
                             "Pick a matching file for this input (see the node's tooltip).")
    keys = [k for k in wf.keys() if k.startswith(info.prefix)]
    tensors = ((k[len(info.prefix):], t) for k, t in wf.tensors(keys))
    if info.layout == "bfl":
        hidden = info.config["num_attention_heads"] * info.config["attention_head_dim"]
        tensors = flux_to_diffusers(tensors, hidden)
    model = build_empty(lambda: FluxTransformer2DModel(**info.config))
    fill(model, tensors, dtype, wf.path.name)
    apply_weight_storage([model.transformer_blocks, model.single_transformer_blocks], weight_storage)
    model.vpe_info = info
    return model


# ------------------------------------------------------------------------------------- tokenizers
def _tokenizer_spec(component: str) -> dict:
    return config_data("flux")[component]["tokenizer"]


def tokenizer_candidates(weights_path: Path, component: str) -> list[Path]:
    """Where the tokenizer of a CLIP-L / T5-XXL checkpoint may be, in search order."""
    spec = _tokenizer_spec(component)
    p = Path(weights_path)
    if p.is_file() and p.parent.name in ("text_encoder", "text_encoder_2"):
        p = p.parent
    if p.is_dir():  # diffusers component folder: the sibling tokenizer folder
        return [p.parent / spec["diffusers_folder"]]
    parents = [p.parent, p.parent.parent]
    cands = [d / "flux_tokenizers" / spec["folder"] for d in parents]
    cands.append(p.parent.parent / "text_encoders" / "flux_tokenizers" / spec["folder"])  # files in models/clip/
    return list(dict.fromkeys(cands))


def _has_tokenizer(folder: Path, component: str) -> bool:
    return folder.is_dir() and any(all((folder / f).is_file() for f in group)
                                   for group in _tokenizer_spec(component)["required"])


def find_flux_tokenizer(weights_path: str | Path, component: str, tokenizer_path: str | Path | None = None) -> Path:
    """The tokenizer folder for `component` ("clip_l" or "t5xxl"), or a ModelFileError saying what to create."""
    spec = _tokenizer_spec(component)
    label = {"clip_l": "CLIP-L", "t5xxl": "T5-XXL"}[component]
    files = ", ".join(spec["files"])
    candidates = [Path(tokenizer_path)] if tokenizer_path else tokenizer_candidates(Path(weights_path), component)
    for cand in candidates:
        if _has_tokenizer(cand, component):
            return cand
    where = candidates[0]
    needed = " or ".join(" + ".join(g) for g in spec["required"])
    if tokenizer_path:
        msg = f"The {label} tokenizer folder '{where}' does not hold a tokenizer (needs {needed})."
    else:
        msg = (f"No {label} tokenizer found for '{Path(weights_path).name}': the weight file carries none, and "
               f"'{where}' does not exist or lacks the tokenizer files (needs {needed}).")
    raise ModelFileError(msg, f"Create the folder '{where}' and put the tokenizer files of {spec['repository']} in "
                              f"it ({files}); the FLUX.1-dev repository's '{spec['diffusers_folder']}/' folder holds "
                              "the same files. Nothing is downloaded at run time.")


def _read_tokenizer(cls, folder: Path, label: str):
    try:
        return cls.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # malformed or foreign tokenizer files
        raise ModelFileError(f"Could not read the {label} tokenizer in '{folder}': {e}",
                             "Replace the folder's files with the original tokenizer files.") from None


def _check_vocab(tokenizer, vocab_size: int, folder: Path, label: str, repo: str) -> None:
    if len(tokenizer) > vocab_size:
        raise ModelFileError(f"The tokenizer in '{folder}' has {len(tokenizer)} tokens but the {label} text encoder "
                             f"only {vocab_size}: it is another model's tokenizer.",
                             f"Use the tokenizer files of {repo}.")


# ------------------------------------------------------------------------------------- CLIP-L
_CLIP_PREFIXES = ("text_model.", "", "text_encoders.clip_l.transformer.text_model.",
                  "cond_stage_model.transformer.text_model.")
_CLIP_IGNORED = ("position_ids",)


def inspect_clip_l(wf: WeightFile) -> tuple[dict, str]:
    """(CLIPTextConfig kwargs, key prefix) for a CLIP-L text-encoder checkpoint."""
    keys = wf.keys()
    prefix = next((p for p in _CLIP_PREFIXES if p + "embeddings.token_embedding.weight" in keys), None)
    if prefix is None:
        raise ModelFileError(f"'{wf.path.name}' is {describe_checkpoint(keys)}, not the CLIP-L text encoder.",
                             "Pick clip_l.safetensors from models/text_encoders.")
    vocab, hidden = wf.shape(prefix + "embeddings.token_embedding.weight")
    layers = _count(keys, prefix + "encoder.layers.")
    data = config_data("flux")["clip_l"]
    size = find_size(data["sizes"], vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers)
    if size is None:
        what = "CLIP-G (clip_g, used by SDXL/SD3)" if hidden == 1280 else "a CLIP text encoder of unknown size"
        raise ModelFileError(f"'{wf.path.name}' is {what} ({hidden} wide, {layers} layers, vocabulary {vocab}), "
                             "not CLIP-L.", "FLUX.1 uses CLIP-L: clip_l.safetensors.")
    return flux_config("clip_l", size), prefix


def load_clip_l(path: str | Path, dtype="bf16", tokenizer_path: str | Path | None = None):
    """Load FLUX.1's CLIP-L text encoder (`CLIPTextModel`) and its tokenizer (`CLIPTokenizer`)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    path = component_path(Path(path), ("text_encoder",))
    wf = WeightFile(path)
    config, prefix = inspect_clip_l(wf)
    folder = find_flux_tokenizer(wf.path, "clip_l", tokenizer_path)
    keys = [k for k in wf.keys() if k.startswith(prefix) and not k.endswith(_CLIP_IGNORED)]
    model = build_empty(lambda: CLIPTextModel(CLIPTextConfig(**config)))
    fill(model, ((k[len(prefix):], t) for k, t in wf.tensors(keys)), parse_dtype(dtype), wf.path.name)
    tokenizer = _read_tokenizer(CLIPTokenizer, folder, "CLIP-L")
    _check_vocab(tokenizer, config["vocab_size"], folder, "CLIP-L", _tokenizer_spec("clip_l")["repository"])
    if tokenizer.model_max_length > config["max_position_embeddings"]:  # folder without tokenizer_config.json
        tokenizer.model_max_length = config["max_position_embeddings"]
    return model, tokenizer


# ------------------------------------------------------------------------------------- T5-XXL
_T5_PREFIXES = ("", "text_encoders.t5xxl.transformer.")


def inspect_t5xxl(wf: WeightFile) -> tuple[dict, str]:
    """(T5Config kwargs, key prefix) for a T5 v1.1 XXL encoder checkpoint; UMT5 and T5 v1.0 are refused by name."""
    keys = wf.keys()
    prefix = next((p for p in _T5_PREFIXES if p + "encoder.block.0.layer.0.SelfAttention.q.weight" in keys), None)
    if prefix is None:
        raise ModelFileError(f"'{wf.path.name}' is {describe_checkpoint(keys)}, not the T5-XXL text encoder.",
                             "Pick t5xxl_fp16.safetensors (or t5xxl_fp8_e4m3fn.safetensors) from models/text_encoders.")
    if prefix + "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" in keys:
        raise ModelFileError(
            f"'{wf.path.name}' is a UMT5 text encoder (Wan's umt5-xxl: a relative attention bias in every block), "
            "not FLUX's T5-XXL (google/t5-v1_1-xxl, bias in block 0 only).",
            "FLUX needs t5xxl_fp16.safetensors or t5xxl_fp8_e4m3fn.safetensors; load umt5_xxl with the Wan loader.")
    if prefix + "encoder.block.0.layer.1.DenseReluDense.wi.weight" in keys:
        raise ModelFileError(f"'{wf.path.name}' is an original T5 (v1.0, plain ReLU feed-forward), not T5 v1.1.",
                             "FLUX needs t5xxl_fp16.safetensors (google/t5-v1_1-xxl).")
    emb = next((prefix + k for k in ("shared.weight", "encoder.embed_tokens.weight") if prefix + k in keys), None)
    if emb is None:
        raise ModelFileError(f"'{wf.path.name}': T5 encoder without a token embedding (shared.weight).",
                             "The file is incomplete; download t5xxl_fp16.safetensors again.")
    vocab, d_model = wf.shape(emb)
    layers = _count(keys, prefix + "encoder.block.")
    data = config_data("flux")["t5xxl"]
    size = find_size(data["sizes"], vocab_size=vocab, d_model=d_model, num_layers=layers)
    if size is None:
        raise ModelFileError(f"'{wf.path.name}': a T5 encoder of unknown size (vocabulary {vocab}, width {d_model}, "
                             f"{layers} blocks).", "FLUX uses T5 v1.1 XXL: t5xxl_fp16.safetensors.")
    return flux_config("t5xxl", size), prefix


def load_t5xxl(path: str | Path, dtype="bf16", tokenizer_path: str | Path | None = None):
    """Load FLUX.1's T5-XXL encoder (`T5EncoderModel`) and its tokenizer (`T5Tokenizer`).

    fp8 files (plain e4m3fn or ComfyUI fp8_scaled) are upcast to `dtype`; in fp16 the `wo` layers stay float32,
    as transformers does.
    """
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    path = component_path(Path(path), ("text_encoder_2",))
    wf = WeightFile(path)
    config, prefix = inspect_t5xxl(wf)
    folder = find_flux_tokenizer(wf.path, "t5xxl", tokenizer_path)
    keys = wf.keys()
    has_shared = prefix + "shared.weight" in keys

    def tensors():
        wanted = [k for k in keys if k.startswith(prefix)]
        for k, t in wf.tensors(wanted):
            k = k[len(prefix):]
            if k == "encoder.embed_tokens.weight" and not has_shared:
                k = "shared.weight"
            yield k, t

    model = build_empty(lambda: T5EncoderModel(T5Config(**config)))
    fill(model, tensors(), parse_dtype(dtype), wf.path.name,
         ignore=lambda k: k.startswith(("decoder.", "lm_head.")) or k == "spiece_model")
    tokenizer = _read_tokenizer(T5Tokenizer, folder, "T5-XXL")
    _check_vocab(tokenizer, config["vocab_size"], folder, "T5-XXL", _tokenizer_spec("t5xxl")["repository"])
    return model, tokenizer


# ------------------------------------------------------------------------------------- VAE
_VAE_PREFIXES = ("", "vae.", "first_stage_model.")


def inspect_flux_vae(wf: WeightFile) -> tuple[dict, str, str]:
    """(AutoencoderKL kwargs, layout "ldm" or "diffusers", key prefix) for a FLUX.1 VAE checkpoint."""
    keys = wf.keys()
    prefix = next((p for p in _VAE_PREFIXES if p + "encoder.conv_in.weight" in keys), None)
    layout = None
    if prefix is not None and prefix + "encoder.down.0.block.0.norm1.weight" in keys:
        layout = "ldm"
    elif prefix == "" and "encoder.down_blocks.0.resnets.0.norm1.weight" in keys:
        layout = "diffusers"
    if layout is None or len(wf.shape(prefix + "encoder.conv_in.weight")) != 4:
        raise ModelFileError(f"'{wf.path.name}' is {describe_checkpoint(keys)}, not the FLUX.1 image VAE.",
                             "Pick ae.safetensors (the FLUX.1 VAE) from models/vae.")
    latent = wf.shape(prefix + "encoder.conv_out.weight")[0] // 2
    if latent != 16:
        raise ModelFileError(f"'{wf.path.name}' is an image VAE with {latent} latent channels (SD1.x/SDXL VAEs have "
                             "4), not the FLUX.1 VAE (16).", "Pick ae.safetensors (the FLUX.1 VAE) from models/vae.")
    if prefix + "quant_conv.weight" in keys:
        raise ModelFileError(f"'{wf.path.name}' is a 16-channel VAE with quant convs, not the FLUX.1 VAE.",
                             "Pick ae.safetensors (the FLUX.1 VAE) from models/vae.")
    width = wf.shape(prefix + "encoder.conv_in.weight")[0]
    data = config_data("flux")["vae"]
    size = next((s for s, v in data["sizes"].items() if v["block_out_channels"][0] == width), None)
    if size is None:
        raise ModelFileError(f"'{wf.path.name}': a 16-channel image VAE of unknown width {width}.",
                             "FLUX.1 uses ae.safetensors (128 channels wide).")
    config = flux_config("vae", size)
    cfg_file = wf.path / "config.json" if wf.path.is_dir() else None
    if cfg_file is not None and cfg_file.is_file():  # diffusers folder: a same-shaped VAE (SD3) differs in scaling
        theirs = json.loads(cfg_file.read_text())
        for k in ("scaling_factor", "shift_factor"):
            if k in theirs and theirs[k] != config[k]:
                raise ModelFileError(f"'{wf.path}' is a 16-channel VAE with {k} {theirs[k]} (FLUX.1's is "
                                     f"{config[k]}): e.g. the SD3 VAE, not FLUX.1's.",
                                     "Pick the FLUX.1 'vae/' folder or ae.safetensors.")
    return config, layout, prefix


def load_flux_vae(path: str | Path, dtype="fp32"):
    """Load the FLUX.1 VAE (`AutoencoderKL`, 16 latent channels) from BFL `ae.safetensors` or a diffusers `vae/`."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    wf = WeightFile(component_path(Path(path), ("vae",)))
    config, layout, prefix = inspect_flux_vae(wf)
    sd = wf.state_dict([k for k in wf.keys() if k.startswith(prefix)])
    if layout == "ldm":  # diffusers strips the "vae." / "first_stage_model." prefix itself
        sd = convert_ldm_vae_checkpoint(sd, config)
    model = build_empty(lambda: AutoencoderKL(**config))
    return fill(model, sd.items(), parse_dtype(dtype), wf.path.name)
