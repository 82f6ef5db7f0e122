"""Model folders: where a model name points (ComfyUI-style `models/` tree, or absolute paths)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ModelFileError

# Each kind of model and the sub-folders ComfyUI looks in for it.
KINDS = {
    "diffusion_models": ("diffusion_models", "unet"),
    "text_encoders": ("text_encoders", "clip"),
    "vae": ("vae",),
    "clip_vision": ("clip_vision",),
    "loras": ("loras",),
    "LLM": ("LLM",),
}
WEIGHT_SUFFIXES = (".safetensors", ".sft", ".gguf")  # GGUF: diffusion models only (the loaders say so)


def _is_model_folder(p: Path) -> bool:
    return any((p / f).is_file() for f in ("config.json", "model_index.json"))


def list_models_in(folder: Path) -> list[str]:
    """Weight files and model folders (diffusers/official layouts, listed whole) under `folder`, as relative names."""
    names = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        here = Path(dirpath)
        if here != Path(folder) and _is_model_folder(here):
            names.append(here.relative_to(folder).as_posix())
            dirnames.clear()  # its shards and sub-folders are one model
            continue
        names += [(here / f).relative_to(folder).as_posix() for f in filenames if f.endswith(WEIGHT_SUFFIXES)]
    return sorted(names)


class ModelFolders:
    """A plain `models/` tree laid out like ComfyUI's (diffusion_models, text_encoders, vae, ...)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def bases(self, kind: str) -> list[Path]:
        """The folders searched for one kind of model, in order."""
        return [self.root / sub for sub in KINDS[kind]]

    def list(self, kind: str) -> list[str]:
        return sorted({n for base in self.bases(kind) for n in list_models_in(base)})

    def path(self, kind: str, name: str) -> Path:
        """Full path of `name` (a name inside the kind's folders, or an absolute path)."""
        p = Path(name).expanduser()
        if p.is_absolute():
            if p.exists():
                return p
            raise ModelFileError(f"Model path does not exist: {p}", "Check the path.")
        bases = self.bases(kind)
        for base in bases:
            if (base / name).exists():
                return base / name
        where = bases[0] if bases else self.root / KINDS[kind][0]
        raise ModelFileError(
            f"Model '{name}' not found in {where}.",
            f"Put the file in {where} (`videoprior-edit models check --models <models folder>` says where each "
            "file comes from); in ComfyUI, press 'r' afterwards to refresh the lists.")
