"""IF-Edit's chain-of-thought prompt rewriter: a VLM looks at the image and the static instruction and writes how the
picture evolves over time (edit mode), or describes it as a perfectly still video (still mode, for the refiner).

```python
backend = make_backend("local", model_path="models/LLM/Qwen3-VL-8B-Instruct")   # or "openai" / "template"
result = rewrite_prompt(image, "take the paper out of her hand", backend, seed=0)
result.prompt   # one clean paragraph within max_tokens UMT5 tokens; result.raw is the VLM's own text
```
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..errors import InputError, VPEError
from .backends import (
    GET_A_VLM,
    PRECISIONS,
    ChatRequest,
    EndpointError,
    GivenTextBackend,
    LocalVLMBackend,
    OpenAIChatBackend,
    TemplateBackend,
    image_for_vlm,
    request_text,
    unload_models,
)
from .prompts import MODES, examples, system_prompt, template_prompt, user_text
from .sanitize import fit_budget, problem, sanitize, thinking_cut_off, token_counter

log = logging.getLogger(__name__)

BACKENDS = {"template": TemplateBackend, "local": LocalVLMBackend, "openai": OpenAIChatBackend,
            "generated_text": GivenTextBackend}
FAILURE_MODES = ("template", "error")
MAX_PROMPT_TOKENS = 512  # Wan's text length

__all__ = ["BACKENDS", "FAILURE_MODES", "GET_A_VLM", "MODES", "PRECISIONS", "EndpointError", "GivenTextBackend",
           "LocalVLMBackend",
           "OpenAIChatBackend", "RewriteResult", "TemplateBackend", "generation_tokens", "make_backend",
           "request_for_vlm", "rewrite_prompt", "sanitize", "template_prompt", "unload_models"]


@dataclass
class RewriteResult:
    """The prompt for the video model, the backend's raw text, what the user should know, and which backend wrote
    the prompt ('template' after a fallback)."""

    prompt: str
    raw: str
    warnings: list[str] = field(default_factory=list)
    backend: str = "template"


def make_backend(kind: str, **settings):
    """A backend by kind: 'template' (no settings), 'local' (`LocalVLMBackend` settings: model_path, precision,
    device, keep_loaded, temperature, ...) or 'openai' (`OpenAIChatBackend` settings: base_url, model, api_key_env,
    timeout, retries, temperature, ...)."""
    if kind not in BACKENDS:
        raise InputError(f"Unknown rewriter backend '{kind}'.", f"Use one of {', '.join(BACKENDS)}.")
    return BACKENDS[kind](**settings)


def generation_tokens(max_tokens: int, backend=None) -> int:
    """How many tokens the VLM may generate for a `max_tokens` prompt: room for wrappers the sanitiser removes."""
    return getattr(backend, "max_new_tokens", None) or 2 * max_tokens + 32


class _Steps:
    """Passes progress on, one step per call up to `total`; further calls only check for Cancel (progress(0))."""

    def __init__(self, progress, total: int):
        self.progress, self.total, self.done = progress, total, 0

    def __call__(self, n: int = 1) -> None:
        n = max(0, min(n, self.total - self.done))
        self.done += n
        self.progress(n)


def _check(instruction, mode: str, on_failure: str, max_tokens: int) -> None:
    if mode not in MODES:
        raise InputError(f"Unknown mode '{mode}'.", f"Use one of {', '.join(MODES)}.")
    if on_failure not in FAILURE_MODES:
        raise InputError(f"Unknown on_failure '{on_failure}'.", f"Use one of {', '.join(FAILURE_MODES)}.")
    if not 16 <= max_tokens <= MAX_PROMPT_TOKENS:
        raise InputError(f"max_tokens={max_tokens} is outside 16..{MAX_PROMPT_TOKENS}.",
                         f"Wan reads at most {MAX_PROMPT_TOKENS} prompt tokens; 220 is a good default.")
    if not isinstance(instruction, str):
        raise InputError("The instruction must be text.", "Connect a STRING to the instruction input.")
    if mode == "edit" and not instruction.strip():
        raise InputError("The instruction is empty.", "Type what should change, e.g. 'take the paper out of her "
                                                      "hand'.")


def _request(image, instruction: str, mode: str, max_tokens: int, seed: int, backend) -> ChatRequest:
    return ChatRequest(system=system_prompt(mode, max_tokens), examples=examples(mode),
                       user=user_text(mode, instruction.strip(), None), image=image, instruction=instruction.strip(),
                       mode=mode, max_new_tokens=generation_tokens(max_tokens, backend), seed=seed)


def request_for_vlm(instruction: str, mode: str = "edit", max_tokens: int = 220) -> str:
    """The rewriter's request (instructions, examples, this instruction) as one message, for a VLM run elsewhere
    (ComfyUI's Generate Text node); its answer goes back through `rewrite_prompt` with the generated_text backend."""
    _check(instruction, mode, "template", max_tokens)
    return request_text(_request(None, instruction, mode, max_tokens, 0, TemplateBackend()))


def _unusable(raw: str, prompt: str) -> str | None:
    if thinking_cut_off(raw):
        return "it stopped while still thinking (raise max_tokens, or use an Instruct model rather than a Thinking one)"
    return problem(prompt)


def rewrite_prompt(image, instruction: str, backend, mode: str = "edit", seed: int = 0, on_failure: str = "template",
                   max_tokens: int = 220, progress=None, tokenizer=None) -> RewriteResult:
    """Rewrite `instruction` for the video model, looking at `image` (ComfyUI IMAGE `(1, H, W, 3)` in [0, 1], or None).

    `backend` is one from `make_backend` (or its kind name). `max_tokens` bounds the prompt in UMT5 tokens, counted
    with `tokenizer` (the Wan set's `models.tokenizer`) when given, else estimated high. When the backend's answer
    holds no usable prompt, on_failure='template' falls back to the template prompt with a warning, 'error' raises.
    Connection and model-file errors always raise. `progress(n)` is called per generated token (at most
    `generation_tokens(max_tokens)` steps; 1 for the template backend) and may raise to cancel."""
    _check(instruction, mode, on_failure, max_tokens)
    backend = make_backend(backend) if isinstance(backend, str) else backend
    pil, warnings = image_for_vlm(image)
    if pil is None and backend.name not in ("template", "generated_text"):
        warnings.append("no image connected: the VLM rewrote the instruction without seeing the picture")
    request = _request(pil, instruction, mode, max_tokens, seed, backend)
    steps = _Steps(progress, backend.steps(request.max_new_tokens)) if progress else None
    raw = backend.generate(request, steps)
    prompt, used = sanitize(raw), backend.name
    why = _unusable(raw, prompt)
    if why:
        if on_failure == "error":
            raise VPEError(f"The {backend.name} backend's answer is not a usable prompt: {why}.",
                           "Look at its raw output, try another seed or model, or set on_failure to 'template'.")
        warnings.append(f"the VLM's answer was not a usable prompt ({why}); used the template prompt instead")
        prompt, used = template_prompt(instruction, mode), "template"
    prompt, note = fit_budget(prompt, max_tokens, token_counter(tokenizer))
    warnings += [note] if note else []
    warnings = [w[:1].upper() + w[1:] + ("" if w.endswith(".") else ".") for w in warnings]
    for w in warnings:
        log.warning("Prompt rewriter: %s", w)
    log.info("Prompt rewriter (%s): %s", used, prompt)
    return RewriteResult(prompt, raw, warnings, used)
