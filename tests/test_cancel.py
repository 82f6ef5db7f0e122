"""Cancel acts inside a long stage (here a slowed-down VAE encode of the I2V condition), not only between steps."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from videoprior_edit.cancel import cancellable
from videoprior_edit.models.sets import load_wan_models
from videoprior_edit.sampling.condition import i2v_condition


class Cancelled(Exception):
    pass


@pytest.fixture(scope="module")
def slow_vae(zoo):
    """The zoo's VAE with every convolution slowed to 4 ms: a VAE stage that takes seconds, as at 480p x 81."""
    vae = load_wan_models(zoo.file("wan21_t2v"), None, zoo.file("umt5"), zoo.file("vae"), dtype="fp32").vae
    handles = [m.register_forward_hook(lambda *_: time.sleep(0.004)) for m in vae.modules()
               if isinstance(m, torch.nn.Conv3d)]
    yield vae
    for h in handles:
        h.remove()


def _encode(vae):
    pixels = torch.rand(1, 3, 48, 64) * 2 - 1
    with torch.no_grad():
        return i2v_condition(vae, pixels, 33, None, torch.device("cpu"))


def test_cancel_stops_a_vae_encode_within_one_check_interval(slow_vae):
    t0 = time.monotonic()
    _encode(slow_vae)
    whole = time.monotonic() - t0
    pressed = threading.Event()

    def check():
        if pressed.is_set():
            raise Cancelled

    timer = threading.Timer(0.3, pressed.set)
    t0 = time.monotonic()
    timer.start()
    with pytest.raises(Cancelled), cancellable(check, every=0.05):
        _encode(slow_vae)
    stopped = time.monotonic() - t0
    assert whole > 1.0  # the stage is long ...
    assert stopped < 0.3 + 0.05 + 0.1  # ... and stops within a check interval (+ one slowed layer) of Cancel
    t0 = time.monotonic()
    _encode(slow_vae)  # the hook is gone after the block
    assert time.monotonic() - t0 > 0.5


def test_checks_run_only_on_the_thread_that_asked(slow_vae):
    calls = []
    with cancellable(lambda: calls.append(threading.get_ident()), every=0.0):
        worker = threading.Thread(target=lambda: torch.nn.Linear(2, 2)(torch.zeros(1, 2)))
        worker.start()
        worker.join()
        torch.nn.Linear(2, 2)(torch.zeros(1, 2))
    assert calls == [threading.get_ident()]
