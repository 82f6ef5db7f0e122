"""LoRAs on FLUX.1 (diffusers' FluxTransformer2DModel as `models/flux.py` loads it): BFL / kohya names with the fused
qkv and linear1 split into diffusers' modules, diffusers names, OneTrainer names, merged equal to diffusers' own
loading (exact) or to a hand merge, unmerged equal to merged, and messages for LoRAs of other bases."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from videoprior_edit.errors import ModelFileError
from videoprior_edit.lora import (
    apply_lora,
    read_lora,
    remove_lora,
    set_lora_strength,
    unmerged_loras,
)
from videoprior_edit.models.flux import flux_to_original, load_flux_transformer

RANK, ALPHA = 4, 2.0  # alpha / rank = 0.5: diffusers' scale split is exact


@pytest.fixture(scope="module")
def fz(zoo):
    return zoo.flux


def flux(fz):
    return load_flux_transformer(fz["transformer"], "fp32")


def bfl_lora(model, prefix: str = "lora_unet_", seed: int = 0, skip=(), norms: bool = False,
             biases: bool = False) -> dict[str, torch.Tensor]:
    """A LoRA for every BFL Linear of `model` (`prefix` + BFL module name, `.` -> `_` for kohya): lora_down/up and
    alpha; optionally diff for the q/k norm scales and diff_b for the biases."""
    gen = torch.Generator().manual_seed(seed)
    kohya = prefix.endswith("_")
    out = {}
    for key, t in flux_to_original(model.state_dict()).items():
        module, kind = key.rsplit(".", 1)
        if any(s in module for s in skip):
            continue
        name = prefix + (module.replace(".", "_") if kohya else module)
        if kind == "weight" and t.dim() == 2:
            out[f"{name}.lora_down.weight"] = 0.1 * torch.randn(RANK, t.shape[1], generator=gen)
            out[f"{name}.lora_up.weight"] = 0.1 * torch.randn(t.shape[0], RANK, generator=gen)
            out[f"{name}.alpha"] = torch.tensor(ALPHA)
        elif kind == "bias" and biases:
            out[f"{name}.diff_b"] = 0.05 * torch.randn(t.shape, generator=gen)
        elif kind == "scale" and norms:
            out[f"{prefix}{key.replace('.', '_') if kohya else key}.diff"] = 0.05 * torch.randn(t.shape, generator=gen)
    return out


def hand_merged_bfl(model, sd: dict, strength: float, prefix: str) -> dict[str, torch.Tensor]:
    """Expected diffusers weights: merge each BFL delta into the BFL layout by hand, convert back to diffusers."""
    from videoprior_edit.models.flux import flux_to_diffusers

    bfl = {k: v.clone() for k, v in flux_to_original(model.state_dict()).items()}
    dotted = {m.replace(".", "_"): m for k in bfl for m in (k, k.rsplit(".", 1)[0])}
    module_of = lambda key, suffix: dotted.get(key[len(prefix):-len(suffix)], key[len(prefix):-len(suffix)])
    for key, t in sd.items():
        if key.endswith(".lora_down.weight"):
            module = module_of(key, ".lora_down.weight")
            up = sd[key.replace("lora_down", "lora_up")]
            bfl[module + ".weight"] = bfl[module + ".weight"] + strength * ((up @ t) * (ALPHA / RANK))
        elif key.endswith(".diff_b"):
            module = module_of(key, ".diff_b")
            bfl[module + ".bias"] = bfl[module + ".bias"] + strength * t
        elif key.endswith(".diff"):
            bfl[module_of(key, ".diff")] = bfl[module_of(key, ".diff")] + strength * t
    hidden = model.config.num_attention_heads * model.config.attention_head_dim
    return dict(flux_to_diffusers(bfl.items(), hidden))


def forward(model) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    cfg = model.config
    img_ids = torch.zeros(16, 3)
    img_ids[:, 1], img_ids[:, 2] = torch.arange(16) // 4, torch.arange(16) % 4
    with torch.no_grad():
        return model(hidden_states=torch.randn(1, 16, cfg.in_channels, generator=gen),
                     encoder_hidden_states=torch.randn(1, 8, cfg.joint_attention_dim, generator=gen),
                     pooled_projections=torch.randn(1, cfg.pooled_projection_dim, generator=gen),
                     timestep=torch.tensor([0.5]), guidance=torch.tensor([3.5]), img_ids=img_ids,
                     txt_ids=torch.zeros(8, 3), return_dict=False)[0]


def diffusers_fused(fz, sd: dict, strength: float) -> dict[str, torch.Tensor]:
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(fz["diffusers"])
    pipe.load_lora_weights(dict(sd), adapter_name="x")
    pipe.fuse_lora(components=["transformer"], lora_scale=strength)
    pipe.unload_lora_weights()
    return pipe.transformer.state_dict()


def test_kohya_bfl_lora_equals_diffusers_loading(fz, tmp_path):
    """kohya/sd-scripts FLUX LoRA (`lora_unet_double_blocks_0_img_attn_qkv`): the blocks equal diffusers' own loading
    bit for bit (diffusers drops the top-level modules of kohya FLUX files and hard-codes FLUX.1's width for the
    single blocks' linear1, so those are checked against a hand merge)."""
    base = flux(fz)
    sd = bfl_lora(base, skip=("linear1",))
    save_file(sd, tmp_path / "kohya.safetensors")
    model = flux(fz)
    report = apply_lora(model, tmp_path / "kohya.safetensors", 0.8)
    assert report.format.startswith("musubi-tuner/kohya") and report.matched == report.total
    theirs = diffusers_fused(fz, sd, 0.8)
    top = ("time_text_embed.", "x_embedder.", "context_embedder.", "proj_out.", "norm_out.")
    ours = model.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in ours.items() if not k.startswith(top))
    expected = hand_merged_bfl(base, sd, 0.8, "lora_unet_")
    for k, v in ours.items():
        assert torch.allclose(v, expected[k], rtol=0, atol=1e-6), k
    before = base.state_dict()
    assert not torch.equal(ours["norm_out.linear.weight"], before["norm_out.linear.weight"])  # swapped halves


@pytest.mark.parametrize("prefix", ["lora_unet_", "diffusion_model."])
def test_bfl_names_split_fused_qkv_and_linear1(fz, tmp_path, prefix):
    """Every BFL Linear (fused img/txt qkv, single linear1 = q, k, v, mlp), q/k norm scales (diff) and biases
    (diff_b) merge like a hand merge in the BFL layout converted to diffusers' layout."""
    base = flux(fz)
    sd = bfl_lora(base, prefix, norms=True, biases=True)
    if prefix == "diffusion_model.":  # ComfyUI / BFL style: lora_A / lora_B
        sd = {k.replace("lora_down", "lora_A").replace("lora_up", "lora_B"): v for k, v in sd.items()}
    save_file({k: v.to(torch.bfloat16) for k, v in sd.items()}, tmp_path / "bfl.safetensors")
    stored = load_file(tmp_path / "bfl.safetensors")
    model = flux(fz)
    report = apply_lora(model, tmp_path / "bfl.safetensors", -0.6)
    assert report.matched == report.total and not report.unmatched and "bf16" in report.format
    expected = hand_merged_bfl(base, {k.replace("lora_A", "lora_down").replace("lora_B", "lora_up"): v.float()
                                      for k, v in stored.items()}, -0.6, prefix)
    before = base.state_dict()
    for k, v in model.state_dict().items():
        assert torch.allclose(v, expected[k], rtol=0, atol=1e-6), k
        assert not torch.equal(v, before[k]), k  # every parameter has a delta in this file
    assert {"single_transformer_blocks.0.proj_mlp.weight", "transformer_blocks.1.attn.add_v_proj.weight",
            "transformer_blocks.0.attn.norm_added_k.weight"} <= set(expected)


def test_fused_splits_equal_diffusers_converter_at_real_size():
    """At FLUX.1's real width (3072, linear1 = 3 x 3072 + 12288 rows) our split of the fused kohya tensors equals
    diffusers' converter: the down is shared, or chunked when the up is block-diagonal (sd-scripts' split_qkv)."""
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.lora_conversion_utils import (
        _convert_kohya_flux_lora_to_diffusers,
    )

    from videoprior_edit.lora.targets import ModelNames
    from videoprior_edit.models.configs import config_data

    config = {**config_data("flux")["transformer"]["base"], **config_data("flux")["transformer"]["sizes"]["12B"]}
    config = {k: v for k, v in config.items() if not k.startswith("_") and k != "test_only"}
    with torch.device("meta"):
        names = ModelNames(FluxTransformer2DModel(**config))
    gen = torch.Generator().manual_seed(0)
    sd = {"lora_unet_single_blocks_0_linear1.lora_down.weight": torch.randn(3, 3072, generator=gen),
          "lora_unet_single_blocks_0_linear1.lora_up.weight": torch.randn(21504, 3, generator=gen),
          "lora_unet_single_blocks_0_linear1.alpha": torch.tensor(3.0),
          "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.randn(6, 3072, generator=gen),
          "lora_unet_double_blocks_0_img_attn_qkv.alpha": torch.tensor(6.0)}
    up = torch.zeros(9216, 6)  # block-diagonal: q, k, v each use their own 2 ranks
    for i in range(3):
        up[i * 3072:(i + 1) * 3072, 2 * i:2 * i + 2] = torch.randn(3072, 2, generator=gen)
    sd["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"] = up
    theirs = _convert_kohya_flux_lora_to_diffusers({k: v.clone() for k, v in sd.items()})
    lora = read_lora(sd)
    pieces = {p.weight: p for d in lora.deltas.values() for p in names.pieces(d)}
    assert len(pieces) == 7
    for weight, piece in pieces.items():
        module = "transformer." + weight[: -len(".weight")]
        assert torch.equal(piece.down, theirs[module + ".lora_A.weight"]), weight
        assert torch.equal(piece.up, theirs[module + ".lora_B.weight"]), weight
        assert piece.scale == 1.0
    assert pieces["transformer_blocks.0.attn.to_k.weight"].down.shape == (2, 3072)  # chunked, not shared
    assert pieces["single_transformer_blocks.0.proj_mlp.weight"].up.shape == (12288, 3)


def test_diffusers_and_onetrainer_names_equal_diffusers_loading(fz, tmp_path):
    base = flux(fz)
    gen = torch.Generator().manual_seed(2)
    peft, onetrainer = {}, {}
    for name, p in base.named_parameters():
        if name.endswith(".weight") and p.dim() == 2 and ("attn." in name or "ff" in name or "proj" in name):
            module = name[: -len(".weight")]
            down, up = 0.1 * torch.randn(RANK, p.shape[1], generator=gen), 0.1 * torch.randn(p.shape[0], RANK,
                                                                                           generator=gen)
            peft |= {f"transformer.{module}.lora_A.weight": down, f"transformer.{module}.lora_B.weight": up}
            key = "lora_transformer_" + module.replace(".", "_")
            onetrainer |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                           f"{key}.alpha": torch.tensor(float(RANK))}
    theirs = diffusers_fused(fz, peft, 1.5)
    for layout, sd in (("peft", peft), ("onetrainer", onetrainer)):
        save_file(sd, tmp_path / f"{layout}.safetensors")
        model = flux(fz)
        report = apply_lora(model, tmp_path / f"{layout}.safetensors", 1.5)
        assert report.matched == report.total == len(sd) // (2 if layout == "peft" else 3)
        assert all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items()), layout


def test_unmerged_equals_merged_and_strength_changes_in_place(fz, tmp_path, monkeypatch):
    from videoprior_edit import weights

    base = flux(fz)
    sd = bfl_lora(base, "diffusion_model.", norms=True, biases=True)
    save_file(sd, tmp_path / "a.safetensors")
    merged, unmerged = flux(fz), flux(fz)
    apply_lora(merged, tmp_path / "a.safetensors", 0.7)
    report = apply_lora(unmerged, tmp_path / "a.safetensors", 0.7, merge=False)
    plain, want = forward(base), forward(merged)
    assert (forward(unmerged) - want).abs().max() < 1e-5 < (want - plain).abs().max()
    q = unmerged.transformer_blocks[0].attn.to_q.vpe_lora  # the fused qkv's share for to_q
    hidden = base.config.num_attention_heads * base.config.attention_head_dim
    assert q.a0_up.shape == (hidden, RANK) and q.a0_down.shape == (RANK, hidden)
    reads = []
    real_open = weights.safe_open
    monkeypatch.setattr(weights, "safe_open", lambda *a, **k: reads.append(a) or real_open(*a, **k))
    set_lora_strength(unmerged, report.adapter, -1.0)
    other = flux(fz)
    apply_lora(other, tmp_path / "a.safetensors", -1.0)
    reads.clear()
    assert (forward(unmerged) - forward(other)).abs().max() < 1e-5
    remove_lora(unmerged, report.adapter)
    assert reads == [] and unmerged_loras(unmerged) == {}
    assert torch.equal(forward(unmerged), plain)
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in unmerged.state_dict().items())


def test_wan_lora_on_flux_and_flux_lora_of_another_width_are_refused(fz, zoo, tmp_path):
    model = flux(fz)
    with pytest.raises(ModelFileError) as err:
        apply_lora(model, zoo.file("lightning_high"))
    text = str(err.value)
    hidden = model.config.num_attention_heads * model.config.attention_head_dim
    assert "Wan" in text and "2 blocks, hidden size 256" in text
    assert f"{model.config.num_layers} double + {model.config.num_single_layers} single blocks, hidden size {hidden}" in text
    gen = torch.Generator().manual_seed(0)
    wide = {f"lora_unet_double_blocks_{i}_img_attn_qkv.{s}": torch.randn(*shape, generator=gen)
            for i in range(19) for s, shape in (("lora_down.weight", (4, 3072)), ("lora_up.weight", (9216, 4)))}
    save_file(wide, tmp_path / "flux12b.safetensors")
    with pytest.raises(ModelFileError, match=r"FLUX.1 \(19 double \+ 0 single blocks, hidden size 3072"):
        apply_lora(model, tmp_path / "flux12b.safetensors")
    assert all(torch.equal(v, flux(fz).state_dict()[k]) for k, v in model.state_dict().items())
