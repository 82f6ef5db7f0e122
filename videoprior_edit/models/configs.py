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


def sized_config(name: str, size: str) -> dict:
    """`base` updated with the named size, without bookkeeping fields."""
    data = config_data(name)
    config = {**data["base"], **data["sizes"][size]}
    config.pop("test_only", None)
    return config
