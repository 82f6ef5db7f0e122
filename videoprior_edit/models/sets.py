"""Model sets: everything one Wan workflow needs, loaded and checked together."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelFileError
from ..weights import WeightFile
from .configs import config_data
from .core import apply_weight_storage, build_empty, parse_dtype, place_quantized
from .wan import (EXPERT_FOLDERS, _family_description, component_path, expert_hint, inspect_wan, load_clip_vision,
                  load_umt5, load_wan_transformer, load_wan_vae, quantized_layout)


I2V_FAMILIES = ("i2v", "i2v-a14b", "flf2v")


@dataclass
class WanModels:
    """A loaded Wan model set. `transformer` is the single model or the high-noise expert; `transformer_2` the
    low-noise expert of Wan2.2-A14B (used while t < boundary_ratio * 1000)."""

    variant: str
    transformer: object
    text_encoder: object
    tokenizer: object
    vae: object
    transformer_2: object | None = None
    image_encoder: object | None = None
    image_processor: object | None = None
    boundary_ratio: float | None = None
    sources: dict[str, str] = field(default_factory=dict)
    # How the set was loaded (dtype, weight_storage, text_encoder_dtype, vae_dtype): a parked component is reloaded
    # from `sources` with these.
    load_options: dict = field(default_factory=dict)
    # LoRAs applied to the experts, in order: (path, strength, expert) with expert "high", "low" or "both".
    loras: list = field(default_factory=list)
    placement: object | None = None  # a placement.Placement; None = everything stays where it was loaded

    @property
    def family(self) -> str:
        return self.transformer.vpe_info.family

    @property
    def name(self) -> str:
        data = config_data("wan_transformer")["variants"]
        tiny = " (test-only size)" if _test_only(self.transformer.vpe_info.size) else ""
        return data[self.variant]["name"] + tiny if self.variant in data else self.variant

    def summary(self) -> str:
        parts = [f"{self.name}: " + ("two experts, switch at t = %g" % (self.boundary_ratio * 1000)
                                     if self.transformer_2 is not None else "single model")]
        parts += [f"{k}: {Path(v).name}" for k, v in self.sources.items()]
        return "\n".join(parts)


def _pipeline_part(root: Path | None, folders: tuple[str, ...]) -> Path | None:
    """A component folder inside a diffusers pipeline / official repo folder, if there is one."""
    if root is None or not Path(root).is_dir():
        return None
    part = component_path(Path(root), folders)
    return part if part != Path(root) else None


def load_wan_models(model: str | Path, model_low: str | Path | None = None, text_encoder: str | Path | None = None,
                    vae: str | Path | None = None, clip_vision: str | Path | None = None, dtype: str = "bf16",
                    weight_storage: str = "default", text_encoder_dtype: str | None = None,
                    vae_dtype: str = "fp32", placement=None, task: str | None = None) -> WanModels:
    """Load a Wan model set from files or folders.

    `model` is a ComfyUI single file (the high-noise expert for Wan2.2-A14B), a diffusers pipeline folder or an
    official repo folder; components not given are taken from that folder when it has them. `placement` (a
    `placement.Placement`) moves the components during runs; with "one_expert_disk" the experts are only read when
    first activated. `task="i2v"` refuses text-to-video models before any weights are read.
    """
    root = Path(model)
    high_path = _pipeline_part(root, EXPERT_FOLDERS["high"]) or root
    if expert_hint(high_path) == "low":
        raise ModelFileError(f"'{high_path.name}' looks like the LOW-noise expert but was given as the main/high-noise "
                             "model.", "Swap the two expert inputs: high-noise first, low-noise second.")
    low_path = Path(model_low) if model_low else _pipeline_part(root, EXPERT_FOLDERS["low"])
    if low_path is not None and expert_hint(low_path) == "high":
        raise ModelFileError(f"'{low_path.name}' looks like the HIGH-noise expert but was given as the low-noise one.",
                             "Swap the two expert inputs: high-noise first, low-noise second.")
    te_path = text_encoder or _pipeline_part(root, ("text_encoder",))
    vae_path = vae or _pipeline_part(root, ("vae",))
    clip_path = clip_vision or _pipeline_part(root, ("image_encoder",))
    for what, p in (("text encoder (umt5_xxl)", te_path), ("VAE (wan_2.1_vae)", vae_path)):
        if p is None:
            raise ModelFileError(f"No {what} given for '{root.name}'.", f"Pick the {what} file on the loader.")

    # Every check that the headers can answer comes before gigabytes are read.
    info = inspect_wan(WeightFile(high_path, allow_gguf=True))
    if task == "i2v" and info.family not in I2V_FAMILIES:
        raise ModelFileError(f"'{high_path.name}' is {info.names}, a text-to-video model; image editing needs an "
                             "image-to-video model.", "Pick wan2.2_i2v_high_noise_14B_* and wan2.2_i2v_low_noise_14B_* "
                             "(or Wan2.1-I2V / ChronoEdit with clip_vision_h).")
    if low_path is None and info.family == "i2v-a14b":
        raise ModelFileError(f"'{high_path.name}' is a Wan2.2-I2V-A14B expert; this model needs both experts.",
                             "Also pick the low-noise file (wan2.2_i2v_low_noise_14B_*.safetensors).")
    variant = _variant(info.family, info.size, two_experts=low_path is not None, file_name=high_path.name)
    if info.config["image_dim"] and clip_path is None:
        raise ModelFileError(f"'{high_path.name}' ({info.names}) needs the CLIP image encoder.",
                             "Pick clip_vision_h.safetensors in the clip_vision input.")
    load = _empty_transformer if getattr(placement, "mode", None) == "one_expert_disk" else load_wan_transformer
    high = load(high_path, dtype, weight_storage, slot="model")
    low = None if low_path is None else load(low_path, dtype, weight_storage, expect=(info.family,),
                                             slot="low-noise expert")
    image_encoder = processor = None
    if info.config["image_dim"]:
        image_encoder, processor = load_clip_vision(clip_path, dtype)
    te, tok = load_umt5(te_path, text_encoder_dtype or dtype)
    boundary = config_data("wan_transformer")["variants"].get(variant, {}).get("boundary_ratio")
    sources = {"model": str(high_path), "model_low": str(low_path or ""), "text_encoder": str(te_path),
               "vae": str(vae_path), "clip_vision": str(clip_path or "")}
    return WanModels(variant=variant, transformer=high, transformer_2=low, text_encoder=te, tokenizer=tok,
                     vae=load_wan_vae(vae_path, vae_dtype), image_encoder=image_encoder, image_processor=processor,
                     boundary_ratio=boundary if low is not None else None,
                     sources={k: v for k, v in sources.items() if v},
                     load_options={"dtype": dtype, "weight_storage": weight_storage,
                                   "text_encoder_dtype": text_encoder_dtype or dtype, "vae_dtype": vae_dtype},
                     placement=placement)


def _empty_transformer(path: Path, dtype: str, weight_storage: str, expect: tuple[str, ...] | None = None,
                       slot: str = "model"):
    """A Wan DiT with `load_wan_transformer`'s checks and structure but its weights on the meta device (nothing
    read beyond the header); the placement fills it when it is first activated."""
    from diffusers import WanTransformer3DModel

    parse_dtype(dtype)
    apply_weight_storage([], weight_storage)
    wf = WeightFile(path, allow_gguf=True)
    info = inspect_wan(wf)
    if expect and info.family not in expect:
        raise ModelFileError(f"'{Path(path).name}' is {info.description}, but the {slot} input needs "
                             f"{' or '.join(_family_description(f) for f in expect)}.",
                             "Pick a matching file for this input (see the node's tooltip).")
    model = build_empty(lambda: WanTransformer3DModel(**info.config)).eval().requires_grad_(False)
    place_quantized(model, quantized_layout(wf), parse_dtype(dtype))  # GGUF: the layers the weights will fit
    apply_weight_storage(model.blocks, weight_storage)
    model.vpe_info = info
    return model


def _test_only(size: str) -> bool:
    """Sizes for tests and benchmarks only (tiny zoo, bench models): any variant of their family may use them."""
    return bool(config_data("wan_transformer")["sizes"][size].get("test_only"))


def _variant(family: str, size: str, two_experts: bool, file_name: str = "") -> str:
    """The variant id from config data (tiny zoo models map to the variant their file name names)."""
    variants = config_data("wan_transformer")["variants"]
    candidates = [v for v, d in variants.items() if d["family"] == family and (d.get("experts", 1) == 2) == two_experts
                  and (_test_only(size) or d["size"] == size)]
    if two_experts and not candidates:
        raise ModelFileError(f"Two experts were given, but {family} models are single models.",
                             "Leave the low-noise input empty for Wan2.1 models.")
    named = [v for v in candidates if variants[v]["size"].lower() in file_name.lower()]
    preferred = named if _test_only(size) else candidates
    return (preferred or candidates)[0]
