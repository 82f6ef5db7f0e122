"""The LoRA loader on Wan: every key layout merges like a hand merge from the raw file tensors or like diffusers'
own loading, nothing the caller owns is modified, experts are targeted right, fp8 storage works, LoRAs for other
bases are refused by name; unmerged LoRAs compute what merged ones do, change and go without reading any file, and
model sets switch them in place."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from videoprior_edit.errors import InputError, ModelFileError
from videoprior_edit.lora import (
    LoraLayer,
    ParamPatch,
    add_lora,
    apply_lora,
    lora_entry,
    read_lora,
    remove_lora,
    set_lora_strength,
    sync_loras,
    unmerged_loras,
    wanted_loras,
    with_lora,
)
from videoprior_edit.models.core import Fp8StorageLinear
from videoprior_edit.models.sets import WanModels
from videoprior_edit.models.wan import load_wan_transformer
from videoprior_edit.models.wan_keys import wan_key_to_diffusers
from videoprior_edit.zoo import LIGHTNING_MODULES

SUFFIXES = {"down": ".lora_down.weight", "up": ".lora_up.weight", "alpha": ".alpha"}
DIM = 256  # hidden size of the tiny zoo's Wan (2 heads of 128, as ComfyUI's Wan loader requires)


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
    extra = {"blocks.0.self_attn.q.diff_b": (DIM,), "blocks.0.norm3.diff": (DIM,), "head.head.diff": (64, DIM),
             "blocks.1.diff_m": (1, 6, DIM), "blocks.0.norm1.diff": (DIM,)}  # norm1 has no weights in Wan
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
    sd["diffusion_model.blocks.0.norm3.diff"] = torch.ones(DIM)  # full deltas, the easiest ones to alias
    sd["diffusion_model.blocks.0.self_attn.q.diff_b"] = torch.ones(DIM)
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
    params, weights = dict(fp8.named_parameters()), dict(load(zoo).named_parameters())
    for name, want in ref.items():  # within two fp8 roundings (1/16 relative each, half subnormal step 2^-10) of
        # fp32: the stored weight's (relative to the weight) and the merged sum's (relative to the sum)
        assert params[name].dtype == torch.float8_e4m3fn
        stored = weights[name].detach().abs() / 16 + 2 ** -10
        assert ((params[name].float() - want).abs() <= stored + (want.abs() + stored) / 16 + 2 ** -10).all(), name
    assert isinstance(fp8.blocks[0].attn1.to_q, Fp8StorageLinear)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float8_e4m3fn,
                                   torch.float64])
@pytest.mark.parametrize(("scale", "strength"), [(1.0, 1.0), (0.375, 0.7), (0.5, -0.3), (2.0, 1.0), (0.1, 4.0)])
def test_merged_pair_rounds_like_a_hand_merge(dtype, scale, strength, monkeypatch):
    """The merge's one-buffer path (the product scaled in place, the weight added into it; fp8 weights upcast a few
    rows at a time) gives the bits of a hand merge in float32, into a new tensor, leaving its inputs as they were."""
    from videoprior_edit.lora import apply as apply_module
    from videoprior_edit.lora.apply import merged_pair
    from videoprior_edit.lora.formats import weight_delta
    from videoprior_edit.lora.layers import added

    monkeypatch.setattr(apply_module, "_CHUNK", 7 * 24)  # fp8: several chunks of 7 rows, the last one short
    g = torch.Generator().manual_seed(0)
    value = (torch.randn(50, 24, generator=g) * 0.2).to(dtype)
    down, up = torch.randn(8, 24, generator=g) * 0.3, torch.randn(50, 8, generator=g) * 0.3
    inputs = [t.clone() for t in (value, down, up)]
    got = merged_pair(value, down, up, scale, strength)
    want = added(value, weight_delta(down, up, None, scale), strength)
    assert got.dtype == dtype and got.shape == value.shape and torch.equal(got.float(), want.float())
    assert all(torch.equal(a.float(), b.float()) for a, b in zip(inputs, (value, down, up)))
    assert got.untyped_storage().data_ptr() not in {t.untyped_storage().data_ptr() for t in (value, down, up)}


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
        assert all(w in str(err.value) for w in words) and f"hidden size {DIM}" in str(err.value), str(err.value)
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), base.state_dict().values()))


def test_pickle_renamed_safetensors_is_refused(zoo, tmp_path):
    path = tmp_path / "evil.safetensors"
    torch.save({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(4, 24)}, path)
    with pytest.raises(ModelFileError, match="pickle"):
        apply_lora(load(zoo), path)


# ------------------------------------------------------------------------------------------------ formats
def test_full_musubi_lora_equals_diffusers_loading(zoo, tmp_path):
    """A complete musubi-tuner LoRA is the one case diffusers' strict musubi converter reads: same weights, exactly."""
    from diffusers import WanImageToVideoPipeline

    path = tmp_path / "musubi.safetensors"
    save_file(_relayout(pairs(load_file(zoo.file("lightning_high"))), "musubi"), path)
    model = load(zoo)
    report = apply_lora(model, path, 1.0)
    assert report.format.startswith("musubi-tuner/kohya") and report.matched == report.total == 20
    pipe = WanImageToVideoPipeline.from_pretrained(zoo.wan22_i2v_diffusers)
    pipe.load_lora_weights(load_file(path), adapter_name="musubi")
    pipe.fuse_lora(components=["transformer"], lora_scale=1.0)
    pipe.unload_lora_weights()
    theirs = pipe.transformer.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items())


def test_musubi_lora_trained_with_include_exclude_patterns(zoo, tmp_path):
    """Partial musubi LoRAs (some blocks, some layers) load (diffusers' musubi converter needs every layer)."""
    modules = pairs(load_file(zoo.file("lightning_high")))
    keep = {m: p for m, p in modules.items()
            if m.startswith("blocks.0.ffn.") or m in ("blocks.1.cross_attn.q", "blocks.1.self_attn.o")}
    path = tmp_path / "partial.safetensors"
    save_file(_relayout(keep, "musubi"), path)
    base, model = load(zoo), load(zoo)
    report = apply_lora(model, path, 0.8)
    assert_merged(model, base, hand_merged(base, keep, 0.8))
    assert report.matched == report.total == 4 and not report.unmatched


def test_diffusers_saved_lora_with_alpha_metadata_equals_diffusers_loading(zoo, tmp_path):
    """A LoRA saved by diffusers keeps lora_alpha in the safetensors metadata; it scales like diffusers loads it."""
    from diffusers import WanImageToVideoPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = WanImageToVideoPipeline.from_pretrained(zoo.wan22_i2v_diffusers)
    config = LoraConfig(r=4, lora_alpha=2, target_modules=["to_q", "to_v", "ffn.net.2"],
                        alpha_pattern={"ffn.net.2": 8})
    pipe.transformer.add_adapter(config, adapter_name="trained")
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in pipe.transformer.named_parameters():
            if "lora_" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    layers = get_peft_model_state_dict(pipe.transformer, adapter_name="trained")
    WanImageToVideoPipeline.save_lora_weights(tmp_path, transformer_lora_layers=layers,
                                              transformer_lora_adapter_metadata=config.to_dict())
    path = tmp_path / "pytorch_lora_weights.safetensors"
    assert all(k.startswith("transformer.") and ".alpha" not in k for k in load_file(path))
    pipe = WanImageToVideoPipeline.from_pretrained(zoo.wan22_i2v_diffusers)  # diffusers reads the file back
    pipe.load_lora_weights(path, adapter_name="trained")
    pipe.fuse_lora(components=["transformer"], lora_scale=0.5)
    pipe.unload_lora_weights()
    model = load(zoo)
    report = apply_lora(model, path, 0.5)
    assert report.format.startswith("diffusers/PEFT") and report.matched == report.total == 10
    theirs = pipe.transformer.state_dict()
    for k, v in model.state_dict().items():
        assert torch.allclose(v, theirs[k], rtol=0, atol=1e-6), k
    ours = read_lora(path).deltas
    assert {d.alpha for n, d in ours.items() if "ffn" in n} == {8.0} and {d.alpha for d in ours.values()} == {2.0, 8.0}


def _i2v(zoo, **kw):
    return load_wan_transformer(zoo.file("wan21_i2v"), "fp32", **kw)


def _i2v_lora(model, seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """A lightx2v/Kijai-style LoRA for every parameter of a Wan2.1-I2V model, in original names: low-rank pairs for
    the Linears (k_img/v_img, img_emb and head included), diff for norms and the patch embedding, diff_b for biases,
    diff_m for the modulation tables."""
    from videoprior_edit.models.wan_keys import wan_key_to_original

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in model.named_parameters():
        original = wan_key_to_original(name)
        if original is None or "emb_pos" in original:
            continue
        if original.endswith("modulation"):
            out[f"diffusion_model.{original[:-len('modulation')]}diff_m"] = 0.05 * torch.randn(p.shape, generator=gen)
            continue
        module, kind = original.rsplit(".", 1)
        key = f"diffusion_model.{module}"
        if kind == "bias":
            out[f"{key}.diff_b"] = 0.05 * torch.randn(p.shape, generator=gen)
        elif p.dim() == 2:
            out[f"{key}.lora_down.weight"] = 0.1 * torch.randn(4, p.shape[1], generator=gen)
            out[f"{key}.lora_up.weight"] = 0.1 * torch.randn(p.shape[0], 4, generator=gen)
            out[f"{key}.alpha"] = torch.tensor(8.0)
        else:
            out[f"{key}.diff"] = 0.05 * torch.randn(p.shape, generator=gen)
    return {k: v.to(dtype) for k, v in out.items()}


def _hand_merge_all(model, sd: dict, strength: float) -> dict[str, torch.Tensor]:
    """Expected weights for `_i2v_lora` files, computed from the file's tensors by hand."""
    from videoprior_edit.models.wan_keys import wan_key_to_diffusers

    params = dict(model.named_parameters())
    out = {}
    for key, t in sd.items():
        module, kind = key[len("diffusion_model."):].rsplit(".", 1) if not key.endswith("weight") else \
            (key[len("diffusion_model."):].rsplit(".", 2)[0], "pair")
        if kind == "pair" and ".lora_down." in key:
            name = wan_key_to_diffusers(module + ".weight")
            up, down = sd[key.replace("lora_down", "lora_up")].float(), t.float()
            delta = (up @ down) * (sd[f"diffusion_model.{module}.alpha"].item() / 4)
        elif kind in ("diff", "diff_b"):
            name = wan_key_to_diffusers(module + (".weight" if kind == "diff" else ".bias"))
            delta = t.float()
        elif kind == "diff_m":
            name = wan_key_to_diffusers(module + ".modulation")
            delta = t.float()
        else:
            continue
        out[name] = (params[name].float() + strength * delta.reshape(params[name].shape)).to(params[name].dtype)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_every_lightx2v_key_kind_on_wan21_i2v(zoo, tmp_path, dtype):
    """k_img/v_img, img_emb, head, patch embedding, norms, biases, modulation: every parameter of a Wan2.1-I2V model,
    from fp32, fp16 and bf16 files, merged like a hand merge of the file's own values."""
    base = _i2v(zoo)
    sd = _i2v_lora(base, dtype=dtype)
    assert any(".k_img." in k for k in sd) and any("img_emb." in k for k in sd) and any("head.head" in k for k in sd)
    path = tmp_path / "all.safetensors"
    save_file(sd, path)
    model = _i2v(zoo)
    report = apply_lora(model, path, -0.6)
    expected = _hand_merge_all(base, sd, -0.6)
    assert_merged(model, base, expected)
    assert report.matched == report.total and not report.unmatched and not report.ignored
    changed = {n for n, t in model.state_dict().items() if not torch.equal(t, base.state_dict()[n])}
    assert changed == {n for n, _ in base.named_parameters() if "pos_embed" not in n}
    assert {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[report.format.split(", ")[1]] == dtype


@pytest.mark.parametrize("layout", ["lycoris", "onetrainer", "comfyui", "peft_named"])
def test_lycoris_onetrainer_comfyui_and_named_peft_keys(zoo, tmp_path, layout):
    from videoprior_edit.models.wan_keys import wan_key_to_diffusers

    modules = pairs(load_file(zoo.file("lightning_high")))
    sd = {}
    for module, p in modules.items():
        diffusers = wan_key_to_diffusers(module + ".weight")[: -len(".weight")]
        if layout == "lycoris":  # SimpleTuner LyCORIS: original names with `_`
            key = "lycoris_" + module.replace(".", "_")
            sd |= {f"{key}.lora_down.weight": p["down"], f"{key}.lora_up.weight": p["up"], f"{key}.alpha": p["alpha"]}
        elif layout == "onetrainer":  # diffusers names with `_`
            key = "lora_transformer_" + diffusers.replace(".", "_")
            sd |= {f"{key}.lora_down.weight": p["down"], f"{key}.lora_up.weight": p["up"], f"{key}.alpha": p["alpha"]}
        elif layout == "comfyui":  # ComfyUI's LoRA save: original names, lora_up/down, bias diffs
            key = f"diffusion_model.{module}"
            sd |= {f"{key}.lora_down.weight": p["down"], f"{key}.lora_up.weight": p["up"], f"{key}.alpha": p["alpha"],
                   f"{key}.diff_b": torch.full((p["up"].shape[0],), 0.01)}
        else:  # PEFT state dict with the adapter name still in the keys, no alpha
            key = f"base_model.model.{diffusers}"
            sd |= {f"{key}.lora_A.default.weight": p["down"], f"{key}.lora_B.default.weight": p["up"]}
    path = tmp_path / f"{layout}.safetensors"
    save_file(sd, path)
    base, model = load(zoo), load(zoo)
    report = apply_lora(model, path, 0.5)
    expected = hand_merged(base, modules, 0.5, use_alpha=layout != "peft_named")
    if layout == "comfyui":
        params = dict(base.named_parameters())
        for module in modules:
            bias = wan_key_to_diffusers(module + ".bias")
            expected[bias] = params[bias] + 0.5 * 0.01
    assert_merged(model, base, expected)
    assert report.matched == report.total == 20


def test_text_encoder_keys_are_skipped_and_counted(zoo, tmp_path):
    sd = load_file(zoo.file("lightning_high"))
    sd |= {"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 8),
           "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(8, 4),
           "text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.lora_up.weight": torch.zeros(8, 4),
           "diffusion_model.blocks.0.self_attn.q.some_new_thing": torch.zeros(3)}
    save_file(sd, tmp_path / "te.safetensors")
    base, model = load(zoo), load(zoo)
    report = apply_lora(model, tmp_path / "te.safetensors", 1.0)
    assert_merged(model, base, hand_merged(base, pairs(load_file(zoo.file("lightning_high"))), 1.0))
    assert (report.matched, report.total, report.skipped) == (20, 20, 3)
    assert report.ignored == ["diffusion_model.blocks.0.self_attn.q.some_new_thing"]
    assert "3 text-encoder keys skipped" in report.summary() and "1 keys not understood" in report.summary()


@pytest.mark.parametrize("kind", ["dora_scale", "lokr_w1", "hada_w1_a"])
def test_lycoris_algorithms_and_dora_are_refused_by_name(zoo, tmp_path, kind):
    sd = load_file(zoo.file("lightning_high"))
    sd[f"diffusion_model.blocks.0.self_attn.q.{kind}"] = torch.ones(DIM, 1)
    save_file(sd, tmp_path / "x.safetensors")
    model = load(zoo)
    name = {"dora_scale": "DoRA", "lokr_w1": "LoKr", "hada_w1_a": "LoHa"}[kind]
    with pytest.raises(ModelFileError, match=name):
        apply_lora(model, tmp_path / "x.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), load(zoo).state_dict().values()))


def test_wrong_base_messages_name_sizes_and_families(zoo, tmp_path):
    gen = torch.Generator().manual_seed(0)
    sd_unet = {f"lora_unet_down_blocks_0_attentions_0_proj_in.{s}": torch.randn(4, 24, generator=gen)
               for s in ("lora_down.weight", "lora_up.weight")}
    small = {f"diffusion_model.blocks.{i}.self_attn.{m}.{s}": torch.randn(4, 1536, generator=gen)
             for i in range(30) for m in "qk" for s in ("lora_down.weight",)}
    small |= {k.replace("lora_down", "lora_up"): torch.randn(1536, 4, generator=gen) for k in small}
    for name, sd, words in (("unet", sd_unet, ["Stable Diffusion / SDXL"]),
                            ("small", small, ["Wan2.1-T2V-1.3B", "30 blocks", "hidden size 1536"])):
        save_file(sd, tmp_path / f"{name}.safetensors")
        with pytest.raises(ModelFileError) as err:
            apply_lora(load(zoo), tmp_path / f"{name}.safetensors")
        assert all(w in str(err.value) for w in words), str(err.value)
        assert "tiny test Wan2.2-I2V-A14B" in str(err.value) and f"2 blocks, hidden size {DIM}" in str(err.value)


# ------------------------------------------------------------------------------------------------ unmerged
def _wan_forward(model, image: bool = False) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, model.config.in_channels, 2, 4, 4, generator=gen)
    text = torch.randn(1, 8, model.config.text_dim, generator=gen)
    kw = {"encoder_hidden_states_image": torch.randn(1, 5, model.config.image_dim, generator=gen)} if image else {}
    dtype = model.patch_embedding.weight.dtype
    with torch.no_grad():
        return model(hidden_states=x.to(dtype), timestep=torch.tensor([500.0]), encoder_hidden_states=text.to(dtype),
                     return_dict=False, **{k: v.to(dtype) for k, v in kw.items()})[0]


def test_unmerged_equals_merged_and_leaves_no_trace(zoo, tmp_path):
    base = _i2v(zoo)
    sd = _i2v_lora(base)
    sd["diffusion_model.blocks.0.ffn.0.diff"] = 0.05 * torch.randn(32, DIM)  # a full delta beside a pair
    save_file(sd, tmp_path / "all.safetensors")
    merged, unmerged = _i2v(zoo), _i2v(zoo)
    apply_lora(merged, tmp_path / "all.safetensors", 0.7)
    report = apply_lora(unmerged, tmp_path / "all.safetensors", 0.7, merge=False, name="style")
    assert report.adapter == "style" and not report.merged and "added unmerged to" in report.summary()
    plain, want, got = _wan_forward(base, True), _wan_forward(merged, True), _wan_forward(unmerged, True)
    assert (got - want).abs().max() < 1e-5 < (want - plain).abs().max()
    linears = {n for n, m in unmerged.named_modules() if isinstance(m, LoraLayer)}
    assert "blocks.0.attn2.add_k_proj.vpe_lora" in linears and "proj_out.vpe_lora" in linears
    assert unmerged.state_dict().keys() == base.state_dict().keys()
    assert dict(unmerged.named_parameters()).keys() == dict(base.named_parameters()).keys()
    assert unmerged_loras(unmerged) == {"style": 0.7}
    remove_lora(unmerged, "style")
    assert torch.equal(_wan_forward(unmerged, True), plain) and unmerged_loras(unmerged) == {}
    assert_merged_none(unmerged, base)
    assert not any(isinstance(m, (LoraLayer, ParamPatch)) for m in unmerged.modules())
    assert not any(m._forward_hooks for m in unmerged.modules())


def assert_merged_none(model, base) -> None:
    ref = base.state_dict()
    assert all(torch.equal(t, ref[n]) and t.dtype == ref[n].dtype for n, t in model.state_dict().items())


def test_strength_changes_and_removal_read_no_file(zoo, tmp_path, monkeypatch):
    from videoprior_edit import weights
    from videoprior_edit.lora import formats

    base = _i2v(zoo)
    save_file(_i2v_lora(base, seed=1), tmp_path / "a.safetensors")
    save_file(_i2v_lora(base, seed=2), tmp_path / "b.safetensors")
    model = _i2v(zoo)
    apply_lora(model, tmp_path / "a.safetensors", 1.0, merge=False, name="a")
    apply_lora(model, tmp_path / "b.safetensors", -0.5, merge=False, name="b")
    reads = []
    real_open, real_read = weights.safe_open, formats.read_file
    monkeypatch.setattr(weights, "safe_open", lambda *a, **k: reads.append(a) or real_open(*a, **k))
    monkeypatch.setattr(formats, "read_file", lambda *a, **k: reads.append(a) or real_read(*a, **k))
    expected = {}
    for sa, sb in ((1.0, -0.5), (0.25, -0.5), (0.25, 1.5), (0.0, 1.5)):
        set_lora_strength(model, "a", sa)
        set_lora_strength(model, "b", sb)
        reference = _i2v(zoo)
        apply_lora(reference, tmp_path / "a.safetensors", sa)
        apply_lora(reference, tmp_path / "b.safetensors", sb)
        expected[sa, sb] = _wan_forward(reference, True)
        reads.clear()
        assert (_wan_forward(model, True) - expected[sa, sb]).abs().max() < 1e-5, (sa, sb)
    remove_lora(model, "b")
    set_lora_strength(model, "a", -0.75)
    remove_lora(model, "a")
    assert reads == []
    assert torch.equal(_wan_forward(model, True), _wan_forward(base, True))
    assert_merged_none(model, base)
    with pytest.raises(InputError, match="No LoRA named 'a'"):
        set_lora_strength(model, "a", 1.0)


def test_stacking_merged_and_unmerged_with_negative_strengths(zoo, tmp_path):
    base = _i2v(zoo)
    files = []
    for i, seed in enumerate((4, 5, 6)):
        files.append(tmp_path / f"{i}.safetensors")
        save_file(_i2v_lora(base, seed=seed), files[-1])
    strengths = (0.6, -0.4, 1.2)
    reference = _i2v(zoo)
    for f, s in zip(files, strengths):
        apply_lora(reference, f, s)
    mixed = _i2v(zoo)
    apply_lora(mixed, files[0], strengths[0], merge=False)
    apply_lora(mixed, files[1], strengths[1])  # merged under an unmerged one: norms keep both
    apply_lora(mixed, files[2], strengths[2], merge=False)
    assert (_wan_forward(mixed, True) - _wan_forward(reference, True)).abs().max() < 1e-5
    remove_lora(mixed, str(files[0]))
    remove_lora(mixed, str(files[2]))
    only_merged = _i2v(zoo)
    apply_lora(only_merged, files[1], strengths[1])
    for name, t in mixed.state_dict().items():
        assert (t - only_merged.state_dict()[name]).abs().max() < 1e-6, name
    apply_lora(mixed, files[1], 1.0, merge=False)
    with pytest.raises(InputError, match="already applied unmerged"):
        apply_lora(mixed, files[1], 1.0, merge=False)


def test_unmerged_never_shares_or_writes_the_callers_tensors(zoo):
    sd = _i2v_lora(_i2v(zoo))
    copy = {k: v.clone() for k, v in sd.items()}
    model = _i2v(zoo)
    apply_lora(model, sd, 0.5, merge=False, name="x")
    set_lora_strength(model, "x", -2.0)
    apply_lora(model, sd, 0.5, name="merged")
    remove_lora(model, "x")
    assert all(torch.equal(sd[k], copy[k]) for k in copy)
    model2 = _i2v(zoo)
    apply_lora(model2, sd, 0.5, merge=False, name="x")
    ours = {t.untyped_storage().data_ptr() for m in model2.modules() if isinstance(m, (LoraLayer, ParamPatch))
            for t in m._buffers.values()}
    assert ours and not ours & {t.untyped_storage().data_ptr() for t in sd.values()}


def _buffers(model, kinds=(LoraLayer, ParamPatch)) -> list[tuple]:
    return [(name, t, t.data_ptr(), t._version) for m in model.modules() if isinstance(m, kinds)
            for name, t in m._buffers.items()]


def test_unmerged_from_a_file_keeps_its_own_copy_once(zoo, tmp_path):
    """A LoRA file is read into new memory (never the file's memory map): the first unmerged use keeps those tensors
    without a second copy; writing them changes neither the file nor anyone else's; a read shared by two models
    (a set applying one file to both experts) is copied for the second. A strength change leaves every tensor as it
    was."""
    path = tmp_path / "lora.safetensors"
    save_file(_i2v_lora(_i2v(zoo)), path)
    on_disk = load_file(path)
    lora = read_lora(path)
    assert lora.owned and lora.keys == list(on_disk)
    for key, t in on_disk.items():
        delta = next(d for d in lora.deltas.values() if key in d.keys)
        if key.endswith(".alpha"):
            assert delta.alpha == t.item(), key
    first, second = _i2v(zoo), _i2v(zoo)
    from videoprior_edit.lora.apply import apply_read

    apply_read(first, lora, 0.5, False, "x")
    apply_read(second, lora, 0.5, False, "x")
    layer = first.blocks[0].attn1.to_q.vpe_lora
    delta = lora.deltas["diffusion_model.blocks.0.self_attn.q"]
    # kept (fp32 file, fp32 model: no second copy), and not in a memory map of the file
    assert layer.a0_down.data_ptr() == delta.down.data_ptr() and layer.a0_up.data_ptr() == delta.up.data_ptr()
    maps = Path("/proc/self/maps")
    if maps.is_file():
        mapped = [[int(x, 16) for x in line.split()[0].split("-")] for line in maps.read_text().splitlines()
                  if line.endswith(str(path.resolve()))]
        assert not any(lo <= t.data_ptr() < hi for _, t, *_ in _buffers(first) for lo, hi in mapped)
    ours = {t.untyped_storage().data_ptr() for _, t, *_ in _buffers(first)}
    theirs = {t.untyped_storage().data_ptr() for _, t, *_ in _buffers(second)}
    assert ours and theirs and not ours & theirs  # the second model got copies
    before = _buffers(first)
    set_lora_strength(first, "x", -1.5)  # numbers only: every LoRA tensor stays as it was
    after = _buffers(first)
    assert len(before) == len(after) and all(x[0] == y[0] and x[1] is y[1] and x[2:] == y[2:]
                                             for x, y in zip(before, after))
    with torch.no_grad():
        for _, t, *_ in _buffers(first, LoraLayer):
            t.add_(1.0)  # written: only this model's LoRA tensors change
    assert all(torch.equal(t, on_disk[k]) for k, t in load_file(path).items())
    fresh = _i2v(zoo)
    apply_lora(fresh, path, 0.5, merge=False, name="x")
    pairs_ = list(zip(_buffers(fresh, LoraLayer), _buffers(second, LoraLayer)))
    assert pairs_ and all(a[0] == b[0] and torch.equal(a[1], b[1]) for a, b in pairs_)


def test_a_rewritten_lora_file_is_read_again(zoo, tmp_path):
    """What is remembered of a LoRA file (its checks and layout) is used only while its size and header are the
    same: new tensors of the same shapes, or other keys, are read as they are now."""
    path = tmp_path / "lora.safetensors"
    base = _i2v(zoo)
    for seed in (1, 2):
        save_file(_i2v_lora(base, seed=seed), path)
        lora = read_lora(path)
        want = load_file(path)
        assert all(torch.equal(getattr(d, p), want[k]) for d in lora.deltas.values() for k in d.keys
                   for p, end in (("down", ".lora_down.weight"), ("up", ".lora_up.weight")) if k.endswith(end))
    save_file({k: v for k, v in load_file(path).items() if ".blocks.0." not in k}, path)
    assert not any(".blocks.0." in k for k in read_lora(path).keys)
    path.write_bytes(b"\x80\x04" + b"x" * 64)  # now a pickle under the same name
    with pytest.raises(ModelFileError, match="pickle"):
        read_lora(path)


def _dequantized(model):
    """An fp8-storage model as plain float32 Linears holding the same (upcast) weights."""
    for m in model.modules():
        if isinstance(m, Fp8StorageLinear):
            m.weight = torch.nn.Parameter(m.weight.float(), requires_grad=False)
            m.__class__ = torch.nn.Linear
    return model.float()


def test_unmerged_on_fp8_storage(zoo):
    """fp8-storage Linears take unmerged LoRAs in their compute dtype (bf16): the result is the fp8 weights plus the
    exact LoRA, up to bf16 compute rounding."""
    fp8 = lambda: load_wan_transformer(zoo.file("wan22_i2v_high"), "bf16", "fp8_e4m3fn")
    unmerged, plain = fp8(), fp8()
    apply_lora(unmerged, zoo.file("lightning_high"), 1.0, merge=False)
    assert isinstance(unmerged.blocks[0].attn1.to_q, Fp8StorageLinear)
    assert unmerged.blocks[0].attn1.to_q.vpe_lora.a0_down.dtype == torch.bfloat16
    assert unmerged.blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn
    exact_plain, exact = _dequantized(fp8()), _dequantized(fp8())
    apply_lora(exact, zoo.file("lightning_high"), 1.0)
    rounding = (_wan_forward(plain).float() - _wan_forward(exact_plain)).abs().max()  # bf16 compute alone
    error = (_wan_forward(unmerged).float() - _wan_forward(exact)).abs().max()
    effect = (_wan_forward(exact) - _wan_forward(exact_plain)).abs().max()
    assert error <= 2 * rounding and effect > 2 * error, (error, rounding, effect)


# ------------------------------------------------------------------------------------------------ model sets
def _files_set(zoo, placement=None):
    from videoprior_edit.models.sets import load_wan_models

    return load_wan_models(zoo.file("wan22_i2v_high"), zoo.file("wan22_i2v_low"), zoo.file("umt5"), zoo.file("vae"),
                           dtype="fp32", placement=placement)


@pytest.mark.parametrize("mode", ["one_expert", "one_expert_disk", "block_offload"])
def test_an_unmerged_set_never_changes_the_set_it_came_from(zoo, mode, tmp_path, monkeypatch):
    """The unmerged twin of test_sampling's test: sets made with with_lora(merge=False) share the experts; each runs
    what it lists, switching LoRAs in place (no base file is read, except where the placement parks on disk)."""
    from test_sampling import SOURCE

    from videoprior_edit import placement as placement_module
    from videoprior_edit.placement import Placement
    from videoprior_edit.sampling import Guidance, sample_i2v
    from videoprior_edit.sampling.condition import image_from_uint8

    def run(models):
        return sample_i2v(models, image_from_uint8(SOURCE), "a red cat", None, num_frames=9, steps=4,
                          scheduler="lightning", guidance=Guidance(1.0), seed=0, decode_video=False).latents

    base = _files_set(zoo, Placement(mode, device="cpu"))
    plain = run(base)
    reloads = []
    real = placement_module._reload
    monkeypatch.setattr(placement_module, "_reload", lambda *a: reloads.append(a[1]) or real(*a))
    lit = with_lora(with_lora(base, zoo.file("lightning_high"), 1.0, "high", merge=False),
                    zoo.file("lightning_low"), 0.5, "low", merge=False)
    assert lit.loras[0] == (str(zoo.file("lightning_high")), 1.0, "high", False)
    lit_result = run(lit)
    assert base.loras == [] and not torch.equal(lit_result, plain)
    assert torch.equal(run(base), plain)  # LoRAs switched off in place
    assert torch.equal(run(lit), lit_result)
    weaker = with_lora(with_lora(base, zoo.file("lightning_high"), 0.3, "high", merge=False),
                       zoo.file("lightning_low"), 0.5, "low", merge=False)
    weaker_result = run(weaker)
    if mode != "one_expert_disk":
        assert reloads == []  # strength changes and removals never re-read an expert
    merged = with_lora(with_lora(_files_set(zoo), zoo.file("lightning_high"), 1.0, "high"),
                       zoo.file("lightning_low"), 0.5, "low")
    assert (run(merged) - lit_result).abs().max() < 1e-4
    merged_weaker = with_lora(with_lora(_files_set(zoo), zoo.file("lightning_high"), 0.3, "high"),
                              zoo.file("lightning_low"), 0.5, "low")
    assert (run(merged_weaker) - weaker_result).abs().max() < 1e-4


def test_a_new_strength_of_a_held_unmerged_lora_reads_nothing(zoo, monkeypatch, caplog):
    """What the LoRA node does when only its strength changes: with_lora(merge=False) of a file the experts already
    hold unmerged reuses the check made when it was added (no LoRA file read), logs the same line at the new
    strength and leaves every LoRA tensor as it was; another file, or one the experts no longer hold, is read."""
    from videoprior_edit.lora import formats

    models = _files_set(zoo)
    high = zoo.file("lightning_high")
    first = with_lora(models, high, 0.5, "both", merge=False)
    before = _buffers(models.transformer) + _buffers(models.transformer_2)
    reads = []
    real_read = formats.read_file
    monkeypatch.setattr(formats, "read_file", lambda *a, **k: reads.append(a) or real_read(*a, **k))
    with caplog.at_level(logging.INFO, logger="videoprior_edit.lora"):
        second = with_lora(models, high, -1.25, "both", merge=False)
    assert reads == [] and len(caplog.records) == 1
    assert "at strength -1.25 added unmerged to" in caplog.text and "low-noise expert" in caplog.text
    after = _buffers(models.transformer) + _buffers(models.transformer_2)
    assert len(before) == len(after) and all(x[0] == y[0] and x[1] is y[1] and x[2:] == y[2:]
                                             for x, y in zip(before, after))
    assert unmerged_loras(models.transformer) == {"set:" + str(high): -1.25} == unmerged_loras(models.transformer_2)
    assert first.loras == [(str(high), 0.5, "both", False)] and second.loras == [(str(high), -1.25, "both", False)]
    with_lora(models, zoo.file("lightning_low"), 1.0, "low", merge=False)  # another file (read); the set lacks `high`
    assert len(reads) == 1 and unmerged_loras(models.transformer) == {}
    with_lora(models, high, 0.75, "both", merge=False)  # no longer held: read again (once for both experts)
    assert len(reads) == 2 and unmerged_loras(models.transformer) == {"set:" + str(high): 0.75}


def test_set_mixes_merged_and_unmerged_and_logs_one_line(zoo, tmp_path, caplog):
    models = _files_set(zoo)
    with caplog.at_level(logging.INFO, logger="videoprior_edit.lora"):
        reports = add_lora(models, zoo.file("lightning_high"), 0.5, "both", merge=False)
    assert len(caplog.records) == 1 and "high-noise expert" in caplog.text and "low-noise expert" in caplog.text
    assert [r.merged for r in reports] == [False, False]
    add_lora(models, zoo.file("lightning_low"), 1.0, "low")
    assert wanted_loras(models, "transformer_2") == ((str(zoo.file("lightning_low")), 1.0),)
    assert wanted_loras(models, "transformer_2", merged=False) == ((str(zoo.file("lightning_high")), 0.5),)
    assert [lora_entry(e) for e in models.loras] == [(str(zoo.file("lightning_high")), 0.5, "both", False),
                                                     (str(zoo.file("lightning_low")), 1.0, "low", True)]
    low = models.transformer_2
    assert low.vpe_loras == ((str(zoo.file("lightning_low")), 1.0),)
    assert unmerged_loras(low) == {"set:" + str(zoo.file("lightning_high")): 0.5}
    reference = load(zoo, "low")
    apply_lora(reference, zoo.file("lightning_high"), 0.5)
    apply_lora(reference, zoo.file("lightning_low"), 1.0)
    assert (_wan_forward(low) - _wan_forward(reference)).abs().max() < 1e-5
    models.loras[0] = (str(zoo.file("lightning_high")), -1.0, "both", False)  # edit the list: synced when used
    sync_loras(models, "transformer_2")
    assert unmerged_loras(low) == {"set:" + str(zoo.file("lightning_high")): -1.0}
    models.loras.pop(1)  # a merged one removed: the expert is read again, the unmerged one comes back
    sync_loras(models, "transformer_2")
    assert low.vpe_loras == () and unmerged_loras(low) == {"set:" + str(zoo.file("lightning_high")): -1.0}
    reference = load(zoo, "low")
    apply_lora(reference, zoo.file("lightning_high"), -1.0)
    assert (_wan_forward(low) - _wan_forward(reference)).abs().max() < 1e-5


def test_lora_node_merge_input(pack, zoo, monkeypatch):
    from test_nodes import _zoo_set

    node = pack.nodes.nodes_by_id()["VPE_WanLoraLoader"]
    spec = node.GET_NODE_INFO_V1()["input"]
    assert list(spec["required"]) == ["wan_models", "lora", "strength", "expert"]
    assert spec["optional"]["merge"][0] == "BOOLEAN" and spec["optional"]["merge"][1]["default"] is True
    models = _zoo_set(pack, zoo, monkeypatch)
    q = models.transformer.blocks[0].attn1.to_q.weight.clone()
    out = node.execute(models, zoo.file("lightning_high").name, 0.5, "high", merge=False)
    (lit,) = out.args  # the node shows the load summary on itself (ui.text)
    assert any("added unmerged to 20 of its 20 modules" in line for line in out.ui["text"])
    assert lit.loras == [(str(zoo.file("lightning_high")), 0.5, "high", False)] and models.loras == []
    assert torch.equal(lit.transformer.blocks[0].attn1.to_q.weight, q)  # kept beside the weights
    assert unmerged_loras(lit.transformer) == {"set:" + str(zoo.file("lightning_high")): 0.5}
    (merged,) = node.execute(models, zoo.file("lightning_high").name, 0.5, "high").args
    assert merged.loras == [(str(zoo.file("lightning_high")), 0.5, "high")]
