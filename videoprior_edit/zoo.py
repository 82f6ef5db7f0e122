"""The tiny zoo: random-weight models with the real architectures, written in the layouts real weights use.

`write_zoo(root)` writes
  root/models/...            a ComfyUI models tree of single files (original Wan key layout, `spiece_model` inside
                             the UMT5 file, CLIP in transformers layout, Lightning LoRAs in loras/, GGUF Q8_0 and
                             Q4_K_M stand-ins of two Wan DiTs), as artists have them;
  root/diffusers/...         diffusers pipeline folders of the same weights (`save_pretrained` layout);
  root/official/...          the official sharded Wan2.2-I2V-A14B layout (high/low_noise_model shards + index);
  plus a tiny FLUX.1 (transformer, CLIP-L, T5-XXL, VAE, tokenizer folders) in both layouts (`zoo_flux.py`) and tiny
  Qwen2.5-VL / Qwen3-VL / Qwen3-VL-MoE folders in models/LLM (`zoo_qwen.py`).
Every layout holds the same tensors for a seed, so tests can compare loads across layouts exactly.
Command: `videoprior-edit zoo --out DIR`.
"""

from __future__ import annotations

import io
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .models.configs import config_data, sized_config
from .models.wan_keys import wan_key_to_original, wan_vae_key_to_original
from .weights import save_file

CORPUS = [
    "a woman holds a paper card in her hand and looks at the camera",
    "she releases her grip and the card floats out of frame",
    "hands become empty, lighting and pose unchanged",
    "a red cat sits on a wooden chair near the window",
    "the sky turns orange as the sun sets behind the mountains",
    "make the car blue, keep the background and the lighting",
    "a man in a black coat walks through the snowy street at night",
    "the cup of coffee slowly fills with steam, soft morning light",
]
FILES = {
    "wan22_i2v_high": "diffusion_models/tiny_wan2.2_i2v_high_noise_14B_fp32.safetensors",
    "wan22_i2v_low": "diffusion_models/tiny_wan2.2_i2v_low_noise_14B_fp32.safetensors",
    "wan21_t2v": "diffusion_models/tiny_wan2.1_t2v_1.3B_fp32.safetensors",
    "wan21_i2v": "diffusion_models/tiny_wan2.1_i2v_480p_14B_fp32.safetensors",
    "wan21_flf2v": "diffusion_models/tiny_wan2.1_flf2v_720p_14B_fp32.safetensors",
    "umt5": "text_encoders/tiny_umt5_xxl_fp32.safetensors",
    "vae": "vae/tiny_wan_2.1_vae.safetensors",
    "clip_vision": "clip_vision/tiny_clip_vision_h.safetensors",
    "lightning_high": "loras/tiny_wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors",
    "lightning_low": "loras/tiny_wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors",
    # GGUF stand-ins (ComfyUI-GGUF layout: original keys, F32 norms/modulation/5D patch embedding) of the models above.
    "wan21_t2v_q8_0": "diffusion_models/tiny_wan2.1_t2v_1.3B_Q8_0.gguf",
    "wan22_i2v_high_q4_k_m": "diffusion_models/tiny_wan2.2_i2v_high_noise_14B_Q4_K_M.gguf",
}
# The GGUF `general.file_type` of each quantisation scheme the zoo writes.
GGUF_SCHEMES = {"Q8_0": "MOSTLY_Q8_0", "Q4_K_M": "MOSTLY_Q4_K_M"}
# The Linear modules of each block a Wan2.2 Lightning (lightx2v) LoRA covers, in original names.
LIGHTNING_MODULES = tuple(f"{a}.{p}" for a in ("self_attn", "cross_attn") for p in "qkvo") + ("ffn.0", "ffn.2")


@dataclass
class Zoo:
    """Paths of a written zoo."""

    root: Path

    @property
    def models(self) -> Path:
        return self.root / "models"

    def file(self, name: str) -> Path:
        return self.models / FILES[name]

    @property
    def wan22_i2v_diffusers(self) -> Path:
        return self.root / "diffusers" / "Wan2.2-I2V-A14B-tiny"

    @property
    def wan21_i2v_diffusers(self) -> Path:
        return self.root / "diffusers" / "Wan2.1-I2V-14B-tiny"

    @property
    def wan22_i2v_official(self) -> Path:
        return self.root / "official" / "Wan2.2-I2V-A14B-tiny"

    @property
    def flux(self) -> dict[str, Path]:
        """FLUX.1 component paths (single files, tokenizer folders, the diffusers folder)."""
        from .zoo_flux import flux_zoo_paths

        return flux_zoo_paths(self.root)

    @property
    def qwen_vl(self) -> dict[str, Path]:
        """Tiny Qwen-VL model folders in models/LLM, by family (qwen2_5_vl, qwen3_vl, qwen3_vl_moe)."""
        from .zoo_qwen import qwen_zoo_paths

        return qwen_zoo_paths(self.root)


def random_model(factory, seed: int) -> torch.nn.Module:
    """Build `factory()` under `seed`, then perturb every parameter deterministically (norms too, so a swapped
    key cannot go unnoticed)."""
    torch.manual_seed(seed)
    module = factory()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
            p.copy_(p + 0.05 * torch.randn(p.shape, generator=gen))
    return module.eval()


def tiny_spiece_model() -> bytes:
    """A small unigram sentencepiece model trained offline (the layout of UMT5's spiece.model)."""
    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20), model_writer=out, vocab_size=200, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, hard_vocab_limit=False,
        num_threads=1, minloglevel=2)
    return out.getvalue()


def tiny_wan_transformer(family: str, seed: int, size: str = "tiny"):
    """A random-weight Wan DiT of `family` at a test-only `size` (tiny for tests, bench/bench_large for benchmarks)."""
    from diffusers import WanTransformer3DModel

    data = config_data("wan_transformer")
    config = {**data["base"], **data["sizes"][size], "in_channels": data["families"][family]["in_channels"]}
    config.pop("test_only")
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    if data["families"][family]["image_encoder"]:
        config["added_kv_proj_dim"] = dim
        config["image_dim"] = sized_config("clip_vision", "tiny")["hidden_size"]
        if data["families"][family]["flf2v"]:
            config["pos_embed_seq_len"] = 2 * 257
    else:
        config["image_dim"] = None
    return random_model(lambda: WanTransformer3DModel(**config), seed)


def tiny_umt5(seed: int):
    from transformers import UMT5Config, UMT5EncoderModel

    return random_model(lambda: UMT5EncoderModel(UMT5Config(**sized_config("umt5", "tiny"))), seed)


def tiny_vae(seed: int):
    from diffusers import AutoencoderKLWan

    return random_model(lambda: AutoencoderKLWan(**sized_config("wan_vae", "tiny")), seed)


def tiny_clip_vision(seed: int):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(**sized_config("clip_vision", "tiny"))
    return random_model(lambda: CLIPVisionModelWithProjection(config), seed)


def tiny_lightning_lora(model, seed: int, rank: int = 4, alpha: float = 2.0) -> dict[str, torch.Tensor]:
    """A LoRA for `model` in the layout of the Wan2.2 Lightning files: fp32 `diffusion_model.blocks.N.<module>`
    `.lora_down.weight` / `.lora_up.weight` / `.alpha` for every LIGHTNING_MODULES Linear of every block (the real
    files are rank 64 and hold nothing else: their byte size leaves no room for diff/diff_b keys). alpha != rank, so the
    alpha / rank scale is exercised."""
    gen = torch.Generator().manual_seed(seed)
    sd = _original_wan(model)
    out = {}
    for i in range(len(model.blocks)):
        for module in LIGHTNING_MODULES:
            out_dim, in_dim = sd[f"blocks.{i}.{module}.weight"].shape
            key = f"diffusion_model.blocks.{i}.{module}"
            out[f"{key}.lora_down.weight"] = 0.1 * torch.randn(rank, in_dim, generator=gen)
            out[f"{key}.lora_up.weight"] = 0.1 * torch.randn(out_dim, rank, generator=gen)
            out[f"{key}.alpha"] = torch.tensor(alpha)
    return out


def _original_wan(model) -> dict[str, torch.Tensor]:
    return {wan_key_to_original(k): v for k, v in model.state_dict().items()}


def _write_official(model, folder: Path, family: str, shards: int = 2) -> None:
    """Official Wan repo layout: original keys in shards + index json + the original `config.json`."""
    sd = _original_wan(model)
    keys = sorted(sd)
    per = (len(keys) + shards - 1) // shards
    weight_map = {}
    for i in range(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: sd[k] for k in keys[i * per:(i + 1) * per]}
        save_file(part, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    total = sum(t.numel() * t.element_size() for t in sd.values())
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    c = model.config
    (folder / "config.json").write_text(json.dumps({
        "_class_name": "WanModel", "model_type": family, "dim": c.num_attention_heads * c.attention_head_dim,
        "in_dim": c.in_channels, "out_dim": c.out_channels, "ffn_dim": c.ffn_dim, "freq_dim": c.freq_dim,
        "num_heads": c.num_attention_heads, "num_layers": c.num_layers, "text_len": 512, "eps": c.eps}, indent=2))


def wan_gguf_type(key: str, t: torch.Tensor, scheme: str) -> str:
    """The GGUF type of a Wan tensor in a `scheme` ("Q8_0" or "Q4_K_M") file, after ComfyUI-GGUF's and llama.cpp's
    rules: 1-D, small, modulation and 5-D tensors F32; Q4_K_M: Q6_K for attention values and FFN outputs, Q4_K
    elsewhere, Q8_0 where rows are not whole 256-value K-quant blocks; the Q4_K_M file keeps the time/text
    embeddings F32 (as ComfyUI-GGUF's converter does), the Q8_0 file quantises them."""
    if t.ndim == 1 or t.ndim > 4 or t.numel() <= 1024 or "modulation" in key:
        return "F32"
    if scheme == "Q8_0":
        return "Q8_0"
    if key.startswith(("time_embedding.", "text_embedding.", "time_projection.")):
        return "F32"
    if t.shape[-1] % 256:
        return "Q8_0"
    return "Q6_K" if key.endswith((".v.weight", "ffn.2.weight")) else "Q4_K"


def write_wan_gguf(model, path: Path, scheme: str) -> None:
    """`model` (a diffusers Wan DiT) as a GGUF file in the original key layout, quantised by `scheme`."""
    from .gguf import write_gguf

    write_gguf(path, _original_wan(model), "wan", lambda k, t: wan_gguf_type(k, t, scheme), GGUF_SCHEMES[scheme])


def _tokenizer(spiece: bytes):
    from .tokenizer import tokenizer_from_spiece

    return tokenizer_from_spiece(spiece)


def write_zoo(root: str | Path, seed: int = 0) -> Zoo:
    """Write the whole tiny zoo under `root` (a few MB, a few seconds) and return its paths."""
    with _quiet():
        return _write_zoo(Path(root), seed)


@contextmanager
def _quiet():
    """No per-shard progress bars or backend notices from transformers while writing test models."""
    from transformers.utils import logging as tlog

    level, bars = tlog.get_verbosity(), tlog.is_progress_bar_enabled()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        tlog.set_verbosity(level)
        if bars:
            tlog.enable_progress_bar()


def _write_zoo(root: Path, seed: int) -> Zoo:
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline

    zoo = Zoo(Path(root))
    high, low = tiny_wan_transformer("i2v-a14b", seed + 1), tiny_wan_transformer("i2v-a14b", seed + 2)
    t2v = tiny_wan_transformer("t2v", seed + 3)
    i2v, flf2v = tiny_wan_transformer("i2v", seed + 4), tiny_wan_transformer("flf2v", seed + 5)
    umt5, vae, clip = tiny_umt5(seed + 6), tiny_vae(seed + 7), tiny_clip_vision(seed + 8)
    spiece = tiny_spiece_model()

    # ComfyUI models tree: single files in the layouts ComfyUI's repackaged files use.
    for name, model in (("wan22_i2v_high", high), ("wan22_i2v_low", low), ("wan21_t2v", t2v),
                        ("wan21_i2v", i2v), ("wan21_flf2v", flf2v)):
        save_file(_original_wan(model), zoo.file(name))
    te = dict(umt5.state_dict())
    te.pop("encoder.embed_tokens.weight", None)  # tied to shared.weight; ComfyUI files store it once
    te["spiece_model"] = torch.frombuffer(bytearray(spiece), dtype=torch.uint8)
    save_file(te, zoo.file("umt5"))
    nrb = vae.config.num_res_blocks
    save_file({wan_vae_key_to_original(k, nrb): v for k, v in vae.state_dict().items()}, zoo.file("vae"))
    save_file(clip.state_dict(), zoo.file("clip_vision"))
    for sub in ("loras", "LLM"):
        (zoo.models / sub).mkdir(parents=True, exist_ok=True)
    for name, expert, lora_seed in (("lightning_high", high, seed + 9), ("lightning_low", low, seed + 10)):
        save_file(tiny_lightning_lora(expert, lora_seed), zoo.file(name))
    write_wan_gguf(t2v, zoo.file("wan21_t2v_q8_0"), "Q8_0")
    write_wan_gguf(high, zoo.file("wan22_i2v_high_q4_k_m"), "Q4_K_M")

    # diffusers pipeline folders.
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=5.0)
    WanImageToVideoPipeline(tokenizer=_tokenizer(spiece), text_encoder=umt5, vae=vae, scheduler=scheduler,
                            transformer=high, transformer_2=low, boundary_ratio=0.9).save_pretrained(
        str(zoo.wan22_i2v_diffusers))
    from .models.wan import clip_image_processor

    WanImageToVideoPipeline(tokenizer=_tokenizer(spiece), text_encoder=umt5, vae=vae, scheduler=scheduler,
                            transformer=i2v, image_encoder=_as_vision_model(clip),
                            image_processor=clip_image_processor()).save_pretrained(str(zoo.wan21_i2v_diffusers))
    for d in (zoo.wan22_i2v_diffusers, zoo.wan21_i2v_diffusers):
        (d / "tokenizer" / "spiece.model").write_bytes(spiece)

    # Official sharded repo layout.
    _write_official(high, zoo.wan22_i2v_official / "high_noise_model", "i2v")
    _write_official(low, zoo.wan22_i2v_official / "low_noise_model", "i2v")
    from .zoo_flux import write_flux_zoo

    write_flux_zoo(zoo.root, seed)
    from .zoo_qwen import write_qwen_zoo

    write_qwen_zoo(zoo.root, seed)
    (zoo.root / "zoo.json").write_text(json.dumps({"seed": seed, "files": FILES}, indent=2))
    return zoo


def _as_vision_model(clip_with_projection):
    """The same weights as a plain `CLIPVisionModel` (what diffusers' Wan I2V pipelines use)."""
    from transformers import CLIPVisionModel

    model = CLIPVisionModel(clip_with_projection.config)
    sd = clip_with_projection.state_dict()
    model.load_state_dict({k[len("vision_model."):]: v for k, v in sd.items() if k.startswith("vision_model.")})
    return model.eval()
