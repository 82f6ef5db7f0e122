"""The architecture configs shipped with the pack (JSON data in `videoprior_edit/configs/`)."""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@lru_cache(maxsize=None)
def _read(name: str) -> dict:
    return json.loads((CONFIG_DIR / f"{name}.json").read_text())


def config_data(name: str) -> dict:
    """A fresh copy of one config file's data (`wan_transformer`, `umt5`, `wan_vae`, `clip_vision`, ...)."""
    return copy.deepcopy(_read(name))


def sized_config(name: str, size: str, part: str | None = None) -> dict:
    """`base` updated with the named size, without bookkeeping fields (`part`: a section of a multi-part file,
    e.g. the `vae` of `flux`)."""
    data = config_data(name)
    data = data[part] if part else data
    config = {**data["base"], **data["sizes"][size]}
    config.pop("test_only", None)
    return config


def find_size(sizes: dict, **found) -> str | None:
    """The name of the size whose entries equal every value found in a checkpoint, or None."""
    return next((s for s, v in sizes.items() if all(v.get(k) == x for k, x in found.items())), None)
