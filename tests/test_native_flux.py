"""ByG image editing on ComfyUI's own FLUX MODEL (real ComfyUI, in its own Python: tests/comfy_scripts/, and a graph
through the server of the session's `comfy` fixture)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "comfy_scripts"


def _run(comfy, script: str, *args: str) -> dict:
    done = subprocess.run([comfy.python, str(SCRIPTS / script), str(comfy.source), str(REPO), *args],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_flux_prediction_is_the_model_on_the_concatenated_tokens_built_by_hand(comfy, zoo):
    """The patched MODEL's prediction for the noisy tokens equals the unpatched Flux model run on [noisy, source]
    tokens with the ids built by hand: the noisy tokens' own ids ("byg") or the first channel set to 1 ("kontext").
    The library's `flux_velocity` (diffusers' FLUX, same file) agrees within float error (two implementations)."""
    diffs = _run(comfy, "flux_by_hand.py", str(zoo.flux["transformer"]))
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
