"""LoRAs on Wan model sets: `models.loras` lists them; `sync_loras` makes an expert hold exactly that list.

An entry is `(path, strength, expert)` (merged) or `(path, strength, expert, merge)`; read entries with `lora_entry`.
Expert is "high" (the high-noise expert, or the single model), "low" or "both". Sets made from one another with
`with_lora` share their expert modules, so the sampling loop calls `sync_loras` right after the placement activates
an expert, and the expert then computes what the running set lists:

- merged LoRAs added since are merged; when one was removed or its strength changed, the expert is first read again
  from its file (`placement.reload_weights`, which also drops every unmerged LoRA; they are then re-applied from
  their LoRA files);
- unmerged LoRAs are added, re-scaled or removed in place: no base weights are read (a new one reads its LoRA file;
  a new strength of one the experts hold reads nothing, in `with_lora` / `add_lora` either).

Unmerged LoRAs that someone applied to an expert directly (`apply_lora(..., merge=False)`) are left alone.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from dataclasses import replace
from pathlib import Path

from torch import nn

from ..errors import InputError, ModelFileError
from .apply import (
    LoraReport,
    Plan,
    adapters_of,
    apply_read,
    plan,
    quantized,
    remove_lora,
    set_lora_strength,
    summarize,
)
from .formats import LoraFile, read_lora

log = logging.getLogger("videoprior_edit.lora")

EXPERTS = ("high", "low", "both")
SLOTS = ("transformer", "transformer_2")
_MANAGED = "set:"  # name prefix of the unmerged LoRAs a set manages
_read_cache: contextvars.ContextVar[dict | None] = contextvars.ContextVar("vpe_lora_read_cache", default=None)


def add_lora(models, path: str | Path, strength: float = 1.0, expert: str = "both", merge: bool = True
             ) -> list[LoraReport]:
    """Add a LoRA to the experts of a `WanModels` set ("high": the high-noise expert or the single model, "low":
    the low-noise expert, "both"): checked against each expert first (a LoRA for another model is refused before
    anything changes), recorded in `models.loras`, applied to the experts that are loaded (parked ones get it when
    they are reloaded). `merge=False` keeps it unmerged: a later strength change or removal reads no base weights
    (and no LoRA file when every target expert already holds this file unmerged: it was checked when it was added).
    Logs one line."""
    targets = _experts(models, expert)
    if merge and any(quantized(module) for _, module in targets):
        merge = False  # GGUF blocks cannot take a merged delta: the LoRA runs beside them
        log.info("LoRA '%s' is kept unmerged: the model's weights are GGUF-quantised.", Path(path).name)
    with _reading_once():
        reports = None if merge else _held(targets, path)
        if reports is None:  # checked against each expert (the plans are used again by sync_loras below)
            reports = [replace(_plan(module, path, label).report) for label, module in targets]
        for report in reports:
            report.strength, report.merged = strength, merge
        # merged entries keep the 3-tuple form older code reads; unmerged ones carry merge=False
        models.loras.append((str(path), strength, expert) if merge else (str(path), strength, expert, False))
        for slot in SLOTS:
            sync_loras(models, slot)
    log.info(summarize(reports))
    return reports


def _held(targets: list[tuple[str, nn.Module]], path: str | Path) -> list[LoraReport] | None:
    """The reports of an unmerged LoRA that every target expert already holds from `path` (it was read and checked
    against each when it was applied, and a new strength only changes a number there: nothing is read again), or
    None."""
    reports = []
    for label, module in targets:
        adapter = adapters_of(module).get(_MANAGED + str(path))
        if adapter is None or adapter.report is None or adapter.report.target != label:
            return None
        reports.append(replace(adapter.report, adapter=None))
    return reports


def with_lora(models, path: str | Path, strength: float = 1.0, expert: str = "both", merge: bool = True):
    """A new model set with one more LoRA; `models` keeps its own list (the weights follow whichever set runs)."""
    new = replace(models, loras=list(models.loras))
    if "_prompt_encoder" in models.__dict__:  # same text encoder: share the prompt cache
        new.__dict__["_prompt_encoder"] = models.__dict__["_prompt_encoder"]
    add_lora(new, path, strength, expert, merge)
    return new


def lora_entry(entry) -> tuple[str, float, str, bool]:
    """(path, strength, expert, merge) of a `models.loras` entry (3-tuples are merged LoRAs)."""
    path, strength, expert = entry[:3]
    return str(path), float(strength), expert, bool(entry[3]) if len(entry) > 3 else True


def wanted_loras(models, slot: str, merged: bool = True) -> tuple[tuple[str, float], ...]:
    """(path, strength) of the merged (or, with `merged=False`, the unmerged) LoRAs `models.loras` lists for `slot`
    ("transformer" or "transformer_2"), in order."""
    label = "high" if slot == "transformer" else "low"
    return tuple((path, strength) for path, strength, expert, merge in map(lora_entry, models.loras)
                 if expert in ("both", label) and merge == merged)


def sync_loras(models, slot: str) -> None:
    """Make `slot`'s expert hold exactly the LoRAs the set lists for it (no-op when it already does or when the
    expert is parked on disk)."""
    module = getattr(models, slot, None)
    if module is None:
        return
    merged, applied = wanted_loras(models, slot), getattr(module, "vpe_loras", ())
    unmerged = {}
    for path, strength in wanted_loras(models, slot, merged=False):
        unmerged[path] = unmerged.get(path, 0.0) + strength
    if merged == applied and unmerged == _managed(module):
        return
    first = next(module.parameters(), None)
    if first is not None and first.is_meta:  # parked: it gets its LoRAs when it is loaded again
        return
    offloaded = getattr(module, "_vpe_group_offload", None) is not None
    target = _label(models, slot)
    with _reading_once():
        if merged[:len(applied)] != applied:  # one was removed or changed: start again from the file
            from ..placement import reload_weights

            module = reload_weights(models, slot)  # also drops the unmerged LoRAs
            applied = ()
            _forget_plans(module)  # made for the parameters it had
        for path, strength in merged[len(applied):]:
            report = apply_read(module, _read(path), strength, True, path, target, planned=_plan(module, path, target))
            log.debug(report.summary())
        module.vpe_loras = merged
        current = _managed(module)
        for path in current.keys() - unmerged.keys():
            remove_lora(module, _MANAGED + path)
        for path, strength in unmerged.items():
            if path not in current:
                report = apply_read(module, _read(path), strength, False, _MANAGED + path, target, managed=True,
                                    planned=_plan(module, path, target))
                log.debug(report.summary())
            elif current[path] != strength:
                set_lora_strength(module, _MANAGED + path, strength)
    if offloaded and getattr(module, "_vpe_group_offload", None) is None and models.placement is not None:
        models.placement.activate(models, slot)  # group offloading back on, with the new tensors


def _managed(module: nn.Module) -> dict[str, float]:
    return {name[len(_MANAGED):]: a.strength for name, a in adapters_of(module).items() if a.managed}


def _label(models, slot: str) -> str:
    if models.transformer_2 is None:
        return "model"
    return "high-noise expert" if slot == "transformer" else "low-noise expert"


def _experts(models, expert: str) -> list[tuple[str, nn.Module]]:
    if expert not in EXPERTS:
        raise InputError(f"Unknown expert '{expert}'.", f"Use one of {', '.join(EXPERTS)}.")
    if models.transformer_2 is None:
        if expert == "low":
            raise ModelFileError(f"{models.name} has one model, no low-noise expert, so a LoRA cannot go to 'low'.",
                                 "Use expert 'both' (or 'high') to apply it to the single model.")
        return [("model", models.transformer)]
    high, low = ("high-noise expert", models.transformer), ("low-noise expert", models.transformer_2)
    return {"high": [high], "low": [low], "both": [high, low]}[expert]


@contextlib.contextmanager
def _reading_once():
    """Within this block each LoRA file is read once (one add_lora applies it to two experts), and matched once
    against each expert (add_lora checks it, the sync_loras within applies it)."""
    if _read_cache.get() is not None:
        yield
        return
    token = _read_cache.set({})
    try:
        yield
    finally:
        _read_cache.reset(token)


def _read(path: str | Path) -> LoraFile:
    cache = _read_cache.get()
    if cache is None:
        return read_lora(path)
    key = str(path)
    if key not in cache:
        cache[key] = read_lora(path)
    return cache[key]


def _plan(module: nn.Module, path: str | Path, target: str) -> Plan:
    """`plan` of the LoRA at `path` for `module`, made once within a `_reading_once` block."""
    lora = _read(path)
    cache = _read_cache.get()
    if cache is None:
        return plan(module, lora, target)
    key = ("plan", str(path), id(module), target)
    found = cache.get(key)
    if found is None or found[0] is not lora or found[1] is not module:
        found = cache[key] = (lora, module, plan(module, lora, target))
    return found[2]


def _forget_plans(module: nn.Module) -> None:
    cache = _read_cache.get()
    if cache:
        for key in [k for k, v in cache.items() if isinstance(k, tuple) and v[1] is module]:
            del cache[key]
