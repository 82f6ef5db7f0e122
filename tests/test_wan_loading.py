"""Wan loading: same tensors from every layout, variant detection, and the clear refusals."""

from __future__ import annotations

import pickle
import socket
from pathlib import Path

import pytest
from conftest import assert_same
import torch

from videoprior_edit.errors import ModelFileError
from videoprior_edit.models.sets import load_wan_models
from videoprior_edit.models.wan import (inspect_wan, load_clip_vision, load_umt5, load_wan_transformer,
                                        load_wan_vae)
from videoprior_edit.models.wan_keys import wan_key_to_original, wan_vae_key_to_original
from videoprior_edit.weights import WeightFile, save_file


@pytest.mark.parametrize("expert", ["high", "low"])
def test_expert_layouts_load_identically(zoo, expert):
    from diffusers import WanTransformer3DModel

    single = load_wan_transformer(zoo.file(f"wan22_i2v_{expert}"), "fp32")
    sub = "transformer" if expert == "high" else "transformer_2"
    folder = load_wan_transformer(zoo.wan22_i2v_diffusers / sub, "fp32")
    sharded = load_wan_transformer(zoo.wan22_i2v_official / f"{expert}_noise_model", "fp32")
    reference = WanTransformer3DModel.from_pretrained(zoo.wan22_i2v_diffusers, subfolder=sub)
    for m in (folder, sharded):
        assert_same(single, m)
    assert_same(single, reference)
    for m in (single, folder, sharded):
        assert (m.vpe_info.family, m.vpe_info.size) == ("i2v-a14b", "tiny")
        assert m.config.in_channels == 36 and m.config.image_dim is None


def test_bf16_keeps_the_modules_diffusers_keeps_in_fp32(zoo):
    from diffusers import WanTransformer3DModel

    ours = load_wan_transformer(zoo.file("wan22_i2v_high"), "bf16")
    ref = WanTransformer3DModel.from_pretrained(zoo.wan22_i2v_diffusers, subfolder="transformer",
                                                torch_dtype=torch.bfloat16)
    assert_same(ours, ref)
    assert ours.scale_shift_table.dtype == torch.float32
    assert ours.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("name,family,names", [
    ("wan21_t2v", "t2v", "Wan2.1-T2V-1.3B / Wan2.1-T2V-14B / Wan2.2-T2V-A14B"),
    ("wan21_i2v", "i2v", "Wan2.1-I2V-14B"),
    ("wan21_flf2v", "flf2v", "Wan2.1-FLF2V-14B-720P"),
    ("wan22_i2v_high", "i2v-a14b", "Wan2.2-I2V-A14B"),
])
def test_variant_detected_from_weights(zoo, name, family, names):
    info = inspect_wan(WeightFile(zoo.file(name)))
    assert info.family == family
    assert names in info.names
    model = load_wan_transformer(zoo.file(name), "fp32")
    assert model.config.in_channels == (16 if family == "t2v" else 36)
    assert (model.config.pos_embed_seq_len == 514) == (family == "flf2v")


def test_real_sizes_are_recognised_from_shapes(tmp_path):
    """A header-only look at real-size shapes: 14B Wan2.2-I2V expert and 1.3B T2V are named correctly."""
    import json
    import struct

    def fake_header(path, shapes):
        header = {k: {"dtype": "F16", "shape": list(s), "data_offsets": [0, 0]} for k, s in shapes.items()}
        raw = json.dumps(header).encode()
        path.write_bytes(struct.pack("<Q", len(raw)) + raw)
        return path

    blocks14 = {f"blocks.{i}.ffn.0.weight": (13824, 5120) for i in range(40)}
    f = fake_header(tmp_path / "wan2.2_i2v_high_noise_14B_fp16.safetensors", {
        "patch_embedding.weight": (5120, 36, 1, 2, 2), "text_embedding.0.weight": (5120, 4096), **blocks14})
    info = inspect_wan(WeightFile(f))
    assert (info.family, info.size, info.variants) == ("i2v-a14b", "14B", ("wan2.2-i2v-a14b",))
    blocks13 = {f"model.diffusion_model.blocks.{i}.ffn.0.weight": (8960, 1536) for i in range(30)}
    f = fake_header(tmp_path / "wan2.1_t2v_1.3B_fp16.safetensors", {
        "model.diffusion_model.patch_embedding.weight": (1536, 16, 1, 2, 2),
        "model.diffusion_model.text_embedding.0.weight": (1536, 4096), **blocks13})
    assert inspect_wan(WeightFile(f)).variants == ("wan2.1-t2v-1.3b",)
    f = fake_header(tmp_path / "wan2.2_ti2v_5B_fp16.safetensors", {
        "patch_embedding.weight": (3072, 48, 1, 2, 2), "text_embedding.0.weight": (3072, 4096),
        **{f"blocks.{i}.ffn.0.weight": (14336, 3072) for i in range(30)}})
    with pytest.raises(ModelFileError, match="TI2V-5B"):
        inspect_wan(WeightFile(f))


def test_key_maps_agree_with_diffusers_converters(zoo):
    from diffusers.loaders.single_file_utils import (convert_wan_transformer_to_diffusers,
                                                     convert_wan_vae_to_diffusers)

    model = load_wan_transformer(zoo.file("wan21_i2v"), "fp32")
    sd = model.state_dict()
    original = {"model.diffusion_model." + wan_key_to_original(k): v for k, v in sd.items()}
    converted = convert_wan_transformer_to_diffusers(dict(original))
    assert converted.keys() == sd.keys()
    vae = load_wan_vae(zoo.file("vae"))
    vsd = vae.state_dict()
    converted = convert_wan_vae_to_diffusers({wan_vae_key_to_original(k): v for k, v in vsd.items()})
    assert converted.keys() == vsd.keys()


def test_t2v_file_as_i2v_expert_is_refused_with_names(zoo):
    with pytest.raises(ModelFileError) as e:
        load_wan_models(zoo.file("wan22_i2v_high"), zoo.file("wan21_t2v"), zoo.file("umt5"), zoo.file("vae"))
    msg = str(e.value)
    assert "tiny_wan2.1_t2v" in msg and "Wan2.1-T2V-1.3B" in msg and "16 input channels" in msg
    assert "the low-noise expert input needs Wan2.2-I2V-A14B" in msg
    with pytest.raises(ModelFileError, match="T2V.*16 input channels.*high-noise expert input needs Wan2.2-I2V"):
        load_wan_transformer(zoo.file("wan21_t2v"), expect=("i2v-a14b",), slot="high-noise expert")


def test_other_kinds_of_file_are_named(zoo):
    with pytest.raises(ModelFileError, match="is a Wan video VAE, not a Wan diffusion model"):
        load_wan_transformer(zoo.file("vae"))
    with pytest.raises(ModelFileError, match="is a Wan diffusion model .*not the UMT5 text encoder"):
        load_umt5(zoo.file("wan21_t2v"))
    with pytest.raises(ModelFileError, match="is a T5/UMT5 text encoder, not the Wan video VAE"):
        load_wan_vae(zoo.file("umt5"))


def test_swapped_experts_and_missing_low_expert(zoo):
    with pytest.raises(ModelFileError, match="LOW-noise expert"):
        load_wan_models(zoo.file("wan22_i2v_low"), zoo.file("wan22_i2v_high"), zoo.file("umt5"), zoo.file("vae"))
    with pytest.raises(ModelFileError, match="needs both experts"):
        load_wan_models(zoo.file("wan22_i2v_high"), None, zoo.file("umt5"), zoo.file("vae"))
    with pytest.raises(ModelFileError, match="needs the CLIP image encoder"):
        load_wan_models(zoo.file("wan21_i2v"), None, zoo.file("umt5"), zoo.file("vae"))


@pytest.mark.parametrize("path,hint", [
    ("models/diffusion_models/wan2.2_i2v_high_noise_14B_fp16.safetensors", "high"),
    ("models/diffusion_models/wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors", "low"),
    ("Wan2.2-I2V-A14B/low_noise_model", "low"),
    ("Wan2.2-I2V-A14B/high_noise_model/diffusion_pytorch_model.safetensors.index.json", "high"),
    ("Wan2.2-I2V-A14B-Diffusers/transformer_2", "low"),
    ("Wan2.2-I2V-A14B-Diffusers/transformer", None),
    ("my_workflows/wan2.1_flf2v_720p_14B_fp16.safetensors", None),
    ("low_vram/wan2.2_i2v_high_noise_14B_fp16.safetensors", "high"),
])
def test_expert_hint_reads_whole_words(path, hint):
    from videoprior_edit.models.wan import expert_hint

    assert expert_hint(Path(path)) == hint


def test_truncated_file_is_caught_before_loading(zoo, tmp_path):
    data = zoo.file("wan22_i2v_high").read_bytes()
    cut = tmp_path / "wan2.2_i2v_high_noise_14B_fp16.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated") as e:
        load_wan_transformer(cut)
    assert "download it again" in str(e.value)
    (tmp_path / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ModelFileError, match="corrupted safetensors header"):
        load_wan_transformer(tmp_path / "garbage.safetensors")


class _Canary:
    """Unpickling this would create a file: proof that a pickle was (or was not) loaded."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("name", ["wan_model.ckpt", "wan_model.pt", "model.bin", "disguised.safetensors"])
def test_pickles_are_refused_unopened(tmp_path, name):
    canary = tmp_path / "unpickled"
    path = tmp_path / name
    if name.endswith(".safetensors"):
        torch.save({"x": _Canary(str(canary))}, path)  # a zip pickle under a safetensors name
    else:
        path.write_bytes(pickle.dumps(_Canary(str(canary))))
    with pytest.raises(ModelFileError, match="pickle") as e:
        load_wan_transformer(path)
    assert "safetensors" in str(e.value)
    assert not canary.exists()


def test_a_raw_pickle_under_a_safetensors_name_is_refused_and_real_files_never_are(tmp_path, zoo):
    canary = tmp_path / "unpickled"
    disguised = tmp_path / "raw.safetensors"
    disguised.write_bytes(pickle.dumps(_Canary(str(canary)), protocol=4))
    with pytest.raises(ModelFileError, match="pickle"):
        load_wan_transformer(disguised)
    assert not canary.exists()
    # A safetensors header of 0x..80 bytes starts with the byte pickles start with: still a safetensors file.
    sd = WeightFile(zoo.file("wan22_i2v_high")).state_dict()
    for pad in range(256):
        path = tmp_path / "real.safetensors"
        save_file(sd, path, metadata={"pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert_same(load_wan_transformer(path, "fp32"), load_wan_transformer(zoo.file("wan22_i2v_high"), "fp32"))


def test_fp8_scaled_file_is_dequantised(zoo, tmp_path):
    sd = WeightFile(zoo.file("wan22_i2v_high")).state_dict()
    fp8, expected = {"scaled_fp8": torch.zeros(2, dtype=torch.float8_e4m3fn)}, {}
    for k, v in sd.items():
        if v.ndim == 2 and k.startswith("blocks."):
            scale = v.abs().max() / 448.0
            q = (v / scale).to(torch.float8_e4m3fn)
            fp8[k], fp8[k.replace(".weight", ".scale_weight")] = q, scale.reshape(1)
            fp8[k.replace(".weight", ".scale_input")] = torch.ones(1)
            expected[k] = q.to(torch.float32) * scale
        else:
            fp8[k] = expected[k] = v
    path = tmp_path / "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors"
    save_file(fp8, path)
    model = load_wan_transformer(path, "fp32")
    ref = load_wan_transformer(zoo.file("wan22_i2v_high"), "fp32")
    msd = model.state_dict()
    from videoprior_edit.models.wan_keys import wan_key_to_diffusers

    for k, v in expected.items():
        assert torch.equal(msd[wan_key_to_diffusers(k)], v), k
    diff = (msd["blocks.0.attn1.to_q.weight"] - ref.state_dict()["blocks.0.attn1.to_q.weight"]).abs().max()
    assert 0 < diff < 0.05  # quantised, yet close to the original
    shards = tmp_path / "sharded"  # scales in another shard than their weights
    save_file({k: v for k, v in fp8.items() if not k.endswith(".scale_weight")}, shards / "part-1.safetensors")
    save_file({k: v for k, v in fp8.items() if k.endswith(".scale_weight")}, shards / "part-2.safetensors")
    assert_same(load_wan_transformer(shards, "fp32"), model)


def test_unknown_quantisation_is_refused(zoo, tmp_path):
    sd = WeightFile(zoo.file("wan21_t2v")).state_dict()
    sd["blocks.0.self_attn.q.weight_scale"] = torch.ones(1)
    save_file(sd, tmp_path / "quant.safetensors")
    with pytest.raises(ModelFileError, match="quantisation layout"):
        load_wan_transformer(tmp_path / "quant.safetensors")


def test_fp8_weight_storage_halves_linear_memory_and_stays_close(zoo):
    full = load_wan_transformer(zoo.file("wan21_t2v"), "bf16")
    small = load_wan_transformer(zoo.file("wan21_t2v"), "bf16", weight_storage="fp8_e4m3fn")
    assert small.blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn
    assert small.patch_embedding.weight.dtype == torch.bfloat16
    x = torch.randn(1, 16, 2, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.bfloat16)
    t = torch.tensor([500])
    ctx = torch.randn(1, 8, full.config.text_dim, generator=torch.Generator().manual_seed(1), dtype=torch.bfloat16)
    with torch.no_grad():
        a = full(x, t, ctx, return_dict=False)[0].float()
        b = small(x, t, ctx, return_dict=False)[0].float()
    rel = (a - b).norm() / a.norm()
    assert 0 < rel < 0.1


def test_text_encoder_vae_and_clip_match_every_layout(zoo):
    from diffusers import AutoencoderKLWan
    from transformers import CLIPVisionModel, UMT5EncoderModel

    te, _ = load_umt5(zoo.file("umt5"), "fp32")
    te2, _ = load_umt5(zoo.wan22_i2v_diffusers / "text_encoder", "fp32")
    assert_same(te, te2)
    assert_same(te, UMT5EncoderModel.from_pretrained(zoo.wan22_i2v_diffusers / "text_encoder"))
    assert te.encoder.embed_tokens.weight.data_ptr() == te.shared.weight.data_ptr()
    vae = load_wan_vae(zoo.file("vae"))
    assert_same(vae, load_wan_vae(zoo.wan22_i2v_diffusers))
    assert_same(vae, AutoencoderKLWan.from_pretrained(zoo.wan22_i2v_diffusers, subfolder="vae"))
    clip, processor = load_clip_vision(zoo.file("clip_vision"), "fp32")
    ref = CLIPVisionModel.from_pretrained(zoo.wan21_i2v_diffusers / "image_encoder")
    assert_same(clip, ref)
    assert processor.crop_size == {"height": 224, "width": 224}


def test_model_sets_from_files_folders_and_without_network(zoo, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("network access during model loading")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    files = load_wan_models(zoo.file("wan22_i2v_high"), zoo.file("wan22_i2v_low"), zoo.file("umt5"),
                            zoo.file("vae"), dtype="fp32")
    folder = load_wan_models(zoo.wan22_i2v_diffusers, dtype="fp32")
    assert files.variant == folder.variant == "wan2.2-i2v-a14b"
    assert files.boundary_ratio == folder.boundary_ratio == 0.9
    assert_same(files.transformer_2, folder.transformer_2)
    i2v = load_wan_models(zoo.wan21_i2v_diffusers, dtype="fp32")
    assert i2v.variant == "wan2.1-i2v-14b" and i2v.image_encoder is not None and i2v.transformer_2 is None
    t2v = load_wan_models(zoo.file("wan21_t2v"), text_encoder=zoo.file("umt5"), vae=zoo.file("vae"))
    assert t2v.variant == "wan2.1-t2v-1.3b"


def test_prefixed_comfyui_keys_load(zoo, tmp_path):
    sd = WeightFile(zoo.file("wan21_t2v")).state_dict()
    path = tmp_path / "prefixed.safetensors"
    save_file({"model.diffusion_model." + k: v for k, v in sd.items()}, path)
    assert_same(load_wan_transformer(path, "fp32"), load_wan_transformer(zoo.file("wan21_t2v"), "fp32"))


def test_zoo_is_deterministic_for_a_seed(zoo, tmp_path):
    from videoprior_edit.manifest import zoo_manifest
    from videoprior_edit.zoo import write_zoo

    again = {e["file"]: e["sha256"] for e in zoo_manifest(write_zoo(tmp_path / "a", seed=0).models)}
    first = {e["file"]: e["sha256"] for e in zoo_manifest(zoo.models)}
    assert again == first and len(first) >= 12
    other = zoo_manifest(write_zoo(tmp_path / "b", seed=1).models)
    assert all(first[e["file"]] != e["sha256"] for e in other if "spiece" not in e["file"])
