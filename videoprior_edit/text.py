"""Prompt encoding for Wan (UMT5): the same tokens and padding as diffusers' Wan pipelines, with a cache."""

from __future__ import annotations

import torch

from .errors import InputError

MAX_TOKENS = 512  # Wan's attention processors assume exactly 512 text tokens


def clean_prompt(text: str) -> str:
    """diffusers' Wan prompt cleaning (ftfy, HTML unescape, whitespace)."""
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    return prompt_clean(text)


class PromptEncoder:
    """Encodes prompts with a UMT5 encoder; each distinct prompt is computed once and kept on CPU."""

    def __init__(self, text_encoder, tokenizer, max_tokens: int = MAX_TOKENS):
        self.text_encoder, self.tokenizer, self.max_tokens = text_encoder, tokenizer, max_tokens
        self._cache: dict[str, torch.Tensor] = {}

    def has(self, prompt: str) -> bool:
        """Whether `prompt` is already encoded (no text encoder needed for it)."""
        return prompt in self._cache

    def token_count(self, prompt: str) -> int:
        return len(self.tokenizer(clean_prompt(prompt), add_special_tokens=True).input_ids)

    @torch.no_grad()
    def __call__(self, prompts: str | list[str], device=None, dtype=None) -> torch.Tensor:
        """Embeddings `(B, max_tokens, dim)`: each prompt's real tokens, then zeros (as diffusers pads)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not all(isinstance(p, str) for p in prompts):
            raise InputError("Prompts must be text.", "Connect a STRING to the prompt input.")
        todo = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if todo:
            self._encode(todo)
        out = torch.stack([self._cache[p] for p in prompts])
        return out.to(device=device or out.device, dtype=dtype or out.dtype)

    def _encode(self, prompts: list[str]) -> None:
        enc = self.tokenizer([clean_prompt(p) for p in prompts], padding="max_length", max_length=self.max_tokens,
                             truncation=True, add_special_tokens=True, return_attention_mask=True,
                             return_tensors="pt")
        device = next(self.text_encoder.parameters()).device
        hidden = self.text_encoder(enc.input_ids.to(device), enc.attention_mask.to(device)).last_hidden_state
        for prompt, h, n in zip(prompts, hidden, enc.attention_mask.gt(0).sum(dim=1)):
            padded = torch.zeros_like(h)
            padded[:n] = h[:n]
            self._cache[prompt] = padded.cpu()

    def clear(self) -> None:
        self._cache.clear()
