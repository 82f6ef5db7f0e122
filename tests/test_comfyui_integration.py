"""The pack inside a real ComfyUI server (the session's `comfy` fixture: see `comfy_host`).

Reads /object_info, runs an IF-Edit graph on the pack's own loaders and every shipped workflow's API twin through
/prompt (real LoadImage / LoadVideo / CreateVideo / SaveVideo; a small clip in input/), and checks the saved pictures'
sizes and the saved videos' frame counts, sizes and frame rates.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from comfy_host import on_zoo, with_av

REPO = Path(__file__).resolve().parent.parent


def test_pack_loads_in_comfyui_without_errors(comfy):
    info = comfy.get("/object_info")
    ours = {k: v for k, v in info.items() if k.startswith("VPE_")}
    assert {"VPE_WanModelLoader", "VPE_TemporalLatentDropout", "VPE_LoraLoaderModelOnly"} <= set(ours)
    failed = [line for line in comfy.log_tail(10**6).splitlines() if "IMPORT FAILED" in line]
    assert not failed
    for node_id, node in ours.items():
        assert node["category"].startswith("VideoPriorEdit/")
        for name, spec in node["input"]["required"].items():
            assert spec[1].get("tooltip"), (node_id, name)


def test_loader_dropdowns_list_the_tiny_zoo(comfy, zoo):
    node = comfy.get("/object_info/VPE_WanModelLoader")["VPE_WanModelLoader"]
    required = node["input"]["required"]
    assert zoo.file("wan22_i2v_high").name in required["model"][1]["options"]
    assert zoo.file("umt5").name in required["text_encoder"][1]["options"]
    assert required["clip_vision"][1]["options"][0] == "none"
    assert node["output"] == ["VPE_WAN_MODELS"]
    loras = comfy.get("/object_info/VPE_LoraLoaderModelOnly")["VPE_LoraLoaderModelOnly"]["input"]["required"]
    assert zoo.file("lightning_high").name in loras["lora_name"][1]["options"]


def test_if_edit_graph_runs_in_comfyui(comfy, zoo):
    from PIL import Image

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
    history = comfy.run(prompt)
    edited = history["outputs"]["6"]["images"]
    frames = history["outputs"]["7"]["images"]
    assert len(edited) == 1 and len(frames) == 9  # 33 frames; TLD K=3 keeps latents [0, 3, 6] -> 9 frames
    with Image.open(comfy.base / "output" / edited[0]["filename"]) as picture:
        assert picture.size == (64, 48)  # 70x50 resized to multiples of 16


WORKFLOWS = sorted(p for p in (REPO / "workflows" / "api").glob("*.json"))
EDITORS = {"VPE_TailFrameEditor", "VPE_IFEditImageToVideo", "VPE_StillVideoRefiner", "VPE_ByGImageEdit",
           "VPE_ByGVideoEdit", "VPE_ImVideoEditVideoEdit", "VPE_TemporalLatentDropout", "VPE_IFEditSampler",
           "VPE_ChronoEditTemporalReasoning", "VPE_ByGSourceTokens",
           "VPE_ImVideoEditAdapter", "VPE_ByGImageSourceTokens"}  # the nodes that report on their run (ui.text)
VIDEO_FRAMES = {"ByG video edit (Wan2.2-T2V LoRAs)": 9,  # the 10-frame source cut to 4k+1
                "ImVideoEdit video edit (Wan2.1-T2V adapter)": 9}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_shipped_workflow_runs_in_comfyui(comfy, path):
    from PIL import Image

    prompt = on_zoo(json.loads(path.read_text()), comfy)
    history = comfy.run(prompt)
    files = [img for out in history["outputs"].values() for img in out.get("images", []) + out.get("video", [])
             if img.get("type") == "output"]  # not the nodes' small previews (type "temp")
    assert files, history["outputs"]
    videos = [img for img in files if img["filename"].endswith((".mp4", ".webm", ".mkv", ".mov"))]
    assert bool(videos) == (path.stem in VIDEO_FRAMES), files  # the video workflows end in SaveVideo
    for img in files:
        found = comfy.base / "output" / img.get("subfolder", "") / img["filename"]
        if found.suffix in (".mp4", ".webm", ".mkv", ".mov"):
            # the 70x50 clip resized to multiples of 16, at the source's 12 fps (the editor's frame-rate output, not
            # CreateVideo's stored 16)
            assert _video_shape(comfy, found) == (VIDEO_FRAMES[path.stem], 64, 48, 12.0)
            assert _audio_seconds(comfy, found) == pytest.approx(10 / 12, abs=0.1)  # the source's sound kept
            continue
        with Image.open(found) as picture:
            assert picture.size == (64, 48)  # the 70x50 input resized to multiples of 16
    editors = [node for node, spec in prompt.items() if spec["class_type"] in EDITORS]
    assert editors, "no editor node in the workflow"
    for node in editors:  # ui.text: the report the web extension (web/js/node_report.js) shows on the node
        text = history["outputs"].get(node, {}).get("text")
        assert text and all(isinstance(t, str) and t for t in text), (prompt[node]["class_type"], history["outputs"])


def _video_shape(comfy, path: Path) -> tuple[int, int, int, float]:
    """(frames, width, height, frames per second) of a saved video."""
    out = with_av(comfy.python, """
import sys, av
with av.open(sys.argv[1]) as container:
    rate = container.streams.video[0].average_rate
    frames = list(container.decode(video=0))
print(len(frames), frames[0].width, frames[0].height, float(rate))
""", str(path))
    frames, width, height, rate = out.split()
    return int(frames), int(width), int(height), float(rate)


def _audio_seconds(comfy, path: Path) -> float:
    """Length of a saved video's sound track (0 without one)."""
    out = with_av(comfy.python, """
import sys, av
with av.open(sys.argv[1]) as container:
    if not container.streams.audio:
        print(0.0)
    else:
        print(sum(f.samples for f in container.decode(audio=0)) / container.streams.audio[0].rate)
""", str(path))
    return float(out)


def test_comfyui_serves_the_node_report_extension(comfy):
    scripts = comfy.get("/extensions")
    assert any(s.endswith("/node_report.js") for s in scripts), scripts
    ours = next(s for s in scripts if s.endswith("/node_report.js"))
    with urllib.request.urlopen(comfy.url + ours, timeout=30) as r:
        assert b'startsWith("VPE_")' in r.read()


def test_core_schema_snapshot_is_the_running_comfyuis(comfy):
    """workflows/schemas/core_nodes.json (what workflows/build.py writes the shipped workflows against) is what the
    ComfyUI the tests run serves for those nodes."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("vpe_build", REPO / "workflows" / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    snapshot = json.loads((REPO / "workflows" / "schemas" / "core_nodes.json").read_text())
    names = [name for name in snapshot if not name.startswith("_")]
    live = build.core_snapshot(comfy.get("/object_info"), names)
    stale = [name for name in names if live[name] != snapshot[name]]
    assert not stale, f"run python workflows/build.py --schemas-from <ComfyUI URL> ({stale} changed)"


def test_cancel_stops_an_own_loader_edit_quickly(comfy, zoo):
    """ComfyUI's Cancel (POST /interrupt) reaches inside the pack's long stages: the run stops within a second."""
    import time

    from comfy_host import source_image

    source_image().resize((512, 384)).save(comfy.base / "input" / "vpe_large.png")  # a long run: 512x384 x 121
    name = lambda key: zoo.file(key).name
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "vpe_large.png"}},
        "2": {"class_type": "VPE_WanModelLoader", "inputs": {
            "model": name("wan22_i2v_high"), "model_low_noise": name("wan22_i2v_low"), "text_encoder": name("umt5"),
            "vae": name("vae"), "clip_vision": "none", "precision": "fp32", "weight_storage": "default",
            "placement": "one_expert", "vae_tiling": False}},
        "3": {"class_type": "VPE_IFEditImageToVideo", "inputs": {
            "wan_models": ["2", 0], "image": ["1", 0], "prompt": "a slow one", "negative_prompt": "", "frames": 121,
            "steps": 8, "cfg_high_noise": 1.0, "cfg_low_noise": 1.0, "shift": 5.0, "scheduler": "euler",
            "seed": 3, "temporal_latent_dropout": False, "tld_k": 3, "tld_threshold": 0.9, "tld_keep_last": False,
            "tld_rope": "original", "max_side": 512}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 1]}},
    }
    prompt_id = comfy.post("/prompt", {"prompt": prompt, "client_id": "vpe-test"})["prompt_id"]
    time.sleep(4)  # the run is under way (loading, encoding or sampling)
    comfy.interrupt()
    pressed = time.monotonic()
    while time.monotonic() - pressed < 60:
        history = comfy.get(f"/history/{prompt_id}").get(prompt_id)
        if history and history.get("status", {}).get("completed") is not None:
            break
        time.sleep(0.1)
    took = time.monotonic() - pressed
    assert history["status"]["status_str"] != "success"
    assert any(m[0] == "execution_interrupted" for m in history["status"]["messages"]), history["status"]
    assert took < 2.0, f"Cancel took {took:.1f} s"


def test_only_the_workflows_are_templates_each_with_a_thumbnail(comfy):
    """ComfyUI's template browser lists exactly the shipped workflows (no schema snapshot, no API twins), under their
    readable names, and serves each file and its thumbnail."""
    from urllib.parse import quote

    listed = comfy.get("/api/workflow_templates")["comfyui-videoprior-edit"]
    shipped = sorted(p.stem for p in (REPO / "example_workflows").glob("*.json"))
    assert sorted(listed) == shipped and len(shipped) == 7
    for name in listed:
        base = f"/api/workflow_templates/comfyui-videoprior-edit/{quote(name)}"
        assert comfy.get(base + ".json")["nodes"]
        with urllib.request.urlopen(comfy.url + base + ".jpg", timeout=30) as r:
            assert r.read(3) == b"\xff\xd8\xff"  # a JPEG


def test_every_pack_node_has_a_help_page_served(comfy):
    """ComfyUI's node library fetches /extensions/<pack>/docs/<node id>.md: every pack node has one, with its inputs."""
    ours = [k for k in comfy.get("/object_info") if k.startswith("VPE_")]
    assert ours
    for node_id in ours:
        with urllib.request.urlopen(f"{comfy.url}/extensions/comfyui-videoprior-edit/docs/{node_id}.md",
                                    timeout=30) as r:
            page = r.read().decode()
        assert page.startswith("# ") and f"`{node_id}`" in page and "## Inputs" in page, node_id
