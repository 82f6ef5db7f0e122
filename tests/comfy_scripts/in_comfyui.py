"""The start the scripts here share (run with ComfyUI's Python): ComfyUI's modules on CPU from its tree, and this
pack imported as ComfyUI imports a custom-node folder (under a folder-like name, so its `nodes` is not ComfyUI's)."""

import importlib.util
import sys

PACK = "comfyui-videoprior-edit"


def start(tree: str, pack_dir: str):
    """Put ComfyUI's tree first on the path, let it read `--cpu`, and return the imported pack."""
    sys.path.insert(0, tree)
    sys.argv = [sys.argv[0], "--cpu"]  # ComfyUI reads its options from the command line
    import comfy.options

    comfy.options.enable_args_parsing()
    spec = importlib.util.spec_from_file_location(PACK, pack_dir + "/__init__.py", submodule_search_locations=[pack_dir])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[PACK] = pack
    spec.loader.exec_module(pack)
    return pack
