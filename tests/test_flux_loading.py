"""FLUX.1 loading: same tensors from ComfyUI single files and diffusers folders, tokenizers, clear refusals."""

from __future__ import annotations

import inspect
import json
import shutil
import struct

import pytest
from conftest import assert_same
import torch

from videoprior_edit.errors import ModelFileError
from videoprior_edit.models.configs import config_data
from videoprior_edit.models.core import build_empty
from videoprior_edit.models.flux import (flux_config, flux_to_diffusers, flux_to_original, inspect_flux, load_clip_l,
                                         load_flux_transformer, load_flux_vae, load_t5xxl)
from videoprior_edit.weights import WeightFile, save_file

PROMPTS = ["a red cat sits on a wooden chair near the window",
           "Make the car BLUE, keep   the background and the lighting!",
           "ünïcode 123 don't " + "long prompt " * 60, ""]


@pytest.fixture(scope="module")
def fz(zoo):
    return zoo.flux


def real_meta(component: str):
    """The real-size model on the meta device (no memory)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    factories = {
        "transformer": lambda: FluxTransformer2DModel(**flux_config("transformer", "12B")),
        "vae": lambda: AutoencoderKL(**flux_config("vae", "flux1")),
        "clip_l": lambda: CLIPTextModel(CLIPTextConfig(**flux_config("clip_l", "clip-l"))),
        "t5xxl": lambda: T5EncoderModel(T5Config(**flux_config("t5xxl", "xxl"))),
    }
    return build_empty(factories[component])


def fake_header(path, shapes: dict, dtype="BF16"):
    """A safetensors file holding only a header (enough for identification, which reads headers only)."""
    header = {k: {"dtype": dtype, "shape": list(s), "data_offsets": [0, 0]} for k, s in shapes.items()}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    return path


# ------------------------------------------------------------------------------------- configs
def test_shipped_configs_use_the_installed_classes_parameter_names():
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, T5Config

    data = config_data("flux")
    for component, cls in (("transformer", FluxTransformer2DModel), ("vae", AutoencoderKL),
                           ("clip_l", CLIPTextConfig), ("t5xxl", T5Config)):
        params = set(inspect.signature(cls.__init__).parameters)
        section = data[component]
        for part in [section["base"], *section["sizes"].values()]:
            unknown = set(part) - params - {"test_only"}
            assert not unknown, (component, unknown)
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = set(inspect.signature(FlowMatchEulerDiscreteScheduler.__init__).parameters)
    assert set(data["scheduler"]) - {"_doc"} <= sched


@pytest.mark.parametrize("component,file_bytes,bytes_per_param", [
    ("transformer", 23.8e9, 2),  # flux1-dev.safetensors (bf16)
    ("t5xxl", 9.79e9, 2),  # t5xxl_fp16.safetensors
    ("clip_l", 246e6, 2),  # clip_l.safetensors (fp16)
    ("vae", 335e6, 4),  # ae.safetensors (fp32)
])
def test_real_configs_have_the_published_file_sizes(component, file_bytes, bytes_per_param):
    n = sum(p.numel() for p in real_meta(component).parameters())
    assert abs(n * bytes_per_param - file_bytes) / file_bytes < 0.005, n


# ------------------------------------------------------------------------------------- transformer
def test_transformer_layouts_load_identically(fz):
    from diffusers import FluxTransformer2DModel

    single = load_flux_transformer(fz["transformer"], "fp32")
    folder = load_flux_transformer(fz["diffusers"] / "transformer", "fp32")
    root = load_flux_transformer(fz["diffusers"], "fp32")
    reference = FluxTransformer2DModel.from_pretrained(fz["diffusers"], subfolder="transformer")
    for m in (folder, root, reference):
        assert_same(single, m)
    assert single.vpe_info.layout == "bfl" and folder.vpe_info.layout == "diffusers"
    for m in (single, folder):
        assert (m.vpe_info.variant, m.vpe_info.size) == ("dev", "tiny")
        assert m.config.guidance_embeds and m.config.in_channels == 64


def test_transformer_bf16_matches_from_pretrained(fz):
    from diffusers import FluxTransformer2DModel

    ours = load_flux_transformer(fz["transformer"], "bf16")
    ref = FluxTransformer2DModel.from_pretrained(fz["diffusers"], subfolder="transformer", torch_dtype=torch.bfloat16)
    assert_same(ours, ref)
    assert ours.x_embedder.weight.dtype == torch.bfloat16


def test_prefixed_all_in_one_file_loads_only_the_transformer(fz, tmp_path):
    sd = WeightFile(fz["transformer"]).state_dict()
    mixed = {f"model.diffusion_model.{k}": v for k, v in sd.items()}
    mixed["vae.encoder.conv_in.weight"] = torch.zeros(8, 3, 3, 3)  # other components of a checkpoint file
    save_file(mixed, tmp_path / "flux1-dev-all-in-one.safetensors")
    model = load_flux_transformer(tmp_path / "flux1-dev-all-in-one.safetensors", "fp32")
    assert model.vpe_info.prefix == "model.diffusion_model."
    assert_same(model, load_flux_transformer(fz["transformer"], "fp32"))


def test_own_conversion_equals_diffusers_converter_at_real_size():
    """Real FLUX.1-dev shapes (trailing dims cut to 1): our BFL->diffusers table gives diffusers' exact tensors,
    the inverse round-trips, and diffusers' converter consumes the dict it is given."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    gen = torch.Generator().manual_seed(0)
    fake = {k: torch.randn((p.shape[0],) + (1,) * (p.dim() - 1), generator=gen)
            for k, p in real_meta("transformer").state_dict().items()}
    bfl = flux_to_original(fake)
    assert "double_blocks.18.img_attn.qkv.weight" in bfl and "single_blocks.37.linear1.weight" in bfl
    assert bfl["single_blocks.0.linear1.weight"].shape[0] == 3 * 3072 + 4 * 3072
    ours = dict(flux_to_diffusers(bfl.items(), hidden=3072))
    given = {f"model.diffusion_model.{k}": v for k, v in bfl.items()}
    theirs = convert_flux_transformer_checkpoint_to_diffusers(given)
    assert ours.keys() == theirs.keys() == fake.keys()
    for k in fake:
        assert torch.equal(ours[k], theirs[k]), k
        assert torch.equal(ours[k], fake[k]), k
    assert given == {}  # diffusers pops every key it converts out of the caller's dict


def test_real_variants_are_named_from_headers(tmp_path):
    meta = real_meta("transformer").state_dict()
    shapes = {k: tuple(v.shape) for k, v in flux_to_original(meta).items()}
    dev = inspect_flux(WeightFile(fake_header(tmp_path / "flux1-dev.safetensors", shapes)))
    assert (dev.variant, dev.size) == ("dev", "12B") and "FLUX.1-dev" in dev.name
    assert dev.config == {**flux_config("transformer", "12B"), "in_channels": 64, "guidance_embeds": True,
                          "out_channels": None, "patch_size": 1}
    assert dev.max_sequence_length == 512

    schnell = {k: s for k, s in shapes.items() if not k.startswith("guidance_in.")}
    info = inspect_flux(WeightFile(fake_header(tmp_path / "flux1-schnell.safetensors", schnell)))
    assert info.variant == "schnell" and info.config["guidance_embeds"] is False and info.max_sequence_length == 256

    fill = {**shapes, "img_in.weight": (3072, 384)}
    with pytest.raises(ModelFileError, match="FLUX.1-Fill-dev"):
        load_flux_transformer(fake_header(tmp_path / "flux1-fill-dev.safetensors", fill))
    odd = {k: s for k, s in shapes.items() if not k.startswith("single_blocks.37.")}
    with pytest.raises(ModelFileError, match="37 single blocks"):
        inspect_flux(WeightFile(fake_header(tmp_path / "pruned.safetensors", odd)))


def test_schnell_is_accepted_and_named(fz):
    model = load_flux_transformer(fz["transformer_schnell"], "fp32")
    assert model.config.guidance_embeds is False
    assert not any(k.startswith("time_text_embed.guidance_embedder.") for k in model.state_dict())
    assert model.vpe_info.variant == "schnell"
    with pytest.raises(ModelFileError, match="FLUX.1-schnell.*needs FLUX.1-dev"):
        load_flux_transformer(fz["transformer_schnell"], "fp32", expect=("dev",))


def test_fp8_weight_storage(fz):
    ref = load_flux_transformer(fz["transformer"], "bf16")
    fp8 = load_flux_transformer(fz["transformer"], "bf16", weight_storage="fp8_e4m3fn")
    assert fp8.transformer_blocks[0].attn.to_q.weight.dtype == torch.float8_e4m3fn
    assert fp8.single_transformer_blocks[0].proj_mlp.weight.dtype == torch.float8_e4m3fn
    assert fp8.x_embedder.weight.dtype == torch.bfloat16 and fp8.proj_out.weight.dtype == torch.bfloat16
    gen = torch.Generator().manual_seed(1)
    bf16, cfg = dict(dtype=torch.bfloat16), ref.config
    inputs = dict(hidden_states=torch.randn(1, 16, cfg.in_channels, generator=gen).to(**bf16),
                  encoder_hidden_states=torch.randn(1, 8, cfg.joint_attention_dim, generator=gen).to(**bf16),
                  pooled_projections=torch.randn(1, cfg.pooled_projection_dim, generator=gen).to(**bf16),
                  timestep=torch.tensor([0.5], **bf16), guidance=torch.tensor([3.5], **bf16),
                  img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(8, 3))
    with torch.no_grad():
        a, b = ref(**inputs).sample.float(), fp8(**inputs).sample.float()
    assert torch.isfinite(b).all() and not torch.equal(a, b)
    assert (a - b).norm() / a.norm() < 0.1


# ------------------------------------------------------------------------------------- text encoders
def test_clip_l_layouts_load_identically(fz):
    from transformers import CLIPTextModel, CLIPTokenizer

    single, tok_single = load_clip_l(fz["clip_l"], "fp32")
    folder, tok_folder = load_clip_l(fz["diffusers"] / "text_encoder", "fp32")
    root, _ = load_clip_l(fz["diffusers"], "fp32")
    reference = CLIPTextModel.from_pretrained(fz["diffusers"] / "text_encoder")
    for m in (folder, root, reference):
        assert_same(single, m)
    ref_tok = CLIPTokenizer.from_pretrained(str(fz["diffusers"] / "tokenizer"), local_files_only=True)
    for tok in (tok_single, tok_folder):
        assert tok.model_max_length == 77
        for p in PROMPTS:
            kw = dict(padding="max_length", max_length=77, truncation=True)
            assert tok(p, **kw).input_ids == ref_tok(p, **kw).input_ids, p
    ids = tok_single(PROMPTS[2], padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77 and ids[-1] == tok_single.eos_token_id == max(ids)  # the pooled token is the end token


def test_clip_tokenizer_from_vocab_and_merges_only(fz, tmp_path):
    folder = tmp_path / "clip_l"
    folder.mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(fz["clip_l_tokenizer"] / name, folder / name)
    _, tok = load_clip_l(fz["clip_l"], "fp32", tokenizer_path=folder)
    _, ref = load_clip_l(fz["clip_l"], "fp32")
    assert tok.model_max_length == 77  # capped to the text encoder's positions
    assert [tok(p).input_ids for p in PROMPTS[:2]] == [ref(p).input_ids for p in PROMPTS[:2]]


def test_t5xxl_layouts_load_identically(fz):
    import sentencepiece as spm
    from transformers import T5EncoderModel, T5Tokenizer

    single, tok_single = load_t5xxl(fz["t5xxl"], "fp32")
    folder, tok_folder = load_t5xxl(fz["diffusers"] / "text_encoder_2", "fp32")
    root, _ = load_t5xxl(fz["diffusers"], "fp32")
    reference = T5EncoderModel.from_pretrained(fz["diffusers"] / "text_encoder_2")
    for m in (folder, root, reference):
        assert_same(single, m)
    assert single.encoder.embed_tokens.weight is single.shared.weight
    ref_tok = T5Tokenizer.from_pretrained(str(fz["diffusers"] / "tokenizer_2"), local_files_only=True)
    sp = spm.SentencePieceProcessor(model_file=str(fz["t5xxl_tokenizer"] / "spiece.model"))
    kw = dict(padding="max_length", max_length=512, truncation=True)
    for p in PROMPTS:
        assert tok_single(p, **kw).input_ids == tok_folder(p, **kw).input_ids == ref_tok(p, **kw).input_ids, p
        assert tok_single(p).input_ids == sp.encode(p) + [sp.eos_id()], p


def test_t5xxl_fp16_keeps_wo_in_fp32_like_transformers(fz):
    from transformers import T5EncoderModel

    ours, _ = load_t5xxl(fz["t5xxl"], "fp16")
    ref = T5EncoderModel.from_pretrained(fz["diffusers"] / "text_encoder_2", dtype=torch.float16)
    assert_same(ours, ref)
    assert ours.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == torch.float32
    assert ours.encoder.block[0].layer[1].DenseReluDense.wi_0.weight.dtype == torch.float16


def test_t5xxl_fp8_file_is_upcast(fz, tmp_path):
    sd = WeightFile(fz["t5xxl"]).state_dict()
    path = tmp_path / "t5xxl_fp8_e4m3fn.safetensors"
    save_file({k: v.to(torch.float8_e4m3fn) if v.dim() == 2 else v for k, v in sd.items()}, path)
    model, _ = load_t5xxl(path, "bf16", tokenizer_path=fz["t5xxl_tokenizer"])
    q = model.encoder.block[0].layer[0].SelfAttention.q.weight
    assert q.dtype == torch.bfloat16
    stored = sd["encoder.block.0.layer.0.SelfAttention.q.weight"].to(torch.float8_e4m3fn)
    assert torch.equal(q, stored.to(torch.bfloat16))


# ------------------------------------------------------------------------------------- VAE
def test_vae_layouts_load_identically(fz):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    single = load_flux_vae(fz["vae"])
    folder = load_flux_vae(fz["diffusers"] / "vae")
    root = load_flux_vae(fz["diffusers"])
    reference = AutoencoderKL.from_pretrained(fz["diffusers"], subfolder="vae")
    for m in (folder, root, reference):
        assert_same(single, m)
    assert single.config.scaling_factor == 0.3611 and single.config.shift_factor == 0.1159
    assert not single.config.use_quant_conv and single.quant_conv is None
    ldm = WeightFile(fz["vae"]).state_dict()
    assert ldm["encoder.mid.attn_1.q.weight"].dim() == 4 and "decoder.up.0.block.2.conv1.weight" in ldm
    before = dict(ldm)
    convert_ldm_vae_checkpoint(ldm, flux_config("vae", "tiny"))
    assert ldm.keys() == before.keys()  # diffusers' VAE converter leaves its input alone


# ------------------------------------------------------------------------------------- pipeline
def test_pipeline_from_loaded_components_matches_from_pretrained(fz):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    from videoprior_edit.models.flux import scheduler_config

    clip, tok = load_clip_l(fz["clip_l"], "fp32")
    t5, tok2 = load_t5xxl(fz["t5xxl"], "fp32")
    ours = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**scheduler_config()), vae=load_flux_vae(fz["vae"]),
                        text_encoder=clip, tokenizer=tok, text_encoder_2=t5, tokenizer_2=tok2,
                        transformer=load_flux_transformer(fz["transformer"], "fp32"))
    ref = FluxPipeline.from_pretrained(fz["diffusers"])
    for module in (ref.transformer, ref.text_encoder, ref.text_encoder_2, ref.vae):
        for p in module.parameters():  # from_pretrained memory-maps weights at unaligned addresses, and CPU matmuls
            p.data = p.data.clone()  # round differently there (~4e-7): align them so the check can be bit-exact
    kw = dict(prompt="a red cat", height=32, width=32, num_inference_steps=2, guidance_scale=3.5,
              max_sequence_length=16, output_type="pt")
    a = ours(**kw, generator=torch.Generator().manual_seed(0)).images
    b = ref(**kw, generator=torch.Generator().manual_seed(0)).images
    assert a.shape == (1, 3, 32, 32) and torch.isfinite(a).all()
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------------- refusals
def _wan_files(tmp_path):
    from videoprior_edit.models.wan_keys import wan_key_to_original, wan_vae_key_to_original
    from videoprior_edit.zoo import tiny_umt5, tiny_vae, tiny_wan_transformer

    wan = tiny_wan_transformer("t2v", 1)
    save_file({wan_key_to_original(k): v for k, v in wan.state_dict().items()}, tmp_path / "wan2.1_t2v.safetensors")
    umt5 = tiny_umt5(2).state_dict()
    umt5.pop("encoder.embed_tokens.weight")
    save_file(umt5, tmp_path / "umt5_xxl_fp16.safetensors")
    vae = tiny_vae(3)
    nrb = vae.config.num_res_blocks
    save_file({wan_vae_key_to_original(k, nrb): v for k, v in vae.state_dict().items()},
              tmp_path / "wan_vae.safetensors")
    return tmp_path


def test_wan_files_are_refused_with_their_names(tmp_path, fz):
    d = _wan_files(tmp_path)
    with pytest.raises(ModelFileError, match="Wan diffusion model.*not a FLUX.1 diffusion model"):
        load_flux_transformer(d / "wan2.1_t2v.safetensors")
    with pytest.raises(ModelFileError, match="UMT5.*not FLUX's T5-XXL") as e:
        load_t5xxl(d / "umt5_xxl_fp16.safetensors", tokenizer_path=fz["t5xxl_tokenizer"])
    assert "umt5_xxl_fp16.safetensors" in str(e.value)
    with pytest.raises(ModelFileError, match="Wan video VAE.*not the FLUX.1 image VAE"):
        load_flux_vae(d / "wan_vae.safetensors")


@pytest.mark.parametrize("loader,offered,named", [
    (load_flux_transformer, "vae", "image VAE"),
    (load_flux_vae, "transformer", "FLUX diffusion model"),
    (load_clip_l, "t5xxl", "T5/UMT5 text encoder"),
    (load_t5xxl, "clip_l", "CLIP text encoder"),
])
def test_components_offered_to_the_wrong_loader(fz, loader, offered, named):
    with pytest.raises(ModelFileError, match=named) as e:
        loader(fz[offered])
    assert fz[offered].name in str(e.value)


@pytest.mark.parametrize("component,loader,repo,file", [
    ("clip_l", load_clip_l, "openai/clip-vit-large-patch14", "merges.txt"),
    ("t5xxl", load_t5xxl, "google/t5-v1_1-xxl", "spiece.model"),
])
def test_missing_tokenizer_folder_says_what_to_create(fz, tmp_path, component, loader, repo, file):
    models = tmp_path / "models" / "text_encoders"
    models.mkdir(parents=True)
    shutil.copy(fz[component], models / fz[component].name)
    with pytest.raises(ModelFileError) as e:
        loader(models / fz[component].name)
    msg = str(e.value)
    assert str(models / "flux_tokenizers" / component) in msg
    assert repo in msg and file in msg
    with pytest.raises(ModelFileError, match="does not hold a tokenizer"):
        loader(models / fz[component].name, tokenizer_path=tmp_path)
    (models / "flux_tokenizers").mkdir()
    shutil.copytree(fz[f"{component}_tokenizer"], models / "flux_tokenizers" / component)
    model, tok = loader(models / fz[component].name, "fp32")  # found once the folder exists
    assert len(tok) <= model.config.vocab_size
