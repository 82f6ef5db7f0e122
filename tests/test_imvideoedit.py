"""ImVideoEdit: the spatial-difference adapter on the tiny zoo's real Wan2.1-T2V, its files, the editor and nodes."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
import torch

from videoprior_edit.errors import InputError, ModelFileError
from videoprior_edit.imvideoedit import (
    applied,
    create_adapter,
    edit_video,
    insert_adapter,
    load_adapter,
    read_config,
    remove_adapter,
    save_adapter,
)
from videoprior_edit.imvideoedit.blocks import JointContext, joint_rope, phi
from videoprior_edit.imvideoedit.editor import pad_frames
from videoprior_edit.models.sets import load_wan_models
from videoprior_edit.sampling import (
    Embeds,
    Guidance,
    SamplerState,
    denoise,
    encode_prompts,
    make_scheduler,
    set_schedule,
)

SHAPE = (2, 16, 3, 6, 8)  # [source; target], 3 latent frames of 48x64 pixels


@pytest.fixture(scope="module")
def t2v(zoo):
    return load_wan_models(zoo.file("wan21_t2v"), None, zoo.file("umt5"), zoo.file("vae"), dtype="fp32")


def _inputs(seed=0, text_dim=4096):  # the zoo's Wan takes UMT5-XXL-wide text (4096), as real Wan does
    g = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=g), torch.tensor([0.0, 700.0]), torch.randn(1, 512, text_dim, generator=g)


def _forward(model, x, t, text):
    return model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]


def _trained_like(adapter, seed=1):
    """The adapter with every weight moved off its initialisation (so every path is live)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return adapter


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_untrained_adapter_reproduces_the_frozen_model(zoo, t2v, dtype):
    models = t2v if dtype == "fp32" else load_wan_models(zoo.file("wan21_t2v"), None, zoo.file("umt5"),
                                                         zoo.file("vae"), dtype="bf16")
    model, (x, t, text) = models.transformer, _inputs()
    x, text = x.to(model.dtype), text.to(model.dtype)
    adapter = create_adapter(model)
    with torch.no_grad():
        frozen_pair = _forward(model, x, t, torch.cat([text, text]))
        frozen_target = _forward(model, x[1:], t[1:], text)
        with applied(model, adapter, dtype=model.dtype):
            adapted = _forward(model, x, t, text)
    assert torch.equal(adapted, frozen_pair)  # max abs diff 0 for the same batch
    tolerance = 1e-5 if dtype == "fp32" else 0.05  # batch of 2 vs 1: only the matmuls' blocking differs
    assert (adapted[1:] - frozen_target).abs().max() <= tolerance


def test_untrained_editor_equals_plain_text_to_video_sampling(t2v):
    """End to end: with an untrained adapter, editing is the frozen T2V model generating from the same noise."""
    frames = torch.rand(9, 48, 64, 3, generator=torch.Generator().manual_seed(0))
    ours = edit_video(t2v, create_adapter(t2v.transformer), frames, "a red cat", "blurry", steps=4, cfg=4.0, seed=3)
    positive, negative = encode_prompts(t2v, "a red cat", "blurry")
    sched = make_scheduler("unipc", 3.0)
    noise = torch.randn(1, 16, 3, 6, 8, generator=torch.Generator().manual_seed(3))
    state = SamplerState(latents=noise, condition=None, scheduler=sched)
    with torch.no_grad():
        denoise(t2v, state, Embeds(positive, negative), set_schedule(sched, "unipc", 4), Guidance(4.0))
    assert ours.frames.shape == (9, 48, 64, 3) and ours.notes == []
    assert torch.allclose(ours.latents, state.latents, atol=1e-4, rtol=0)


def test_phi_equals_a_direct_per_frame_computation(t2v):
    model = t2v.transformer
    grid = (3, 3, 4)
    context = JointContext(grid=grid, rope=joint_rope(model.rope, grid))
    attention = model.blocks[0].attn1
    d = attention.to_q.in_features  # hidden size
    x = torch.randn(4, 3 * 3 * 4, d, generator=torch.Generator().manual_seed(0))  # B = 2 pairs
    with torch.no_grad():
        ours = phi(attention, x, context).view(4, 3, 3, 4, d)
        grids = x.view(4, 3, 3, 4, d)
        for b in range(2):
            for f in range(3):
                joint = torch.cat([grids[b, f], grids[2 + b, f]], dim=1).reshape(1, 3 * 8, d)  # H x 2W
                direct = attention(joint, None, None, context.rope).view(3, 8, d)
                assert torch.allclose(ours[b, f], direct[:, :4], atol=1e-6)  # the source half
                assert torch.allclose(ours[2 + b, f], direct[:, 4:], atol=1e-6)  # the target half


def test_joint_rope_is_the_models_own_rope_of_an_h_by_2w_frame(t2v):
    rope = t2v.transformer.rope
    offset = joint_rope(rope, (3, 3, 4), "offset")
    own = rope(torch.zeros(1, 16, 1, 6, 16))  # one frame of 3 x 8 tokens: positions t=0, rows 0..2, columns 0..7
    assert torch.equal(offset[0], own[0]) and torch.equal(offset[1], own[1])
    shared = joint_rope(rope, (3, 3, 4), "shared")[0].view(3, 8, -1)
    assert torch.equal(shared[:, :4], shared[:, 4:]) and torch.equal(shared[:, :4], offset[0].view(3, 8, -1)[:, :4])
    with pytest.raises(InputError, match="RoPE table"):
        joint_rope(rope, (1, 3, 20), "offset")


def test_gate_shape_range_and_the_zero_initialised_path(t2v):
    model = t2v.transformer
    adapter = create_adapter(model)
    sda, block = adapter.blocks["0"], model.blocks[0]
    assert not sda.fuse.weight.any() and not sda.fuse.bias.any()
    assert not any(p.any() for p in sda.update.to_out[0].parameters())
    assert torch.equal(sda.predict.to_q.weight, block.attn1.to_q.weight)  # inherited (the paper's init)
    assert torch.equal(sda.update.norm_k.weight, block.attn1.norm_k.weight)
    assert torch.equal(sda.gate_attn.to_k.weight, block.attn2.to_k.weight)
    d = block.attn1.to_q.in_features
    delta, text = torch.randn(4, 36, d), torch.randn(4, 512, d)
    gate = sda.gate(delta, text)
    assert gate.shape == delta.shape and gate.min() > 0 and gate.max() < 1
    x, t, text = _inputs()
    with applied(model, adapter):
        adapter.requires_grad_(True)
        _forward(model, x, t, text).square().mean().backward()
        assert sda.fuse.weight.grad.abs().sum() > 0 and sda.update.to_out[0].weight.grad.abs().sum() > 0
        with torch.no_grad():
            base = _forward(model, x, t, text)
            sda.update.to_out[0].bias.fill_(0.1)  # only the update path opened: the output moves
            assert not torch.allclose(_forward(model, x, t, text), base)


def test_adapted_block_keeps_the_diffusers_call_signature_and_checkpoints(t2v):
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock

    model = t2v.transformer
    adapter = _trained_like(create_adapter(model)).requires_grad_(True)
    x, t, text = _inputs()
    grads = []
    with applied(model, adapter):
        for block in model.blocks:
            assert type(block) is WanTransformerBlock
            assert list(inspect.signature(block.forward).parameters) == ["hidden_states", "encoder_hidden_states",
                                                                         "temb", "rotary_emb"]
        for checkpointing in (False, True):
            model.enable_gradient_checkpointing() if checkpointing else model.disable_gradient_checkpointing()
            adapter.zero_grad()
            _forward(model, x, t, text).square().mean().backward()
            grads.append([p.grad.clone() for p in adapter.parameters()])
    model.disable_gradient_checkpointing()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))
    assert not any(p.requires_grad for p in model.parameters())  # the backbone stayed frozen


def test_insert_and_remove_leave_the_model_as_it_was(t2v):
    model = t2v.transformer
    originals = [b.attn1 for b in model.blocks]
    x, t, text = _inputs()
    with torch.no_grad():
        before = _forward(model, x, t, torch.cat([text, text]))
        first, second = _trained_like(create_adapter(model)), create_adapter(model)
        insert_adapter(model, first)
        with pytest.raises(InputError, match="already carries"):
            insert_adapter(model, second)
        assert remove_adapter(model) is first and remove_adapter(model) is None
        after = _forward(model, x, t, torch.cat([text, text]))
    assert [b.attn1 for b in model.blocks] == originals and torch.equal(before, after)
    assert not model._forward_pre_hooks and not model.condition_embedder._forward_hooks
    with pytest.raises(InputError, match="batch has 1"), applied(model, create_adapter(model)), torch.no_grad():
        _forward(model, x[:1], t[:1], text)


def test_adapter_file_round_trip_config_and_base_check(t2v, zoo, tmp_path):
    from videoprior_edit.zoo import tiny_wan_transformer

    model = t2v.transformer
    adapter = _trained_like(create_adapter(model, blocks=[1], joint_rope="shared", source_timestep="same"))
    path = save_adapter(adapter, tmp_path / "a.safetensors", "fp32")
    config = read_config(path)
    assert (config.blocks, config.joint_rope, config.source_timestep, config.dim, config.family) == \
        ([1], "shared", "same", 256, "t2v")
    loaded = load_adapter(path, model)
    assert all(torch.equal(a, b) for a, b in zip(adapter.state_dict().values(), loaded.state_dict().values()))
    assert set(loaded.state_dict()) == set(adapter.state_dict()) and all(k.startswith("blocks.1.")
                                                                        for k in loaded.state_dict())
    x, t, text = _inputs()
    with torch.no_grad():
        outs = []
        for a in (adapter, loaded):
            with applied(model, a):
                outs.append(_forward(model, x, t, text))
    assert torch.equal(*outs)
    other = tiny_wan_transformer("t2v", 0, "bench")
    with pytest.raises(ModelFileError, match=r"trained on .*\(256 wide, 2 blocks\).*\(192 wide, 4 blocks\)"):
        load_adapter(path, other)
    with pytest.raises(ModelFileError, match="not an ImVideoEdit adapter"):
        read_config(zoo.file("lightning_high"))
    i2v = load_wan_models(zoo.file("wan21_i2v"), None, zoo.file("umt5"), zoo.file("vae"), zoo.file("clip_vision"),
                          dtype="fp32")
    with pytest.raises(ModelFileError, match="text-to-video"):
        create_adapter(i2v.transformer)


def test_pad_frames_to_4k_plus_1():
    frames = torch.arange(10.0).view(10, 1, 1, 1)
    padded, note = pad_frames(frames)
    assert padded.shape[0] == 13 and padded[10:].flatten().tolist() == [9.0] * 3 and "10 frames padded to 13" in note
    assert pad_frames(frames[:9])[0].shape[0] == 9 and pad_frames(frames[:1])[1] == ""


def test_editor_options_sdedit_and_errors(t2v):
    adapter = _trained_like(create_adapter(t2v.transformer, source_latents="noised", source_timestep="same"))
    frames = torch.rand(10, 50, 70, 3, generator=torch.Generator().manual_seed(1))
    r = edit_video(t2v, adapter, frames, "a red cat", steps=4, cfg=1.0, strength=0.5, seed=1, size_mode="pad")
    assert r.frames.shape == (10, 50, 70, 3) and r.latents.shape == (1, 16, 4, 8, 10)
    assert any("padded to 13" in n for n in r.notes) and any("2 of 4 steps" in n for n in r.notes)
    again = edit_video(t2v, adapter, frames, "a red cat", steps=4, cfg=1.0, strength=0.5, seed=1, size_mode="pad")
    assert torch.equal(r.frames, again.frames)  # seeded
    with pytest.raises(InputError, match="Strength"):
        edit_video(t2v, adapter, frames, "x", strength=0)


class _Video:
    """A stand-in with the core VIDEO's `get_components()` shape (ComfyUI is not imported by the pack's tests)."""

    def __init__(self, images, rate):
        self.images, self.rate = images, rate

    def get_components(self):
        from fractions import Fraction

        return SimpleNamespace(images=self.images, audio=None, frame_rate=Fraction(self.rate))


def test_editor_nodes_on_9_and_33_frame_sources(pack, t2v, tmp_path, monkeypatch):
    nodes = pack.nodes.nodes_by_id()
    (tmp_path / "loras").mkdir()
    save_adapter(_trained_like(create_adapter(t2v.transformer)), tmp_path / "loras" / "ive.safetensors", "fp32")
    monkeypatch.setenv("VPE_MODELS_DIR", str(tmp_path))
    loaded = nodes["VPE_ImVideoEditAdapterLoader"].execute(t2v, "ive.safetensors")
    adapter, info = loaded.args
    assert "256 wide, 2 blocks" in info
    editor = nodes["VPE_ImVideoEditVideoEdit"]
    spec = editor.GET_NODE_INFO_V1()["input"]
    assert {"frames", "video", "fps", "strength"} <= set(spec["optional"])
    g = torch.Generator().manual_seed(0)
    out = editor.execute(t2v, adapter, "a blue cat", "", 2, 1.0, 3.0, "unipc", 0, frames=torch.rand(9, 48, 64, 3,
                                                                                                  generator=g),
                      fps=24.0)
    frames, fps, _ = out.args
    assert frames.shape == (9, 48, 64, 3) and fps == 24.0
    video = _Video(torch.rand(33, 48, 64, 3, generator=g), 30000 / 1001)
    frames, fps, info = editor.execute(t2v, adapter, "a blue cat", "", 2, 2.0, 3.0, "euler", 1, video=video).args
    assert frames.shape == (33, 48, 64, 3) and fps == pytest.approx(29.97, abs=1e-3) and info == "no adjustments"
    assert frames.min() >= 0 and frames.max() <= 1
    with pytest.raises(pack.videoprior_edit.errors.InputError, match="No source video"):
        editor.execute(t2v, adapter, "x", "", 1, 1.0, 3.0, "unipc", 0)


@pytest.mark.parametrize("mode", ["one_expert_disk", "block_offload"])
def test_editor_under_the_memory_placements(zoo, t2v, tmp_path, mode):
    from videoprior_edit.placement import Placement

    adapter = _trained_like(create_adapter(t2v.transformer))
    frames = torch.rand(5, 48, 64, 3, generator=torch.Generator().manual_seed(2))
    reference = edit_video(t2v, adapter, frames, "a red cat", steps=2, cfg=3.0).frames
    placed = load_wan_models(zoo.file("wan21_t2v"), None, zoo.file("umt5"), zoo.file("vae"), dtype="fp32",
                             placement=Placement(mode, device="cpu"))
    path = save_adapter(adapter, tmp_path / "a.safetensors", "fp32")
    for _ in range(2):  # the second run finds the expert parked / offloaded
        out = edit_video(placed, load_adapter(path, placed.transformer), frames, "a red cat", steps=2, cfg=3.0)
        assert torch.equal(out.frames, reference)
    assert placed.transformer._vpe_imvideoedit is None
