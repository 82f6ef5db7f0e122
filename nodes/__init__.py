"""ComfyUI nodes of VideoPrior Edit (V3 schema, `comfy_api.latest`): thin adapters over the `videoprior_edit` library.

ComfyUI calls `comfy_entrypoint` (the pack's `__init__.py` re-exports it), which returns the extension: its node list,
and on load the NodeReplace entries for ids that left the pack (`replacements.py`).
"""

from comfy_api.latest import ComfyAPI, ComfyExtension

from . import (
    byg,
    host,
    if_edit,
    imvideoedit,
    loaders,
    lora,
    native,
    replacements,
    rewrite,
    scpr,
    video4edit,
)

NODES = [node for module in (native, loaders, lora, if_edit, rewrite, scpr, video4edit, imvideoedit, byg)
         for node in module.NODES]


def nodes_by_id() -> dict:
    """{node id: node class}. Builds every schema (listing the model folders), so it is not done at import: ComfyUI
    builds them itself when it loads the pack."""
    return {node.GET_SCHEMA().node_id: node for node in NODES}


for _node in NODES:  # warnings and LoRA summaries shown on the node, Cancel inside long stages (see host.reported)
    if not getattr(_node.execute, "vpe_reported", False):
        _node.execute = classmethod(host.reported(_node.execute.__func__))


class VideoPriorEdit(ComfyExtension):
    async def on_load(self) -> None:
        await replacements.register(ComfyAPI())

    async def get_node_list(self) -> list:
        return list(NODES)


async def comfy_entrypoint() -> VideoPriorEdit:
    return VideoPriorEdit()
