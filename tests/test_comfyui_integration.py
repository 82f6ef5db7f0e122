"""The pack inside a real ComfyUI server (skipped unless COMFYUI_PATH points to a ComfyUI checkout).

Setup (outside this repository): a ComfyUI clone, its requirements and this pack's requirements in the Python
that runs it (COMFYUI_PYTHON, default: this interpreter). The test links the pack into custom_nodes/ of a
run inside a temporary --base-directory whose models/ is the tiny zoo (the ComfyUI checkout is not touched),
starts `main.py --cpu` on a free loopback port and reads /object_info.
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
    (base / "models").symlink_to(zoo.models, target_is_directory=True)
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
        yield url, log
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def test_pack_loads_in_comfyui_without_errors(server):
    url, log = server
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
    url, _ = server
    node = _get(url + "/object_info/VPE_WanModelLoader")["VPE_WanModelLoader"]
    required = node["input"]["required"]
    assert zoo.file("wan22_i2v_high").name in required["model"][0]
    assert zoo.file("umt5").name in required["text_encoder"][0]
    assert required["clip_vision"][0][0] == "none"
    assert node["output"] == ["VPE_WAN_MODELS"]
