"""Shared fixtures: the tiny zoo written once per session, and the pack imported the way ComfyUI imports it."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the pack may touch the Hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_host

# The pack's nodes are V3 nodes: ComfyUI's node API (`comfy_api`) comes from the real ComfyUI tree, at the end of the
# path (pytest also imports the repository's __init__.py, as the package the tests folder sits in). ComfyUI's model
# code does not import in this venv, so the pack's host falls back to plain torch and folders here.
# VPE_COMFY_API_PATH: another tree for this venv's comfy_api, for runs whose servers use an older ComfyUI
# (COMFYUI_PATH), whose comfy_api imports its model code.
COMFYUI = Path(os.environ["VPE_COMFY_API_PATH"]) if os.environ.get("VPE_COMFY_API_PATH") else comfy_host.comfyui_source()
if COMFYUI is not None and str(COMFYUI) not in sys.path:
    sys.path.append(str(COMFYUI))


def assert_same(a, b) -> None:
    """Two modules hold exactly the same tensors (keys, dtypes, values)."""
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    from videoprior_edit.zoo import write_zoo

    return write_zoo(tmp_path_factory.mktemp("zoo"), seed=0)


@pytest.fixture(scope="session")
def pack():
    """The repository folder imported as a package under a folder-like name, as ComfyUI's loader does. Its nodes are
    V3 nodes, so ComfyUI's node API (`comfy_api`, from the real ComfyUI tree) is put on the path; ComfyUI's model code
    is not importable from this venv, so the pack's host falls back to plain torch and folders."""
    if COMFYUI is None:
        pytest.fail("no ComfyUI tree for comfy_api: set COMFYUI_PATH, or put one in ../shared/comfyui/src")
    name = "comfyui-videoprior-edit"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def comfy(zoo, tmp_path_factory):
    """A real ComfyUI server (see `comfy_host`) on CPU with the pack and the test stand-in loaders, the tiny zoo as
    its models (also under the real file names the workflows use) and a picture and a clip in its input/."""
    source = comfy_host.comfyui_source()
    if source is None:
        pytest.skip("no ComfyUI tree: set COMFYUI_PATH, or put one in ../shared/comfyui/src")
    python = comfy_host.comfyui_python()
    root = tmp_path_factory.mktemp("comfyui")
    base = root / "base"
    comfy_host.models_tree(zoo, base / "models")
    (base / "input").mkdir(parents=True)
    for name in ("vpe_source.png", "example.png"):
        comfy_host.source_image().save(base / "input" / name)
    comfy_host.source_video(base / "input" / "example.mp4", python)
    server = comfy_host.ComfyServer(comfy_host.writable_copy(source, root), python, base, root / "server.log")
    try:
        server.start()
        yield server
    finally:
        server.stop()
