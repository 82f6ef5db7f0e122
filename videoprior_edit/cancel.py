"""Cancel inside long stages.

While `cancellable(check)` is active, `check()` runs before the forward of every torch module called on this thread
(at most every `every` seconds), so a model call that takes minutes (a VAE encoding a long clip, a text encoder, a
denoising step of a 14B model, a trainer's caching pass) stops within one layer of the user's Cancel: `check` raises
to cancel (inside ComfyUI: its interrupt). Uses torch's global forward pre-hook, removed when the block ends.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import torch


@contextlib.contextmanager
def cancellable(check: Callable[[], None] | None, every: float = 0.05):
    """Within the block, `check()` runs between module calls of this thread (throttled to once per `every` s)."""
    if check is None:
        yield
        return
    thread, last = threading.get_ident(), [0.0]

    def before_forward(module, args):
        if threading.get_ident() != thread:
            return
        now = time.monotonic()
        if now - last[0] >= every:
            last[0] = now
            check()

    handle = torch.nn.modules.module.register_module_forward_pre_hook(before_forward)
    try:
        yield
    finally:
        handle.remove()
