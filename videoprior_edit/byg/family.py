"""What the ByG trainer needs from a model family: Wan text-to-video (video) or FLUX.1-dev (image).

A `Family` holds the experts (one model; or Wan2.2-A14B's high- and low-noise experts, each with its sigma range)
and knows how to
- encode the data: media -> clean latents, the four texts -> conditioning (kept on the CPU);
- run a velocity: `velocity(module, x, sigma, text, source)`, the editor (source tokens concatenated) when `source`
  is given, the plain text-to-video / text-to-image model otherwise;
- name the LoRA: which Linears it covers and how its files are written (musubi/kohya `lora_unet_` + diffusers/PEFT
  `transformer.` names, both read by `videoprior_edit.lora`).

Latents: Wan `(B, 16, F, h, w)` normalised with the VAE's mean/std; FLUX `(B, 16, h, w)` with FLUX's shift/scale, packed
into 2x2 tokens only inside the velocity. Both use x_sigma = (1 - sigma) x0 + sigma eps and v = eps - x0.
Texts: Wan a `(B, 512, D)` tensor (real tokens, zero padded); FLUX a dict {"embeds": T5 `(B, L, D)`, "pooled": CLIP
`(B, P)`}.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass

import torch

from ..errors import InputError, VPEError
from .image import flux_velocity

WAN_TARGETS = {  # diffusers module names inside `blocks.N.`
    "attn+ffn": ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                 "attn2.to_v", "attn2.to_out.0", "ffn.net.0.proj", "ffn.net.2"),
    "attn": ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
             "attn2.to_out.0"),
}
_FLUX_DOUBLE_ATTN = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                     "attn.add_v_proj", "attn.to_add_out")
FLUX_TARGETS = {  # (inside `transformer_blocks.N.`, inside `single_transformer_blocks.N.`)
    "attn+ffn": (_FLUX_DOUBLE_ATTN + ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"),
                 ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out")),
    "attn": (_FLUX_DOUBLE_ATTN, ("attn.to_q", "attn.to_k", "attn.to_v")),
}
LORA_TARGETS = tuple(WAN_TARGETS)


@dataclass
class Expert:
    """One transformer of the family and the sigmas it runs at (`low <= sigma < high`; the top expert also takes
    sigma = 1). `label`: "model" (single model), "high" or "low" (Wan2.2-A14B experts)."""

    label: str
    module: torch.nn.Module
    low: float = 0.0
    high: float = 1.0
    trains: bool = True


# ----------------------------------------------------------------------------------------------- batches of texts
def cat_texts(texts: list):
    """Concatenate text conditionings (tensors or dicts of tensors) along the batch."""
    if isinstance(texts[0], dict):
        return {k: torch.cat([t[k] for t in texts]) for k in texts[0]}
    return torch.cat(texts)


def take(value, index: torch.Tensor):
    """Rows `index` of a tensor or of every tensor of a dict."""
    if isinstance(value, dict):
        return {k: v[index] for k, v in value.items()}
    return value[index]


def to_device(value, device):
    if isinstance(value, dict):
        return {k: v.to(device) for k, v in value.items()}
    return value.to(device)


@contextlib.contextmanager
def adapters_off(module):
    """The frozen base: the same transformer with its PEFT LoRA disabled."""
    module.disable_adapters()
    try:
        yield module
    finally:
        module.enable_adapters()


# ----------------------------------------------------------------------------------------------- the base class
class Family:
    """The interface the trainer uses (see the module docstring); subclasses: `WanFamily`, `FluxFamily`."""

    name = ""
    block_classes: tuple[str, ...] = ()  # transformer block classes (FSDP wraps each)

    def __init__(self, models, experts: list[Expert]):
        self.models, self.experts = models, experts

    @property
    def trained(self) -> list[Expert]:
        return [e for e in self.experts if e.trains]

    def expert_index(self, sigma: torch.Tensor) -> torch.Tensor:
        """Per sample, the index in `experts` of the expert whose sigma range holds it."""
        index = torch.zeros(sigma.shape, dtype=torch.long, device=sigma.device)
        for i, e in enumerate(self.experts):
            inside = (sigma >= e.low) & ((sigma < e.high) | (e.high >= 1.0))
            index[inside] = i
        return index

    def velocity(self, module, x, sigma, text, source=None, cfg=None) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, examples, cfg, device) -> list[dict]:
        raise NotImplementedError

    def collate_texts(self, items: list):
        raise NotImplementedError

    @staticmethod
    def lora_modules(module, targets: str) -> list[str]:
        raise NotImplementedError

    def lora_files(self, tensors: dict[str, torch.Tensor], shapes: dict[str, tuple], rank: int, alpha: float,
                   dtype) -> tuple[dict, dict, str]:
        """(musubi/kohya dict, diffusers/PEFT dict, PEFT metadata JSON) from the LoRA's whole tensors by PEFT
        parameter name (`<module>.lora_A.default.weight`); `shapes`: the base weights' shapes by parameter name."""
        raise NotImplementedError

    def default_shift(self, latents: torch.Tensor) -> float:
        raise NotImplementedError

    def default_size(self) -> tuple[int, int]:
        raise NotImplementedError

    def release_encoders(self) -> None:
        """Free the text encoders and VAE once the data is encoded."""


def _pairs(tensors: dict[str, torch.Tensor], dtype) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(module name, down, up) for each LoRA module in `tensors` (PEFT parameter names)."""
    out = []
    for name, down in tensors.items():
        if ".lora_A." not in name:
            continue
        module = name.split(".lora_A.")[0]
        up = tensors[name.replace(".lora_A.", ".lora_B.")]
        out.append((module, down.detach().to("cpu", dtype).contiguous(), up.detach().to("cpu", dtype).contiguous()))
    return out


def _peft_dict(pairs, rank: int, alpha: float) -> tuple[dict, str]:
    peft_sd, targets = {}, []
    for module, down, up in pairs:
        peft_sd[f"transformer.{module}.lora_A.weight"] = down.clone()
        peft_sd[f"transformer.{module}.lora_B.weight"] = up.clone()
        targets.append(module)
    metadata = json.dumps({"transformer.r": rank, "transformer.lora_alpha": alpha,
                           "transformer.target_modules": targets, "transformer.use_rslora": False})
    return peft_sd, metadata


# ----------------------------------------------------------------------------------------------- Wan
class WanFamily(Family):
    """Wan text-to-video: Wan2.1-T2V (one model) or Wan2.2-T2V-A14B (high-noise expert for sigma >= boundary,
    low-noise below; diffusers' `boundary_ratio` 0.875, i.e. t >= 875)."""

    name = "wan"
    block_classes = ("WanTransformerBlock",)

    @classmethod
    def from_models(cls, models, expert: str = "both") -> WanFamily:
        if models.family != "t2v":
            raise InputError(f"{models.name} is not a text-to-video model.",
                             "Train ByG on Wan2.1-T2V (1.3B / 14B) or Wan2.2-T2V-A14B (both experts).")
        if models.transformer_2 is None:
            if expert not in ("both", "high"):
                raise InputError(f"{models.name} is a single model: --expert {expert} needs Wan2.2-T2V-A14B.",
                                 "Leave --expert at 'both' for single models.")
            return cls(models, [Expert("model", models.transformer)])
        b = float(models.boundary_ratio)
        return cls(models, [Expert("high", models.transformer, b, 1.0, expert in ("both", "high")),
                            Expert("low", models.transformer_2, 0.0, b, expert in ("both", "low"))])

    def velocity(self, module, x, sigma, text, source=None, cfg=None) -> torch.Tensor:
        if source is None:
            return wan_velocity(module, x, sigma, text)
        return edit_velocity(module, x, source, sigma, text, getattr(cfg, "source_timestep", "same"),
                             getattr(cfg, "source_positions", "same"))

    @torch.no_grad()
    def encode(self, examples, cfg, device) -> list[dict]:
        """Per example: normalised source latents `(16, F', h, w)` (VAE mode) and the real-token embeddings of its
        four texts, all on CPU; the text encoder and VAE are used here only (then released by the placement)."""
        from ..placement import Placement
        from ..sampling.condition import encode_mode, normalize_latents
        from ..text import PromptEncoder
        from .data import load_media

        models = self.models
        place = models.placement or Placement("one_expert", device=device)
        encoder = PromptEncoder(place.activate(models, "text_encoder"), models.tokenizer)
        texts = {}
        for ex in examples:
            for text in ex.texts():
                if text not in texts:
                    texts[text] = encoder([text])[0][: max(1, encoder.token_count(text))].clone()
        encoder.clear()
        place.release(models, "text_encoder")
        vae = place.activate(models, "vae")
        out = []
        for ex in examples:
            pixels = load_media(ex.media, cfg.width, cfg.height, cfg.num_frames)[None]
            latents = normalize_latents(vae, encode_mode(vae, pixels).float())[0].cpu()
            out.append({"latents": latents, "texts": [texts[t] for t in ex.texts()]})
        place.release(models, "vae")
        return out

    def collate_texts(self, items: list) -> torch.Tensor:
        return pad_text(items)

    @staticmethod
    def lora_modules(module, targets: str) -> list[str]:
        return [n for n, _ in module.named_modules()
                if n.startswith("blocks.") and n.count(".") >= 2 and n.split(".", 2)[2] in WAN_TARGETS[targets]]

    def lora_files(self, tensors, shapes, rank, alpha, dtype):
        from ..models.wan_keys import wan_key_to_original

        pairs = _pairs(tensors, dtype)
        musubi = {}
        for module, down, up in pairs:
            original = wan_key_to_original(module + ".weight")
            if original is None:
                raise VPEError(f"No original Wan name for '{module}'.")
            stem = "lora_unet_" + original[: -len(".weight")].replace(".", "_")
            musubi[stem + ".lora_down.weight"], musubi[stem + ".lora_up.weight"] = down, up
            musubi[stem + ".alpha"] = torch.tensor(float(alpha), dtype=dtype)
        return (musubi, *_peft_dict(pairs, rank, alpha))

    def default_shift(self, latents) -> float:
        return 3.0  # Wan's 480p sampling shift: biases toward high noise, as the paper wants

    def default_size(self) -> tuple[int, int]:
        return 576, 320  # paper: 320x576 video


def pad_text(items: list[torch.Tensor]) -> torch.Tensor:
    """Wan text embeddings (real tokens only) zero-padded to 512 tokens, stacked."""
    from ..text import MAX_TOKENS

    out = torch.zeros(len(items), MAX_TOKENS, items[0].shape[-1], dtype=items[0].dtype)
    for row, item in zip(out, items):
        row[: item.shape[0]] = item[:MAX_TOKENS]
    return out


def _module_dtype(module, name: str) -> torch.dtype:
    return getattr(module, name).weight.dtype


def wan_velocity(transformer, noisy: torch.Tensor, sigma: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The Wan T2V model's velocity on `noisy` (no source tokens; adapters as they are)."""
    dtype = _module_dtype(transformer, "patch_embedding")
    return transformer(hidden_states=noisy.to(dtype), timestep=sigma * 1000, encoder_hidden_states=text.to(dtype),
                       return_dict=False)[0].float()


def base_velocity(transformer, noisy: torch.Tensor, sigma: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The frozen T2V model's velocity (LoRA disabled, no source tokens)."""
    with adapters_off(transformer):
        return wan_velocity(transformer, noisy, sigma, text)


def edit_velocity(transformer, noisy: torch.Tensor, source: torch.Tensor, sigma: torch.Tensor, text: torch.Tensor,
                  source_timestep: str = "same", positions: str = "same") -> torch.Tensor:
    """The Wan editor's velocity, computed by the ByG editor's own input hook (`byg.video.SourceTokens`): `[noisy,
    source]` concatenated along frames, source frames at the same temporal positions (0..F-1 twice), optional
    timestep 0 on the source tokens; the prediction is sliced to the first F frames."""
    from ..sampling.rope import temporal_positions
    from .video import SourceTokens

    dtype, frames = _module_dtype(transformer, "patch_embedding"), noisy.shape[2]
    hook = SourceTokens(source, positions, source_timestep)
    x, t, rope = hook.model_input(None, noisy.to(dtype), sigma * 1000, None)
    with temporal_positions(transformer, rope):
        out = transformer(hidden_states=x, timestep=t, encoder_hidden_states=text.to(dtype), return_dict=False)[0]
    return out[:, :, :frames].float()


# ----------------------------------------------------------------------------------------------- FLUX
class FluxFamily(Family):
    """FLUX.1-dev image editing: the source image's packed VAE tokens concatenated after the noisy ones (ids equal
    to the noisy tokens' with `source_positions="same"`, Kontext's offset ids with "offset"); FLUX's guidance
    embedding at `cfg.guidance`; timestep = sigma (the transformer scales it by 1000)."""

    name = "flux"
    block_classes = ("FluxTransformerBlock", "FluxSingleTransformerBlock")

    @classmethod
    def from_models(cls, models, expert: str = "both") -> FluxFamily:
        if expert not in ("both", "high"):
            raise InputError(f"FLUX has one model: --expert {expert} is for Wan2.2-T2V-A14B.",
                             "Leave --expert at 'both'.")
        if not models.transformer.config.guidance_embeds:
            raise InputError(f"{models.name} has no guidance embedder (FLUX.1-schnell).", "Train on FLUX.1-dev.")
        return cls(models, [Expert("model", models.transformer)])

    def velocity(self, module, x, sigma, text, source=None, cfg=None) -> torch.Tensor:
        positions = getattr(cfg, "source_positions", "same")
        return flux_velocity(module, x, sigma, text, source, "byg" if positions == "same" else "kontext",
                             getattr(cfg, "guidance", 3.5))

    @torch.no_grad()
    def encode(self, examples, cfg, device) -> list[dict]:
        """Per example: FLUX latents `(16, h, w)` of the first frame (latent mode, shift/scale) and its four texts
        ({"embeds": T5 `(L, D)`, "pooled": CLIP `(P,)`}, the transformer's dtype), all on CPU."""
        from ..placement import Placement
        from .data import load_media
        from .image import encode_flux_image, encode_flux_prompts, run_placed

        models = self.models
        place = models.placement or Placement("one_expert", device=device)
        dtype = _module_dtype(models.transformer, "x_embedder")
        unique = list(dict.fromkeys(text for ex in examples for text in ex.texts()))
        encoded = encode_flux_prompts(models, unique, cfg.max_sequence_length or None, device, place)
        texts = {text: {k: v[0].to("cpu", dtype) for k, v in e.items()} for text, e in zip(unique, encoded)}

        def latents(vae):
            return [encode_flux_image(vae, load_media(ex.media, cfg.width, cfg.height, 1)[:, 0][None]).float()[0].cpu()
                    for ex in examples]  # (1, 3, H, W) pictures -> (16, h, w)

        return [{"latents": x, "texts": [texts[t] for t in ex.texts()]}
                for ex, x in zip(examples, run_placed(models, place, "vae", latents))]

    def release_encoders(self) -> None:
        for name in ("text_encoder", "text_encoder_2", "vae"):
            setattr(self.models, name, None)

    def collate_texts(self, items: list) -> dict:
        return {k: torch.stack([i[k] for i in items]) for k in items[0]}

    @staticmethod
    def lora_modules(module, targets: str) -> list[str]:
        double, single = FLUX_TARGETS[targets]
        out = []
        for n, _ in module.named_modules():
            parts = n.split(".", 2)
            if len(parts) == 3 and ((parts[0] == "transformer_blocks" and parts[2] in double)
                                    or (parts[0] == "single_transformer_blocks" and parts[2] in single)):
                out.append(n)
        return out

    def lora_files(self, tensors, shapes, rank, alpha, dtype):
        """kohya/musubi FLUX names (BFL modules, `lora_unet_double_blocks_0_img_attn_qkv`): a fused BFL Linear
        (qkv, single blocks' linear1) gets its parts block-diagonally (down stacked, up block-diagonal, rank
        parts x r, alpha parts x alpha so the scale stays alpha / r; untrained parts are zero blocks), which the
        pack's loader (and sd-scripts' split_qkv) split back exactly."""
        from ..models.flux import flux_key_to_original

        pairs = _pairs(tensors, dtype)
        groups: dict[str, dict] = {}
        for module, down, up in pairs:
            found = flux_key_to_original(module + ".weight")
            if found is None:
                raise VPEError(f"No BFL FLUX name for '{module}'.")
            original, index, count = found
            groups.setdefault(original, {"count": count, "parts": {}})["parts"][index] = (module, down, up)
        kohya = {}
        for original, group in groups.items():
            stem = "lora_unet_" + original[: -len(".weight")].replace(".", "_")
            down, up, n = _fused(group, shapes, rank, dtype, original)
            kohya[stem + ".lora_down.weight"], kohya[stem + ".lora_up.weight"] = down, up
            kohya[stem + ".alpha"] = torch.tensor(float(alpha) * n, dtype=dtype)
        return (kohya, *_peft_dict(pairs, rank, alpha))

    def default_shift(self, latents) -> float:
        """FLUX's resolution-dependent shift exp(mu) for the image's token count (diffusers' `calculate_shift` with
        FLUX.1-dev's scheduler settings): sigma' = e^mu sigma / (1 + (e^mu - 1) sigma)."""
        from ..models.flux import scheduler_config
        from .image import calculate_shift

        c = scheduler_config()
        tokens = (latents.shape[-2] // 2) * (latents.shape[-1] // 2)
        return math.exp(calculate_shift(tokens, c["base_image_seq_len"], c["max_image_seq_len"], c["base_shift"],
                                        c["max_shift"]))

    def default_size(self) -> tuple[int, int]:
        return 512, 512  # chosen: the paper gives no image training size; FLUX trains well at 512


def _fused(group: dict, shapes: dict, rank: int, dtype, original: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(down, up, number of parts) of one BFL module from its diffusers parts (block-diagonal when fused)."""
    from ..models.flux import flux_key_to_diffusers

    count, parts = group["count"], group["parts"]
    if count == 1:
        _, down, up = parts[0]
        return down, up, 1
    names = flux_key_to_diffusers(original)
    rows, cols = [shapes[n][0] for n in names], shapes[names[0]][1]
    down = torch.zeros(count * rank, cols, dtype=dtype)
    up = torch.zeros(sum(rows), count * rank, dtype=dtype)
    offset = 0
    for i, size in enumerate(rows):
        if i in parts:
            _, d, u = parts[i]
            down[i * rank:(i + 1) * rank] = d
            up[offset:offset + size, i * rank:(i + 1) * rank] = u
        offset += size
    return down, up, count


# ----------------------------------------------------------------------------------------------- loading
def detect_family(path) -> str:
    """"flux" when `path` holds a FLUX.1 transformer, else "wan" (read from the file's header only)."""
    from pathlib import Path

    from ..errors import ModelFileError
    from ..models.flux import inspect_flux
    from ..models.wan import component_path
    from ..weights import WeightFile

    try:
        inspect_flux(WeightFile(component_path(Path(path), ("transformer",)), allow_gguf=True))
        return "flux"
    except (ModelFileError, OSError, ValueError, KeyError):
        return "wan"
