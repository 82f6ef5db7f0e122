"""The pack inside a real ComfyUI server (skipped unless COMFYUI_PATH points to a ComfyUI checkout).

Setup (outside this repository): a ComfyUI clone, its requirements and this pack's requirements in the Python
that runs it (COMFYUI_PYTHON, default: this interpreter). The test links the pack into custom_nodes/ of a
run inside a temporary --base-directory whose models/ is the tiny zoo (the ComfyUI checkout is not touched),
starts `main.py --cpu` on a free loopback port, reads /object_info and runs the IF-Edit graph through /prompt.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

COMFYUI = os.environ.get("COMFYUI_PATH")
pytestmark = pytest.mark.skipif(not COMFYUI, reason="COMFYUI_PATH is not set")
REPO = Path(__file__).resolve().parent.parent


# Real file names the shipped workflows use -> the tiny zoo model that stands in for it.
STAND_INS = {"chrono_edit_14B_fp16.safetensors": "wan21_i2v", "chronoedit_distill_lora.safetensors": "lightning_high",
             "wan2.2_i2v_high_noise_14B_fp16.safetensors": "wan22_i2v_high",
             "wan2.2_i2v_low_noise_14B_fp16.safetensors": "wan22_i2v_low",
             "wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors": "lightning_high",
             "wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors": "lightning_low",
             "wan2.1_t2v_1.3B_fp16.safetensors": "wan21_t2v", "umt5_xxl_fp16.safetensors": "umt5",
             "wan_2.1_vae.safetensors": "vae", "clip_vision_h.safetensors": "clip_vision"}


def _models_tree(zoo, root: Path) -> None:
    """The zoo's models as a ComfyUI models folder, plus the real file names linked to their tiny stand-ins."""
    for folder in zoo.models.iterdir():
        (root / folder.name).mkdir(parents=True)
        for item in folder.iterdir():
            (root / folder.name / item.name).symlink_to(item, target_is_directory=item.is_dir())
    for real, key in STAND_INS.items():
        target = zoo.file(key)
        link = root / target.parent.name / real
        if not link.exists():
            link.symlink_to(target)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(zoo, tmp_path_factory):
    comfy = Path(COMFYUI)
    base = tmp_path_factory.mktemp("comfy_base")  # keeps the ComfyUI checkout untouched
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "comfyui-videoprior-edit").symlink_to(REPO, target_is_directory=True)
    _models_tree(zoo, base / "models")
    (base / "input").mkdir()
    _source().save(base / "input" / "vpe_source.png")
    _source().save(base / "input" / "example.png")
    port = _free_port()
    log = tmp_path_factory.mktemp("comfy") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [os.environ.get("COMFYUI_PYTHON", sys.executable), "main.py", "--cpu", "--listen", "127.0.0.1",
             "--port", str(port), "--base-directory", str(base), "--disable-api-nodes"],
            cwd=comfy, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):  # bounded: at most ~4 minutes
            if proc.poll() is not None:
                pytest.fail("ComfyUI exited:\n" + log.read_text()[-3000:])
            try:
                urllib.request.urlopen(url + "/object_info/VPE_WanModelLoader", timeout=2)
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("ComfyUI did not answer in time:\n" + log.read_text()[-3000:])
        yield url, log, base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def test_pack_loads_in_comfyui_without_errors(server):
    url, log, _ = server
    info = _get(url + "/object_info")
    ours = {k: v for k, v in info.items() if k.startswith("VPE_")}
    assert "VPE_WanModelLoader" in ours
    failed = [line for line in log.read_text().splitlines() if "IMPORT FAILED" in line and "videoprior" in line]
    assert not failed
    for node_id, node in ours.items():
        assert node["category"].startswith("VideoPriorEdit/")
        for name, spec in node["input"]["required"].items():
            assert spec[1].get("tooltip"), (node_id, name)


def test_loader_dropdowns_list_the_tiny_zoo(server, zoo):
    url, _, _ = server
    node = _get(url + "/object_info/VPE_WanModelLoader")["VPE_WanModelLoader"]
    required = node["input"]["required"]
    assert zoo.file("wan22_i2v_high").name in required["model"][0]
    assert zoo.file("umt5").name in required["text_encoder"][0]
    assert required["clip_vision"][0][0] == "none"
    assert node["output"] == ["VPE_WAN_MODELS"]


def _source():
    import numpy as np
    from PIL import Image

    return Image.fromarray((np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8))


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.loads(r.read())


def test_if_edit_graph_runs_in_comfyui(server, zoo):
    from PIL import Image

    url, log, base = server
    name = lambda key: zoo.file(key).name
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "vpe_source.png"}},
        "2": {"class_type": "VPE_WanModelLoader", "inputs": {
            "model": name("wan22_i2v_high"), "model_low_noise": name("wan22_i2v_low"), "text_encoder": name("umt5"),
            "vae": name("vae"), "clip_vision": "none", "precision": "fp32", "weight_storage": "default",
            "placement": "one_expert", "vae_tiling": False}},
        "3": {"class_type": "VPE_WanLoraLoader", "inputs": {"wan_models": ["2", 0], "lora": name("lightning_high"),
                                                            "strength": 1.0, "expert": "high"}},
        "4": {"class_type": "VPE_WanLoraLoader", "inputs": {"wan_models": ["3", 0], "lora": name("lightning_low"),
                                                            "strength": 1.0, "expert": "low"}},
        "5": {"class_type": "VPE_IFEditImageToVideo", "inputs": {
            "wan_models": ["4", 0], "image": ["1", 0], "prompt": "the cat walks out of the frame",
            "negative_prompt": "", "frames": 32, "steps": 8, "cfg_high_noise": 1.0, "cfg_low_noise": 1.0,
            "shift": 5.0, "scheduler": "lightning", "seed": 1, "temporal_latent_dropout": True, "tld_k": 3,
            "tld_threshold": 0.9, "tld_keep_last": False, "tld_rope": "original"}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 1], "filename_prefix": "vpe_edit"}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "vpe_frames"}},
    }
    prompt_id = _post(url + "/prompt", {"prompt": prompt, "client_id": "vpe-test"})["prompt_id"]
    for _ in range(300):  # bounded: at most ~5 minutes
        history = _get(url + f"/history/{prompt_id}").get(prompt_id)
        if history and history.get("status", {}).get("completed") is not None:
            break
        time.sleep(1)
    else:
        pytest.fail("the graph did not finish:\n" + log.read_text()[-3000:])
    assert history["status"]["status_str"] == "success", log.read_text()[-3000:]
    edited = history["outputs"]["6"]["images"]
    frames = history["outputs"]["7"]["images"]
    assert len(edited) == 1 and len(frames) == 9  # 33 frames; TLD K=3 keeps latents [0, 3, 6] -> 9 frames
    with Image.open(base / "output" / edited[0]["filename"]) as picture:
        assert picture.size == (64, 48)  # 70x50 resized to multiples of 16


def _run(url: str, prompt: dict, log: Path, minutes: int = 5) -> dict:
    prompt_id = _post(url + "/prompt", {"prompt": prompt, "client_id": "vpe-test"})["prompt_id"]
    for _ in range(minutes * 60):
        history = _get(url + f"/history/{prompt_id}").get(prompt_id)
        if history and history.get("status", {}).get("completed") is not None:
            assert history["status"]["status_str"] == "success", log.read_text()[-3000:]
            return history
        time.sleep(1)
    pytest.fail("the workflow did not finish:\n" + log.read_text()[-3000:])


WORKFLOWS = sorted(p for p in (REPO / "workflows" / "api").glob("*.json"))


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_shipped_workflow_runs_in_comfyui(server, path):
    from PIL import Image

    url, log, base = server
    prompt = json.loads(path.read_text())
    choices = _get(url + "/object_info/VPE_PromptRewriter")["VPE_PromptRewriter"]["input"]["required"]["local_model"][0]
    llm = next(c for c in choices if c != "none")
    for node in prompt.values():  # tiny-zoo run: small pictures, the zoo's tiny Qwen-VL instead of a VLM server
        if "max_side" in node["inputs"]:
            node["inputs"]["max_side"] = 64
        if node["inputs"].get("backend") == "openai":
            node["inputs"].update(backend="local", local_model=llm)
    history = _run(url, prompt, log)
    saved = [img for out in history["outputs"].values() for img in out.get("images", [])]
    assert saved, history["outputs"]
    for img in saved:
        with Image.open(base / "output" / img.get("subfolder", "") / img["filename"]) as picture:
            assert picture.size == (64, 48)  # the 70x50 input resized to multiples of 16
