"""Speed options (videoprior_edit.speed) on the tiny Wan2.2-I2V set (two experts) with CFG, through the real loop."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from videoprior_edit.demo import synthetic_source
from videoprior_edit.errors import InputError
from videoprior_edit.if_edit import edit_image
from videoprior_edit.models.sets import load_wan_models
from videoprior_edit.sampling import Guidance, sample_i2v
from videoprior_edit.sampling.condition import image_from_uint8
from videoprior_edit.speed import (
    Speed,
    _state_managers,
    apply_speed,
    compile_problem,
    magcache_ratios,
    remove_speed,
)

IMAGE = image_from_uint8(synthetic_source(64, 48))
EXPERTS = ("transformer", "transformer_2")
# the hooks each cache puts on the first block / a module of it (diffusers' hook names)
HOOKS = {"first_block": ("blocks.0", "fbc_leader_block_hook"), "magcache": ("blocks.0", "mag_cache_leader_block_hook"),
         "taylorseer": ("blocks.0.attn1", "taylorseer_cache"), "taylorseer_lite": ("blocks.0", "taylorseer_cache")}


@pytest.fixture(scope="module")
def models(zoo):
    return load_wan_models(zoo.file("wan22_i2v_high"), zoo.file("wan22_i2v_low"), zoo.file("umt5"), zoo.file("vae"),
                           dtype="fp32")


@pytest.fixture(autouse=True)
def clean(models):
    yield
    remove_speed(models)


def _run(models, steps=8, frames=9, guidance=None):
    """Final latents and notes of a CFG run over both experts (3 high-noise + 5 low-noise steps at 8 UniPC steps)."""
    out = sample_i2v(models, IMAGE, "a red cat", "blurry", num_frames=frames, steps=steps, scheduler="unipc",
                     guidance=guidance or Guidance(3.5, 2.0), seed=3, decode_video=False)
    return out.latents, out.notes


@pytest.fixture(scope="module")
def base(models):
    return _run(models)[0]


def _skipped(notes) -> int:
    line = next(n for n in notes if "transformer forwards skipped" in n)
    return int(line.split(": ", 1)[1].split(" of ")[0])


def test_all_off_and_native_attention_are_bit_identical(models, base):
    assert apply_speed(models, Speed()) == []
    assert torch.equal(_run(models)[0], base)
    notes = apply_speed(models, Speed(attention="native"))
    assert "native" in notes[0]
    for name in EXPERTS:
        processor = getattr(models, name).blocks[0].attn1.processor
        assert processor._attention_backend.value == "native"
    latents, run_notes = _run(models)
    assert torch.equal(latents, base) and run_notes == []
    remove_speed(models)
    assert getattr(models.transformer.blocks[0].attn1.processor, "_attention_backend", None) is None
    assert torch.equal(_run(models)[0], base)


def test_unknown_and_unavailable_options_are_refused_before_anything_changes(models):
    with pytest.raises(InputError, match="(?s)Unknown attention backend 'fastest'.*native"):
        apply_speed(models, Speed(attention="fastest"))
    with pytest.raises(InputError, match="(?s)Unknown cache 'teacache'.*first_block"):
        apply_speed(models, Speed(cache="teacache"))
    with pytest.raises(InputError, match="cache_threshold"):
        apply_speed(models, Speed(cache="first_block", cache_threshold=-1))
    missing = [(name, package) for name, package in (("flash", "flash-attn"), ("sage", "sageattention"),
                                                     ("xformers", "xformers"))
               if importlib.util.find_spec(package.replace("-", "_")) is None]
    if not missing:
        pytest.skip("flash-attn, sageattention and xformers are all installed here")
    for name, package in missing:
        with pytest.raises(InputError, match=f"(?s)not available.*pip install {package}") as info:
            apply_speed(models, Speed(attention=name, cache="first_block"))
        assert "What to do" in str(info.value)
    assert not models.transformer.is_cache_enabled and getattr(models.transformer, "_vpe_speed", None) is None


@pytest.mark.parametrize("cache", ["first_block", "magcache", "taylorseer", "taylorseer_lite"])
def test_cache_on_two_experts_with_cfg(models, base, cache):
    # first_block's default threshold (0.05) skips nothing on these random weights: one that does
    speed = Speed(cache=cache, cache_threshold=1.0 if cache == "first_block" else None)
    notes = apply_speed(models, speed)
    assert notes and cache in notes[0]
    apply_speed(models, speed)  # idempotent: still one set of hooks
    where, hook = HOOKS[cache]
    for name in EXPERTS:
        module = getattr(models, name)
        assert module.is_cache_enabled
        assert dict(module.named_modules())[where]._diffusers_hook.get_hook(hook) is not None
        assert _state_managers(module)
    first, notes = _run(models)
    assert torch.isfinite(first).all()
    if cache == "magcache":  # the first run with these timesteps calibrates and skips nothing
        assert torch.equal(first, base) and _skipped(notes) == 0 and any("calibrated" in n for n in notes)
        assert set(magcache_ratios(models)) == set(EXPERTS)
        first, notes = _run(models)
    skipped = _skipped(notes)
    assert 0 < skipped < 16  # 8 steps x 2 branches
    assert torch.isfinite(first).all() and not torch.equal(first, base)
    again, _ = _run(models)
    assert torch.equal(again, first)  # caches are reset between runs
    remove_speed(models)
    assert not models.transformer.is_cache_enabled and not models.transformer_2.is_cache_enabled
    assert torch.equal(_run(models)[0], base)


@pytest.mark.parametrize("speed", [Speed(cache="first_block", cache_threshold=0.0),
                                   Speed(cache="taylorseer", cache_warmup=8),
                                   Speed(cache="taylorseer_lite", cache_warmup=8)])
def test_cache_that_skips_nothing_changes_nothing(models, base, speed):
    apply_speed(models, speed)
    latents, notes = _run(models)
    assert _skipped(notes) == 0 and torch.equal(latents, base)


def test_caches_follow_tld_dropping_frames_in_the_middle_of_an_expert(models):
    def edit():
        return edit_image(models, IMAGE, "a red cat", "blurry", frames=17, steps=8, cfg_high=3.5, cfg_low=2.0,
                          tld_k=2, tld_threshold=0.7, seed=3)  # TLD at step 6: the low-noise expert's third step

    off = edit().latents
    for speed in (Speed(cache="first_block", cache_threshold=10.0), Speed(cache="taylorseer", cache_warmup=1)):
        apply_speed(models, speed)
        result = edit()
        assert any("TLD at step 6" in n for n in result.notes) and _skipped(result.notes) > 0
        assert result.latents.shape == off.shape and torch.isfinite(result.latents).all()


def test_compile_repeated_blocks(models):
    problem = compile_problem("cpu")
    if problem:
        pytest.skip(f"this machine cannot compile: {problem}")
    small = {"steps": 2, "frames": 5, "guidance": Guidance(1.0)}  # one clip size, one branch: one compile
    eager = _run(models, **small)[0]
    notes = apply_speed(models, Speed(compile=True))
    assert "compile" in notes[0]
    for name in EXPERTS:
        assert all(b._compiled_call_impl is not None for b in getattr(models, name).blocks)
    compiled = _run(models, **small)[0]
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
    remove_speed(models)
    assert all(b._compiled_call_impl is None for b in models.transformer.blocks)
    assert torch.equal(_run(models, **small)[0], eager)


def test_a_compile_failure_turns_compile_off_with_a_message(models):
    from torch._dynamo.exc import InternalTorchDynamoError

    small = {"steps": 2, "frames": 5, "guidance": Guidance(1.0)}
    eager = _run(models, **small)[0]
    apply_speed(models, Speed(compile=True))  # compiles lazily: nothing is compiled before a forward

    def broken(*args, **kwargs):
        raise InternalTorchDynamoError("C++ compile error (simulated)")

    for block in models.transformer.blocks:
        block._compiled_call_impl = broken
    with pytest.raises(InputError, match="(?s)torch.compile failed.*simulated.*compile is now off"):
        _run(models, **small)
    assert not models.transformer._vpe_speed.compiled and not models.transformer_2._vpe_speed.compiled
    assert torch.equal(_run(models, **small)[0], eager)


def test_flux_set_takes_attention_and_refuses_caches(zoo):
    from videoprior_edit.byg import edit_image as flux_edit
    from videoprior_edit.byg import load_flux_models

    fz = zoo.flux
    flux = load_flux_models(fz["transformer"], fz["clip_l"], fz["t5xxl"], fz["vae"], dtype="fp32")
    image = torch.rand(1, 32, 48, 3, generator=torch.Generator().manual_seed(3))

    def edit():
        return flux_edit(flux, image, "make the car blue", steps=2, guidance=3.5, seed=7).latents

    off = edit()
    with pytest.raises(InputError, match="Wan editors only"):
        apply_speed(flux, Speed(cache="first_block"))
    assert "the transformer" in apply_speed(flux, Speed(attention="native"))[0]
    assert torch.equal(edit(), off)
    remove_speed(flux)
    assert torch.equal(edit(), off)
