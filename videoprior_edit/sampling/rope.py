"""Temporal RoPE positions for Wan: give each latent frame the position you choose (kept or concatenated frames).

diffusers' `WanRotaryPosEmbed` always numbers frames 0..F-1 from the tensor's shape; `temporal_positions` swaps
its output for the table rows of the positions given, for the duration of a `with` block.
"""

from __future__ import annotations

import contextlib

import torch

from ..errors import InputError


def rope_freqs(rope, shape, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """`(freqs_cos, freqs_sin)`, each `(1, F*H*W, 1, head_dim)`, for hidden states of `shape` (B, C, F, H, W) whose
    frame i sits at temporal position `positions[i]` (spatial positions as usual)."""
    _, _, frames, height, width = shape
    p_t, p_h, p_w = rope.patch_size
    f, h, w = frames // p_t, height // p_h, width // p_w
    if len(positions) != f:
        raise InputError(f"{len(positions)} temporal positions for {f} latent frames.", "Give one per frame.")
    if max(positions) >= rope.max_seq_len or min(positions) < 0:
        raise InputError(f"Temporal positions {min(positions)}..{max(positions)} are outside the model's RoPE table "
                         f"(0..{rope.max_seq_len - 1}).", "Use fewer frames or compact positions.")
    index = torch.tensor(positions, dtype=torch.long, device=rope.freqs_cos.device)
    out = []
    for table in (rope.freqs_cos, rope.freqs_sin):
        t_part, h_part, w_part = table.split([rope.t_dim, rope.h_dim, rope.w_dim], dim=1)
        parts = [t_part[index].view(f, 1, 1, -1).expand(f, h, w, -1),
                 h_part[:h].view(1, h, 1, -1).expand(f, h, w, -1),
                 w_part[:w].view(1, 1, w, -1).expand(f, h, w, -1)]
        out.append(torch.cat(parts, dim=-1).reshape(1, f * h * w, 1, -1))
    return out[0], out[1]


@contextlib.contextmanager
def temporal_positions(transformer, positions: list[int] | None):
    """Within the block, `transformer` puts its input's latent frames at temporal `positions` (None: unchanged)."""
    if positions is None:
        yield
        return

    def replace(module, args, output):
        return rope_freqs(module, args[0].shape, positions)

    handle = transformer.rope.register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()
