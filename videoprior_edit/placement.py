"""The memory placement policy: the one place where model components (Wan sets, FLUX sets) move between devices.

The sampling loop asks a `Placement` for each component right before using it (`activate`) and says when it is done
with the encoders and the VAE (`release`); no method moves models itself. Modes:

- `all_on_device`: everything goes to the compute device and stays (the encoders leave after encoding).
- `one_expert`: at most one big component (text encoder, image encoder, one expert) on the device at a time; the
  others wait in `offload_device` (CPU RAM). The expert switch happens once per run, at the boundary.
- `one_expert_disk`: the same, but whatever waits is parked on disk: its tensors are dropped (the module object, its
  shapes and `vpe_info` stay, as meta tensors) and reloaded from its file, with the set's LoRAs re-merged, when it is
  activated again. RAM then holds one big component at a time (2 x 28 GB A14B experts with 32 GB of RAM).
- `block_offload`: the experts' weights stay in `offload_device` and each group of blocks moves to the device just
  before it runs (diffusers' group offloading); encoders and VAE come and go as in `one_expert`.

A FLUX set has `transformer`, `text_encoder` (CLIP-L), `text_encoder_2` (T5-XXL) and `vae`; it takes every mode but
`one_expert_disk` (`FLUX_PLACEMENTS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import InputError, ModelFileError

PLACEMENTS = ("all_on_device", "one_expert", "one_expert_disk", "block_offload")
EXPERTS = ("transformer", "transformer_2")
ENCODERS = ("text_encoder", "text_encoder_2", "image_encoder")
COMPONENTS = ENCODERS + EXPERTS + ("vae",)
_BIG = ENCODERS + EXPERTS
_ONE_AT_A_TIME = ("one_expert", "one_expert_disk")
FLUX_PLACEMENTS = ("all_on_device", "one_expert", "block_offload")
_SOURCES = {"transformer": "model", "transformer_2": "model_low", "text_encoder": "text_encoder",
            "image_encoder": "clip_vision", "vae": "vae"}  # Wan sets' `sources` keys (disk parking)
_LABELS = {"transformer": "high-noise expert (or single model)", "transformer_2": "low-noise expert",
           "text_encoder": "text encoder", "text_encoder_2": "second text encoder", "image_encoder": "image encoder",
           "vae": "VAE"}


@dataclass
class Placement:
    """Where each Wan component lives while a run needs it (see the module docstring for the modes)."""

    mode: str = "one_expert"
    device: str | torch.device | None = None  # compute device; None: cuda if available, else cpu
    offload_device: str | torch.device = "cpu"
    release_text_encoder: bool = True  # move the text/image encoders off the device after encoding
    vae_tiling: bool = False  # AutoencoderKLWan.enable_tiling() when the VAE is activated
    blocks_per_group: int = 1  # block_offload: transformer blocks moved to the device together

    def __post_init__(self):
        if self.mode not in PLACEMENTS:
            raise InputError(f"Unknown memory placement '{self.mode}'.", f"Use one of {', '.join(PLACEMENTS)}.")
        if int(self.blocks_per_group) < 1:
            raise InputError(f"blocks_per_group must be at least 1, got {self.blocks_per_group}.",
                             "Use 1 (least memory) or more blocks per transfer (faster, more memory).")

    @property
    def compute_device(self) -> torch.device:
        if self.device is None:
            return _resolve("cuda" if torch.cuda.is_available() else "cpu")
        return _resolve(self.device)

    def activate(self, models, name: str) -> nn.Module:
        """`models.<name>` ready to run on `compute_device` (cheap when it already is)."""
        module = _component(models, name)
        block_offload = self.mode == "block_offload" and name in EXPERTS
        attached = getattr(module, "_vpe_group_offload", None)
        if attached is not None and (not block_offload or attached != self._group_key()):
            _drop_group_offload(module)  # attached by a placement with other settings
        if self.mode in _ONE_AT_A_TIME and name in _BIG:
            for other in _BIG:
                if other != name:
                    self._evict(models, other)
        if _parked(module):
            _unpark(models, name)
        if name == "vae" and self.vae_tiling:
            module.enable_tiling()
        if block_offload:
            return self._group_offload(module)
        return _move(module, self.compute_device)

    def release(self, models, name: str) -> None:
        """The loop is done with `models.<name>` for now (after encoding, after VAE use)."""
        _component(models, name)
        if name in EXPERTS:
            keep = self.mode not in _ONE_AT_A_TIME  # block_offload: the hooks already keep the weights off
        elif name in ENCODERS:
            keep = not self.release_text_encoder
        else:
            keep = self.mode == "all_on_device"
        if not keep:
            self._evict(models, name)

    def finish(self, models) -> None:
        """End of a run: give cached CUDA memory back (models stay where they are for the next run)."""
        if self.compute_device.type == "cuda":
            torch.cuda.empty_cache()

    def describe(self) -> str:
        device, off = self.compute_device, _resolve(self.offload_device)
        text = {"all_on_device": f"all models on {device}",
                "one_expert": f"one expert at a time on {device}, the other waits in {off}",
                "one_expert_disk": f"one expert at a time on {device}, the other parked on disk (reloaded from its "
                                   "file)",
                "block_offload": f"block offload: weights in {off}, {self.blocks_per_group} block(s) at a time on "
                                 f"{device}"}[self.mode]
        if self.release_text_encoder:
            text += "; encoders released after encoding"
        return text + ("; VAE tiling" if self.vae_tiling else "")

    def _evict(self, models, name: str) -> None:
        """Take `models.<name>` off the compute device: parked on disk in one_expert_disk (anything with a source
        file, except the small VAE), else moved to `offload_device`."""
        module = getattr(models, name, None)
        if module is None or _parked(module):
            return
        _drop_group_offload(module)
        if self.mode == "one_expert_disk" and name != "vae" and models.sources.get(_SOURCES.get(name, "")):
            _park(module)
        else:
            _move(module, _resolve(self.offload_device))

    def _group_key(self) -> tuple:
        return self.compute_device, _resolve(self.offload_device), int(self.blocks_per_group)

    def _group_offload(self, module: nn.Module) -> nn.Module:
        """Attach diffusers' block-level group offloading once per module (CUDA: transfers on a side stream)."""
        if getattr(module, "_vpe_group_offload", None) is None:
            from diffusers.hooks import apply_group_offloading

            device, off, blocks = self._group_key()
            _move(module, off)
            stream = device.type == "cuda"
            apply_group_offloading(module, onload_device=device, offload_device=off, offload_type="block_level",
                                   num_blocks_per_group=blocks, use_stream=stream, low_cpu_mem_usage=stream)
            module._vpe_group_offload = self._group_key()
        return module


def _resolve(device: str | torch.device) -> torch.device:
    """A device with its index (bare "cuda" is the current CUDA device), so equal devices compare equal."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _component(models, name: str) -> nn.Module:
    if name not in COMPONENTS:
        raise InputError(f"Unknown model component '{name}'.", f"Use one of {', '.join(COMPONENTS)}.")
    module = getattr(models, name, None)
    if module is None:
        raise InputError(f"{models.name} has no {_LABELS[name]}.", "Load a model set that has one.")
    return module


def _first(module: nn.Module) -> torch.Tensor | None:
    return next(module.parameters(), None)


def _parked(module: nn.Module) -> bool:
    p = _first(module)
    return p is not None and p.is_meta


def _drop_group_offload(module: nn.Module) -> None:
    """Remove the group offloading hooks `Placement` attached (the weights stay in the offload device)."""
    if getattr(module, "_vpe_group_offload", None) is None:
        return
    from diffusers.hooks import HookRegistry

    registry = HookRegistry.check_if_exists_or_initialize(module)
    for hook in ("lazy_prefetch_group_offloading", "group_offloading"):
        registry.remove_hook(hook, recurse=True)
    module._vpe_group_offload = None


def _move(module: nn.Module, device: torch.device) -> nn.Module:
    p = _first(module)
    return module if p is None or p.device == device else module.to(device)


def _park(module: nn.Module) -> None:
    """Drop `module`'s tensors (tied parameters stay tied): meta tensors keep its shapes, the object stays."""
    meta = {}
    for m in module.modules():
        for key, p in m._parameters.items():
            if p is not None:
                m._parameters[key] = meta.setdefault(id(p), nn.Parameter(p.to("meta"), requires_grad=False))
        for key, b in m._buffers.items():
            if b is not None:
                m._buffers[key] = b.to("meta")


def reload_weights(models, name: str) -> nn.Module:
    """Read `models.<name>`'s weights again from its source file with the set's load options, into the same module
    object (a parked one comes back to `offload_device`'s CPU, a loaded one stays on its device). Experts come back
    without LoRAs (`vpe_loras` is emptied, unmerged LoRAs are dropped: `lora.forget_loras`). Returns the module."""
    module = _component(models, name)
    path = models.sources.get(_SOURCES.get(name, ""), "")
    if not path or not Path(path).exists():
        raise ModelFileError(f"The {_LABELS[name]} must be read again from its file, but '{path}' is gone (it was "
                             "parked on disk to free memory, or its LoRAs changed).",
                             "Put the file back and run again, or reload the models; the one_expert placement keeps "
                             "the waiting model in RAM instead.")
    _transplant(module, _reload(models, name, module, path), path)
    if name in EXPERTS:
        from .lora import forget_loras

        forget_loras(module)  # merged and unmerged LoRAs: the weights are the file's now
    return module


def _unpark(models, name: str) -> None:
    """Reload a parked component; experts get the set's LoRAs for them merged again (`lora.sync_loras`)."""
    reload_weights(models, name)
    if name in EXPERTS:
        from .lora import sync_loras

        sync_loras(models, name)


def _reload(models, name: str, module: nn.Module, path: str) -> nn.Module:
    from .models import wan

    opts = models.load_options
    dtype = opts.get("dtype", "bf16")
    if name == "text_encoder":
        return wan.load_umt5(path, opts.get("text_encoder_dtype") or dtype)[0]  # the set keeps its tokenizer
    if name == "image_encoder":
        return wan.load_clip_vision(path, dtype)[0]
    if name == "vae":
        return wan.load_wan_vae(path, opts.get("vae_dtype", "fp32"))
    info = getattr(module, "vpe_info", None)
    return wan.load_wan_transformer(path, dtype, opts.get("weight_storage", "default"),
                                    expect=None if info is None else (info.family,), slot=_LABELS[name])


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in module.named_parameters()}


def _transplant(target: nn.Module, fresh: nn.Module, path: str) -> None:
    """Give `target` the tensors of the freshly loaded `fresh` (same architecture): a parked target takes fresh's
    tensors as they are; a loaded one keeps its parameter objects (hooks stay valid) and its device."""
    if _shapes(target) != _shapes(fresh):
        raise ModelFileError(f"The model no longer matches '{Path(path).name}' (the file changed, or modules were "
                             "added to the model after loading).",
                             "Reload the models, or use the one_expert placement (keeps the waiting model in RAM).")
    modules = dict(target.named_modules(remove_duplicate=False))
    for name, source in fresh.named_modules(remove_duplicate=False):
        _take(modules[name]._parameters, source._parameters)
        _take(modules[name]._buffers, source._buffers)


def _take(mine: dict, theirs: dict) -> None:
    for key, new in theirs.items():
        old = mine.get(key)
        if old is None or new is None or old.is_meta:
            mine[key] = new
        elif old is not new:
            old.data = new.data.to(old.device)
