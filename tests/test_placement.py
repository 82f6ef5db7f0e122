"""Memory placement: every mode computes exactly what a plain load computes; one_expert_disk really frees the
waiting expert (and reloads it with its LoRAs); lazy loading; messages."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import assert_same

from videoprior_edit.errors import InputError, ModelFileError
from videoprior_edit.models.sets import load_wan_models
from videoprior_edit.placement import EXPERTS, PLACEMENTS, Placement, reload_weights
from videoprior_edit.text import PromptEncoder
from videoprior_edit.weights import save_file


def _load(zoo, placement=None, high=None):
    return load_wan_models(high or zoo.file("wan22_i2v_high"), zoo.file("wan22_i2v_low"), zoo.file("umt5"),
                           zoo.file("vae"), dtype="fp32", placement=placement)


@pytest.fixture(scope="module")
def plain(zoo):
    return _load(zoo)


def _forward(model) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 36, 2, 4, 4, generator=gen)
    text = torch.randn(1, 8, model.config.text_dim, generator=gen)
    with torch.no_grad():
        return model(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=text,
                     return_dict=False)[0]


def _encode(text_encoder, tokenizer) -> torch.Tensor:
    return PromptEncoder(text_encoder, tokenizer)("a red cat")


def _all_meta(module) -> bool:
    return all(p.is_meta for p in module.parameters())


def _none_meta(module) -> bool:
    return not any(p.is_meta for p in [*module.parameters(), *module.buffers()])


@pytest.mark.parametrize("mode", PLACEMENTS)
def test_every_mode_computes_what_a_plain_load_computes(zoo, plain, mode):
    models = _load(zoo, Placement(mode, device="cpu"))
    place = models.placement
    assert place.compute_device == torch.device("cpu")
    reference = {name: _forward(getattr(plain, name)) for name in EXPERTS}
    for name in (*EXPERTS, *EXPERTS):  # switch there and back: a reloaded or re-hooked expert too
        assert torch.equal(_forward(place.activate(models, name)), reference[name]), name
    encoder = place.activate(models, "text_encoder")
    assert torch.equal(_encode(encoder, models.tokenizer), _encode(plain.text_encoder, plain.tokenizer))
    place.release(models, "text_encoder")
    place.finish(models)


@pytest.mark.parametrize("mode", ["one_expert_disk", "block_offload"])
def test_a_whole_run_gives_the_plain_result(zoo, plain, mode):
    from videoprior_edit.demo import synthetic_source
    from videoprior_edit.sampling import Guidance, sample_i2v
    from videoprior_edit.sampling.condition import image_from_uint8

    image = image_from_uint8(synthetic_source(64, 48))
    models = _load(zoo, Placement(mode, device="cpu"))
    ours, reference = (sample_i2v(m, image, "a red cat", "blurry", num_frames=5, steps=4,
                                  guidance=Guidance(3.5, 2.0), seed=3) for m in (models, plain))
    assert torch.equal(ours.latents, reference.latents) and torch.equal(ours.video, reference.video)
    if mode == "one_expert_disk":  # the run ended on the low-noise expert; the encoder was released
        assert _all_meta(models.transformer) and _all_meta(models.text_encoder)


def test_disk_mode_parks_the_waiting_expert(zoo, plain):
    models = _load(zoo)
    models.placement = place = Placement("one_expert_disk", device="cpu")
    high, low, info = models.transformer, models.transformer_2, models.transformer.vpe_info
    assert place.activate(models, "transformer_2") is low
    assert _all_meta(high) and _none_meta(low)
    assert place.activate(models, "transformer") is high
    assert _all_meta(low) and _none_meta(high)
    assert high.vpe_info is info and models.transformer is high
    assert torch.equal(_forward(high), _forward(plain.transformer))


def test_disk_mode_parks_the_text_encoder_after_encoding(zoo, plain):
    models = _load(zoo, Placement("one_expert_disk", device="cpu"))
    place, tokenizer = models.placement, models.tokenizer
    encoder = place.activate(models, "text_encoder")
    place.release(models, "text_encoder")
    assert _all_meta(encoder) and models.tokenizer is tokenizer
    again = place.activate(models, "text_encoder")
    assert again is encoder and _none_meta(encoder)
    assert torch.equal(_encode(again, tokenizer), _encode(plain.text_encoder, plain.tokenizer))
    place.activate(models, "transformer")  # the next big component sends it back to disk
    assert _all_meta(encoder)


def test_lazy_loading_reads_no_expert_until_activated(zoo):
    models = _load(zoo, Placement("one_expert_disk", device="cpu"))
    assert _all_meta(models.transformer) and _all_meta(models.transformer_2)
    assert models.transformer.vpe_info.family == "i2v-a14b" and "test-only size" in models.name
    models.placement.activate(models, "transformer")
    assert _none_meta(models.transformer) and _all_meta(models.transformer_2)


def test_disk_mode_reloads_with_the_sets_precision_and_fp8_storage(zoo):
    def load(placement=None):
        return load_wan_models(zoo.file("wan22_i2v_high"), zoo.file("wan22_i2v_low"), zoo.file("umt5"),
                               zoo.file("vae"), dtype="bf16", weight_storage="fp8_e4m3fn", placement=placement)

    plain, models = load(), load(Placement("one_expert_disk", device="cpu"))
    for name in ("transformer_2", "transformer"):
        assert_same(models.placement.activate(models, name), getattr(plain, name))
    assert models.transformer.blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn


def _small_lora(path, dim: int = 256, rank: int = 2) -> None:
    gen = torch.Generator().manual_seed(5)
    key = "diffusion_model.blocks.0.self_attn.q"
    save_file({f"{key}.lora_down.weight": torch.randn(rank, dim, generator=gen),
               f"{key}.lora_up.weight": torch.randn(dim, rank, generator=gen), f"{key}.alpha": torch.tensor(1.0)},
              path)


def test_disk_mode_reapplies_the_sets_loras_after_a_reload(zoo, plain, tmp_path):
    lora = pytest.importorskip("videoprior_edit.lora", reason="the LoRA loader (videoprior_edit/lora.py) is missing")
    path = tmp_path / "q_lora.safetensors"
    _small_lora(path)
    expected = _load(zoo).transformer
    lora.apply_lora(expected, path, 0.7)
    models = _load(zoo, Placement("one_expert_disk", device="cpu"))
    models.loras.append((str(path), 0.7, "high"))
    place = models.placement
    for name in ("transformer", "transformer_2", "transformer"):  # the second high-noise load merges it once again
        place.activate(models, name)
        reference = expected if name == "transformer" else plain.transformer_2
        assert torch.equal(_forward(getattr(models, name)), _forward(reference)), name
    assert not torch.equal(_forward(expected), _forward(plain.transformer))
    assert models.transformer.vpe_loras == ((str(path), 0.7),) and models.transformer_2.vpe_loras == ()


def test_reload_weights_restores_the_file_in_place(zoo, plain, tmp_path):
    lora = pytest.importorskip("videoprior_edit.lora", reason="the LoRA loader (videoprior_edit/lora.py) is missing")
    path = tmp_path / "q_lora.safetensors"
    _small_lora(path)
    models = _load(zoo)
    module = models.transformer
    lora.apply_lora(module, path, 0.7)
    weight = module.blocks[0].attn1.to_q.weight
    assert reload_weights(models, "transformer") is module and module.blocks[0].attn1.to_q.weight is weight
    assert_same(module, plain.transformer)
    assert module.vpe_loras == ()


def test_a_parked_expert_whose_file_is_gone_says_so(zoo, tmp_path):
    copy = tmp_path / "tiny_wan2.2_i2v_high_noise_14B_fp32.safetensors"
    shutil.copy(zoo.file("wan22_i2v_high"), copy)
    models = _load(zoo, Placement("one_expert_disk", device="cpu"), high=copy)
    copy.unlink()
    with pytest.raises(ModelFileError, match="is gone.*parked on disk") as err:
        models.placement.activate(models, "transformer")
    assert copy.name in str(err.value) and err.value.hint


def test_block_offload_hooks_once_and_gives_way_to_another_mode(zoo, plain):
    from diffusers.hooks import HookRegistry

    models = _load(zoo, Placement("block_offload", device="cpu", blocks_per_group=1))
    first = models.placement.activate(models, "transformer")
    registry = HookRegistry.check_if_exists_or_initialize(first)
    hook = registry.get_hook("group_offloading")
    assert hook is not None and models.placement.activate(models, "transformer") is first
    assert registry.get_hook("group_offloading") is hook  # attached once
    models.placement = Placement("one_expert", device="cpu")
    assert torch.equal(_forward(models.placement.activate(models, "transformer")), _forward(plain.transformer))
    assert registry.get_hook("group_offloading") is None


def test_vae_tiling(zoo):
    models = _load(zoo)
    assert Placement(device="cpu").activate(models, "vae").use_tiling is False
    assert Placement(device="cpu", vae_tiling=True).activate(models, "vae").use_tiling is True


def test_describe():
    assert Placement("all_on_device", device="cpu").describe() == \
        "all models on cpu; encoders released after encoding"
    assert Placement("one_expert", device="cpu", release_text_encoder=False).describe() == \
        "one expert at a time on cpu, the other waits in cpu"
    assert Placement("one_expert_disk", device="cpu", vae_tiling=True).describe() == \
        ("one expert at a time on cpu, the other parked on disk (reloaded from its file); encoders released after "
         "encoding; VAE tiling")
    assert Placement("block_offload", device="cpu", blocks_per_group=2).describe().startswith(
        "block offload: weights in cpu, 2 block(s) at a time on cpu")


def test_bad_mode_and_component_names(zoo, plain):
    with pytest.raises(InputError, match="Unknown memory placement 'fast'") as err:
        Placement("fast")
    assert "one_expert_disk" in err.value.hint
    with pytest.raises(InputError, match="blocks_per_group"):
        Placement("block_offload", blocks_per_group=0)
    place = Placement(device="cpu")
    with pytest.raises(InputError, match="Unknown model component 'unet'") as err:
        place.activate(plain, "unet")
    assert "transformer_2" in err.value.hint
    with pytest.raises(InputError, match="no image encoder"):
        place.release(plain, "image_encoder")


def test_default_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert Placement().compute_device.type == expected
