"""Building a model on the meta device and filling it from safetensors, with the dtype the user picked."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable

import torch
from torch import nn

from ..errors import ModelFileError
from ..gguf import assign_quantized, is_quantized, logical_shape

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
WEIGHT_STORAGE = ("default", "fp8_e4m3fn")


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[name]
    except KeyError:
        raise ModelFileError(f"Unknown precision '{name}'.", f"Use one of {', '.join(DTYPES)}.") from None


@contextlib.contextmanager
def _empty_parameters():
    """Create parameters on the meta device; buffers (RoPE tables, position ids) stay real."""
    register = nn.Module.register_parameter

    def on_meta(module, name, param):
        register(module, name, param)
        if param is not None:
            p = module._parameters[name]
            module._parameters[name] = nn.Parameter(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def build_empty(factory: Callable[[], nn.Module]) -> nn.Module:
    """Instantiate a model without allocating its weights."""
    with _empty_parameters():
        return factory()


def keep_fp32_names(model: nn.Module, dtype: torch.dtype) -> list[str]:
    """Module names the upstream library keeps in float32 when loading in `dtype` (diffusers/transformers rules)."""
    names = list(getattr(model, "_keep_in_fp32_modules", None) or [])
    if hasattr(model, "_keep_in_fp32_modules_strict"):  # transformers: the plain list applies to fp16 only
        names = (names if dtype == torch.float16 else []) + list(model._keep_in_fp32_modules_strict or [])
    return names if dtype != torch.float32 else []


def fill(model: nn.Module, tensors: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype,
         source: str, ignore: Callable[[str], bool] = lambda k: False) -> nn.Module:
    """Assign `tensors` to the empty `model` in `dtype` (float32 for the modules upstream keeps in fp32).

    Every parameter must be provided; unknown keys are an error unless `ignore(key)` is true. GGUF-quantised tensors
    go through `place_quantized` (Linear weights stay quantised).
    """
    keep = keep_fp32_names(model, dtype)
    expected = dict(model.state_dict(keep_vars=True))
    loaded, unexpected, quantized = {}, [], []
    for key, t in tensors:
        if key not in expected:
            if not ignore(key):
                unexpected.append(key)
            continue
        want = expected[key]
        if logical_shape(t) != tuple(want.shape):
            raise ModelFileError(
                f"{source}: tensor '{key}' has shape {logical_shape(t)}, the model expects {tuple(want.shape)}.",
                "The file is for a different model size or variant; pick the matching file.")
        if is_quantized(t):
            quantized.append((key, t))
            continue
        target = torch.float32 if any(k in key.split(".") for k in keep) else dtype
        loaded[key] = t.to(target) if t.is_floating_point() else t
    model.load_state_dict(loaded, strict=False, assign=True)
    place_quantized(model, quantized, dtype)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    missing = [n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta]
    if missing or unexpected:
        raise ModelFileError(
            f"{source}: the weights do not fit the model ({len(missing)} missing, e.g. {missing[:3]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:3]}).",
            "The file is incomplete or for another architecture; check it against models_manifest.json.")
    return model.eval().requires_grad_(False)


def place_quantized(model: nn.Module, tensors: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype) -> None:
    """Put GGUF-quantised tensors into `model`: a Linear's weight stays quantised (dequantised per call by
    `GGUFLinear`); other tensors, and all of the modules upstream keeps in float32 in some precision (e.g. Wan's time
    embedder, whose dtype diffusers reads from its first weight), are dequantised now to their load dtype."""
    keep, dense = keep_fp32_names(model, dtype), keep_fp32_names(model, torch.float16)
    for key, t in tensors:
        parts = key.split(".")
        target = torch.float32 if any(k in parts for k in keep) else dtype
        assign_quantized(model, key, t, target, keep=not any(k in parts for k in dense))


class Fp8StorageLinear(nn.Linear):
    """A Linear whose weight is stored in float8 and upcast to the input's dtype for each matmul."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return nn.functional.linear(x, self.weight.to(x.dtype), bias)


def store_fp8(model: nn.Module) -> nn.Module:
    """Store the weights of every Linear in `model` in float8_e4m3fn (half of bf16's memory); compute stays in
    the activations' dtype."""
    for module in model.modules():
        if type(module) is nn.Linear:
            module.weight = nn.Parameter(module.weight.data.to(torch.float8_e4m3fn), requires_grad=False)
            module.__class__ = Fp8StorageLinear
    return model


def apply_weight_storage(blocks: Iterable[nn.Module], weight_storage: str) -> None:
    """Apply the user's weight storage to a model's transformer blocks (they hold >99% of the weights; the
    embedders and the output head keep the load dtype)."""
    if weight_storage not in WEIGHT_STORAGE:
        raise ModelFileError(f"Unknown weight storage '{weight_storage}'.", f"Use one of {', '.join(WEIGHT_STORAGE)}.")
    if weight_storage == "fp8_e4m3fn":
        for block in blocks:
            store_fp8(block)
