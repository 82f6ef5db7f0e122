"""Node ids and inputs that left the pack, and what replaces them: ComfyUI's NodeReplace opens an old saved
workflow with the new node in place (the frontend offers the swap in its missing-nodes panel) and rewrites an old
API prompt before it runs. Every id in workflows/schemas/pack_api.json that the pack no longer has must be here
(tests/test_node_api.py)."""

from __future__ import annotations

from comfy_api.latest import io


def _same_inputs(*names: str) -> list[dict]:
    return [{"new_id": name, "old_id": name} for name in names]


REPLACEMENTS = [  # io.NodeReplace arguments
    # 2026-12: the native adapter node is the ImVideoEdit node inside ComfyUI; "Native" left its id.
    {"new_node_id": "VPE_ImVideoEditAdapter", "old_node_id": "VPE_ImVideoEditAdapterNative",
     "old_widget_ids": ["adapter"], "input_mapping": _same_inputs("model", "adapter", "source")},
]


async def register(api) -> bool:
    """Register every replacement with a ComfyUI that has NodeReplace; an older one (no `io.NodeReplace` or no
    `node_replacement` registry) starts without them."""
    registry = getattr(api, "node_replacement", None)
    if registry is None or not hasattr(io, "NodeReplace"):
        return False
    for replacement in REPLACEMENTS:
        await registry.register(io.NodeReplace(**replacement))
    return True
