"""A FLUX.1 model set (transformer, CLIP-L, T5-XXL, VAE, tokenizers) and its LoRAs.

`load_flux_models` reads the files artists have (ComfyUI/BFL single files or diffusers folders) through
`models/flux.py`. LoRAs are listed on the set (`with_flux_lora` returns a new set, the input set is unchanged) and
`sync_flux_loras` makes the transformer hold exactly the listed ones before a run: unmerged LoRAs are added, removed
or re-weighted in place (no file read); a change to the merged ones re-reads the transformer's weights from its file
into the same module, then merges the listed ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..lora import (
    apply_lora,
    forget_loras,
    remove_lora,
    set_lora_strength,
    unmerged_loras,
)
from ..models.flux import load_clip_l, load_flux_transformer, load_flux_vae, load_t5xxl

log = logging.getLogger(__name__)
_MANAGED = "flux-set:"


@dataclass
class FluxModels:
    """A loaded FLUX.1 set. `text_encoder`/`tokenizer`: CLIP-L (pooled prompt), `text_encoder_2`/`tokenizer_2`:
    T5-XXL (prompt tokens). `loras`: (path, strength, merge) in order. `placement`: a `Placement` (all_on_device,
    one_expert = one big model on the GPU at a time, block_offload) that moves the components while editing; None:
    nothing is moved, it all runs where it is."""

    transformer: object
    text_encoder: object
    tokenizer: object
    text_encoder_2: object
    tokenizer_2: object
    vae: object
    sources: dict[str, str] = field(default_factory=dict)
    load_options: dict = field(default_factory=dict)
    loras: list = field(default_factory=list)
    placement: object = None

    def __post_init__(self):
        check_flux_placement(self.placement)

    @property
    def name(self) -> str:
        return self.transformer.vpe_info.name

    def summary(self) -> str:
        return "\n".join([self.name] + [f"{k}: {Path(v).name}" for k, v in self.sources.items()]
                         + [f"LoRA {Path(p).name} x{s:g} ({'merged' if m else 'unmerged'})" for p, s, m in self.loras])


def check_flux_placement(placement) -> None:
    """A FLUX set takes all_on_device, one_expert or block_offload (its files are not re-read: no disk parking)."""
    from ..errors import InputError
    from ..placement import FLUX_PLACEMENTS

    if placement is not None and placement.mode not in FLUX_PLACEMENTS:
        raise InputError(f"FLUX sets cannot use the '{placement.mode}' placement.",
                         f"Use one of {', '.join(FLUX_PLACEMENTS)}.")


def load_flux_models(transformer: str | Path, clip_l: str | Path | None = None, t5xxl: str | Path | None = None,
                     vae: str | Path | None = None, dtype: str = "bf16", weight_storage: str = "default",
                     text_encoder_dtype: str | None = None, vae_dtype: str = "fp32",
                     clip_tokenizer: str | Path | None = None, t5_tokenizer: str | Path | None = None,
                     placement=None) -> FluxModels:
    """Load a FLUX.1-dev set (on the CPU). `transformer` is flux1-dev.safetensors (or a diffusers pipeline folder,
    whose text_encoder / text_encoder_2 / vae folders are used for the components not given). `placement`: see
    `FluxModels`."""
    check_flux_placement(placement)
    root = Path(transformer)
    pipeline = root.is_dir() and (root / "model_index.json").is_file()
    clip_l = clip_l or (root if pipeline else None)
    t5xxl = t5xxl or (root / "text_encoder_2" if pipeline else None)
    vae = vae or (root if pipeline else None)
    from ..errors import ModelFileError

    for what, p in (("CLIP-L text encoder (clip_l)", clip_l), ("T5-XXL text encoder (t5xxl_fp16)", t5xxl),
                    ("VAE (ae.safetensors)", vae)):
        if p is None:
            raise ModelFileError(f"No {what} given for '{root.name}'.", f"Pick the {what} file on the loader.")
    te_dtype = text_encoder_dtype or dtype
    model = load_flux_transformer(root, dtype, weight_storage, expect=("dev", "schnell"))
    clip, clip_tok = load_clip_l(clip_l, te_dtype, clip_tokenizer)
    t5, t5_tok = load_t5xxl(t5xxl, te_dtype, t5_tokenizer)
    return FluxModels(model, clip, clip_tok, t5, t5_tok, load_flux_vae(vae, vae_dtype),
                      sources={"transformer": str(root), "clip_l": str(clip_l), "t5xxl": str(t5xxl), "vae": str(vae)},
                      load_options={"dtype": dtype, "weight_storage": weight_storage}, placement=placement)


def with_flux_lora(models: FluxModels, path: str | Path, strength: float = 1.0, merge: bool = True) -> FluxModels:
    """A new set with one more LoRA (checked against the transformer now: a LoRA for another model is refused)."""
    from ..lora.apply import plan
    from ..lora.formats import read_lora

    report = plan(models.transformer, read_lora(path), "FLUX transformer").report
    report.strength, report.merged = strength, merge
    log.info(report.summary())
    new = replace(models, loras=list(models.loras) + [(str(path), float(strength), bool(merge))])
    return new


def sync_flux_loras(models: FluxModels) -> None:
    """Make the transformer hold exactly `models.loras` (see the module docstring)."""
    module = models.transformer
    merged = tuple((p, s) for p, s, m in models.loras if m)
    unmerged: dict[str, float] = {}
    for p, s, m in models.loras:
        if not m:
            unmerged[p] = unmerged.get(p, 0.0) + s
    applied = getattr(module, "vpe_loras", ())
    if merged[:len(applied)] != applied:
        _reload_transformer(models)
        applied = ()
    for path, strength in merged[len(applied):]:
        apply_lora(module, path, strength, merge=True)
    module.vpe_loras = merged
    current = {n[len(_MANAGED):]: s for n, s in unmerged_loras(module).items() if n.startswith(_MANAGED)}
    for path in current.keys() - unmerged.keys():
        remove_lora(module, _MANAGED + path)
    for path, strength in unmerged.items():
        if path not in current:
            apply_lora(module, path, strength, merge=False, name=_MANAGED + path)
        elif current[path] != strength:
            set_lora_strength(module, _MANAGED + path, strength)


def _reload_transformer(models: FluxModels) -> None:
    """Read the transformer's weights again from its file into the same module (LoRAs dropped)."""
    from ..placement import _drop_group_offload

    module = models.transformer
    _drop_group_offload(module)  # the next `activate` attaches it again, to the new tensors
    opts = models.load_options
    fresh = load_flux_transformer(models.sources["transformer"], opts.get("dtype", "bf16"),
                                  opts.get("weight_storage", "default"))
    forget_loras(module)
    module.load_state_dict(fresh.state_dict())
