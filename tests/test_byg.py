"""ByG editors: source tokens concatenated on Wan T2V (positions, per-token timestep, slicing; equal to diffusers'
WanPipeline whose transformer sees the extra tokens) and on FLUX.1 (equal to diffusers' FluxKontextPipeline in
Kontext mode; ByG mode differs only in the source ids); the nodes on the tiny zoo."""

from __future__ import annotations

import types

import pytest
import torch

from videoprior_edit.byg import (
    SourceTokens,
    edit_image,
    edit_video,
    load_flux_models,
    source_positions,
)
from videoprior_edit.byg.image import latent_ids, source_ids
from videoprior_edit.errors import InputError
from videoprior_edit.models.sets import load_wan_models
from videoprior_edit.placement import FLUX_PLACEMENTS, Placement
from videoprior_edit.sampling import (
    Guidance,
    SamplerState,
    SamplingHook,
    denoise,
    make_scheduler,
    set_schedule,
)
from videoprior_edit.sampling.condition import (
    encode_mode,
    normalize_latents,
    pixels_from_image,
)
from videoprior_edit.sampling.loop import Embeds, encode_prompts
from videoprior_edit.sampling.rope import rope_freqs

F, H, W = 3, 6, 8  # latent frames, latent height / width (9 frames of 48x64)


@pytest.fixture(scope="module")
def t2v(zoo):
    return load_wan_models(zoo.file("wan21_t2v"), None, zoo.file("umt5"), zoo.file("vae"), dtype="fp32")


@pytest.fixture(scope="module")
def t2v_a14b(zoo):  # the tiny T2V file as both experts: detected as Wan2.2-T2V-A14B
    return load_wan_models(zoo.file("wan21_t2v"), zoo.file("wan21_t2v"), zoo.file("umt5"), zoo.file("vae"),
                           dtype="fp32")


@pytest.fixture(scope="module")
def flux_set(zoo):
    fz = zoo.flux
    return load_flux_models(fz["transformer"], fz["clip_l"], fz["t5xxl"], fz["vae"], dtype="fp32")


def _clip(n=9, h=48, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, h, w, 3, generator=g)


class _Record(SamplingHook):
    """Records the transformer input and the (already sliced) prediction of each step."""

    def __init__(self):
        self.inputs, self.outputs = [], []

    def model_input(self, state, x, timestep, positions):
        self.inputs.append((x, timestep, positions))
        return x, timestep, positions

    def model_output(self, state, prediction):
        self.outputs.append(prediction)
        return prediction


def _one_step(models, source_timestep="same", positions="same"):
    g = torch.Generator().manual_seed(1)
    noise, source = torch.randn(1, 16, F, H, W, generator=g), torch.randn(1, 16, F, H, W, generator=g)
    sched = make_scheduler("unipc", 5.0)
    timesteps = set_schedule(sched, "unipc", 4)
    state = SamplerState(latents=noise.clone(), condition=None, scheduler=sched)
    prompt, _ = encode_prompts(models, "make it a cartoon", None)
    record = _Record()
    denoise(models, state, Embeds(prompt), timesteps[:1], Guidance(1.0),
            [SourceTokens(source, positions, source_timestep), record])
    return noise, source, prompt, timesteps[0], record


@torch.no_grad()
@pytest.mark.parametrize("source_timestep", ["same", "zero"])
def test_wan_prediction_is_a_direct_call_on_the_concatenated_tokens(t2v, source_timestep):
    noise, source, prompt, t, record = _one_step(t2v, source_timestep)
    (x, _timestep, positions), = record.inputs
    assert x.shape == (1, 16, 2 * F, H, W) and positions == list(range(F)) * 2
    model = t2v.transformer
    # RoPE table of positions range(F) * 2: the model's own table for F frames, twice along the sequence.
    own = model.rope(torch.zeros(1, 16, F, H, W))
    table = rope_freqs(model.rope, (1, 16, 2 * F, H, W), list(range(F)) * 2)
    for mine, theirs in zip(table, own):
        assert torch.equal(mine, torch.cat([theirs, theirs], dim=1))
    per_frame = (H // 2) * (W // 2)
    if source_timestep == "same":
        direct_t = t.expand(1)
    else:
        direct_t = torch.cat([t.expand(1, F * per_frame), torch.zeros(1, F * per_frame)], dim=1)
    handle = model.rope.register_forward_hook(lambda m, a, o: table)
    try:
        direct = model(hidden_states=torch.cat([noise, source], dim=2), timestep=direct_t,
                       encoder_hidden_states=prompt, return_dict=False)[0]
    finally:
        handle.remove()
    (prediction,) = record.outputs
    assert prediction.shape == (1, 16, F, H, W)
    assert torch.equal(prediction, direct[:, :, :F])
    if source_timestep == "zero":  # the per-token timestep reaches the model: it differs from the scalar call
        assert not torch.equal(prediction, _one_step(t2v, "same")[4].outputs[0])


def test_wan_position_modes_differ_exactly_on_the_source_half(t2v):
    same, offset = source_positions(F, "same"), source_positions(F, "offset")
    assert same[:F] == offset[:F] == list(range(F)) and same[F:] == list(range(F))
    assert offset[F:] == list(range(F, 2 * F))
    rope, shape, n = t2v.transformer.rope, (1, 16, 2 * F, H, W), F * (H // 2) * (W // 2)
    for a, b in zip(rope_freqs(rope, shape, same), rope_freqs(rope, shape, offset)):
        assert torch.equal(a[:, :n], b[:, :n])
        t_dim = rope.t_dim  # only the temporal part of the source rows changes
        assert torch.equal(a[:, n:, :, t_dim:], b[:, n:, :, t_dim:])
        assert (a[:, n:, :, :t_dim] != b[:, n:, :, :t_dim]).any(dim=-1).reshape(F, -1).any(dim=1).all()
    _, _, _, _, rec = _one_step(t2v, positions="offset")
    assert rec.inputs[0][2] == offset


@torch.no_grad()
def test_wan22_edit_equals_wanpipeline_whose_transformer_sees_the_source(t2v_a14b):
    from diffusers import WanPipeline

    models = t2v_a14b
    assert models.variant == "wan2.2-t2v-a14b" and models.boundary_ratio == 0.875
    clip = _clip()
    result = edit_video(models, clip, "make it a cartoon", "blurry", steps=3, seed=5)
    assert result.frames.shape == (9, 48, 64, 3) and result.latents.shape == (1, 16, F, H, W)
    vae = models.vae
    source = normalize_latents(vae, encode_mode(vae, pixels_from_image(clip).permute(1, 0, 2, 3)[None]))
    handles = []
    for model in (models.transformer, models.transformer_2):
        def pre(module, args, kwargs):
            kwargs["hidden_states"] = torch.cat([kwargs["hidden_states"], source], dim=2)
            return args, kwargs

        handles += [model.register_forward_pre_hook(pre, with_kwargs=True),
                    model.register_forward_hook(lambda m, a, out: (out[0][:, :, :F],)),
                    model.rope.register_forward_hook(
                        lambda m, a, o: rope_freqs(m, a[0].shape, list(range(F)) * 2))]
    try:
        pipe = WanPipeline(tokenizer=models.tokenizer, text_encoder=models.text_encoder, vae=vae,
                           scheduler=make_scheduler("unipc", 12.0), transformer=models.transformer,
                           transformer_2=models.transformer_2, boundary_ratio=0.875)
        pipe.set_progress_bar_config(disable=True)
        latents = pipe(prompt="make it a cartoon", negative_prompt="blurry", height=48, width=64, num_frames=9,
                       num_inference_steps=3, guidance_scale=4.0, guidance_scale_2=3.0, output_type="latent",
                       generator=torch.Generator("cpu").manual_seed(5)).frames
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(result.latents, latents)


def test_edit_video_refuses_i2v_and_rounds_frames(zoo, t2v):
    from videoprior_edit.errors import InputError

    i2v = load_wan_models(zoo.file("wan22_i2v_high"), zoo.file("wan22_i2v_low"), zoo.file("umt5"), zoo.file("vae"),
                          dtype="fp32")
    with pytest.raises(InputError, match="text-to-video"):
        edit_video(i2v, _clip(), "x", steps=1)
    r = edit_video(t2v, _clip(11), "x", steps=1, source_timestep="zero", positions="offset")
    assert r.frames.shape[0] == 9 and any("11 frames -> 9" in n for n in r.notes)


# ------------------------------------------------------------------------------------------------ FLUX
def _kontext(flux_set, image, steps, seed, patch_ids=False):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline

    from videoprior_edit.models.flux import scheduler_config

    m = flux_set
    pipe = FluxKontextPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**scheduler_config()), vae=m.vae,
                               text_encoder=m.text_encoder, tokenizer=m.tokenizer, text_encoder_2=m.text_encoder_2,
                               tokenizer_2=m.tokenizer_2, transformer=m.transformer)
    pipe.set_progress_bar_config(disable=True)
    if patch_ids:  # ByG: the image tokens get the noisy tokens' ids
        original = pipe.prepare_latents

        def prepare(*a, **k):
            latents, image_latents, ids, _image_ids = original(*a, **k)
            return latents, image_latents, ids, ids.clone()

        pipe.prepare_latents = prepare
    h, w = image.shape[1:3]
    out = {}
    for kind in ("latent", "pt"):
        out[kind] = pipe(image=image.permute(0, 3, 1, 2), prompt="make the car blue", height=h, width=w,
                         max_area=h * w, _auto_resize=False, num_inference_steps=steps, guidance_scale=3.5,
                         generator=torch.Generator("cpu").manual_seed(seed), output_type=kind).images
    return out


@pytest.mark.parametrize("positions", ["kontext", "byg"])
def test_flux_editor_equals_kontext_pipeline(flux_set, positions):
    image = _clip(1, 32, 48, seed=3)
    ref = _kontext(flux_set, image, 3, 7, patch_ids=positions == "byg")
    r = edit_image(flux_set, image, "make the car blue", steps=3, guidance=3.5, seed=7, positions=positions)
    assert torch.equal(r.latents, ref["latent"])
    assert torch.equal(r.image, ref["pt"].permute(0, 2, 3, 1))
    assert r.image.shape == (1, 32, 48, 3)


def test_flux_position_modes_differ_only_in_the_source_ids(flux_set):
    noisy = latent_ids(2, 3)
    byg, kontext = source_ids(noisy, "byg"), source_ids(noisy, "kontext")
    assert torch.equal(byg, noisy) and torch.equal(kontext[:, 1:], noisy[:, 1:])
    assert (kontext[:, 0] == 1).all() and (noisy[:, 0] == 0).all()
    seen = []
    handle = flux_set.transformer.register_forward_pre_hook(
        lambda m, a, k: seen.append((k["hidden_states"], k["img_ids"])), with_kwargs=True)
    try:
        image = _clip(1, 32, 48, seed=3)
        a = edit_image(flux_set, image, "x", steps=1, seed=1, positions="byg")
        b = edit_image(flux_set, image, "x", steps=1, seed=1, positions="kontext")
    finally:
        handle.remove()
    (xa, ida), (xb, idb) = seen
    n = xa.shape[1] // 2
    assert torch.equal(xa, xb) and torch.equal(ida[:n], idb[:n]) and torch.equal(ida[n:, 1:], idb[n:, 1:])
    assert (ida[n:, 0] == 0).all() and (idb[n:, 0] == 1).all()
    assert not torch.equal(a.latents, b.latents)


class _Recording(Placement):
    """A real placement that also notes which components it was asked for (to check the order of a run)."""

    def activate(self, models, name):
        self.calls.append(("activate", name))
        return super().activate(models, name)

    def release(self, models, name):
        self.calls.append(("release", name))
        super().release(models, name)


@pytest.mark.parametrize("mode", FLUX_PLACEMENTS)
def test_flux_placements_give_the_plain_result_with_loras(zoo, flux_set, mode, tmp_path):
    from test_lora_flux import bfl_lora

    from videoprior_edit.byg import with_flux_lora
    from videoprior_edit.weights import save_file

    fz = zoo.flux
    save_file(bfl_lora(flux_set.transformer), tmp_path / "a.safetensors")
    save_file(bfl_lora(flux_set.transformer, seed=1), tmp_path / "b.safetensors")
    place = _Recording(mode, device="cpu")
    place.calls = []
    placed = load_flux_models(fz["transformer"], fz["clip_l"], fz["t5xxl"], fz["vae"], dtype="fp32", placement=place)
    image = _clip(1, 32, 48, seed=3)
    for merged in (False, True):  # a LoRA on a placed set (and, merged, a reload from the file) changes nothing
        ours = with_flux_lora(with_flux_lora(placed, tmp_path / "a.safetensors", 0.8, merged),
                              tmp_path / "b.safetensors", -0.5, merged)
        plain = with_flux_lora(with_flux_lora(flux_set, tmp_path / "a.safetensors", 0.8, merged),
                               tmp_path / "b.safetensors", -0.5, merged)
        a = edit_image(ours, image, "make the car blue", steps=2, seed=7)
        b = edit_image(plain, image, "make the car blue", steps=2, seed=7)
        assert torch.equal(a.latents, b.latents) and torch.equal(a.image, b.image)
        assert ours.placement is place
    assert torch.equal(edit_image(placed, image, "x", steps=1, seed=0).latents,
                       edit_image(flux_set, image, "x", steps=1, seed=0).latents)  # back to no LoRA
    run = place.calls[-9:]
    assert run == [("activate", "text_encoder"), ("release", "text_encoder"), ("activate", "text_encoder_2"),
                   ("release", "text_encoder_2"), ("activate", "vae"), ("release", "vae"),
                   ("activate", "transformer"), ("activate", "vae"), ("release", "vae")]
    assert (getattr(placed.transformer, "_vpe_group_offload", None) is not None) == (mode == "block_offload")


def test_flux_sets_refuse_disk_parking(zoo):
    fz = zoo.flux
    with pytest.raises(InputError, match="one_expert_disk") as e:
        load_flux_models(fz["transformer"], fz["clip_l"], fz["t5xxl"], fz["vae"], dtype="fp32",
                         placement=Placement("one_expert_disk", device="cpu"))
    assert "all_on_device, one_expert, block_offload" in e.value.hint


# ------------------------------------------------------------------------------------------------ nodes
def test_byg_nodes_on_the_tiny_zoo(pack, zoo, t2v, monkeypatch):
    monkeypatch.setenv("VPE_MODELS_DIR", str(zoo.models))
    nodes = pack.nodes.nodes_by_id()
    assert nodes["VPE_ByGVideoEdit"].GET_SCHEMA().display_name == "ByG Video Edit"
    assert nodes["VPE_ByGImageEdit"].GET_SCHEMA().display_name == "ByG Image Edit"
    video = types.SimpleNamespace(get_components=lambda: types.SimpleNamespace(images=_clip(), frame_rate=24))
    node = nodes["VPE_ByGVideoEdit"]
    out = node.execute(t2v, "make it a cartoon", "", 2, 0.0, 0.0, 0.0, "unipc", 0, video=video).args
    assert out[0].shape == (9, 48, 64, 3) and out[1] == 24.0
    out = node.execute(t2v, "x", "", 1, 1.0, 0.0, 0.0, "euler", 0, frames=_clip(), source_timestep="zero").args
    assert out[0].shape == (9, 48, 64, 3) and out[1] == 16.0

    loader = nodes["VPE_FluxModelLoader"]
    (flux,) = loader.execute("tiny_flux1-dev.safetensors", "tiny_clip_l.safetensors", "tiny_t5xxl_fp16.safetensors",
                          "tiny_flux_ae.safetensors", "fp32")
    assert flux.placement.mode == "one_expert"  # the node's "one_model"
    (blocks,) = loader.execute("tiny_flux1-dev.safetensors", "tiny_clip_l.safetensors", "tiny_t5xxl_fp16.safetensors",
                            "tiny_flux_ae.safetensors", "fp32", placement="block_offload")
    assert blocks.placement.mode == "block_offload"
    with pytest.raises(pack.videoprior_edit.errors.InputError, match="Unknown placement"):
        loader.execute("tiny_flux1-dev.safetensors", "tiny_clip_l.safetensors", "tiny_t5xxl_fp16.safetensors",
                    "tiny_flux_ae.safetensors", "fp32", placement="one_expert_disk")
    edited, info = nodes["VPE_ByGImageEdit"].execute(flux, _clip(1, 40, 56), "make it blue", 2, 3.5, 0).args
    assert edited.shape == (1, 32, 64, 3) and "resized to 64x32" in info
    assert "VPE_FluxLoraLoader" in nodes
