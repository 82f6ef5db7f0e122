"""A LoRA rewritten in the layout ComfyUI's own LoRA loader reads: the model's original module names under
`diffusion_model.`, with `lora_down` / `lora_up` / `alpha` / `diff` / `diff_b` tensors.

Every layout `read_lora` understands is matched to a model given by its original parameter names and shapes, with
the names tables and the refusals of the library's own loader (`apply.match`), including what ComfyUI's loader drops
(diffusers / PEFT names, PEFT adapter names such as `.default`, OneTrainer and LyCORIS names, lightx2v's `diff_m`,
the alpha diffusers keeps in the file's metadata). ComfyUI then turns the result into its weight patches
(`comfy.lora.load_lora` + `ModelPatcher.add_patches`), so merging, offloading and low-VRAM loading stay ComfyUI's.
Nothing here imports ComfyUI. Wan models (2.1 / 2.2, every expert and variant) and FLUX.1 transformers.
"""

from __future__ import annotations

import math

import torch

from ..errors import ModelFileError
from ..models.wan_keys import wan_key_to_diffusers, wan_key_to_original
from .apply import LoraReport, match
from .formats import LoraDelta, LoraFile
from .targets import ModelNames, Piece, model_family

PREFIX = "diffusion_model."
# the tensor names ComfyUI's LoRA loader reads for a module (the rest of a module's keys it drops)
CORE_SUFFIXES = (".lora_up.weight", ".lora_down.weight", ".lora_A.weight", ".lora_B.weight", ".lora.up.weight",
                 ".lora.down.weight", ".lora_A.default.weight", ".lora_B.default.weight", ".alpha", ".diff",
                 ".diff_b")


def describe_shapes(shapes: dict[str, tuple[int, ...]]) -> str:
    """"Wan, 40 blocks, hidden size 5120" from a Wan model's original parameter names and shapes, or "FLUX, 19 double
    and 38 single blocks, hidden size 3072" from a FLUX transformer's diffusers names."""
    if "x_embedder.weight" in shapes:
        double = len({k.split(".")[1] for k in shapes if k.startswith("transformer_blocks.")})
        single = len({k.split(".")[1] for k in shapes if k.startswith("single_transformer_blocks.")})
        return f"FLUX, {double} double and {single} single blocks, hidden size {shapes['x_embedder.weight'][0]}"
    blocks = len({k.split(".")[1] for k in shapes if k.startswith("blocks.")})
    hidden = shapes.get("patch_embedding.weight", (0,))[0]
    return f"Wan, {blocks} blocks, hidden size {hidden}"


def original_layout(lora: LoraFile, shapes: dict[str, tuple[int, ...]], target: str = "model"
                    ) -> tuple[dict[str, torch.Tensor], LoraReport]:
    """`lora` as `{"diffusion_model.<module>.lora_down.weight": ..., ...}` for the Wan model whose original parameter
    names (without `diffusion_model.`) have `shapes`, and the report; refused as the library's loader refuses."""
    diffusers = {}
    for key, shape in shapes.items():
        name = wan_key_to_diffusers(key)
        if name is not None:
            diffusers[name] = shape
    if model_family(diffusers) != "wan":
        raise ModelFileError(f"The {target} is not a Wan model; this loader patches Wan and FLUX.1 models.",
                             "Use ComfyUI's own LoRA loader for other models.")
    return _layout(lora, diffusers, target, lambda: describe_shapes(shapes),
                   module=lambda name: PREFIX + wan_key_to_original(name).removesuffix(".weight").removesuffix(".bias"),
                   shape=lambda name: shapes[wan_key_to_original(name)])


def flux_layout(lora: LoraFile, shapes: dict[str, tuple[int, ...]], target: str = "model"
                ) -> tuple[dict[str, torch.Tensor], LoraReport]:
    """`lora` as `{"transformer.<module>.lora_down.weight": ..., ...}` (diffusers names, which ComfyUI's LoRA key map
    sends to its fused BFL weights with their row offsets) for the FLUX transformer whose diffusers parameter names
    have `shapes`, and the report; refused as the library's loader refuses."""
    if model_family(shapes) != "flux":
        raise ModelFileError(f"The {target} is not a FLUX.1 model.", "Use ComfyUI's own LoRA loader for it.")
    return _layout(lora, shapes, target, lambda: describe_shapes(shapes),
                   module=lambda name: "transformer." + name.removesuffix(".weight").removesuffix(".bias"),
                   shape=lambda name: shapes[name])


def _layout(lora: LoraFile, shapes: dict, target: str, description, *, module, shape):
    """Match `lora` to the model whose diffusers names have `shapes`; write each piece under `module(name)` (LoRA pair
    and alpha, diff reshaped to `shape(name)`, diff_b)."""
    params = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    report, matched = match(lora, ModelNames.of(params), target, description)
    out: dict[str, torch.Tensor] = {}
    for delta, pieces in matched:
        for piece in pieces:
            if piece.weight is not None:
                name = module(piece.weight)
                if piece.up is not None:
                    out[name + ".lora_down.weight"] = piece.down
                    out[name + ".lora_up.weight"] = piece.up
                    alpha = _alpha(delta, piece)
                    if alpha is not None:
                        out[name + ".alpha"] = torch.tensor(alpha, dtype=torch.float32)
                if piece.diff is not None:
                    out[name + ".diff"] = piece.diff.reshape(shape(piece.weight))
            if piece.bias is not None:
                out[module(piece.bias) + ".diff_b"] = piece.diff_b.reshape(-1)
    return out, report


def _alpha(delta: LoraDelta, piece: Piece) -> float | None:
    """The alpha that makes ComfyUI's alpha / rank equal our scale: the file's own alpha where it has one (so the
    numbers are the ones ComfyUI reads from the file itself), alpha * sqrt(rank) for rsLoRA, none for scale 1."""
    if delta.alpha is None:
        return None if piece.scale == 1.0 else piece.scale * piece.down.shape[0]
    return delta.alpha * math.sqrt(delta.rank) if delta.rslora else delta.alpha


def core_reads(lora: LoraFile, core_names) -> int:
    """How many of the LoRA's modules ComfyUI's own loader would read from the file as it is (`core_names`: its key
    map): those it names and whose every tensor has a name it reads."""
    return sum(1 for d in lora.deltas.values()
               if d.source in core_names and all(k.endswith(CORE_SUFFIXES) for k in d.keys))
