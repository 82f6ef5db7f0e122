"""The one bridge to ComfyUI: device, model folders, progress with Cancel, freeing ComfyUI's models.

Everything else in the pack asks this module; where ComfyUI's model code is not importable (only its node API,
`comfy_api`, as in the tests' venv) it falls back to torch, a plain `models/` folder (VPE_MODELS_DIR or ./models) and
tqdm, so the nodes also run from Python. Node results are V3 `io.NodeOutput`s (`node_output`, `reported`).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import uuid
from pathlib import Path

import torch
from comfy_api.latest import io

from ..videoprior_edit.cancel import cancellable
from ..videoprior_edit.folders import KINDS, ModelFolders

try:  # ComfyUI present
    import comfy.model_management as _mm
    import comfy.utils as _cu
    import folder_paths as _fp
except ImportError:  # plain Python, tests, CLI
    _mm = _cu = _fp = None


def in_comfyui() -> bool:
    return _fp is not None


def device() -> torch.device:
    """Where models run: ComfyUI's choice inside ComfyUI, else CUDA, MPS or CPU."""
    if _mm is not None:
        return _mm.get_torch_device()
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class _ComfyFolders(ModelFolders):
    """ModelFolders searching ComfyUI's folder_paths (extra_model_paths.yaml included)."""

    def __init__(self):
        super().__init__(_fp.models_dir)

    def bases(self, kind: str) -> list[Path]:
        return [Path(base) for sub in KINDS[kind] if sub in _fp.folder_names_and_paths
                for base in _fp.get_folder_paths(sub)]


def folders():
    """The model folders: ComfyUI's inside ComfyUI, else $VPE_MODELS_DIR or ./models."""
    if _fp is not None:
        if "LLM" not in _fp.folder_names_and_paths:
            _fp.add_model_folder_path("LLM", os.path.join(_fp.models_dir, "LLM"))
        return _ComfyFolders()
    return ModelFolders(os.environ.get("VPE_MODELS_DIR", "models"))


def model_choices(kind: str, optional: bool = False) -> list[str]:
    """Dropdown entries for a model input ('none' first when the input is optional)."""
    names = folders().list(kind)
    return (["none"] if optional else []) + (names or ([] if optional else ["(no files found)"]))


def sampler_choices() -> tuple[list[str], list[str]]:
    """ComfyUI's sampler and scheduler names (outside ComfyUI: the few the pack's workflows use, so the node
    schemas can be read without it)."""
    try:
        import comfy.samplers
    except ImportError:
        return ["euler", "uni_pc", "dpmpp_2m"], ["simple", "normal", "beta"]
    return list(comfy.samplers.KSampler.SAMPLERS), list(comfy.samplers.KSampler.SCHEDULERS)


def check_cancel() -> None:
    """Raise ComfyUI's interrupt exception if the user pressed Cancel."""
    if _mm is not None:
        _mm.throw_exception_if_processing_interrupted()


class Progress:
    """Progress bar that also cancels: call it once per step (ComfyUI bar + interrupt check, or tqdm)."""

    def __init__(self, total: int, desc: str = "VideoPrior Edit"):
        self.total = total
        if _cu is not None:
            self._bar = _cu.ProgressBar(total)
        else:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, leave=False)

    def __call__(self, n: int = 1) -> None:
        check_cancel()
        self._bar.update(n)

    def close(self) -> None:
        if hasattr(self._bar, "close"):
            self._bar.close()


def free_memory() -> None:
    """Before loading big models: unload ComfyUI's own models and empty the CUDA cache."""
    if _mm is not None:
        _mm.unload_all_models()
        _mm.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


class _Collect(logging.Handler):
    """Keeps what the library says while one node runs in this thread: warnings, and the LoRA summaries."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.thread, self.lines = threading.get_ident(), []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread:
            return
        if record.levelno >= logging.WARNING:
            self.lines.append("Warning: " + record.getMessage())
        elif record.name.startswith("videoprior_edit.lora") or record.name == "videoprior_edit.byg.flux":
            self.lines.append(record.getMessage())


def with_report(out, lines: list[str]) -> io.NodeOutput:
    """A node's return value as a NodeOutput with `lines` shown on the node (ComfyUI's `ui.text`, above any text it
    already shows; lines it already shows are not repeated)."""
    if not isinstance(out, io.NodeOutput):
        out = io.NodeOutput(*out)
    if not lines:
        return out
    ui = dict(out.ui or {})
    shown = list(ui.get("text", []))
    said = "\n".join(map(str, shown))
    ui["text"] = [line for line in dict.fromkeys(lines) if line not in said] + shown
    out.ui = ui
    return out


def reported(fn):
    """Wrap a node's `execute` so the library's warnings and LoRA summaries appear on the node, not only in the
    console (the pack's web extension shows `ui.text` under the node), and so Cancel acts inside every long stage
    (VAE, encoders, samplers: `cancellable`), not only between steps."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        logger, collect = logging.getLogger("videoprior_edit"), _Collect()
        level = logger.level
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
        logger.addHandler(collect)
        try:
            with cancellable(check_cancel if _mm is not None else None):
                out = fn(*args, **kwargs)
        finally:
            logger.removeHandler(collect)
            logger.setLevel(level)
        return with_report(out, collect.lines)

    run.vpe_reported = True
    return run


def node_output(info: str, result: tuple, preview: torch.Tensor | None = None) -> io.NodeOutput:
    """A node's return value: `result`, `info` shown on the node and, inside ComfyUI, a few small frames of
    `preview` (IMAGE frames) as the node's preview."""
    ui = {"text": [info]}
    images = preview_images(preview) if preview is not None else []
    if images:
        ui["images"] = images
    return io.NodeOutput(*result, ui=ui)


def preview_images(frames: torch.Tensor, count: int = 4, side: int = 256) -> list[dict]:
    """Up to `count` evenly spaced frames (first and last included) of an IMAGE batch, at most `side` pixels wide or
    high, written as PNGs to ComfyUI's temp folder (emptied when ComfyUI starts); [] outside ComfyUI."""
    if _fp is None or frames is None or frames.ndim != 4 or frames.shape[0] == 0:
        return []
    from PIL import Image

    last = frames.shape[0] - 1
    picks = sorted({round(i * last / max(1, count - 1)) for i in range(min(count, last + 1))})
    folder = _fp.get_temp_directory()
    os.makedirs(folder, exist_ok=True)
    shown = []
    for i in picks:
        pixels = (frames[i, ..., :3].detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        picture = Image.fromarray(pixels)
        picture.thumbnail((side, side))
        name = f"vpe_preview_{uuid.uuid4().hex[:16]}.png"
        picture.save(os.path.join(folder, name), compress_level=1)
        shown.append({"filename": name, "subfolder": "", "type": "temp"})
    return shown
