"""The shared Wan sampling loop: bit-exact against diffusers' I2V pipeline, schedules, RoPE positions, TLD."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from videoprior_edit.demo import synthetic_source
from videoprior_edit.errors import InputError, ModelFileError
from videoprior_edit.models.sets import load_wan_models
from videoprior_edit.sampling import (
    Guidance,
    SamplingHook,
    TemporalLatentDropout,
    kept_indices,
    lightning_timesteps,
    make_scheduler,
    sample_i2v,
)
from videoprior_edit.sampling.condition import image_from_pixels, image_from_uint8
from videoprior_edit.sampling.rope import rope_freqs, temporal_positions

SOURCE = synthetic_source(64, 48)


def _set(zoo, kind: str, dtype: str = "fp32"):
    files = {"wan22": ("wan22_i2v_high", "wan22_i2v_low", None), "wan21": ("wan21_i2v", None, "clip_vision"),
             "flf2v": ("wan21_flf2v", None, "clip_vision"), "t2v": ("wan21_t2v", None, None)}[kind]
    return load_wan_models(zoo.file(files[0]), files[1] and zoo.file(files[1]), zoo.file("umt5"), zoo.file("vae"),
                           files[2] and zoo.file(files[2]), dtype=dtype)


@pytest.fixture(scope="module")
def sets(zoo):
    cache = {}
    return lambda kind, dtype="fp32": cache.setdefault((kind, dtype), _set(zoo, kind, dtype))


def _reference(models, scheduler, guidance, output_type, last=None, **kw):
    from diffusers import WanImageToVideoPipeline

    pipe = WanImageToVideoPipeline(tokenizer=models.tokenizer, text_encoder=models.text_encoder, vae=models.vae,
                                   scheduler=make_scheduler(scheduler, 5.0), transformer=models.transformer,
                                   transformer_2=models.transformer_2, image_encoder=models.image_encoder,
                                   image_processor=models.image_processor, boundary_ratio=models.boundary_ratio)
    pipe.set_progress_bar_config(disable=True)
    return pipe(image=Image.fromarray(SOURCE), prompt="a red cat", negative_prompt="blurry", height=48, width=64,
                num_frames=9, num_inference_steps=6, guidance_scale=guidance.high, guidance_scale_2=guidance.low,
                generator=torch.Generator("cpu").manual_seed(3), output_type=output_type,
                last_image=None if last is None else Image.fromarray(last), **kw).frames


@pytest.mark.parametrize("kind,scheduler,dtype", [("wan22", "unipc", "fp32"), ("wan22", "euler", "fp32"),
                                                  ("wan21", "unipc", "fp32"), ("wan21", "euler", "fp32"),
                                                  ("wan22", "unipc", "bf16")])
def test_loop_equals_diffusers_pipeline_bit_for_bit(sets, kind, scheduler, dtype):
    models = sets(kind, dtype)
    guidance = Guidance(3.5, 2.0) if kind == "wan22" else Guidance(4.0)
    ours = sample_i2v(models, image_from_uint8(SOURCE), "a red cat", "blurry", num_frames=9, steps=6,
                      scheduler=scheduler, shift=5.0, guidance=guidance, seed=3)
    ref_latents = _reference(models, scheduler, guidance, "latent")
    ref_frames = _reference(models, scheduler, guidance, "np")
    assert ours.latents.shape == (1, 16, 3, 6, 8) and ours.positions is None
    assert torch.equal(ours.latents, ref_latents)
    frames = image_from_pixels(ours.video)
    assert frames.shape == (9, 48, 64, 3)
    assert np.array_equal(frames.numpy(), ref_frames[0])


def test_first_last_frame_condition_equals_diffusers(sets):
    models, last = sets("flf2v"), synthetic_source(64, 48)[::-1].copy()
    ours = sample_i2v(models, image_from_uint8(SOURCE), "a red cat", "blurry", num_frames=9, steps=6,
                      scheduler="unipc", guidance=Guidance(4.0), seed=3, last_image=image_from_uint8(last),
                      decode_video=False)
    assert torch.equal(ours.latents, _reference(models, "unipc", Guidance(4.0), "latent", last=last))


def test_lightning_schedule_has_the_published_timesteps():
    t = lightning_timesteps(8, 5.0)
    expected = [1000, 1000 * 35 / 36, 937.5, 1000 * 25 / 28, 1000 * 5 / 6, 750, 625, 1000 * 5 / 12]
    assert torch.allclose(t.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-3, rtol=0)
    assert [round(float(x), 1) for x in t] == [1000.0, 972.2, 937.5, 892.9, 833.3, 750.0, 625.0, 416.7]
    assert int((t >= 900).sum()) == 3  # three high-noise steps, TLD from step index 3


@pytest.mark.parametrize("frames,k,keep_last,expected", [
    (9, 3, False, [0, 3, 6]), (9, 3, True, [0, 3, 6, 8]), (9, 4, True, [0, 4, 8]), (21, 3, False, [0, 3, 6, 9, 12, 15, 18]),
    (21, 5, True, [0, 5, 10, 15, 20]), (21, 6, True, [0, 6, 12, 18, 20]), (3, 2, True, [0, 2]), (9, 1, True, list(range(9)))])
def test_kept_indices(frames, k, keep_last, expected):
    assert kept_indices(frames, k, keep_last) == expected


class _Record(SamplingHook):
    """Keeps copies of the state each step (put before and after TLD to see what it changed)."""

    def __init__(self):
        self.seen = []

    def before_step(self, state):
        sched = state.scheduler
        self.seen.append({"latents": state.latents.clone(), "condition": state.condition.clone(),
                          "outputs": [None if o is None else o.clone() for o in getattr(sched, "model_outputs", [])],
                          "last_sample": getattr(sched, "last_sample", None), "positions": state.positions,
                          "lower": getattr(sched, "lower_order_nums", None)})


@pytest.mark.parametrize("scheduler,solver", [("unipc", "slice"), ("unipc", "reset"), ("lightning", "slice")])
def test_tld_slices_latents_condition_and_solver_state_together(sets, scheduler, solver):
    models, before, after = sets("wan22"), _Record(), _Record()
    tld = TemporalLatentDropout(k=3, threshold=0.9, keep_last=True, solver=solver)
    result = sample_i2v(models, image_from_uint8(SOURCE), "a red cat", None, num_frames=33, steps=8,
                        scheduler=scheduler, guidance=Guidance(1.0), seed=1, hooks=[before, tld, after])
    step = next(i for i, s in enumerate(after.seen) if s["latents"].shape[2] != 9)
    kept = torch.tensor([0, 3, 6, 8])
    assert tld.kept == [0, 3, 6, 8] and after.seen[step]["positions"] == [0, 3, 6, 8]
    pre, post = before.seen[step], after.seen[step]
    assert torch.equal(post["latents"], pre["latents"][:, :, kept])
    assert torch.equal(post["condition"], pre["condition"][:, :, kept])
    if scheduler == "unipc" and solver == "slice":
        assert all(torch.equal(a, b[:, :, kept]) for a, b in zip(post["outputs"], pre["outputs"]))
        assert torch.equal(post["last_sample"], pre["last_sample"][:, :, kept])
    if solver == "reset":
        assert all(o is None for o in post["outputs"]) and post["lower"] == 0 and post["last_sample"] is None
    assert result.latents.shape[2] == 4 and result.positions == [0, 3, 6, 8]
    assert result.video.shape[2] == 1 + 4 * (4 - 1)
    t = lightning_timesteps(8) if scheduler == "lightning" else None
    assert t is None or step == 3


def test_tld_compact_positions_and_threshold(sets):
    models = sets("wan22")
    tld = TemporalLatentDropout(k=4, threshold=0.8, keep_last=False, rope="compact")
    result = sample_i2v(models, image_from_uint8(SOURCE), "a red cat", None, num_frames=33, steps=8,
                        scheduler="lightning", guidance=Guidance(1.0), seed=1, hooks=[tld])
    assert tld.kept == [0, 4, 8] and result.positions is None and result.latents.shape[2] == 3
    assert any("at step 5 " in n for n in result.notes)  # first t below 800 is 750, step index 5


def test_rope_positions_match_a_direct_computation(sets):
    rope = sets("wan22").transformer.rope
    shape = (1, 16, 9, 6, 8)
    full_cos, full_sin = rope(torch.zeros(shape))
    ours = rope_freqs(rope, shape, list(range(9)))
    assert torch.equal(ours[0], full_cos) and torch.equal(ours[1], full_sin)
    kept = [0, 3, 6, 8]
    cos, sin = rope_freqs(rope, (1, 16, 4, 6, 8), kept)
    grid = full_cos.view(9, 3, 4, -1)
    assert torch.equal(cos.view(4, 3, 4, -1), grid[kept])
    assert torch.equal(sin.view(4, 3, 4, -1), full_sin.view(9, 3, 4, -1)[kept])
    compact = rope_freqs(rope, (1, 16, 4, 6, 8), [0, 1, 2, 3])[0]
    assert torch.equal(compact, rope(torch.zeros(1, 16, 4, 6, 8))[0]) and not torch.equal(compact, cos)
    with pytest.raises(InputError, match="outside the model's RoPE table"):
        rope_freqs(rope, (1, 16, 2, 6, 8), [0, rope.max_seq_len])


def test_rope_hook_changes_what_the_transformer_sees(sets):
    model = sets("wan22").transformer
    x, t, text = torch.randn(1, 36, 4, 6, 8), torch.tensor([500.0]), torch.randn(1, 512, model.config.text_dim)

    def run(positions):
        with temporal_positions(model, positions), torch.no_grad():
            return model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]

    plain = run(None)
    assert torch.equal(run([0, 1, 2, 3]), plain)
    assert not torch.equal(run([0, 3, 6, 8]), plain)
    assert torch.equal(run(None), plain)  # the hook is gone after the block


def test_prompt_embeddings_are_cached_per_model_set(sets):
    from videoprior_edit.sampling import encode_prompts

    models = sets("wan21")
    first, _ = encode_prompts(models, "a cached prompt", None)
    te, models.text_encoder = models.text_encoder, None  # no encoder needed for a prompt seen before
    try:
        again, none = encode_prompts(models, "a cached prompt", None)
    finally:
        models.text_encoder = te
    assert none is None and torch.equal(first, again)


def test_bad_requests_get_clear_messages(sets, zoo):
    models, image = sets("wan22"), image_from_uint8(SOURCE)
    with pytest.raises(InputError, match="not a multiple of 16"):
        sample_i2v(models, torch.rand(1, 50, 70, 3), "x", num_frames=9, steps=1)
    with pytest.raises(InputError, match="4k\\+1 frames, at least 5"):
        sample_i2v(models, image, "x", num_frames=3, steps=1)
    with pytest.raises(InputError, match="K can be at most 8"):
        sample_i2v(models, image, "x", num_frames=33, steps=1, hooks=[TemporalLatentDropout(k=9)])
    for bad in (0, -0.1, 1.5):
        with pytest.raises(InputError, match="threshold must be in \\(0, 1\\]"):
            TemporalLatentDropout(threshold=bad)
    with pytest.raises(InputError, match="image-to-video editing needs an I2V model"):
        sample_i2v(sets("t2v"), image, "x", num_frames=9, steps=1)
    with pytest.raises(ModelFileError, match="a text-to-video model; image editing needs an image-to-video"):
        load_wan_models(zoo.file("wan21_t2v"), None, zoo.file("umt5"), zoo.file("vae"), task="i2v")
    with pytest.raises(ModelFileError, match="needs both experts"):
        load_wan_models(zoo.file("wan22_i2v_high"), None, zoo.file("umt5"), zoo.file("vae"))
    with pytest.raises(InputError, match="Unknown scheduler"):
        make_scheduler("ddim", 5.0)


def test_lightning_loras_on_each_expert_equal_diffusers_fused_loras(zoo):
    from diffusers import WanImageToVideoPipeline
    from safetensors.torch import load_file

    from videoprior_edit.lora import add_lora

    models = _set(zoo, "wan22")
    before = models.transformer_2.blocks[0].attn1.to_q.weight.clone()
    add_lora(models, zoo.file("lightning_high"), 1.0, "high")
    add_lora(models, zoo.file("lightning_low"), 1.0, "low")
    pipe = WanImageToVideoPipeline.from_pretrained(zoo.wan22_i2v_diffusers)
    pipe.load_lora_weights(load_file(zoo.file("lightning_high")), adapter_name="high")
    pipe.load_lora_weights(load_file(zoo.file("lightning_low")), adapter_name="low", load_into_transformer_2=True)
    pipe.fuse_lora(components=["transformer", "transformer_2"], lora_scale=1.0)
    pipe.unload_lora_weights()
    for ours, ref in ((models.transformer, pipe.transformer), (models.transformer_2, pipe.transformer_2)):
        theirs = ref.state_dict()
        assert all(torch.equal(v, theirs[k]) for k, v in ours.state_dict().items())
    assert not torch.equal(models.transformer_2.blocks[0].attn1.to_q.weight, before)
    result = sample_i2v(models, image_from_uint8(SOURCE), "a red cat", None, num_frames=9, steps=4,
                        scheduler="lightning", guidance=Guidance(1.0), seed=0)
    assert result.video.shape == (1, 3, 9, 48, 64) and torch.isfinite(result.video).all()


@pytest.mark.parametrize("mode", ["one_expert", "one_expert_disk"])
def test_a_set_with_a_lora_never_changes_the_set_it_came_from(zoo, mode):
    from videoprior_edit.lora import with_lora
    from videoprior_edit.placement import Placement

    def run(models):
        return sample_i2v(models, image_from_uint8(SOURCE), "a red cat", None, num_frames=9, steps=4,
                          scheduler="lightning", guidance=Guidance(1.0), seed=0, decode_video=False).latents

    files = ("wan22_i2v_high", "wan22_i2v_low", "umt5", "vae")
    base = load_wan_models(*(zoo.file(f) for f in files), dtype="fp32", placement=Placement(mode, device="cpu"))
    plain = run(base)
    lit = with_lora(with_lora(base, zoo.file("lightning_high"), 1.0, "high"), zoo.file("lightning_low"), 0.5, "low")
    lit_result = run(lit)
    assert base.loras == [] and not torch.equal(lit_result, plain)
    assert torch.equal(run(base), plain)  # the experts are read again without the LoRAs
    assert torch.equal(run(lit), lit_result)
    fresh = load_wan_models(*(zoo.file(f) for f in files), dtype="fp32")
    stronger = with_lora(fresh, zoo.file("lightning_high"), 1.0, "high")
    stronger = with_lora(stronger, zoo.file("lightning_low"), 0.5, "low")
    assert torch.equal(run(stronger), lit_result)


class _Cancelled(Exception):
    pass


def test_cancel_stops_within_one_step(sets):
    models, calls = sets("wan22"), []
    handles = [m.register_forward_hook(lambda *a: calls.append(1)) for m in (models.transformer, models.transformer_2)]

    def progress(n):
        if len(calls) >= 2:
            raise _Cancelled

    try:
        with pytest.raises(_Cancelled):
            sample_i2v(models, image_from_uint8(SOURCE), "a red cat", None, num_frames=9, steps=8,
                       scheduler="lightning", guidance=Guidance(1.0), seed=0, progress=progress)
    finally:
        for h in handles:
            h.remove()
    assert len(calls) == 2


class _ExtraFrames(SamplingHook):
    """Extra tokens the way ByG adds them: clean source frames after the noisy ones, at the same positions."""

    def __init__(self):
        self.seen = []

    def model_input(self, state, x, timestep, positions):
        frames = x.shape[2]
        return torch.cat([x, x], dim=2), timestep, list(range(frames)) * 2

    def model_output(self, state, prediction):
        return prediction[:, :, : state.num_frames]

    def forward_context(self, state, model):
        return model.register_forward_pre_hook(lambda m, args, kw: self.seen.append(kw["hidden_states"].shape),
                                               with_kwargs=True)


def test_hooks_can_add_tokens_with_their_own_positions(sets):
    hook = _ExtraFrames()
    result = sample_i2v(sets("wan22"), image_from_uint8(SOURCE), "a red cat", None, num_frames=9, steps=2,
                        scheduler="euler", guidance=Guidance(1.0), seed=0, hooks=[hook], decode_video=False)
    assert hook.seen == [(1, 36, 6, 6, 8)] * 2 and result.latents.shape == (1, 16, 3, 6, 8)
