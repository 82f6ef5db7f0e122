"""What a Video4Edit run writes: the student file (a PEFT LoRA or a full ComfyUI single file) and the training
checkpoints (`checkpoints/step-N/`: the trainable tensors, optimizer, schedule and RNG without pickles, see
`videoprior_edit.checkpoint`)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import (
    load_training_state,
    prune_checkpoints,
    read_training_meta,
    save_training_state,
    step_checkpoints,
)
from ..errors import InputError, VPEError
from .config import _STRUCTURAL, ADAPTER, FULL_FILE, LORA_FILE, TrainConfig, _print
from .distill import Distiller


# ----------------------------------------------------------------------------------------------- saving
def save_lora(student: nn.Module, path: str | Path, dtype: torch.dtype = torch.bfloat16,
              info: dict | None = None) -> Path:
    """The student's LoRA as a diffusers/PEFT file: `transformer.<module>.lora_A.weight` / `lora_B.weight`, the PEFT
    config (rank, alpha, targets) in the `lora_adapter_metadata` entry as diffusers writes it."""
    from peft.utils import get_peft_model_state_dict

    from ..weights import save_file

    state = get_peft_model_state_dict(student, adapter_name=ADAPTER)
    tensors = {f"transformer.{k}": v.detach().to("cpu", dtype) for k, v in state.items()}
    config = student.peft_config[ADAPTER].to_dict()
    metadata = {"format": "pt", "lora_adapter_metadata": json.dumps({f"transformer.{k}": v for k, v in config.items()},
                                                                    default=_jsonable, sort_keys=True)}
    if info:
        metadata["video4edit"] = json.dumps(info, default=str)
    save_file(tensors, path, metadata)
    return Path(path)


def _jsonable(value):
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value) if all(isinstance(v, str) for v in value) else list(value)
    return str(value)


def save_full(student: nn.Module, path: str | Path, dtype: torch.dtype = torch.bfloat16,
              info: dict | None = None) -> Path:
    """The whole student as a ComfyUI-style single file in original Wan keys (`blocks.0.self_attn.q.weight`)."""
    from ..models.wan_keys import wan_key_to_original
    from ..weights import save_file

    tensors = {}
    for key, value in student.state_dict().items():
        original = wan_key_to_original(key)
        if original is None:
            raise VPEError(f"The student's tensor '{key}' has no original Wan name.", "Please report this.")
        tensors[original] = value.detach().to("cpu", dtype) if value.is_floating_point() else value.detach().cpu()
    save_file(tensors, path, {"video4edit": json.dumps(info or {}, default=str)})
    return Path(path)


def _info(config: TrainConfig, student, step: int) -> dict:
    return {"method": "video4edit", "base": student.name, "base_file": Path(student.sources.get("model", "")).name,
            "step": step, "config": asdict(config)}


def _save(accelerator, distiller: Distiller, optimizer, schedule, student, config: TrainConfig, step: int) -> None:
    """A checkpoint under checkpoints/step-N (what trains, optimizer, schedule, RNG; no pickles) and the student
    file; older checkpoints beyond `keep_checkpoints` are deleted."""
    out = Path(config.output)
    tensors = {n: p.detach() for n, p in distiller.trainable_parameters()}
    save_training_state(out / "checkpoints" / f"step-{step:06d}", accelerator, optimizer, tensors,
                        {"step": step, "config": asdict(config)}, schedule)
    if accelerator.is_main_process:
        prune_checkpoints(out, config.keep_checkpoints)
        from ..models.core import parse_dtype

        dtype, info = parse_dtype(config.save_dtype), _info(config, student, step)
        if config.full:
            save_full(distiller.student, out / FULL_FILE, dtype, info)
        else:
            save_lora(distiller.student, out / LORA_FILE, dtype, info)
    accelerator.wait_for_everyone()


def _resume(accelerator, distiller: Distiller, optimizer, schedule, config: TrainConfig) -> int:
    """Load a checkpoint ('latest' or a folder) into the trainable tensors, optimizer, schedule and RNG and return
    its step; 0 when not resuming (or 'latest' finds none)."""
    folder = _resume_folder(accelerator, config)
    if folder is None:
        return 0
    saved = read_training_meta(folder)
    changed = [k for k in _STRUCTURAL if saved["config"].get(k) != getattr(config, k)]
    if changed:
        was = ", ".join(f"{k}={saved['config'].get(k)!r}" for k in changed)
        raise InputError(f"The checkpoint was trained with other {', '.join(changed)} ({was}).",
                         "Resume with the checkpoint's settings (see its state.json).")
    tensors, saved = load_training_state(folder, accelerator, optimizer, schedule)
    named = dict(distiller.trainable_parameters())
    if tensors.keys() != named.keys():
        raise InputError(f"The checkpoint {folder} holds other trainable tensors than this run "
                         f"({len(tensors)} vs {len(named)}).", "Resume with the checkpoint's settings.")
    with torch.no_grad():
        for name, p in named.items():
            p.copy_(tensors[name])
    _print(accelerator, f"resumed from {folder} at step {saved['step']}")
    return int(saved["step"])


def _resume_folder(accelerator, config: TrainConfig) -> Path | None:
    if not config.resume:
        return None
    if config.resume != "latest":
        return Path(config.resume)
    found = step_checkpoints(config.output)
    if found:
        return found[-1]
    older = step_checkpoints(config.output, complete=False)
    if older:  # only old (accelerate, pickled) or incomplete checkpoints: say why they cannot be used
        read_training_meta(older[-1])
    _print(accelerator, f"no checkpoint in {Path(config.output) / 'checkpoints'} yet: starting at step 0")
    return None
