"""Training checkpoints without pickles: safetensors for tensors, JSON for everything else.

A checkpoint folder holds
- `trainable.safetensors`: what trains (LoRA / adapter weights, EMA copies, ...), as the trainer names them;
- `optimizer.safetensors` + `optimizer.json`: the optimizer's state tensors under `state.<param index>.<name>`, and
  its param_groups, the numbers of its state and which entries are tensors (`{"__tensor__": key}`) as JSON; also the
  LR scheduler's and the fp16 gradient scaler's state (numbers);
- `rng_<rank>.safetensors` + `rng_<rank>.json`: each process's torch CPU / CUDA generator states, and Python's
  `random` and NumPy's global states;
- `state.json`: the trainer's `meta` (step, config, ...) and the format's name and version.

Nothing is ever unpickled (no torch.load, no pickle, no np.load with pickles): a checkpoint cannot run code when it is
read. A save goes to `<folder>.partial` first and is renamed into place once complete, so an interrupted save never
damages the previous checkpoint. Old accelerate checkpoints (`pytorch_model.bin`, `optimizer.bin`, `*.pkl`) hold
pickles and are refused with a message saying so.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from .errors import InputError

FORMAT = "videoprior_edit.training_state"
VERSION = 1
TRAINABLE = "trainable.safetensors"
OPTIMIZER = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"
STATE = "state.json"
# What an accelerate `save_state` folder holds: pickles (or safetensors model files next to pickled optimizer/RNG).
_PICKLED = ("pytorch_model.bin", "optimizer.bin", "scheduler.bin", "scaler.pt", "random_states_0.pkl")
log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- public API
def save_training_state(folder, accelerator, optimizer, tensors: dict[str, torch.Tensor], meta: dict,
                        scheduler=None) -> Path:
    """Write a checkpoint into `folder` (replacing one there) and return its path.

    Every process must call it (each writes its own RNG files; the main process writes the rest). `accelerator` may
    be None (one process); `optimizer` a torch optimizer or accelerate's wrapper; `tensors` what trains (written by
    the main process); `meta` JSON-able (step, config, ...); `scheduler` an LR scheduler or None."""
    folder = Path(folder)
    rank, main, whole = _rank(accelerator), _is_main(accelerator), not sharded(accelerator)
    partial = folder.with_name(folder.name + ".partial")
    if main:
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
    _wait(accelerator)
    _save_rng(partial, rank)
    if main:
        _save_tensors(partial / TRAINABLE, tensors)
        if whole:
            _save_optimizer(partial, _unwrap_optimizer(optimizer), _unwrap_scheduler(scheduler), _scaler(accelerator))
        else:
            _save_schedule(partial, _unwrap_scheduler(scheduler))
        state = {"format": FORMAT, "version": VERSION, "meta": meta, "optimizer_saved": whole,
                 "processes": 1 if accelerator is None else accelerator.num_processes,
                 "accelerator_step": getattr(accelerator, "step", 0)}
        _write_json(partial / STATE, state)
    _wait(accelerator)
    if main:
        _replace(partial, folder)
    _wait(accelerator)
    return folder


def load_training_state(folder, accelerator, optimizer, scheduler=None) -> tuple[dict[str, torch.Tensor], dict]:
    """Restore the optimizer (and scheduler, gradient scaler) state and this process's RNG states from `folder`;
    return (the trainable tensors on the CPU, the meta given to `save_training_state`). Raises InputError when the
    folder is missing, incomplete, corrupt, of another format, or an old (pickled) accelerate checkpoint."""
    folder = Path(folder)
    state = _check_folder(folder)
    tensors = _read_tensors(folder / TRAINABLE)
    if state.get("optimizer_saved", True) and not sharded(accelerator):
        _load_optimizer(folder, _unwrap_optimizer(optimizer), _unwrap_scheduler(scheduler), _scaler(accelerator))
    else:
        log.warning("Resuming %s without its optimizer state (%s): AdamW's moments start again; weights, step, "
                    "schedule and random states continue.", folder,
                    "written by a sharded run" if not state.get("optimizer_saved", True) else "this run is sharded")
        _load_schedule(folder, _unwrap_scheduler(scheduler))
    _load_rng(folder, _rank(accelerator), state)
    if accelerator is not None and hasattr(accelerator, "step"):
        accelerator.step = int(state.get("accelerator_step", 0))
    return tensors, state["meta"]


def sharded(accelerator) -> bool:
    """Whether the run shards its optimizer (DeepSpeed, FSDP): its checkpoints then keep no optimizer state."""
    kind = str(getattr(accelerator, "distributed_type", "") or "").upper()
    return "DEEPSPEED" in kind or "FSDP" in kind


def check_checkpointable(accelerator) -> None:
    """Say once, before training, what a sharded run's checkpoints keep (no optimizer state; see the module)."""
    if sharded(accelerator) and _is_main(accelerator):
        log.warning("This run shards the optimizer (%s): its checkpoints keep the trainable weights, step, schedule "
                    "and random states but not AdamW's moments, which start again on resume.",
                    str(accelerator.distributed_type).split(".")[-1])


def read_training_meta(folder) -> dict:
    """The meta of the checkpoint in `folder` without loading anything (to check settings before resuming); the
    same InputErrors as `load_training_state` for a missing, corrupt or pickled folder."""
    return _check_folder(Path(folder))["meta"]


def is_training_state(folder) -> bool:
    """Whether `folder` holds a (complete) checkpoint written by `save_training_state`."""
    return (Path(folder) / STATE).is_file()


def step_checkpoints(output, complete: bool = True) -> list[Path]:
    """The `<output>/checkpoints/step-N` folders, oldest first (`complete`: only those `save_training_state` finished;
    an interrupted save's `.partial` folder is never one)."""
    folder = Path(output) / "checkpoints"
    found = [p for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"step-\d+", p.name)
             and (not complete or is_training_state(p))] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def prune_checkpoints(output, keep: int) -> None:
    """Delete all but the newest `keep` (at least 1) complete checkpoints under `<output>/checkpoints` (call it from
    the main process; a folder that cannot be deleted is left, the run goes on)."""
    for old in step_checkpoints(output)[:-max(1, keep)]:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- processes
def _rank(accelerator) -> int:
    return 0 if accelerator is None else int(accelerator.process_index)


def _is_main(accelerator) -> bool:
    return accelerator is None or bool(accelerator.is_main_process)


def _wait(accelerator) -> None:
    if accelerator is not None:
        accelerator.wait_for_everyone()


def _unwrap_optimizer(optimizer) -> torch.optim.Optimizer:
    inner = optimizer
    while not isinstance(inner, torch.optim.Optimizer) and hasattr(inner, "optimizer"):
        inner = inner.optimizer  # accelerate's AcceleratedOptimizer
    if not isinstance(inner, torch.optim.Optimizer):
        raise TypeError(f"Not a torch optimizer: {type(optimizer).__name__}")
    return inner


def _unwrap_scheduler(scheduler):
    while scheduler is not None and not hasattr(scheduler, "get_last_lr") and hasattr(scheduler, "scheduler"):
        scheduler = scheduler.scheduler  # accelerate's AcceleratedScheduler
    return scheduler


def _scaler(accelerator):
    return getattr(accelerator, "scaler", None) if accelerator is not None else None


# ----------------------------------------------------------------------------------------------- files
def _replace(partial: Path, folder: Path) -> None:
    """Move the complete `partial` folder to `folder`; an existing `folder` is moved aside first and deleted last."""
    old = folder.with_name(folder.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if folder.exists():
        folder.rename(old)
    partial.rename(folder)
    if old.exists():
        shutil.rmtree(old)


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=1))


def _read_json(path: Path):
    if not path.is_file():
        raise InputError(f"The checkpoint {path.parent} has no {path.name}: it is incomplete.",
                         "Resume from another checkpoint (or restart the run).")
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"The checkpoint file {path} is corrupt ({e}).",
                         "Resume from another checkpoint (or restart the run).") from None


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    out, seen = {}, set()
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"Checkpoint tensor '{key}' is a {type(value).__name__}, not a tensor.")
        t = value.detach().to("cpu").contiguous()
        if t.numel() and t.untyped_storage().data_ptr() in seen:
            t = t.clone()  # safetensors refuses tensors that share storage
        if t.numel():
            seen.add(t.untyped_storage().data_ptr())
        out[key] = t
    save_file(out, str(path), metadata={"format": "pt"})


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise InputError(f"The checkpoint {path.parent} has no {path.name}: it is incomplete.",
                         "Resume from another checkpoint (or restart the run).")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"The checkpoint file {path} is corrupt ({e}).",
                         "Resume from another checkpoint (or restart the run).") from None


def _check_folder(folder: Path) -> dict:
    if not folder.is_dir():
        raise InputError(f"No checkpoint folder at {folder}.",
                         "Give a checkpoints/step-N folder, or 'latest' with the same output folder.")
    if not (folder / STATE).is_file():
        pickled = [p.name for p in folder.iterdir() if p.name in _PICKLED or p.suffix in (".pkl", ".bin", ".pt")]
        if pickled:
            raise InputError(f"{folder} is an old accelerate checkpoint ({', '.join(sorted(pickled)[:4])}): it holds "
                             "pickles, which this pack never loads (they can run code), so it cannot be resumed.",
                             "Restart the training, or start from the LoRA / adapter file the run wrote (it is a "
                             "safetensors file next to checkpoints/).")
    state = _read_json(folder / STATE)
    if not isinstance(state, dict) or state.get("format") != FORMAT or "meta" not in state:
        raise InputError(f"{folder / STATE} is not a videoprior_edit training state.",
                         "Resume from a checkpoints/step-N folder this pack wrote.")
    if state.get("version", 0) > VERSION:
        raise InputError(f"The checkpoint {folder} was written by a newer videoprior_edit (format "
                         f"{state['version']}).", "Update the pack to resume it.")
    return state


# ----------------------------------------------------------------------------------------------- JSON encoding
class _Unencodable(Exception):
    pass


def _encode(value, key: str, tensors: dict, skipped: list):
    """A JSON-able form of `value`: tensors go into `tensors` under `key` ({"__tensor__": key}), tuples and dicts
    with non-string keys are tagged so they come back as they were; anything else (functions, objects) becomes
    {"__skipped__": type} (read back as None) and its key is listed in `skipped`."""
    if isinstance(value, torch.Tensor):
        tensors[key] = value
        return {"__tensor__": key}
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        items = [_encode(v, f"{key}.{i}", tensors, skipped) for i, v in enumerate(value)]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, f"{key}.{k}", tensors, skipped) for k, v in value.items()}
        if all(isinstance(k, (str, int, float, bool)) or k is None for k in value):
            return {"__dict__": [[k, _encode(v, f"{key}.{k}", tensors, skipped)] for k, v in value.items()]}
    skipped.append(key)
    return {"__skipped__": type(value).__name__}


def _decode(value, tensors):
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__tuple__" in value:
        return tuple(_decode(v, tensors) for v in value["__tuple__"])
    if "__dict__" in value:
        return {k: _decode(v, tensors) for k, v in value["__dict__"]}
    if "__skipped__" in value:
        return None
    return {k: _decode(v, tensors) for k, v in value.items()}


# ----------------------------------------------------------------------------------------------- optimizer
def _save_optimizer(folder: Path, optimizer: torch.optim.Optimizer, scheduler, scaler) -> None:
    tensors, skipped = {}, []
    sd = optimizer.state_dict()
    doc = {"optimizer": type(optimizer).__name__,
           "state": _encode({int(k): v for k, v in sd["state"].items()}, "state", tensors, skipped),
           "param_groups": _encode(sd["param_groups"], "param_groups", tensors, skipped)}
    if scheduler is not None:
        doc["scheduler"] = _encode(scheduler.state_dict(), "scheduler", tensors, skipped)
        doc["scheduler_class"] = type(scheduler).__name__
    if scaler is not None:
        doc["scaler"] = _encode(scaler.state_dict(), "scaler", tensors, skipped)
    doc["skipped"] = skipped  # entries JSON cannot hold (e.g. a scheduler's lambda objects): restored as None
    _save_tensors(folder / OPTIMIZER, tensors)
    _write_json(folder / OPTIMIZER_JSON, doc)


def _load_optimizer(folder: Path, optimizer: torch.optim.Optimizer, scheduler, scaler) -> None:
    doc = _read_json(folder / OPTIMIZER_JSON)
    tensors = _read_tensors(folder / OPTIMIZER)
    try:
        sd = {"state": _decode(doc["state"], tensors), "param_groups": _decode(doc["param_groups"], tensors)}
    except (KeyError, TypeError) as e:
        raise InputError(f"The optimizer state in {folder} is corrupt (missing {e}).",
                         "Resume from another checkpoint (or restart the run).") from None
    try:
        optimizer.load_state_dict(sd)
    except (ValueError, KeyError) as e:
        raise InputError(f"The checkpoint's optimizer state does not fit this run's trainable tensors ({e}).",
                         "Resume with the settings the checkpoint was trained with (LoRA rank, targets, ...).") \
            from None
    if scheduler is not None:
        if "scheduler" not in doc:
            raise InputError(f"The checkpoint {folder} has no learning-rate schedule state.",
                             "Resume from a checkpoint of the same trainer.")
        scheduler.load_state_dict(_without_skipped(_decode(doc["scheduler"], tensors), doc["scheduler"]))
    if scaler is not None and doc.get("scaler"):  # an unused scaler's state is {}
        scaler.load_state_dict(_decode(doc["scaler"], tensors))


def _save_schedule(folder: Path, scheduler) -> None:
    """Only the LR schedule (a sharded run's optimizer state stays with its engine)."""
    if scheduler is not None:
        tensors, skipped = {}, []
        doc = {"scheduler": _encode(scheduler.state_dict(), "scheduler", tensors, skipped),
               "scheduler_class": type(scheduler).__name__, "skipped": skipped}
        _save_tensors(folder / OPTIMIZER, tensors)
        _write_json(folder / OPTIMIZER_JSON, doc)


def _load_schedule(folder: Path, scheduler) -> None:
    if scheduler is not None and (folder / OPTIMIZER_JSON).is_file():
        doc = _read_json(folder / OPTIMIZER_JSON)
        if "scheduler" in doc:
            tensors = _read_tensors(folder / OPTIMIZER)
            scheduler.load_state_dict(_without_skipped(_decode(doc["scheduler"], tensors), doc["scheduler"]))


def _without_skipped(decoded: dict, encoded: dict) -> dict:
    """The scheduler's top-level entries that JSON could not hold are left out (the scheduler keeps its own); nested
    ones come back as None (LambdaLR's lr_lambdas: None means 'nothing to restore' for that lambda)."""
    return {k: v for k, v in decoded.items() if not (isinstance(encoded.get(k), dict) and "__skipped__" in encoded[k])}


# ----------------------------------------------------------------------------------------------- RNG
def _save_rng(folder: Path, rank: int) -> None:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    doc = {"python": {"version": version, "state": list(mt), "gauss_next": gauss},
           "numpy": {"name": name, "keys": [int(k) for k in keys], "pos": int(pos), "has_gauss": int(has_gauss),
                     "cached_gaussian": float(cached)},
           "cuda_devices": sum(k.startswith("cuda.") for k in tensors)}
    _save_tensors(folder / f"rng_{rank}.safetensors", tensors)
    _write_json(folder / f"rng_{rank}.json", doc)


def _load_rng(folder: Path, rank: int, state: dict) -> None:
    path = folder / f"rng_{rank}.safetensors"
    if not path.is_file() and state.get("processes", 1) <= rank:
        import warnings

        warnings.warn(f"{folder} was saved by {state.get('processes')} process(es): process {rank} keeps its "
                      "random state (the data order and noise do not depend on it).", stacklevel=3)
        return
    tensors = _read_tensors(path)
    doc = _read_json(folder / f"rng_{rank}.json")
    try:
        py, npy = doc["python"], doc["numpy"]
        random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
        np.random.set_state((npy["name"], np.array(npy["keys"], dtype=np.uint32), npy["pos"], npy["has_gauss"],
                             npy["cached_gaussian"]))
        torch.set_rng_state(tensors["torch"])
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"The random state in {folder} is corrupt ({e}).",
                         "Resume from another checkpoint (or restart the run).") from None
    cuda = [tensors[f"cuda.{i}"] for i in range(doc.get("cuda_devices", 0))]
    if cuda and torch.cuda.is_available():
        for i, s in enumerate(cuda[:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)
