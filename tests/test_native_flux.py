"""ByG image editing on ComfyUI's own FLUX MODEL (real ComfyUI, in its own Python: tests/comfy_scripts/, and a graph
through the server of the session's `comfy` fixture)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file


def test_flux_prediction_is_the_model_on_the_concatenated_tokens_built_by_hand(comfy, zoo):
    """The patched MODEL's prediction for the noisy tokens equals the unpatched Flux model run on [noisy, source]
    tokens with the ids built by hand: the noisy tokens' own ids ("byg") or the first channel set to 1 ("kontext").
    The library's `flux_velocity` (diffusers' FLUX, same file) agrees within float error (two implementations)."""
    diffs = comfy.run_script("flux_by_hand.py", str(zoo.flux["transformer"]))
    print(diffs)
    assert diffs["latent_shape"] == [1, 16, 6, 8]
    for positions in ("byg", "kontext"):
        assert diffs[f"{positions}/scale"] > 0.1
        assert diffs[f"{positions}/vs_no_source"] > 1e-3  # the source tokens change the prediction
        assert diffs[positions] == 0.0, (positions, diffs)
        assert diffs[f"{positions}/vs_library"] < 1e-4, (positions, diffs)
    assert diffs["byg_vs_kontext"] > 1e-4  # and their ids do too


def _graph(zoo) -> dict:
    """FLUX.1-dev + its ByG LoRA, prompts, the example picture fitted to 64x48 and VAE Encoded, the ByG node in
    both position modes, KSampler (2 steps), VAE Decode, Save Image."""
    flux = zoo.flux
    g = {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": flux["transformer"].name,
                                                        "weight_dtype": "default"}},
        "lora": {"class_type": "LoraLoaderModelOnly", "inputs": {
            "model": ["unet", 0], "lora_name": "byg_flux_lora.safetensors", "strength_model": 1.0}},
        "clip": {"class_type": "VPETest_TinyDualCLIPLoader", "inputs": {
            "clip_name1": flux["clip_l"].name, "clip_name2": flux["t5xxl"].name, "type": "flux"}},
        "vae": {"class_type": "VPETest_TinyVAELoader", "inputs": {"vae_name": flux["vae"].name}},
        "text": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": "make the car blue"}},
        "pos": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["text", 0], "guidance": 3.5}},
        "neg": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["text", 0]}},
        "image": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "fit": {"class_type": "VPE_FitImageForWan", "inputs": {"image": ["image", 0], "max_side": 64,
                                                               "size_mode": "resize"}},
        "source": {"class_type": "VAEEncode", "inputs": {"pixels": ["fit", 0], "vae": ["vae", 0]}},
    }
    for positions in ("byg", "kontext"):
        g[f"byg_{positions}"] = {"class_type": "VPE_ByGImageSourceTokens", "inputs": {
            "model": ["lora", 0], "source": ["source", 0], "positions": positions}}
        g[f"sample_{positions}"] = {"class_type": "KSampler", "inputs": {
            "model": [f"byg_{positions}", 0], "positive": ["pos", 0], "negative": ["neg", 0],
            "latent_image": [f"byg_{positions}", 1], "seed": 3, "steps": 2, "cfg": 1.0, "sampler_name": "euler",
            "scheduler": "simple", "denoise": 1.0}}
        g[f"decode_{positions}"] = {"class_type": "VAEDecode", "inputs": {"samples": [f"sample_{positions}", 0],
                                                                         "vae": ["vae", 0]}}
        g[f"save_{positions}"] = {"class_type": "SaveImage", "inputs": {"images": [f"decode_{positions}", 0],
                                                                       "filename_prefix": f"vpe/byg_{positions}"}}
    return g


def test_native_flux_byg_graph_edits_the_picture_at_its_size(comfy, zoo):
    """The native ByG image graph on core's loaders and sampler runs and saves the edit at the fitted source's size
    (70x50 -> 64x48); the two position modes give different pictures."""
    history = comfy.run(_graph(zoo))
    pictures = {}
    for positions in ("byg", "kontext"):
        (saved,) = history["outputs"][f"save_{positions}"]["images"]
        with Image.open(comfy.base / "output" / saved["subfolder"] / saved["filename"]) as picture:
            pictures[positions] = picture.convert("RGB")
        assert pictures[positions].size == (64, 48)
    assert pictures["byg"].tobytes() != pictures["kontext"].tobytes()
    info = history["outputs"]["byg_byg"]["text"][0]
    assert "12 tokens after the 12 noisy ones" in info


# ---------------------------------------------------------------------------------------------- LoRA on FLUX
FLUX_SPLITS = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
               "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}


def _flux_pairs(zoo) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """A rank-4 LoRA (alpha 4) on every fused qkv and linear1, on a projection and on the final layer's
    modulation (BFL names; the final layer's rows are (shift, scale) there): {BFL module: (down, up, alpha)}."""
    gen, pairs = torch.Generator().manual_seed(11), {}
    with safe_open(str(zoo.flux["transformer"]), "pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
            if key.endswith((".qkv.weight", ".linear1.weight", "0.img_attn.proj.weight",
                             "final_layer.adaLN_modulation.1.weight")):
                out_dim, in_dim = f.get_slice(key).get_shape()
                pairs[key[:-len(".weight")]] = (0.1 * torch.randn(4, in_dim, generator=gen),
                                                0.1 * torch.randn(out_dim, 4, generator=gen), 4.0)
    return pairs


def _flux_layouts(zoo) -> dict[str, tuple[dict, bool]]:
    """The same deltas as files: name -> (tensors, whether core's LoraLoaderModelOnly reads them)."""
    pairs = _flux_pairs(zoo)
    kohya = {f"lora_unet_{m.replace('.', '_')}.{n}": t for m, (d, u, a) in pairs.items()
             for n, t in (("lora_down.weight", d), ("lora_up.weight", u), ("alpha", torch.tensor(a)))}
    split = {}  # diffusers names: each double block's fused qkv as its three projections (rows of `up`)
    for m, (d, u, _) in pairs.items():
        block, _, rest = m.partition(".")[2].partition(".")
        if m.startswith("double_blocks.") and rest in FLUX_SPLITS:
            for name, rows in zip(FLUX_SPLITS[rest], u.chunk(3)):
                stem = f"transformer.transformer_blocks.{block}.{name}"
                split.update({f"{stem}.lora_A.weight": d, f"{stem}.lora_B.weight": rows})
    return {"kohya_bfl": (kohya, True),
            "diffusers_split": (split, True),
            "peft_adapter_names": ({k.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default."): v
                                    for k, v in split.items()}, True),
            "peft_saved_model": ({k.replace("transformer.", "base_model.model.", 1): v for k, v in split.items()}, False)}


def _save_flux(comfy, zoo, name: str, loader: str | None, lora_file: str | None = None, strength: float = 0.8):
    """The FLUX transformer with a LoRA applied by `loader` (core's or ours), saved by ModelSave: its tensors."""
    g = {"unet": {"class_type": "UNETLoader", "inputs": {"unet_name": zoo.flux["transformer"].name,
                                                         "weight_dtype": "default"}}}
    model = ["unet", 0]
    if loader:
        g["lora"] = {"class_type": loader, "inputs": {"model": model, "lora_name": lora_file,
                                                      "strength_model": strength}}
        model = ["lora", 0]
    g["save"] = {"class_type": "ModelSave", "inputs": {"model": model, "filename_prefix": f"vpe_flux/{name}"}}
    history = comfy.run(g)
    sd = load_file(str(max((comfy.base / "output" / "vpe_flux").glob(f"{name}_*.safetensors"))))
    prefix = next(k for k in sd if k.endswith("img_in.weight"))[:-len("img_in.weight")]
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}, history


@pytest.mark.parametrize("layout", ["kohya_bfl", "diffusers_split", "peft_adapter_names", "peft_saved_model"])
def test_native_lora_on_flux_equals_core_or_loads_what_core_drops(comfy, zoo, layout):
    """Our loader on ComfyUI's FLUX: the hand-merged weights (fused qkv and linear1 row ranges, the final layer's
    swapped rows), the same weights as core's LoraLoaderModelOnly where core reads the file, and the keys of a
    PEFT model saved whole (`base_model.model.`) that core drops."""
    tensors, core_reads = _flux_layouts(zoo)[layout]
    name = f"vpe_flux_{layout}.safetensors"
    save_file({k: v.clone().contiguous() for k, v in tensors.items()}, comfy.base / "models" / "loras" / name)
    base, _ = _save_flux(comfy, zoo, "base", None)
    ours, history = _save_flux(comfy, zoo, f"ours_{layout}", "VPE_LoraLoaderModelOnly", name)
    core, _ = _save_flux(comfy, zoo, f"core_{layout}", "LoraLoaderModelOnly", name)
    pairs = _flux_pairs(zoo)
    if layout != "kohya_bfl":
        pairs = {m: v for m, v in pairs.items() if m.startswith("double_blocks.") and m.endswith(".qkv")}
    for key in ours:
        module = key[:-len(".weight")]
        if module in pairs:
            down, up, alpha = pairs[module]
            want = base[key] + 0.8 * (alpha / down.shape[0]) * (up @ down)
            assert (ours[key] - want).abs().max() < 1e-6, key  # the hand merge
        else:
            assert torch.equal(ours[key], base[key]), key
    if core_reads:
        assert max((ours[k] - core[k]).abs().max().item() for k in ours) < 1e-6
    else:  # core's loader drops every key of this layout
        assert all(torch.equal(core[k], base[k]) for k in core)
    report = history["outputs"]["lora"]["text"][0]
    modules = sum(1 for k in tensors if k.endswith(".lora_down.weight") or ".lora_A." in k)
    assert f"{modules} of its {modules} modules" in report, report
    assert ("ComfyUI's own LoRA loader reads 0" in report) == (not core_reads)


def test_native_lora_on_flux_refuses_a_wan_lora(comfy, zoo):
    g = {"unet": {"class_type": "UNETLoader", "inputs": {"unet_name": zoo.flux["transformer"].name,
                                                         "weight_dtype": "default"}},
         "lora": {"class_type": "VPE_LoraLoaderModelOnly", "inputs": {
             "model": ["unet", 0], "lora_name": zoo.file("lightning_high").name, "strength_model": 1.0}},
         "save": {"class_type": "ModelSave", "inputs": {"model": ["lora", 0], "filename_prefix": "vpe_flux/x"}}}
    history = comfy.run(g, expect_error=True)
    error = next(m[1] for m in history["status"]["messages"] if m[0] == "execution_error")["exception_message"]
    assert "FLUX, 2 double and" in error and "Wan" in error, error
