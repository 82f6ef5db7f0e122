"""GGUF transformers: the zoo's Q8_0 / Q4_K_M stand-ins load within the quantisation error, stay quantised and are
dequantised one layer at a time; FLUX GGUF files load; wrong, damaged and pickle files are refused by name."""

from __future__ import annotations

import pickle
import weakref

import numpy as np
import pytest
import torch

from videoprior_edit import gguf as vg
from videoprior_edit.errors import ModelFileError
from videoprior_edit.models.flux import load_flux_transformer
from videoprior_edit.models.sets import load_wan_models
from videoprior_edit.models.wan import load_umt5, load_wan_transformer, load_wan_vae
from videoprior_edit.models.wan_keys import wan_key_to_diffusers
from videoprior_edit.weights import WeightFile, save_file

ZOO_GGUF = [("wan21_t2v_q8_0", "wan21_t2v", {"Q8_0"}), ("wan22_i2v_high_q4_k_m", "wan22_i2v_high", {"Q4_K", "Q6_K"})]


def error_bound(w: torch.Tensor, qtype: str) -> torch.Tensor:
    """The largest error `qtype` may make on each value of `w` (broadcast per block), from the block layouts:
    Q8_0: half a step (amax / 127 in fp16) plus 127 x the step's fp16 rounding, per 32 values; Q4_K / Q6_K as this
    pack writes them: half the widest sub-block step of each 256-value super-block (scales rounded up)."""
    if qtype == "Q8_0":
        b = w.float().reshape(-1, 32)
        d = b.abs().amax(1) / 127
        bound = d / 2 + 127 * (d - d.half().float()).abs()
        return (bound[:, None] * 1.0001 + 1e-12).expand_as(b).reshape(w.shape)
    b = w.float().reshape(-1, 256)
    amax = b.abs().amax(1)
    if qtype == "Q4_K":
        width = b.amax(1) - b.amin(1).clamp(max=0)
        bound = torch.maximum(width * 64 / (15 * 63), amax / 63) / 2
    else:  # Q6_K
        bound = amax * 128 / (31 * 127) / 2
    return (bound[:, None] * 1.01 + 1e-12).expand_as(b).reshape(w.shape)


def _forward(model, dtype=torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, model.config.in_channels, 2, 8, 8, generator=gen).to(dtype)
    text = torch.randn(1, 8, model.config.text_dim, generator=gen).to(dtype)
    with torch.no_grad():
        return model(x, torch.tensor([500.0]), text, return_dict=False)[0].float()


def _dequantized_twin(path, tmp_path):
    """The GGUF file's own tensors, dequantised to float32, as a safetensors file (original keys)."""
    wf = WeightFile(path, allow_gguf=True)
    twin = tmp_path / (path.stem + "_dequantized.safetensors")
    save_file({k: vg.dequantize(t) for k, t in wf.tensors()}, twin)
    return twin


# ----------------------------------------------------------------------------------------------- writing
@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K"])
def test_k_quant_writer_round_trips_through_both_dequantisers(qtype):
    import gguf
    from diffusers.quantizers.gguf.utils import GGUFParameter

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(6, 512, generator=gen) * torch.tensor([1, 1e-3, 1, 1, 1, 1])[:, None]
    w[2, :256], w[3, :256], w[4, :256] = 0, w[3, :256].abs() + 0.5, -w[4, :256].abs()  # zero, >0 and <0 blocks
    blocks = vg.quantize(w, qtype)
    assert blocks.dtype == np.uint8 and blocks.shape == (6, 2 * {"Q4_K": 144, "Q6_K": 210}[qtype])
    kind = gguf.GGMLQuantizationType[qtype]
    reference = torch.from_numpy(gguf.quants.dequantize(blocks, kind))  # gguf-py's numpy port of ggml
    ours = vg.dequantize(GGUFParameter(torch.from_numpy(blocks), quant_type=kind))  # diffusers' torch port
    assert torch.equal(ours, reference)
    assert ((ours - w).abs() <= error_bound(w, qtype)).all()
    assert torch.equal(ours[2, :256], torch.zeros(256))


# ----------------------------------------------------------------------------------------------- loading
@pytest.mark.parametrize("name,original,quants", ZOO_GGUF)
def test_zoo_gguf_loads_within_the_quantisation_error(zoo, tmp_path, name, original, quants):
    path = zoo.file(name)
    wf = WeightFile(path, allow_gguf=True)
    assert wf.gguf.metadata["general.architecture"] == "wan"
    assert quants <= {i.quant for i in wf.infos.values()}
    assert wf.shape("patch_embedding.weight")[2:] == (1, 2, 2)  # 5-D, kept F32 as ComfyUI-GGUF does
    model = load_wan_transformer(path, "fp32")
    fp32 = load_wan_transformer(zoo.file(original), "fp32")
    twin = load_wan_transformer(_dequantized_twin(path, tmp_path), "fp32")
    assert model.vpe_info == fp32.vpe_info
    types = {wan_key_to_diffusers(k): i.quant for k, i in wf.infos.items()}
    ours, exact, reference = model.state_dict(), twin.state_dict(), fp32.state_dict()
    assert ours.keys() == reference.keys()
    for key, w in reference.items():
        value = vg.dequantize(ours[key])
        assert torch.equal(value, exact[key]), key  # the loader places every tensor of the file where it belongs
        if types[key] is None:
            assert torch.equal(value, w), key
        else:
            assert ((value - w).abs() <= error_bound(w, types[key])).all(), key


@pytest.mark.parametrize("name,original,tolerance", [("wan21_t2v_q8_0", "wan21_t2v", 0.03),
                                                     ("wan22_i2v_high_q4_k_m", "wan22_i2v_high", 0.25)])
def test_forward_is_close_to_fp32_and_dequantises_one_layer_at_a_time(zoo, monkeypatch, name, original, tolerance):
    model = load_wan_transformer(zoo.file(name), "fp32")
    q = model.blocks[0].attn1.to_q
    assert isinstance(q, vg.GGUFLinear) and type(q.weight).__name__ == "GGUFParameter" and q.weight.dtype == torch.uint8
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    quantized = [m for m in linears if vg.is_quantized(m.weight)]
    stored = sum(m.weight.numel() for m in quantized)  # bytes: uint8 blocks
    dense = sum(m.in_features * m.out_features * 4 for m in quantized)
    assert len(quantized) >= len(model.blocks) * 8 and stored < 0.3 * dense

    alive, most = [], [0]
    dequantize = vg.dequantize

    def tracked(t, dtype=torch.float32):
        out = dequantize(t, dtype)
        if vg.is_quantized(t):
            alive[:] = [r for r in alive if r() is not None] + [weakref.ref(out)]
            most[0] = max(most[0], len(alive))
        return out

    monkeypatch.setattr(vg, "dequantize", tracked)
    out = _forward(model)
    assert most[0] == 1  # each layer's dequantised weight is gone before the next layer dequantises
    assert all(vg.is_quantized(m.weight) for m in quantized)  # nothing dequantised was kept
    reference = _forward(load_wan_transformer(zoo.file(original), "fp32"))
    assert 0 < (out - reference).norm() / reference.norm() < tolerance


def test_bf16_load_keeps_the_time_embedder_dense_in_fp32(zoo):
    model = load_wan_transformer(zoo.file("wan21_t2v_q8_0"), "bf16")
    assert WeightFile(zoo.file("wan21_t2v_q8_0"), allow_gguf=True).infos["time_embedding.0.weight"].quant == "Q8_0"
    time = model.condition_embedder.time_embedder.linear_1
    assert type(time) is torch.nn.Linear and time.weight.dtype == torch.float32  # diffusers reads its dtype
    assert model.condition_embedder.time_proj.weight.dtype == torch.uint8  # an ordinary Linear stays quantised
    assert model.blocks[0].norm2.weight.dtype == torch.float32
    out = _forward(model, torch.bfloat16)
    reference = _forward(load_wan_transformer(zoo.file("wan21_t2v"), "fp32"))
    assert (out - reference).norm() / reference.norm() < 0.05


def test_tensors_stored_reshaped_take_their_original_shape(zoo, tmp_path):
    """ComfyUI-GGUF stores a weight whose rows are not whole 256-value blocks as (n/256, 256) rows plus a
    `comfy.gguf.orig_shape.<key>` entry (and 5-D tensors flattened likewise)."""
    import gguf

    sd = WeightFile(zoo.file("wan21_t2v")).state_dict()
    path, reshaped = tmp_path / "reshaped_Q4_K.gguf", ("blocks.0.ffn.2.weight", "patch_embedding.weight")
    writer = gguf.GGUFWriter(path, arch="wan")
    for key, t in sd.items():
        if key in reshaped:
            writer.add_array(f"comfy.gguf.orig_shape.{key}", list(t.shape))
            qtype = "Q4_K" if key.startswith("blocks.") else "F16"
            writer.add_tensor(key, vg.quantize(t.reshape(-1, 256), qtype), raw_dtype=gguf.GGMLQuantizationType[qtype])
        else:
            writer.add_tensor(key, t.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    wf = WeightFile(path, allow_gguf=True)
    assert wf.shape("blocks.0.ffn.2.weight") == (256, 32) and wf.infos["blocks.0.ffn.2.weight"].quant == "Q4_K"
    model = load_wan_transformer(path, "fp32")
    ffn = model.blocks[0].ffn.net[2].weight
    assert ffn.shape == (256, 32) and ffn.dtype == torch.float32  # no whole rows to keep: dequantised at load
    assert torch.equal(ffn, vg.dequantize(wf.gguf.read("blocks.0.ffn.2.weight")))
    original = sd["blocks.0.ffn.2.weight"]
    assert ((ffn - original).abs() <= error_bound(original.reshape(-1, 256), "Q4_K").reshape(256, 32)).all()
    assert torch.equal(model.patch_embedding.weight, sd["patch_embedding.weight"].half().float())


@pytest.mark.parametrize("mode", ["one_expert", "one_expert_disk", "block_offload"])
def test_gguf_experts_in_a_model_set_and_every_placement(zoo, mode):
    from videoprior_edit.placement import Placement

    def load(placement=None):
        return load_wan_models(zoo.file("wan22_i2v_high_q4_k_m"), zoo.file("wan22_i2v_low"), zoo.file("umt5"),
                               zoo.file("vae"), dtype="fp32", placement=placement)

    plain, models = load(), load(Placement(mode, device="cpu"))
    assert plain.variant == "wan2.2-i2v-a14b"
    expert = models.placement.activate(models, "transformer")
    assert isinstance(expert.blocks[0].attn1.to_q, vg.GGUFLinear)
    assert torch.equal(_forward(expert), _forward(plain.transformer))
    models.placement.finish(models)


def test_flux_gguf_loads_fused_tensors_split_by_rows(zoo, tmp_path):
    from videoprior_edit.gguf import write_gguf

    def flux_type(key, t):
        if t.ndim == 1:
            return "F32"
        if key.endswith(("qkv.weight", "linear1.weight")):
            return "Q4_K"  # fused q/k/v(/mlp): split by rows after loading
        if key.endswith("linear2.weight"):
            return "Q6_K"
        return "BF16" if key.startswith("img_in.") else "Q8_0"  # Q8_0 includes the swapped-halves final modulation

    path = tmp_path / "flux1-dev-Q4_K_S.gguf"
    write_gguf(path, WeightFile(zoo.flux["transformer"]).state_dict(), "flux", flux_type)
    model = load_flux_transformer(path, "fp32")
    twin = load_flux_transformer(_dequantized_twin(path, tmp_path), "fp32")
    assert model.vpe_info.variant == "dev" and model.vpe_info.layout == "bfl"
    assert isinstance(model.transformer_blocks[0].attn.to_k, vg.GGUFLinear)
    assert isinstance(model.single_transformer_blocks[0].proj_mlp, vg.GGUFLinear)
    assert model.x_embedder.weight.dtype == torch.float32 and not vg.is_quantized(model.x_embedder.weight)
    exact = twin.state_dict()
    for key, t in model.state_dict().items():
        assert torch.equal(vg.dequantize(t), exact[key]), key
    gen, cfg = torch.Generator().manual_seed(1), model.config
    inputs = {"hidden_states": torch.randn(1, 16, cfg.in_channels, generator=gen),
              "encoder_hidden_states": torch.randn(1, 8, cfg.joint_attention_dim, generator=gen),
              "pooled_projections": torch.randn(1, cfg.pooled_projection_dim, generator=gen),
              "timestep": torch.tensor([0.5]), "guidance": torch.tensor([3.5]), "img_ids": torch.zeros(16, 3),
              "txt_ids": torch.zeros(8, 3)}
    with torch.no_grad():
        a, b = model(**inputs).sample, twin(**inputs).sample
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    with pytest.raises(ModelFileError, match="is a FLUX diffusion model, not a Wan diffusion model"):
        load_wan_transformer(path)


# ----------------------------------------------------------------------------------------------- refusals
def test_gguf_of_another_kind_is_refused_with_what_it_is(zoo):
    t2v = zoo.file("wan21_t2v_q8_0")
    with pytest.raises(ModelFileError, match=r"is a Wan diffusion model \(DiT\), not a FLUX.1 diffusion model"):
        load_flux_transformer(t2v)
    with pytest.raises(ModelFileError, match="T2V.*high-noise expert input needs Wan2.2-I2V"):
        load_wan_transformer(t2v, expect=("i2v-a14b",), slot="high-noise expert")
    for loader in (load_umt5, load_wan_vae):
        with pytest.raises(ModelFileError, match=r"GGUF file \(Q8_0/F32\) holding a Wan diffusion model \(DiT\); "
                                                 r"this input takes .safetensors files only") as e:
            loader(t2v)
        assert "GGUF files load as Wan or FLUX diffusion models" in str(e.value)


def test_damaged_split_and_unsupported_gguf_files_are_refused(zoo, tmp_path):
    import gguf

    data = zoo.file("wan21_t2v_q8_0").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated") as e:
        load_wan_transformer(cut)
    assert "download it again" in str(e.value)
    (tmp_path / "fake.gguf").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        load_wan_transformer(tmp_path / "fake.gguf")

    def write(path, extra):
        writer = gguf.GGUFWriter(path, arch="wan")
        extra(writer)
        writer.add_tensor("blocks.0.self_attn.q.weight", np.zeros((4, 256), np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path

    split = write(tmp_path / "wan-00001-of-00002.gguf", lambda w: w.add_uint16("split.count", 2))
    with pytest.raises(ModelFileError, match="one part of a split GGUF model") as e:
        load_wan_transformer(split)
    assert "gguf-split --merge" in str(e.value)
    ternary = write(tmp_path / "tq.gguf", lambda w: w.add_tensor(
        "blocks.0.ffn.0.weight", np.zeros((4, 66), np.uint8), raw_dtype=gguf.GGMLQuantizationType.TQ2_0))
    with pytest.raises(ModelFileError, match="stored as TQ2_0, which this pack cannot dequantise"):
        load_wan_transformer(ternary)


class _Canary:
    """Unpickling this would create a file: proof that a pickle was (or was not) loaded."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("name", ["wan2.1_t2v_Q8_0.gguf", "wan2.1_t2v_Q8_0.pt"])
def test_pickles_stay_refused_whatever_their_name(tmp_path, name):
    canary = tmp_path / "unpickled"
    path = tmp_path / name
    path.write_bytes(pickle.dumps(_Canary(str(canary)), protocol=4))
    with pytest.raises(ModelFileError, match="pickle"):
        load_wan_transformer(path)
    assert not canary.exists()


def test_lightning_lora_on_a_gguf_expert_runs_unmerged_as_on_its_dequantised_twin(zoo, tmp_path):
    """IF-Edit's Lightning LoRA on a GGUF expert: kept beside the quantised blocks (they cannot take a merged delta),
    it computes what the same LoRA does merged into the file's own values, dequantised."""
    from videoprior_edit.lora import add_lora, apply_lora

    gguf, twin = zoo.file("wan22_i2v_high_q4_k_m"), _dequantized_twin(zoo.file("wan22_i2v_high_q4_k_m"), tmp_path)
    quantised, dense = load_wan_transformer(gguf, "fp32"), load_wan_transformer(twin, "fp32")
    report = apply_lora(quantised, zoo.file("lightning_high"), 0.7)
    apply_lora(dense, zoo.file("lightning_high"), 0.7)
    assert not report.merged and report.matched == report.total
    assert isinstance(quantised.blocks[0].attn1.to_q, vg.GGUFLinear)  # the blocks stay quantised
    ours, want = _forward(quantised), _forward(dense)
    assert (ours - want).abs().max() < 1e-4 * want.abs().max()
    models = load_wan_models(gguf, zoo.file("wan22_i2v_low"), zoo.file("umt5"), zoo.file("vae"), dtype="fp32")
    reports = add_lora(models, zoo.file("lightning_high"), 1.0, "high")  # the set path: unmerged there too
    assert [r.merged for r in reports] == [False]
