"""The pack inside a real ComfyUI server (skipped unless COMFYUI_PATH points to a ComfyUI checkout).

Setup (outside this repository): a ComfyUI clone, its requirements and this pack's requirements in the Python
that runs it (COMFYUI_PYTHON, default: this interpreter). The test links the pack into custom_nodes/ of a
run inside a temporary --base-directory whose models/ is the tiny zoo (the ComfyUI checkout is not touched),
starts `main.py --cpu` on a free loopback port, reads /object_info, runs an IF-Edit graph and every shipped workflow's
API twin through /prompt (real LoadImage / LoadVideo / CreateVideo / SaveVideo; a small clip in input/), and checks the
saved pictures' sizes and the saved videos' frame counts, sizes and frame rates.
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
             "wan_2.1_vae.safetensors": "vae", "clip_vision_h.safetensors": "clip_vision",
             "wan2.2_t2v_high_noise_14B_fp16.safetensors": "wan21_t2v",
             "wan2.2_t2v_low_noise_14B_fp16.safetensors": "wan21_t2v"}
FLUX_STAND_INS = {"flux1-dev.safetensors": "transformer", "clip_l.safetensors": "clip_l",
                  "t5xxl_fp16.safetensors": "t5xxl", "ae.safetensors": "vae"}


def _models_tree(zoo, root: Path) -> None:
    """The zoo's models as a ComfyUI models folder, plus the real file names linked to their tiny stand-ins."""
    for folder in zoo.models.iterdir():
        (root / folder.name).mkdir(parents=True)
        for item in folder.iterdir():
            (root / folder.name / item.name).symlink_to(item, target_is_directory=item.is_dir())
    for real, target in [(r, zoo.file(k)) for r, k in STAND_INS.items()] + \
            [(r, zoo.flux[k]) for r, k in FLUX_STAND_INS.items()]:
        link = root / target.parent.name / real
        if not link.exists():
            link.symlink_to(target)
    _trained_stand_ins(zoo, root / "loras")


def _trained_stand_ins(zoo, loras: Path) -> None:
    """Tiny stand-ins of the files the pack's trainers make (the manifest's 'trained' entries): ByG LoRAs for the
    tiny Wan T2V and FLUX models, and an ImVideoEdit adapter, written with the library's own code."""
    import torch
    from safetensors.torch import save_file

    from videoprior_edit.imvideoedit import create_adapter, save_adapter
    from videoprior_edit.models.wan import load_wan_transformer
    from videoprior_edit.zoo import tiny_lightning_lora

    t2v = load_wan_transformer(zoo.file("wan21_t2v"), dtype="fp32")
    for i, expert in enumerate(("high", "low")):
        save_file(tiny_lightning_lora(t2v, seed=30 + i), loras / f"byg_lora_{expert}_noise.safetensors")
    save_adapter(create_adapter(t2v), loras / "imvideoedit_adapter.safetensors", "fp32")
    from safetensors import safe_open

    gen, flux_lora = torch.Generator().manual_seed(7), {}
    with safe_open(str(zoo.flux["transformer"]), "pt") as f:  # BFL names: a LoRA on every attention qkv
        for key in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
            if key.endswith(".qkv.weight"):
                out_dim, in_dim = f.get_slice(key).get_shape()
                stem = "lora_unet_" + key[: -len(".weight")].replace(".", "_")
                flux_lora[stem + ".lora_down.weight"] = 0.1 * torch.randn(4, in_dim, generator=gen)
                flux_lora[stem + ".lora_up.weight"] = 0.1 * torch.randn(out_dim, 4, generator=gen)
                flux_lora[stem + ".alpha"] = torch.tensor(4.0)
    assert flux_lora, "the tiny FLUX file has no attention qkv weights"
    save_file(flux_lora, loras / "byg_flux_lora.safetensors")


def _with_av(code: str, *args: str) -> str:
    """Run `code` in ComfyUI's Python (which has PyAV: ComfyUI's video nodes need it); returns its stdout."""
    run = subprocess.run([os.environ.get("COMFYUI_PYTHON", sys.executable), "-c", code, *args], capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


def _source_video(path: Path) -> None:
    """A small H.264 clip for LoadVideo: 10 frames of 70x50 noise at 12 fps (not 4k+1: ByG cuts it to 9 frames,
    ImVideoEdit pads it for Wan and cuts the result back to 10; not Wan's 16 fps: the editors pass its rate on)."""
    _with_av("""
import sys, av, numpy as np
rng = np.random.default_rng(1)
with av.open(sys.argv[1], "w") as container:
    stream = container.add_stream("libx264", rate=12)
    stream.width, stream.height, stream.pix_fmt = 70, 50, "yuv420p"
    for i in range(10):
        frame = av.VideoFrame.from_ndarray((rng.random((50, 70, 3)) * 120 + i * 12).astype(np.uint8), format="rgb24")
        container.mux(stream.encode(frame))
    container.mux(stream.encode())
""", str(path))


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
    _source_video(base / "input" / "example.mp4")
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
EDITORS = {"VPE_TailFrameEditor", "VPE_IFEditImageToVideo", "VPE_StillVideoRefiner", "VPE_ByGImageEdit",
           "VPE_ByGVideoEdit", "VPE_ImVideoEditVideoEdit"}  # the nodes that report on their run (ui.text)
VIDEO_FRAMES = {"byg_video_edit_wan22_t2v_lora": 9,  # the 10-frame source cut to 4k+1
                "imvideoedit_spatial_difference_video_edit": 10}  # as many frames as the source


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
    files = [img for out in history["outputs"].values() for img in out.get("images", []) + out.get("video", [])
             if img.get("type") == "output"]  # not the nodes' small previews (type "temp")
    assert files, history["outputs"]
    videos = [img for img in files if img["filename"].endswith((".mp4", ".webm", ".mkv", ".mov"))]
    assert bool(videos) == (path.stem in VIDEO_FRAMES), files  # the video workflows end in SaveVideo
    for img in files:
        found = base / "output" / img.get("subfolder", "") / img["filename"]
        if found.suffix in (".mp4", ".webm", ".mkv", ".mov"):
            # the 70x50 clip resized to multiples of 16, at the source's 12 fps (the editor's frame-rate output, not
            # CreateVideo's stored 16)
            assert _video_shape(found) == (VIDEO_FRAMES[path.stem], 64, 48, 12.0)
            continue
        with Image.open(found) as picture:
            assert picture.size == (64, 48)  # the 70x50 input resized to multiples of 16
    editors = [node for node, spec in prompt.items() if spec["class_type"] in EDITORS]
    assert editors, "no editor node in the workflow"
    for node in editors:  # ui.text: the report the web extension (web/js/node_report.js) shows on the node
        text = history["outputs"].get(node, {}).get("text")
        assert text and all(isinstance(t, str) and t for t in text), (prompt[node]["class_type"], history["outputs"])
    previews = [img for out in history["outputs"].values() for img in out.get("images", []) if img["type"] == "temp"]
    assert previews and all((base / "temp" / img["filename"]).is_file() for img in previews)


def _video_shape(path: Path) -> tuple[int, int, int, float]:
    """(frames, width, height, frames per second) of a saved video."""
    out = _with_av("""
import sys, av
with av.open(sys.argv[1]) as container:
    rate = container.streams.video[0].average_rate
    frames = list(container.decode(video=0))
print(len(frames), frames[0].width, frames[0].height, float(rate))
""", str(path))
    frames, width, height, rate = out.split()
    return int(frames), int(width), int(height), float(rate)


def test_comfyui_serves_the_node_report_extension(server):
    url, _, _ = server
    with urllib.request.urlopen(url + "/extensions", timeout=30) as r:
        scripts = json.loads(r.read())
    assert any(s.endswith("/node_report.js") for s in scripts), scripts
    ours = next(s for s in scripts if s.endswith("/node_report.js"))
    with urllib.request.urlopen(url + ours, timeout=30) as r:
        assert b'startsWith("VPE_")' in r.read()
