"""The minimal LoRA loader: every key layout merges like a hand merge from the raw file tensors, nothing the caller
owns is modified, experts are targeted right, fp8 storage works, and LoRAs for other bases are refused by name."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from videoprior_edit.errors import ModelFileError
from videoprior_edit.lora import add_lora, apply_lora, read_lora
from videoprior_edit.models.core import Fp8StorageLinear
from videoprior_edit.models.sets import WanModels
from videoprior_edit.models.wan import load_wan_transformer
from videoprior_edit.models.wan_keys import wan_key_to_diffusers
from videoprior_edit.zoo import LIGHTNING_MODULES

SUFFIXES = {"down": ".lora_down.weight", "up": ".lora_up.weight", "alpha": ".alpha"}


def load(zoo, expert="high", **kw):
    return load_wan_transformer(zoo.file(f"wan22_i2v_{expert}"), "fp32", **kw)


def pairs(sd: dict) -> dict[str, dict]:
    """Lightning file tensors by original module path: {"blocks.0.self_attn.q": {"down", "up", "alpha"}}."""
    out = {}
    for key, t in sd.items():
        for part, suffix in SUFFIXES.items():
            if key.endswith(suffix):
                out.setdefault(key[len("diffusion_model."):-len(suffix)], {})[part] = t
    return out


def hand_merged(model, modules: dict[str, dict], strength: float, use_alpha: bool = True) -> dict:
    """Expected weights: W + strength * (alpha / rank) * up @ down, in float32, for the given original modules."""
    params = dict(model.named_parameters())
    out = {}
    for module, p in modules.items():
        name = wan_key_to_diffusers(module + ".weight")
        scale = p["alpha"].item() / p["down"].shape[0] if use_alpha else 1.0
        out[name] = (params[name].float() + strength * ((p["up"] @ p["down"]) * scale)).to(params[name].dtype)
    return out


def assert_merged(model, base, expected: dict) -> None:
    """Expected weights changed exactly as given, every other tensor untouched."""
    ref = base.state_dict()
    for name, t in model.state_dict().items():
        assert torch.equal(t, expected.get(name, ref[name])), name
    assert expected and all(not torch.equal(expected[n], ref[n]) for n in expected)


@pytest.mark.parametrize("strength", [1.0, 0.5, -1.0])
def test_lightning_file_merges_like_a_hand_merge(zoo, strength, caplog):
    sd = load_file(zoo.file("lightning_high"))
    assert all(k.startswith("diffusion_model.blocks.") and t.dtype == torch.float32 for k, t in sd.items())
    modules = pairs(sd)
    assert len(modules) == 2 * len(LIGHTNING_MODULES) and {p["down"].shape[0] for p in modules.values()} == {4}
    base, model = load(zoo), load(zoo)
    with caplog.at_level(logging.INFO, logger="videoprior_edit.lora"):
        report = apply_lora(model, zoo.file("lightning_high"), strength)
    assert_merged(model, base, hand_merged(base, modules, strength))
    assert (report.matched, report.total, report.unmatched, report.strength) == (20, 20, [], strength)
    assert [r.getMessage() for r in caplog.records] == [report.summary()]
    assert "20 of its 20 modules" in report.summary()


def _relayout(modules: dict[str, dict], layout: str) -> dict[str, torch.Tensor]:
    out = {}
    for module, p in modules.items():
        if layout == "lora_AB":
            key = f"diffusion_model.{module}"
            out |= {f"{key}.lora_A.weight": p["down"], f"{key}.lora_B.weight": p["up"], f"{key}.alpha": p["alpha"]}
        elif layout == "bare":
            out |= {f"{module}.lora_down.weight": p["down"], f"{module}.lora_up.weight": p["up"],
                    f"{module}.alpha": p["alpha"]}
        elif layout == "musubi":
            key = "lora_unet_" + module.replace(".", "_")
            out |= {f"{key}.lora_down.weight": p["down"], f"{key}.lora_up.weight": p["up"], f"{key}.alpha": p["alpha"]}
        else:  # diffusers / PEFT: no alpha in the file
            key = "transformer." + wan_key_to_diffusers(module + ".weight")[: -len(".weight")]
            out |= {f"{key}.lora_A.weight": p["down"], f"{key}.lora_B.weight": p["up"]}
    return out


@pytest.mark.parametrize("layout", ["lora_AB", "bare", "musubi", "peft"])
@pytest.mark.parametrize("strength", [0.5, -1.0])
def test_other_key_layouts_merge_the_same(zoo, tmp_path, layout, strength):
    modules = pairs(load_file(zoo.file("lightning_low")))
    if layout == "musubi":  # a partial LoRA: one block, self-attention only
        modules = {m: p for m, p in modules.items() if m.startswith("blocks.1.self_attn.")}
    path = tmp_path / f"{layout}.safetensors"
    save_file(_relayout(modules, layout), path)
    base, model = load(zoo, "low"), load(zoo, "low")
    report = apply_lora(model, path, strength)
    assert_merged(model, base, hand_merged(base, modules, strength, use_alpha=layout != "peft"))
    assert report.matched == report.total == len(modules)


def test_diff_diff_b_and_diff_m_keys(zoo, tmp_path):
    gen = torch.Generator().manual_seed(0)
    sd = load_file(zoo.file("lightning_high"))
    extra = {"blocks.0.self_attn.q.diff_b": (24,), "blocks.0.norm3.diff": (24,), "head.head.diff": (64, 24),
             "blocks.1.diff_m": (1, 6, 24), "blocks.0.norm1.diff": (24,)}  # norm1 has no weights in Wan
    extra = {"diffusion_model." + k: torch.randn(s, generator=gen) for k, s in extra.items()}
    save_file(sd | extra, tmp_path / "diffs.safetensors")
    base, model = load(zoo), load(zoo)
    report = apply_lora(model, tmp_path / "diffs.safetensors", 0.5)
    expected = hand_merged(base, pairs(sd), 0.5)
    params = dict(base.named_parameters())
    for key, name in (("blocks.0.norm3.diff", "blocks.0.norm2.weight"), ("head.head.diff", "proj_out.weight"),
                      ("blocks.1.diff_m", "blocks.1.scale_shift_table"),
                      ("blocks.0.self_attn.q.diff_b", "blocks.0.attn1.to_q.bias")):
        expected[name] = params[name] + 0.5 * extra["diffusion_model." + key]
    assert_merged(model, base, expected)
    assert report.unmatched == ["diffusion_model.blocks.0.norm1"] and report.matched == report.total - 1


def test_file_and_caller_tensors_are_never_modified(zoo, tmp_path):
    sd = load_file(zoo.file("lightning_high"))
    sd["diffusion_model.blocks.0.norm3.diff"] = torch.ones(24)  # full deltas, the easiest ones to alias
    sd["diffusion_model.blocks.0.self_attn.q.diff_b"] = torch.ones(24)
    copy = {k: v.clone() for k, v in sd.items()}
    save_file(sd, tmp_path / "lora.safetensors")
    first, second, from_file = load(zoo), load(zoo), load(zoo)
    apply_lora(first, sd, 0.5)
    apply_lora(second, sd, 0.5)
    apply_lora(from_file, tmp_path / "lora.safetensors", 0.5)
    assert all(torch.equal(sd[k], copy[k]) for k in copy)
    for a, b, c in zip(first.state_dict().values(), second.state_dict().values(), from_file.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a, c)
    apply_lora(first, sd, -0.5)  # undo: back to the base within float32 rounding
    base = load(zoo).state_dict()
    for name, t in first.state_dict().items():
        assert (t - base[name]).abs().max() < 1e-6, name
    assert all(torch.equal(sd[k], copy[k]) for k in copy)
    assert read_lora(tmp_path / "lora.safetensors").deltas.keys() == read_lora(sd).deltas.keys()


def _set(zoo, two_experts=True):
    return WanModels(variant="wan2.2-i2v-a14b" if two_experts else "wan2.1-t2v-14b", transformer=load(zoo),
                     transformer_2=load(zoo, "low") if two_experts else None, text_encoder=None, tokenizer=None,
                     vae=None)


@pytest.mark.parametrize("expert", ["high", "low", "both"])
def test_add_lora_changes_exactly_the_chosen_experts(zoo, expert):
    models = _set(zoo)
    reports = add_lora(models, zoo.file(f"lightning_{'low' if expert == 'low' else 'high'}"), 0.5, expert)
    high_changed = not torch.equal(models.transformer.blocks[0].attn1.to_q.weight,
                                   load(zoo).blocks[0].attn1.to_q.weight)
    low_changed = not torch.equal(models.transformer_2.blocks[0].ffn.net[2].weight,
                                  load(zoo, "low").blocks[0].ffn.net[2].weight)
    assert (high_changed, low_changed) == (expert != "low", expert != "high")
    assert [r.target for r in reports] == {"high": ["high-noise expert"], "low": ["low-noise expert"],
                                           "both": ["high-noise expert", "low-noise expert"]}[expert]
    path = zoo.file(f"lightning_{'low' if expert == 'low' else 'high'}")
    assert models.loras == [(str(path), 0.5, expert)]


def test_add_lora_on_a_single_model(zoo):
    models = _set(zoo, two_experts=False)
    with pytest.raises(ModelFileError, match="one model"):
        add_lora(models, zoo.file("lightning_high"), 1.0, "low")
    assert models.loras == []
    assert [r.target for r in add_lora(models, zoo.file("lightning_high"))] == ["model"]
    assert models.loras == [(str(zoo.file("lightning_high")), 1.0, "both")]


def test_fp8_storage_merges_within_fp8_rounding(zoo):
    modules = pairs(load_file(zoo.file("lightning_high")))
    ref = hand_merged(load(zoo), modules, 1.0)
    base, fp8 = load(zoo, weight_storage="fp8_e4m3fn"), load(zoo, weight_storage="fp8_e4m3fn")
    apply_lora(fp8, zoo.file("lightning_high"))
    assert_merged(fp8, base, hand_merged(base, modules, 1.0))  # the stored fp8 weight merged in fp32, rounded once
    params = dict(fp8.named_parameters())
    for name, want in ref.items():  # within two fp8 roundings (1/16 relative each, subnormal step 2^-9) of fp32
        assert params[name].dtype == torch.float8_e4m3fn
        assert ((params[name].float() - want).abs() <= want.abs() / 8 + 2 ** -9).all(), name
    assert isinstance(fp8.blocks[0].attn1.to_q, Fp8StorageLinear)


def test_lora_for_another_base_is_refused_by_name(zoo, tmp_path):
    gen = torch.Generator().manual_seed(0)
    flux = {f"lora_unet_double_blocks_{i}_img_attn_qkv.{s}": torch.randn(4, 24, generator=gen)
            for i in range(2) for s in ("lora_down.weight", "lora_up.weight")}
    wide = {f"diffusion_model.blocks.{i}.self_attn.{m}.{s}": torch.randn(4, 48, generator=gen)
            for i in range(30) for m in "qkvo" for s in ("lora_down.weight", "lora_up.weight")}
    i2v = {f"diffusion_model.blocks.{i}.cross_attn.{m}.lora_down.weight": torch.randn(4, 48, generator=gen)
           for i in range(2) for m in ("k_img", "v_img")}
    cases = [("flux", flux, ["FLUX.1"]), ("wide", wide, ["30 blocks", "hidden size 48"]),
             ("i2v", i2v, ["k_img/v_img", "Wan2.1-I2V"])]
    base = load(zoo)
    for name, sd, words in cases:
        save_file(sd, tmp_path / f"{name}.safetensors")
        model = load(zoo)
        with pytest.raises(ModelFileError) as err:
            apply_lora(model, tmp_path / f"{name}.safetensors")
        assert all(w in str(err.value) for w in words) and "hidden size 24" in str(err.value), str(err.value)
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), base.state_dict().values()))


def test_pickle_renamed_safetensors_is_refused(zoo, tmp_path):
    path = tmp_path / "evil.safetensors"
    torch.save({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(4, 24)}, path)
    with pytest.raises(ModelFileError, match="pickle"):
        apply_lora(load(zoo), path)
