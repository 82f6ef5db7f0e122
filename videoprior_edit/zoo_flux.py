"""The tiny FLUX.1 zoo: random-weight FLUX components with the real architectures, in the layouts real files use.

`write_flux_zoo(root)` writes
  root/models/diffusion_models/tiny_flux1-dev.safetensors      BFL keys, bf16 (as flux1-dev.safetensors)
  root/models/diffusion_models/tiny_flux1-schnell.safetensors  BFL keys, no guidance embedder (as schnell)
  root/models/vae/tiny_flux_ae.safetensors                     BFL/ldm keys, fp32 (as ae.safetensors)
  root/models/text_encoders/tiny_clip_l.safetensors            transformers `text_model.*` keys, fp16
  root/models/text_encoders/tiny_t5xxl_fp16.safetensors        ComfyUI T5 keys (shared + encoder), fp16
  root/models/text_encoders/flux_tokenizers/clip_l/            vocab.json, merges.txt, tokenizer_config.json, ...
  root/models/text_encoders/flux_tokenizers/t5xxl/             spiece.model, tokenizer_config.json, ...
  root/diffusers/FLUX.1-dev-tiny/                              `FluxPipeline.save_pretrained` of the same weights
Weights are rounded to the single files' dtypes first, so every layout holds exactly the same values. The sizes
("tiny" in configs/flux.json) are ones ComfyUI's own code can build too: head dim 128 with RoPE axes [16, 56, 56]
(its FLUX detection), T5 with 32 relative-attention buckets, VAE widths in multiples of 32 (its GroupNorm's 32 groups).
"""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path

import torch

from .models.configs import config_data
from .models.flux import flux_config, flux_to_original, scheduler_config
from .weights import save_file
from .zoo import CORPUS, random_model, tiny_spiece_model

FLUX_FILES = {
    "transformer": "diffusion_models/tiny_flux1-dev.safetensors",
    "transformer_schnell": "diffusion_models/tiny_flux1-schnell.safetensors",
    "vae": "vae/tiny_flux_ae.safetensors",
    "clip_l": "text_encoders/tiny_clip_l.safetensors",
    "t5xxl": "text_encoders/tiny_t5xxl_fp16.safetensors",
}
CLIP_SPECIALS = ("<|startoftext|>", "<|endoftext|>")


def _round_to(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Make every weight exactly representable in `dtype` (the single file's dtype); the model stays fp32."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.to(dtype).to(p.dtype))
    return module


def tiny_flux_transformer(seed: int, guidance: bool = True):
    from diffusers import FluxTransformer2DModel

    config = {**flux_config("transformer", "tiny"), "guidance_embeds": guidance}
    return _round_to(random_model(lambda: FluxTransformer2DModel(**config), seed), torch.bfloat16)


def tiny_clip_l(seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(**flux_config("clip_l", "tiny"))
    return _round_to(random_model(lambda: CLIPTextModel(config), seed), torch.float16)


def tiny_t5xxl(seed: int):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(**flux_config("t5xxl", "tiny"))
    return _round_to(random_model(lambda: T5EncoderModel(config), seed), torch.float16)


def tiny_flux_vae(seed: int):
    from diffusers import AutoencoderKL

    return random_model(lambda: AutoencoderKL(**flux_config("vae", "tiny")), seed)


# ------------------------------------------------------------------------------------- VAE layout
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_key_to_ldm(key: str, num_blocks: int) -> str:
    """diffusers AutoencoderKL key -> BFL/ldm `ae.safetensors` key (inverse of `convert_ldm_vae_checkpoint`)."""
    rules = [
        (r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m: f"encoder.down.{m[1]}.block.{m[2]}."),
        (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", lambda m: f"encoder.down.{m[1]}.downsample."),
        (r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
         lambda m: f"decoder.up.{num_blocks - 1 - int(m[1])}.block.{m[2]}."),
        (r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
         lambda m: f"decoder.up.{num_blocks - 1 - int(m[1])}.upsample."),
        (r"^(encoder|decoder)\.mid_block\.resnets\.(\d+)\.", lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}."),
        (r"^(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.",
         lambda m: f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}."),
        (r"^(encoder|decoder)\.conv_norm_out\.", lambda m: f"{m[1]}.norm_out."),
    ]
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new.replace("conv_shortcut", "nin_shortcut")
    return key


def vae_to_ldm(model) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL state dict in the BFL `ae.safetensors` layout (attention as 1x1 convs)."""
    n = len(model.config.block_out_channels)
    out = {}
    for k, v in model.state_dict().items():
        new = vae_key_to_ldm(k, n)
        if ".mid.attn_1." in new and new.endswith(".weight") and ".norm." not in new:
            v = v[:, :, None, None]
        out[new] = v
    return out


# ------------------------------------------------------------------------------------- tokenizers
def _bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable character table of byte-level BPE (GPT-2/CLIP), in CLIP's vocabulary order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def tiny_clip_vocab(num_merges: int = 120) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A small CLIP-style byte-level BPE learnt from the zoo corpus: CLIP's vocabulary order (256 byte symbols,
    the same with `</w>`, merges, then the start and end tokens, the end token last as in CLIP)."""
    b2u = _bytes_to_unicode()
    word_re = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+")
    words = collections.Counter("".join(b2u[b] for b in w.encode()) for line in CORPUS
                                for w in word_re.findall(line.lower()))
    seqs = {w: (*w[:-1], w[-1] + "</w>") for w in words}
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs = collections.Counter()
        for w, s in seqs.items():
            for pair in zip(s, s[1:]):
                pairs[pair] += words[w]
        if not pairs:
            break
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merges.append(best)
        for w, s in seqs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = tuple(out)
    units = list(b2u.values())
    tokens = [*units, *(u + "</w>" for u in units), *("".join(m) for m in merges), *CLIP_SPECIALS]
    return {t: i for i, t in enumerate(tokens)}, merges


def tiny_clip_tokenizer():
    from transformers import CLIPTokenizer

    vocab, merges = tiny_clip_vocab()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def write_clip_tokenizer_files(folder: Path) -> None:
    """The files of openai/clip-vit-large-patch14's tokenizer (no tokenizer.json), for the tiny vocabulary."""
    vocab, merges = tiny_clip_vocab()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    start, end = CLIP_SPECIALS
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": start, "eos_token": end, "unk_token": end, "pad_token": end}, indent=2))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, "errors": "replace",
         "bos_token": start, "eos_token": end, "unk_token": end, "pad_token": end}, indent=2))


def write_t5_tokenizer_files(folder: Path, spiece: bytes) -> None:
    """The files of google/t5-v1_1-xxl's tokenizer: spiece.model plus its configs (no tokenizer.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spiece.model").write_bytes(spiece)
    specials = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "T5Tokenizer", "extra_ids": 100, "model_max_length": 512, **specials}, indent=2))


# ------------------------------------------------------------------------------------- the zoo
def flux_zoo_paths(root: str | Path) -> dict[str, Path]:
    """Where `write_flux_zoo(root)` puts each FLUX component."""
    models = Path(root) / "models"
    paths = {name: models / rel for name, rel in FLUX_FILES.items()}
    tok_root = models / "text_encoders" / "flux_tokenizers"
    paths.update(models=models, clip_l_tokenizer=tok_root / "clip_l", t5xxl_tokenizer=tok_root / "t5xxl",
                 diffusers=Path(root) / "diffusers" / "FLUX.1-dev-tiny")
    return paths


def write_flux_zoo(root: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write the tiny FLUX.1 zoo under `root` (about 61 MB, a few seconds; the transformer has two heads of 128, the
    only head size ComfyUI's FLUX detection builds); return its paths."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import T5Tokenizer

    paths = flux_zoo_paths(root)

    transformer, schnell = tiny_flux_transformer(seed + 11), tiny_flux_transformer(seed + 12, guidance=False)
    clip, t5, vae = tiny_clip_l(seed + 13), tiny_t5xxl(seed + 14), tiny_flux_vae(seed + 15)
    spiece = tiny_spiece_model()

    # ComfyUI models tree.
    save_file({k: v.to(torch.bfloat16) for k, v in flux_to_original(transformer.state_dict()).items()},
              paths["transformer"])
    save_file({k: v.to(torch.bfloat16) for k, v in flux_to_original(schnell.state_dict()).items()},
              paths["transformer_schnell"])
    save_file(vae_to_ldm(vae), paths["vae"])
    save_file({f"text_model.{k}": v.to(torch.float16) for k, v in clip.state_dict().items()
               if not k.endswith("position_ids")}, paths["clip_l"])
    te = {k: v.to(torch.float16) for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"}
    save_file(te, paths["t5xxl"])  # ComfyUI's t5xxl files store the tied embedding once, as shared.weight
    write_clip_tokenizer_files(paths["clip_l_tokenizer"])
    write_t5_tokenizer_files(paths["t5xxl_tokenizer"], spiece)

    # diffusers pipeline folder (fp32, same values).
    clip_tok = tiny_clip_tokenizer()
    t5_tok = T5Tokenizer.from_pretrained(str(paths["t5xxl_tokenizer"]), local_files_only=True)  # from spiece.model
    for tok, size in ((clip_tok, flux_config("clip_l", "tiny")["vocab_size"]),
                      (t5_tok, flux_config("t5xxl", "tiny")["vocab_size"])):
        assert len(tok) <= size, f"tiny tokenizer ({len(tok)}) larger than the tiny vocabulary ({size})"
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**scheduler_config()), vae=vae, text_encoder=clip,
                        tokenizer=clip_tok, text_encoder_2=t5, tokenizer_2=t5_tok, transformer=transformer)
    pipe.save_pretrained(str(paths["diffusers"]))
    (paths["diffusers"] / "tokenizer_2" / "spiece.model").write_bytes(spiece)
    (Path(root) / "flux_zoo.json").write_text(json.dumps(
        {"seed": seed, "files": FLUX_FILES, "config": config_data("flux")["transformer"]["sizes"]["tiny"]}, indent=2))
    return paths
