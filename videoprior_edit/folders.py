"""Model folders: where a model name points (ComfyUI-style `models/` tree, or absolute paths)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

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
WEIGHT_SUFFIXES = (".safetensors", ".sft")


class ModelResolver(Protocol):
    def list(self, kind: str) -> list[str]: ...
    def path(self, kind: str, name: str) -> Path: ...


def _is_model_folder(p: Path) -> bool:
    return p.is_dir() and any((p / f).is_file() for f in ("config.json", "model_index.json"))


def list_models_in(folder: Path) -> list[str]:
    """Weight files and model folders (diffusers/official layouts) directly or nested under `folder`."""
    if not folder.is_dir():
        return []
    names = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        inside_model = any(_is_model_folder(folder / parent) for parent in rel.parents if parent != Path("."))
        if p.is_file() and p.suffix in WEIGHT_SUFFIXES and not inside_model:
            names.append(p.relative_to(folder).as_posix())
        elif _is_model_folder(p) and not inside_model:
            names.append(p.relative_to(folder).as_posix())
    return sorted(names)


class ModelFolders:
    """A plain `models/` tree laid out like ComfyUI's (diffusion_models, text_encoders, vae, ...)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def list(self, kind: str) -> list[str]:
        return sorted({n for sub in KINDS[kind] for n in list_models_in(self.root / sub)})

    def path(self, kind: str, name: str) -> Path:
        """Full path of `name` (a name inside the kind's folders, or an absolute path)."""
        p = Path(name).expanduser()
        if p.is_absolute():
            if p.exists():
                return p
            raise ModelFileError(f"Model path does not exist: {p}", "Check the path.")
        for sub in KINDS[kind]:
            if (self.root / sub / name).exists():
                return self.root / sub / name
        raise ModelFileError(
            f"Model '{name}' not found in {self.root / KINDS[kind][0]}.",
            f"Put the file in {self.root / KINDS[kind][0]} (see `videoprior-edit models check --models "
            f"{self.root}` for where each file comes from).")
