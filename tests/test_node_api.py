"""The pack's node ids and inputs are a public API (saved workflows hold them): the running ComfyUI's /object_info
keeps every shipped node's inputs in order with their types (workflows/schemas/pack_api.json), and an id that left is
migrated by a NodeReplace, in the API (the server rewrites an old prompt) as in the frontend (tests/test_frontend.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import comfy_host
import pytest

REPO = Path(__file__).resolve().parent.parent
SHIPPED = {k: v for k, v in json.loads((REPO / "workflows" / "schemas" / "pack_api.json").read_text()).items()
           if not k.startswith("_")}
SAVED = REPO / "tests" / "saved_workflows"


def _inputs(info: dict) -> dict:
    """{input: {type, section, control_after_generate}} in widget order, as pack_api.json records them."""
    out = {}
    for section in ("required", "optional"):
        for name in info["input_order"].get(section, []):
            spec = info["input"][section][name]
            entry = {"type": "COMBO" if isinstance(spec[0], list) else spec[0], "section": section}
            if len(spec) > 1 and spec[1].get("control_after_generate"):
                entry["control_after_generate"] = True
            out[name] = entry
    return out


def _replacements(comfy) -> dict:
    """The server's NodeReplace entries; a ComfyUI without them (before NodeReplace) cannot migrate ids that left."""
    if not comfy.get("/features").get("node_replacements"):
        pytest.skip("this ComfyUI has no node replacements (COMFYUI_PATH names an older one)")
    return comfy.get("/node_replacements")


def test_every_shipped_node_keeps_its_inputs_or_is_replaced(comfy):
    live = {k: v for k, v in comfy.get("/object_info").items() if k.startswith("VPE_")}
    replacements = _replacements(comfy)
    assert set(live) <= set(SHIPPED), f"add new nodes to workflows/schemas/pack_api.json: {set(live) - set(SHIPPED)}"
    for node_id, shipped in SHIPPED.items():
        if node_id in live:
            now = _inputs(live[node_id])
            assert list(now)[:len(shipped["inputs"])] == list(shipped["inputs"]), node_id  # same names, same order
            assert {k: now[k] for k in shipped["inputs"]} == shipped["inputs"], node_id  # same types and sections
            assert all(v["section"] == "optional" for k, v in now.items() if k not in shipped["inputs"]), node_id
            assert live[node_id]["output"][:len(shipped["outputs"])] == shipped["outputs"], node_id
            continue
        (replace,) = replacements.get(node_id) or [None]
        assert replace, f"{node_id} left the pack without a NodeReplace (nodes/replacements.py)"
        new = SHIPPED[replace["new_node_id"]]
        assert replace["new_node_id"] in live
        mapped = {m["old_id"]: m["new_id"] for m in replace["input_mapping"] if "old_id" in m}
        assert set(mapped) == set(shipped["inputs"]) and set(mapped.values()) <= set(new["inputs"]), node_id
        widgets = [k for k, v in shipped["inputs"].items()
                   if v["type"] in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")]
        assert replace["old_widget_ids"] == widgets, node_id  # widgets_values are positional
        outputs = {m["old_idx"]: m["new_idx"] for m in replace["output_mapping"] or []}
        assert [new["outputs"][outputs.get(i, i)] for i in range(len(shipped["outputs"]))] == shipped["outputs"]


def test_an_old_api_prompt_with_a_retired_id_runs(comfy):
    """The API twin of the ImVideoEdit workflow as shipped before VPE_ImVideoEditAdapterNative was renamed: ComfyUI
    applies the pack's NodeReplace when the prompt is queued, and the graph runs and reports as the shipped one."""
    _replacements(comfy)
    prompt = comfy_host.on_zoo(json.loads((SAVED / "imvideoedit_before_rename_api.json").read_text()), comfy)
    (old,) = [k for k, v in prompt.items() if v["class_type"] == "VPE_ImVideoEditAdapterNative"]
    history = comfy.run(prompt)
    assert history["prompt"][2][old]["class_type"] == "VPE_ImVideoEditAdapter"  # what ran
    assert "ImVideoEdit adapter for" in history["outputs"][old]["text"][0]
    shipped = json.loads((REPO / "workflows" / "api" / "ImVideoEdit video edit (Wan2.1-T2V adapter).json").read_text())
    assert {k: v["inputs"] for k, v in shipped.items()} == {
        k: v["inputs"] for k, v in json.loads((SAVED / "imvideoedit_before_rename_api.json").read_text()).items()}

