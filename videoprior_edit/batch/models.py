"""Which files an editor loads: its model slots, found in a ComfyUI models folder by manifest id (first present
wins), in the tiny zoo, or given one by one (a path, or a name inside the models folder)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelFileError


@dataclass(frozen=True)
class Slot:
    """One file an editor loads: the flag `--<name>`, the ComfyUI folder `kind`, the manifest `ids` tried in a
    models folder, the tiny zoo's file (`zoo(Zoo) -> Path`), whether every model set needs it (`required`) or only
    the real model a models folder gives (`with_folder_model`: the low-noise expert of an A14B pair), and whether it
    is a LoRA ('none' on the command line drops a LoRA the folder would give)."""

    name: str
    kind: str
    help: str
    ids: tuple[str, ...] = ()
    zoo: Callable | None = None
    required: bool = True
    lora: bool = False
    with_folder_model: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def flag_help(self) -> str:
        tail = "; 'none' for no LoRA" if self.lora else ""
        return f"{self.help}: a path, or a name in the --models folder (overrides the folder's{tail})"


TEXT_ENCODER = Slot("text_encoder", "text_encoders", "UMT5-XXL text encoder (umt5_xxl_fp16.safetensors)",
                    ("umt5_xxl_fp16", "umt5_xxl_fp8_e4m3fn_scaled"), lambda z: z.file("umt5"))
VAE = Slot("vae", "vae", "Wan VAE (wan_2.1_vae.safetensors)", ("wan_2.1_vae",), lambda z: z.file("vae"))
CLIP_VISION = Slot("clip_vision", "clip_vision", "CLIP image encoder for Wan2.1-I2V / ChronoEdit "
                   "(clip_vision_h.safetensors)", ("clip_vision_h",), lambda z: z.file("clip_vision"))


def ensure_zoo(root: str | Path, seed: int = 0):
    """The tiny zoo at `root`, written first when it is not there (a few seconds)."""
    from ..errors import InputError
    from ..zoo import Zoo, write_zoo
    from .runner import rank_and_world

    zoo = Zoo(Path(root))
    if not (zoo.root / "zoo.json").is_file():
        if rank_and_world()[1] > 1:
            raise InputError(f"No tiny zoo in '{zoo.root}', and several processes would write it at once.",
                             f"Write it first: videoprior-edit zoo --out {zoo.root}")
        print(f"writing the tiny zoo (random weights, real architectures) to {zoo.root}")
        write_zoo(zoo.root, seed=seed)
    return zoo


def pick_model_files(slots: tuple[Slot, ...], given: Mapping[str, str | None], models_dir: str | Path | None = None,
                     zoo_dir: str | Path | None = None, group: str = "") -> dict[str, Path]:
    """The file of every slot: from `models_dir` (manifest ids) or the tiny zoo at `zoo_dir`, then the `given` ones
    (slot name -> path or name; 'none' drops a LoRA). A missing required file raises with what to download."""
    files: dict[str, Path] = {}
    if models_dir is not None:
        files = _from_folder(slots, Path(models_dir))
    elif zoo_dir is not None:
        zoo = ensure_zoo(zoo_dir)
        files = {s.name: s.zoo(zoo) for s in slots if s.zoo is not None}
    for slot in slots:
        value = given.get(slot.name)
        if value in (None, ""):
            continue
        if str(value).lower() == "none":
            if not slot.lora:
                raise ModelFileError(f"{slot.flag} cannot be 'none'.", f"Give the {slot.help} file.")
            files.pop(slot.name, None)
            continue
        files[slot.name] = _given(slot, str(value), models_dir)
    folder_model = models_dir is not None and not given.get("model")
    missing = [s for s in slots if (s.required or (s.with_folder_model and folder_model)) and s.name not in files]
    if missing:
        raise _missing_error(missing, models_dir, group)
    return files


def _from_folder(slots: tuple[Slot, ...], models_dir: Path) -> dict[str, Path]:
    """Per slot the first of its manifest files present in the models folder (ComfyUI's folder aliases too)."""
    from ..folders import ModelFolders
    from ..manifest import load_manifest

    entries, folders, picked = {e["id"]: e for e in load_manifest(trained=True)}, ModelFolders(models_dir), {}
    for slot in slots:
        for candidate in slot.ids:
            try:
                picked[slot.name] = folders.path(entries[candidate]["folder"], entries[candidate]["file"])
                break
            except ModelFileError:
                continue
    return picked


def _given(slot: Slot, value: str, models_dir: str | Path | None) -> Path:
    from ..folders import ModelFolders

    path = Path(value).expanduser()
    if path.exists():
        return path
    if models_dir is not None and not path.is_absolute():
        return ModelFolders(models_dir).path(slot.kind, value)
    raise ModelFileError(f"{slot.flag}: '{value}' does not exist.",
                         f"Give the path of the {slot.help}, or a name inside the --models folder.")


def _missing_error(missing: list[Slot], models_dir, group: str) -> ModelFileError:
    flags = ", ".join(s.flag for s in missing)
    if models_dir is None:
        return ModelFileError(f"No file for {flags}.", "Give --models with a ComfyUI models folder, the files "
                              "themselves (--model ...), or --zoo DIR for the tiny test zoo.")
    from ..manifest import load_manifest

    entries = {e["id"]: e for e in load_manifest(trained=True)}
    wanted = [entries[s.ids[0]] if s.ids else None for s in missing]
    names = ", ".join(f"{e['folder']}/{e['file']}" if e else s.flag for s, e in zip(missing, wanted, strict=True))
    hints = [f"give the files with {flags}"]
    if group and any(e is None or "made_by" not in e for e in wanted):
        hints.insert(0, f"run `videoprior-edit models download {group} --models {models_dir}`")
    hints += [f"{e['file']} is made by `{e['made_by']}`" for e in wanted if e and "made_by" in e]
    hint = "; or ".join(hints)
    return ModelFileError(f"Missing in {models_dir}: {names}.", hint[:1].upper() + hint[1:] + ".")
