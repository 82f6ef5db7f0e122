"""ImVideoEdit's Predict-Update Spatial Difference Attention (paper eqs. 4-10) for diffusers' Wan blocks.

The model runs the source and the target as two chunks of one batch, `[source; target]` (2B videos). Every adapted
block keeps diffusers' `WanTransformerBlock` and its call signature; only its self-attention `attn1` is wrapped
(`AdaptedSelfAttention`), so the module sits after the frozen 3D self-attention and before the cross-attention:

    n  = the block's normalised, timestep-modulated hidden states (the input of the frozen 3D attention)
    A  = attn1(n)                                  frozen 3D self-attention output
    O  = Phi_p(n)                                  eq. 4, Predict: dense 2D observation
    P  = A + Linear_0(O)                           eq. 5, predictive state (Linear_0 starts at zero)
    D  = Phi_u(LN_u(P - O))                        eqs. 6-7, Update: spatial conflict -> refinement offset
    C  = CrossAttn(LN_g(D), text)                  eq. 8, the offset queries the text
    G  = sigmoid(MLP(C))                           eq. 9, gate (same shape as D)
    A' = P + G * D                                 eq. 10; the block goes on with h + gate_msa * A'

Phi (the shared 2D interaction operator): split the batch into source and target chunks, fold frames into the
batch, put each frame's source and target side by side (H x 2W), 2D self-attention over those tokens, split back.
Shape information (latent grid, joint RoPE, projected text) reaches the wrapped attention out of band through a
`JointContext` that hooks on the transformer fill in for each call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InputError

JOINT_ROPE = ("offset", "shared")


@dataclass
class JointContext:
    """What the adapted blocks need besides their arguments, set once per transformer call."""

    rope_mode: str = "offset"
    grid: tuple[int, int, int] | None = None  # latent tokens (frames, height, width) of one chunk
    rope: tuple[torch.Tensor, torch.Tensor] | None = None  # joint H x 2W layout
    text: torch.Tensor | None = None  # projected text embeddings (2B, L, dim), what the cross-attention sees


def joint_layout(x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """`(2B, F*H*W, C)` with chunks [source; target] -> `(B*F, H*2W, C)`: per frame, source | target side by side."""
    frames, height, width = grid
    source, target = x.chunk(2)
    folded = [c.reshape(c.shape[0] * frames, height, width, c.shape[-1]) for c in (source, target)]
    return torch.cat(folded, dim=2).reshape(-1, height * 2 * width, x.shape[-1])


def split_layout(y: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Inverse of `joint_layout`: `(B*F, H*2W, C)` -> `(2B, F*H*W, C)`."""
    frames, height, width = grid
    source, target = y.reshape(-1, height, 2 * width, y.shape[-1]).split(width, dim=2)
    return torch.cat([c.reshape(-1, frames * height * width, y.shape[-1]) for c in (source, target)])


def phi(attention: nn.Module, x: torch.Tensor, context: JointContext) -> torch.Tensor:
    """The shared 2D interaction operator: 2D self-attention over each frame's joint source | target layout."""
    joint = joint_layout(x, context.grid)
    return split_layout(attention(joint, None, None, context.rope), context.grid)


def joint_rope(rope, grid: tuple[int, int, int], mode: str = "offset") -> tuple[torch.Tensor, torch.Tensor]:
    """`(cos, sin)`, each `(1, H*2W, 1, head_dim)`, for the joint layout from a `WanRotaryPosEmbed`'s tables.

    offset: the H x 2W canvas's own positions (source columns 0..W-1, target W..2W-1); shared: both halves reuse
    columns 0..W-1, so a target token and the source token at the same place have distance 0. The temporal part is
    position 0 for every token (within one frame it would cancel in the attention anyway).
    """
    if mode not in JOINT_ROPE:
        raise InputError(f"Unknown joint RoPE '{mode}'.", f"Use one of: {', '.join(JOINT_ROPE)}.")
    _, height, width = grid
    columns = list(range(2 * width)) if mode == "offset" else list(range(width)) * 2
    if max(columns) >= rope.max_seq_len or height > rope.max_seq_len:
        raise InputError(f"The joint source | target layout ({height} x {2 * width} tokens) is larger than the "
                         f"model's RoPE table ({rope.max_seq_len}).", "Use a smaller size or joint_rope 'shared'.")
    out = []
    for table in (rope.freqs_cos, rope.freqs_sin):
        t_part, h_part, w_part = table.split([rope.t_dim, rope.h_dim, rope.w_dim], dim=1)
        index = torch.tensor(columns, device=table.device)
        parts = [t_part[:1].view(1, 1, -1).expand(height, 2 * width, -1),
                 h_part[:height].view(height, 1, -1).expand(height, 2 * width, -1),
                 w_part[index].view(1, 2 * width, -1).expand(height, 2 * width, -1)]
        out.append(torch.cat(parts, dim=-1).reshape(1, height * 2 * width, 1, -1))
    return out[0], out[1]


def _attention(dim: int, heads: int, eps: float, cross: bool) -> nn.Module:
    from diffusers.models.transformers.transformer_wan import (
        WanAttention,
        WanAttnProcessor,
    )

    return WanAttention(dim=dim, heads=heads, dim_head=dim // heads, eps=eps,
                        cross_attention_dim_head=dim // heads if cross else None, processor=WanAttnProcessor())


def _layer_norm(dim: int, eps: float) -> nn.Module:
    from diffusers.models.normalization import FP32LayerNorm

    return FP32LayerNorm(dim, eps, elementwise_affine=True)


@dataclass(frozen=True)
class Parts:
    """How the adapter's layers are built: `attention(dim, heads, eps, cross)` (a module with diffusers'
    WanAttention parameter names and call `(x, text, mask, rotary_emb)`), `layer_norm(dim, eps)` and
    `linear(in, out)`. The library's are diffusers' (below); ComfyUI's native nodes pass ones built from comfy.ops
    with ComfyUI's attention, so an adapter file loads into either and the maths above and below are the same."""

    attention: object
    layer_norm: object
    linear: object = nn.Linear


DIFFUSERS_PARTS = Parts(attention=_attention, layer_norm=_layer_norm)


class SpatialDifferenceAttention(nn.Module):
    """Predict-Update Spatial Difference Attention with Text-Guided Dynamic Semantic Gating, for one block."""

    def __init__(self, dim: int, heads: int, gate_hidden: int, eps: float = 1e-6, parts: Parts = DIFFUSERS_PARTS):
        super().__init__()
        self.predict = parts.attention(dim, heads, eps, cross=False)  # Phi_p
        self.fuse = parts.linear(dim, dim)  # eq. 5's zero-initialised projection
        self.update_norm = parts.layer_norm(dim, eps)
        self.update = parts.attention(dim, heads, eps, cross=False)  # Phi_u
        self.gate_norm = parts.layer_norm(dim, eps)
        self.gate_attn = parts.attention(dim, heads, eps, cross=True)
        self.gate_mlp = nn.Sequential(parts.linear(dim, gate_hidden), nn.GELU(approximate="tanh"),
                                      parts.linear(gate_hidden, dim))

    def gate(self, delta: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """G = sigmoid(GateProj(CrossAttn(LN(delta), text))), same shape as `delta` (eqs. 8-9)."""
        return torch.sigmoid(self.gate_mlp(self.gate_attn(self.gate_norm(delta), text)))

    def forward(self, x: torch.Tensor, attn_out: torch.Tensor, context: JointContext) -> torch.Tensor:
        observed = phi(self.predict, x, context)
        predicted = attn_out + self.fuse(observed)
        delta = phi(self.update, self.update_norm(predicted - observed), context)
        return predicted + self.gate(delta, context.text) * delta

    @torch.no_grad()
    def init_from(self, block: nn.Module) -> None:
        """Copy the block's pre-trained attention weights (the paper's initialisation); the fuse projection and
        Phi_u's output projection start at zero, so the untrained module changes nothing."""
        for target, source in ((self.predict, block.attn1), (self.update, block.attn1), (self.gate_attn, block.attn2)):
            mine = target.state_dict()
            for key, value in source.state_dict().items():
                if key in mine:
                    mine[key].copy_(value.to(mine[key].dtype))
        for p in (self.fuse.weight, self.fuse.bias, *self.update.to_out[0].parameters()):
            p.zero_()


class AdaptedSelfAttention(nn.Module):
    """A block's frozen 3D self-attention followed by its Spatial Difference Attention (`attn1`'s call signature).

    Only `base` is a registered child: the adapter's weights stay out of the transformer's module tree, so whatever
    moves or offloads the model's blocks (placement, diffusers group offloading) never moves or drops them."""

    def __init__(self, base: nn.Module, sda: SpatialDifferenceAttention, context: JointContext):
        super().__init__()
        self.base = base
        self.__dict__["sda"] = sda
        self.context = context

    def forward(self, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None, **kwargs):
        out = self.base(hidden_states, encoder_hidden_states, attention_mask, rotary_emb, **kwargs)
        if self.context.grid is None:
            raise InputError("The ImVideoEdit adapter ran outside an adapted transformer call.",
                             "Call the transformer with the adapter inserted (imvideoedit.applied).")
        return self.sda(hidden_states, out, self.context)
