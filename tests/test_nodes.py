"""The pack as ComfyUI sees it: import under a folder name, node schema rules, the loader node on the tiny zoo."""

from __future__ import annotations

import ast
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def test_every_node_is_prefixed_categorised_and_tooltipped(pack):
    assert pack.NODE_CLASS_MAPPINGS and pack.NODE_CLASS_MAPPINGS.keys() == pack.NODE_DISPLAY_NAME_MAPPINGS.keys()
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert node_id.startswith("VPE_")
        assert cls.CATEGORY.startswith("VideoPriorEdit/")
        assert callable(getattr(cls, cls.FUNCTION))
        inputs = cls.INPUT_TYPES()
        for section in inputs.values():
            for name, spec in section.items():
                assert isinstance(spec[1].get("tooltip"), str) and len(spec[1]["tooltip"]) > 10, (node_id, name)
        assert len(cls.RETURN_TYPES) == len(getattr(cls, "OUTPUT_TOOLTIPS", cls.RETURN_TYPES))


COMFY_MODULES = {"comfy", "folder_paths", "comfy_extras", "comfy_api", "server", "nodes"}


def comfy_imports(path: Path) -> set[str]:
    """ComfyUI modules a file imports (absolute imports only; the pack's own `..nodes` is relative)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.add((node.module or "").split(".")[0])
    return found & COMFY_MODULES


def test_library_never_imports_comfyui():
    for path in (REPO / "videoprior_edit").rglob("*.py"):
        assert not comfy_imports(path), path


def test_only_the_host_bridge_touches_comfyui():
    for path in (REPO / "nodes").rglob("*.py"):
        assert bool(comfy_imports(path)) == (path.name == "host.py"), path


def test_host_fallbacks_without_comfyui(pack, zoo, monkeypatch):
    host = pack.nodes.host
    assert not host.in_comfyui()
    assert host.device().type in ("cpu", "cuda", "mps")
    monkeypatch.setenv("VPE_MODELS_DIR", str(zoo.models))
    assert "tiny_umt5_xxl_fp32.safetensors" in host.model_choices("text_encoders")
    assert host.model_choices("clip_vision", optional=True)[0] == "none"
    bar = host.Progress(3)
    for _ in range(3):
        bar()
    assert bar._bar.n == 3
    bar.close()


def test_wan_loader_node_loads_the_zoo(pack, zoo, monkeypatch):
    monkeypatch.setenv("VPE_MODELS_DIR", str(zoo.models))
    node = pack.NODE_CLASS_MAPPINGS["VPE_WanModelLoader"]()
    choices = node.INPUT_TYPES()["required"]["model"][0]
    assert zoo.file("wan22_i2v_high").name in choices
    (models,) = node.load(zoo.file("wan22_i2v_high").name, zoo.file("wan22_i2v_low").name,
                          zoo.file("umt5").name, zoo.file("vae").name, "none", "fp32", "default")
    assert models.variant == "wan2.2-i2v-a14b" and models.boundary_ratio == 0.9
    assert models.transformer.dtype == torch.float32 and models.vae.dtype == torch.float32
    (small,) = node.load(zoo.file("wan21_t2v").name, "none", zoo.file("umt5").name, zoo.file("vae").name,
                         "none", "bf16", "fp8_e4m3fn")
    assert small.transformer.blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn


def test_model_folders_are_listed_whole(zoo):
    from videoprior_edit.folders import list_models_in

    assert list_models_in(zoo.root / "official") == ["Wan2.2-I2V-A14B-tiny/high_noise_model",
                                                     "Wan2.2-I2V-A14B-tiny/low_noise_model"]
    assert "Wan2.2-I2V-A14B-tiny" in list_models_in(zoo.root / "diffusers")
    assert not any("/" in n for n in list_models_in(zoo.root / "diffusers"))  # shards are not listed one by one
