"""The shipped workflows: generated files up to date, every node/widget/link valid, models from the manifest."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from videoprior_edit.manifest import load_manifest
from videoprior_edit.workflow import Graph, check_workflow, ui_to_api, widget_slots

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / "workflows"
EXAMPLES = REPO / "example_workflows"  # the UI files; their API twins: workflows/api/<same name>


def _build_module():
    spec = importlib.util.spec_from_file_location("vpe_workflow_build", WORKFLOWS / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def build(pack):
    return _build_module()


@pytest.fixture(scope="module")
def schemas(build):
    return build.schemas()


def _shipped() -> list[Path]:
    return sorted(EXAMPLES.glob("*.json"))


def test_shipped_files_are_what_the_builder_writes(build, tmp_path):
    written = build.build(tmp_path)
    names = {p.name for p in written if p.suffix == ".json" and p.parent.name == "example_workflows"}
    assert names == {p.name for p in _shipped()} and names
    for path in written:
        shipped = REPO / path.relative_to(tmp_path)
        assert shipped.is_file(), f"{shipped} is missing: run python workflows/build.py"
        if path.suffix == ".json":
            assert json.loads(shipped.read_text()) == json.loads(path.read_text()), f"{shipped} is stale"


@pytest.mark.parametrize("path", _shipped(), ids=lambda p: p.stem)
def test_every_shipped_workflow_is_valid(path, schemas):
    ui = json.loads(path.read_text())
    files = {e["file"].split("/")[-1] for e in load_manifest(trained=True)}  # trained: adapters / ByG LoRAs
    assert check_workflow(ui, schemas, files) == []
    used = {v for n in ui["nodes"] for v in n.get("widgets_values", []) if str(v).endswith(".safetensors")}
    note = " ".join(n["widgets_values"][0] for n in ui["nodes"] if n["type"] == "Note")
    assert used and all(name in note for name in used)  # the note names every model it needs
    assert "GB" in note and "estimate" in note  # and the memory it needs, said to be estimated
    for node in ui["nodes"]:  # ... with each memory setting its loaders offer
        inputs = schemas.get(node["type"], {}).get("input", {})
        spec = {**inputs.get("required", {}), **inputs.get("optional", {})}
        for setting in ("placement", "weight_storage"):
            options = spec[setting][1]["options"] if setting in spec else []  # a V3 combo: ["COMBO", {options}]
            assert all(o in note for o in options if o != "default"), (node["type"], setting)
    assert (path.parent / f"{path.stem}.jpg").is_file()
    assert json.loads((WORKFLOWS / "api" / path.name).read_text()) == ui_to_api(ui, schemas)
    assert all(n["type"].startswith("VPE_") or n["type"] in schemas or n["type"] == "Note" for n in ui["nodes"])


def test_widget_layout_follows_the_frontend(schemas):
    assert [n for n, _ in widget_slots(schemas["LoadImage"])] == ["image", "image#upload"]
    assert [n for n, _ in widget_slots(schemas["LoadVideo"])] == ["file", "file#upload"]
    editor = [n for n, _ in widget_slots(schemas["VPE_IFEditImageToVideo"])]
    assert editor[editor.index("seed") + 1] == "seed#control" and "wan_models" not in editor


def test_converter_and_checks_on_a_small_graph(schemas):
    g = Graph(schemas)
    image = g.node("LoadImage", (0, 0), image="cat.png")
    save = g.node("SaveImage", (400, 0), filename_prefix="x")
    g.link(image, "IMAGE", save, "images")
    g.note("hello", (0, 400))
    ui = g.to_ui()
    assert ui_to_api(ui, schemas) == {"1": {"class_type": "LoadImage", "inputs": {"image": "cat.png"},
                                            "_meta": {"title": "LoadImage"}},
                                      "2": {"class_type": "SaveImage",
                                            "inputs": {"filename_prefix": "x", "images": ["1", 0]},
                                            "_meta": {"title": "SaveImage"}}}
    assert check_workflow(ui, schemas, set()) == []
    editor = g.node("VPE_IFEditImageToVideo", (0, 800), frames=3, scheduler="ddim")
    g.link(image, "MASK", editor, "image")
    problems = " | ".join(check_workflow(g.to_ui(), schemas, {"known.safetensors"}))
    assert "frames: 3 is outside 5..161" in problems and "'ddim' is not one of" in problems
    assert "gives MASK" in problems and "required input wan_models is not connected" in problems
    loader = g.node("VPE_WanModelLoader", (0, 1200), model="missing.safetensors")
    assert "'missing.safetensors' is not in the manifest" in " ".join(check_workflow(g.to_ui(), schemas, set()))
    assert loader["widgets_values"][0] == "missing.safetensors"
    ui["nodes"].append({"id": 99, "type": "NoSuchNode", "inputs": [], "outputs": []})
    assert "unknown node type NoSuchNode" in " ".join(check_workflow(ui, schemas, set()))


def test_checks_on_a_video_graph(schemas):
    """LoadVideo's VIDEO into an editor, its frames and frame rate (FLOAT into CreateVideo's fps widget) out."""
    g = Graph(schemas)
    video = g.node("LoadVideo", (0, 0), file="clip.mp4")
    loader = g.node("VPE_WanModelLoader", (0, 400), model="wan2.1_t2v_1.3B_fp16.safetensors")
    editor = g.node("VPE_ByGVideoEdit", (400, 0), instruction="make it snow")
    make = g.node("CreateVideo", (800, 0), fps=24.0)
    save = g.node("SaveVideo", (1200, 0), filename_prefix="x")
    for src, out, dst, name in ((loader, "wan_models", editor, "wan_models"), (video, "VIDEO", editor, "video"),
                                (editor, "frames", make, "images"), (editor, "frame_rate", make, "fps"),
                                (make, "VIDEO", save, "video")):
        g.link(src, out, dst, name)
    ui = g.to_ui()
    assert check_workflow(ui, schemas, {"wan2.1_t2v_1.3B_fp16.safetensors"}) == []
    api = ui_to_api(ui, schemas)
    assert api["1"] == {"class_type": "LoadVideo", "inputs": {"file": "clip.mp4"},  # not the upload button
                        "_meta": {"title": "LoadVideo"}}
    assert api["3"]["inputs"]["video"] == ["1", 0] and "frames" not in api["3"]["inputs"]
    assert api["4"]["inputs"]["fps"] == ["3", 1]  # the link replaces the widget's stored 24.0
    assert api["5"]["inputs"] == {"filename_prefix": "x", "format": "auto", "format.codec": "auto", "codec": "auto",
                                  "video": ["4", 0]}  # format: a dynamic combo; its option's codec is "format.codec"
    wrong = g.node("SaveImage", (1200, 400), filename_prefix="y")
    parts = g.node("GetVideoComponents", (800, 400))
    g.link(video, "VIDEO", wrong, "images")  # a VIDEO is not an IMAGE batch
    g.link(parts, "fps", g.node("CreateVideo", (1200, 800)), "images")
    problems = " | ".join(check_workflow(g.to_ui(), schemas, {"wan2.1_t2v_1.3B_fp16.safetensors"}))
    assert "LoadVideo gives VIDEO, SaveImage.images takes IMAGE" in problems
    assert "GetVideoComponents gives FLOAT, CreateVideo.images takes IMAGE" in problems
    assert "GetVideoComponents): required input video is not connected" in problems
