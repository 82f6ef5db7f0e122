"""ImVideoEdit adapters: the config, creation from a frozen Wan T2V model, insertion / removal, adapter files.

An adapter file holds only the new modules' weights (`blocks.<i>.<module>...`) in safetensors, with the config as
JSON in the metadata (`vpe_format` = "imvideoedit", `config`); loading refuses a base model it was not made for.

Choices the paper leaves open, saved with the weights (README: "ImVideoEdit"):
- source_timestep "zero" (default): the source chunk is clean, so it gets t = 0 (as ViFeEdit does); "same": the
  target's timestep.
- source_latents "clean" (default): at inference the source chunk is the source video's clean VAE latents at every
  step, exactly as in training (clean source images); "noised": noised to the current step's sigma (then
  source_timestep "same" matches it).
- joint_rope "offset" (default): the H x 2W layout's own positions, as the paper builds one H x 2W canvas;
  "shared": source and target share columns 0..W-1.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError, ModelFileError
from ..weights import WeightFile, save_file
from .blocks import (
    DIFFUSERS_PARTS,
    JOINT_ROPE,
    AdaptedSelfAttention,
    JointContext,
    Parts,
    SpatialDifferenceAttention,
    joint_rope,
)

FORMAT = "imvideoedit"
VERSION = 1
SOURCE_TIMESTEPS = ("zero", "same")
SOURCE_LATENTS = ("clean", "noised")
FILE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class AdapterConfig:
    """What an adapter was made for and how it runs (saved in the file's metadata)."""

    base: str  # the base model's name, e.g. "Wan2.1-T2V-1.3B"
    family: str  # "t2v"
    size: str  # "1.3B", "14B" (or a test-only size)
    dim: int
    heads: int
    layers: int
    blocks: list[int] = field(default_factory=list)
    gate_hidden: int | None = None  # hidden width of the gate MLP (None: dim)
    eps: float = 1e-6
    source_timestep: str = "zero"
    source_latents: str = "clean"
    joint_rope: str = "offset"
    version: int = VERSION

    def __post_init__(self):
        self.gate_hidden = self.gate_hidden or self.dim
        for name, value, allowed in (("source_timestep", self.source_timestep, SOURCE_TIMESTEPS),
                                     ("source_latents", self.source_latents, SOURCE_LATENTS),
                                     ("joint_rope", self.joint_rope, JOINT_ROPE)):
            if value not in allowed:
                raise InputError(f"Unknown ImVideoEdit {name} '{value}'.", f"Use one of: {', '.join(allowed)}.")
        if any(not 0 <= b < self.layers for b in self.blocks):
            raise InputError(f"Adapter blocks {self.blocks} are outside the model's 0..{self.layers - 1}.",
                             "Give block indices of the base model.")

    def describe(self) -> str:
        return f"{self.base} ({self.dim} wide, {self.layers} blocks)"


class ImVideoEditAdapter(nn.Module):
    """The Spatial Difference Attention modules of the adapted blocks (`blocks[str(i)]`) and their config; `parts`:
    how their layers are built (diffusers' by default; see `blocks.Parts`)."""

    def __init__(self, config: AdapterConfig, parts: Parts = DIFFUSERS_PARTS):
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleDict({str(i): SpatialDifferenceAttention(config.dim, config.heads, config.gate_hidden,
                                                                        config.eps, parts) for i in config.blocks})


def base_identity(transformer) -> dict:
    """Name, family, size and dims of a Wan transformer (from its `vpe_info` when the pack loaded it)."""
    c, info = transformer.config, getattr(transformer, "vpe_info", None)
    family = info.family if info else ("t2v" if c.in_channels == 16 and c.image_dim is None else "other")
    return {"base": info.names if info else "Wan transformer", "family": family,
            "size": info.size if info else "unknown", "dim": c.num_attention_heads * c.attention_head_dim,
            "heads": c.num_attention_heads, "layers": c.num_layers}


def create_adapter(transformer, blocks: list[int] | None = None, gate_hidden: int | None = None,
                   source_timestep: str = "zero", source_latents: str = "clean", joint_rope: str = "offset",
                   seed: int = 0, name: str | None = None) -> ImVideoEditAdapter:
    """A new fp32 adapter for a frozen Wan T2V `transformer`: attention weights copied from its blocks, the fuse
    projections and the update's output projection at zero (an exact no-op until trained). `gate_hidden` defaults
    to the model width; the gate MLP's random init is seeded by `seed`; `name` names the base (e.g. the model
    set's name) in messages."""
    ident = base_identity(transformer)
    if ident["family"] != "t2v":
        raise ModelFileError(f"ImVideoEdit adapts a text-to-video model; {ident['base']} is not one.",
                             "Load Wan2.1-T2V-1.3B (wan2.1_t2v_1.3B_fp16) or Wan2.1-T2V-14B.")
    blocks = list(range(ident["layers"])) if blocks is None else sorted(set(blocks))
    ident["base"] = name or ident["base"]
    config = AdapterConfig(**ident, blocks=blocks, gate_hidden=gate_hidden,
                           eps=transformer.config.eps, source_timestep=source_timestep,
                           source_latents=source_latents, joint_rope=joint_rope)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adapter = ImVideoEditAdapter(config)
    for i in blocks:
        block = transformer.blocks[i]
        if isinstance(block.attn1, AdaptedSelfAttention) or block.attn1.to_q.weight.is_meta:
            raise InputError("The model already carries an adapter or its weights are not loaded.",
                             "Create the adapter from a freshly loaded model.")
        adapter.blocks[str(i)].init_from(block)
    return adapter


def check_base(config: AdapterConfig, transformer) -> None:
    """Refuse a base model the adapter was not made for, saying which one it needs."""
    check_identity(config, base_identity(transformer))


def check_identity(config: AdapterConfig, ident: dict, loader: str = "Load Wan Models") -> None:
    """`check_base` for a model given by its identity (`base`, `family`, `size`, `dim`, `heads`, `layers`);
    `loader`: the node the message tells the user to load the right base with."""
    keys = ("family", "dim", "heads", "layers")
    if any(ident[k] != getattr(config, k) for k in keys) or config.size != ident["size"] != "unknown":
        raise ModelFileError(f"This ImVideoEdit adapter was trained on {config.describe()}; the loaded model is "
                             f"{ident['base']} ({ident['dim']} wide, {ident['layers']} blocks).",
                             f"Load {config.base} in {loader}, or use an adapter trained for this model.")


# ----------------------------------------------------------------------------------------------- insertion
def insert_adapter(transformer, adapter: ImVideoEditAdapter, device=None, dtype=None) -> None:
    """Wrap the adapted blocks' `attn1` and hook the transformer (grid, joint RoPE, text for the source chunk).
    `device` / `dtype`: where the adapter's weights go first (None: leave them)."""
    check_base(adapter.config, transformer)
    if getattr(transformer, "_vpe_imvideoedit", None) is not None:
        raise InputError("The model already carries an ImVideoEdit adapter.", "Remove it first (remove_adapter).")
    if device is not None or dtype is not None:
        adapter.to(device=device, dtype=dtype)
    context = JointContext(rope_mode=adapter.config.joint_rope)
    for i in adapter.config.blocks:
        block = transformer.blocks[i]
        block.attn1 = AdaptedSelfAttention(block.attn1, adapter.blocks[str(i)], context)
    handles = [transformer.register_forward_pre_hook(partial(_prepare_call, context), with_kwargs=True),
               transformer.condition_embedder.register_forward_hook(partial(_keep_text, context))]
    transformer._vpe_imvideoedit = (adapter, handles)


def remove_adapter(transformer) -> ImVideoEditAdapter | None:
    """Undo `insert_adapter` (the blocks get their own `attn1` back); returns the adapter that was inserted."""
    inserted = getattr(transformer, "_vpe_imvideoedit", None)
    if inserted is None:
        return None
    adapter, handles = inserted
    for handle in handles:
        handle.remove()
    for block in transformer.blocks:
        if isinstance(block.attn1, AdaptedSelfAttention):
            block.attn1 = block.attn1.base
    transformer._vpe_imvideoedit = None
    return adapter


@contextlib.contextmanager
def applied(transformer, adapter: ImVideoEditAdapter, device=None, dtype=None):
    """The adapter inserted for the duration of the block; nothing happens when it already is (e.g. training)."""
    inserted = getattr(transformer, "_vpe_imvideoedit", None)
    if inserted is not None and inserted[0] is adapter:
        yield transformer
        return
    insert_adapter(transformer, adapter, device, dtype)
    try:
        yield transformer
    finally:
        remove_adapter(transformer)


def _prepare_call(context: JointContext, module, args, kwargs):
    """Forward pre-hook: note the latent grid and joint RoPE; give the text to both chunks when it has one."""
    names = list(inspect.signature(type(module).forward).parameters)[1:]  # the class's: hooks may wrap `forward`
    bound = dict(zip(names, args), **kwargs)
    hidden, text = bound["hidden_states"], bound["encoder_hidden_states"]
    if hidden.shape[0] % 2:
        raise InputError(f"ImVideoEdit runs source and target together, but the batch has {hidden.shape[0]} "
                         "video(s).", "Call the model with the batch [source; target] (editor: SourceChunk hook).")
    p_t, p_h, p_w = module.config.patch_size
    context.grid = (hidden.shape[2] // p_t, hidden.shape[3] // p_h, hidden.shape[4] // p_w)
    context.rope = joint_rope(module.rope, context.grid, context.rope_mode)
    if text.shape[0] * 2 == hidden.shape[0]:
        bound["encoder_hidden_states"] = torch.cat([text, text])
    return (), bound


def _keep_text(context: JointContext, module, args, output):
    context.text = output[2]


# ----------------------------------------------------------------------------------------------- files
def save_adapter(adapter: ImVideoEditAdapter, path: str | Path, dtype: str = "bf16") -> Path:
    """Write the adapter's weights (in `dtype`) and config to a safetensors file."""
    if dtype not in FILE_DTYPES:
        raise InputError(f"Unknown adapter file precision '{dtype}'.", f"Use one of {', '.join(FILE_DTYPES)}.")
    tensors = {k: v.detach().to("cpu", FILE_DTYPES[dtype]) for k, v in adapter.state_dict().items()}
    metadata = {"vpe_format": FORMAT, "config": json.dumps(asdict(adapter.config))}
    save_file(tensors, path, metadata)
    return Path(path)


def read_config(path: str | Path) -> AdapterConfig:
    """The config stored in an adapter file (refuses files that are not ImVideoEdit adapters)."""
    wf = WeightFile(path)
    if wf.metadata.get("vpe_format") != FORMAT or "config" not in wf.metadata:
        raise ModelFileError(f"'{Path(path).name}' is not an ImVideoEdit adapter (no ImVideoEdit config inside; a "
                             "LoRA?).", "Pick a file written by `videoprior-edit train-imvideoedit`.")
    data = json.loads(wf.metadata["config"])
    if data.get("version", 0) > VERSION:
        raise ModelFileError(f"'{Path(path).name}' is a newer adapter format ({data['version']}).",
                             "Update this node pack.")
    return AdapterConfig(**data)


def load_adapter(path: str | Path, transformer=None, dtype: torch.dtype = torch.float32,
                 parts: Parts = DIFFUSERS_PARTS) -> ImVideoEditAdapter:
    """Load an adapter file (checked against `transformer` when given) with weights in `dtype`, its layers built
    with `parts`."""
    config = read_config(path)
    if transformer is not None:
        check_base(config, transformer)
    adapter = ImVideoEditAdapter(config, parts)
    wf = WeightFile(path)
    expected = adapter.state_dict()
    if set(wf.keys()) != set(expected):
        raise ModelFileError(f"'{Path(path).name}': the adapter's tensors do not match its config.",
                             "The file is incomplete or was edited; write it again with the trainer.")
    adapter.load_state_dict({k: t.to(dtype) for k, t in wf.tensors()})
    return adapter.to(dtype).eval().requires_grad_(False)
