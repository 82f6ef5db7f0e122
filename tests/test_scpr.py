"""IF-Edit's Self-Consistent Post-Refinement: Laplacian scores against OpenCV, tail decoding, the still refiner."""

from __future__ import annotations

import json
from fractions import Fraction

import cv2
import numpy as np
import pytest
import torch

from videoprior_edit.demo import synthetic_source
from videoprior_edit.errors import InputError
from videoprior_edit.if_edit.refine import refine_still
from videoprior_edit.if_edit.sharpness import (
    SCORES,
    grey,
    laplacian,
    sharpest,
    sharpness,
)
from videoprior_edit.models.sets import load_wan_models
from videoprior_edit.sampling import Guidance, sample_i2v
from videoprior_edit.sampling.condition import (
    decode,
    decode_tail,
    encode_mode,
    image_from_uint8,
    normalize_latents,
)


def _pictures() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    noise = [(rng.random((h, w, 3)) * 255).astype(np.uint8) for h, w in ((37, 41), (480, 832), (1, 9), (9, 1))]
    scene = synthetic_source(96, 64)
    textured = np.clip(scene.astype(np.int16) + rng.integers(-20, 21, scene.shape), 0, 255).astype(np.uint8)
    return noise + [scene, textured]


def _opencv(picture: np.ndarray, depth=np.uint8) -> np.ndarray:
    source = picture if depth == np.uint8 else picture.astype(np.float32) / 255.0
    g = cv2.cvtColor(source, cv2.COLOR_RGB2GRAY)
    return cv2.Laplacian(g, cv2.CV_64F) if depth == np.uint8 else cv2.Laplacian(g * 255, cv2.CV_32F).astype(np.float64)


@pytest.mark.parametrize("index", range(6))
def test_variance_of_the_laplacian_equals_opencv(index):
    picture = _pictures()[index]
    frames = image_from_uint8(picture)
    reference = _opencv(picture)
    assert np.array_equal(laplacian(grey(frames))[0].numpy(), reference)  # bit for bit
    ours = sharpness(frames, "variance")[0].item()
    values = reference.astype(np.int64).ravel().tolist()
    n = len(values)
    exact = Fraction(n * sum(v * v for v in values) - sum(values) ** 2, n * n)
    assert ours == float(exact)  # the exactly rounded variance ...
    assert ours == pytest.approx(reference.var(), rel=1e-14, abs=1e-12)  # ... numpy's differs at most in the last bit
    assert sharpness(frames, "mean_abs")[0].item() == pytest.approx(np.abs(reference).mean(), rel=1e-12)
    assert sharpness(frames, "energy")[0].item() == pytest.approx((reference ** 2).mean(), rel=1e-12)


def _blurred_series(picture: np.ndarray) -> torch.Tensor:
    frames = [picture] + [cv2.GaussianBlur(picture, (0, 0), sigma) for sigma in (0.6, 1.0, 1.6, 2.5, 4.0)]
    return torch.cat([image_from_uint8(f) for f in frames])


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("precision", ["uint8", "float"])
def test_known_blur_is_ranked_for_every_score(score, precision):
    frames = _blurred_series(_pictures()[5])
    scores = sharpness(frames, score, precision=precision)
    assert torch.all(scores[:-1] > scores[1:]), scores  # sharper first
    shuffled = frames[[3, 0, 5, 1, 4, 2]]
    assert sharpest(shuffled, score, precision=precision)[0] == 1


def test_float_path_ranks_like_opencv_float():
    frames = _blurred_series(_pictures()[4])[[2, 5, 0, 3, 1, 4]]
    ours = sharpness(frames, "variance", precision="float")
    theirs = [_opencv((f.numpy() * 255).round().astype(np.uint8), np.float32).var() for f in frames]
    assert torch.argsort(ours).tolist() == np.argsort(theirs).tolist()


def test_a_mask_limits_the_statistics_to_its_region():
    picture = _pictures()[5]
    frames = image_from_uint8(picture)
    mask = torch.zeros(picture.shape[:2])
    mask[10:40, 20:70] = 1.0
    inside = _opencv(picture)[10:40, 20:70]
    assert sharpness(frames, "variance", mask=mask)[0].item() == pytest.approx(inside.var(), rel=1e-12)
    assert sharpness(frames, "mean_abs", mask=mask)[0].item() == pytest.approx(np.abs(inside).mean(), rel=1e-12)
    with pytest.raises(InputError, match="selects no pixel"):
        sharpness(frames, mask=torch.zeros_like(mask))
    with pytest.raises(InputError, match="the frames' size"):
        sharpness(frames, mask=torch.ones(5, 5))
    with pytest.raises(InputError, match="Unknown sharpness score"):
        sharpness(frames, "tenengrad")


@pytest.fixture(scope="module")
def wan22(zoo):
    return load_wan_models(zoo.file("wan22_i2v_high"), zoo.file("wan22_i2v_low"), zoo.file("umt5"), zoo.file("vae"),
                           dtype="fp32")


def test_exact_tail_decoding_equals_the_end_of_a_full_decode(wan22):
    latents = torch.randn(1, 16, 6, 6, 8, generator=torch.Generator().manual_seed(0))
    full = decode(wan22.vae, latents)
    assert full.shape[2] == 21
    for tail in (1, 2, 5, 6):
        part = decode_tail(wan22.vae, latents, tail)
        assert part.shape[2] == (4 * tail if tail < 6 else 21)
        assert torch.equal(part, full[:, :, -part.shape[2]:])
    fast = decode_tail(wan22.vae, latents, 2, exact=False)
    assert fast.shape[2] == 5 and not torch.equal(fast, full[:, :, -5:])  # a lone latent decodes as a first frame


def test_sdedit_at_full_strength_is_plain_sampling(wan22):
    image = image_from_uint8(synthetic_source(64, 48))
    kw = {"num_frames": 9, "steps": 4, "scheduler": "euler", "guidance": Guidance(1.0), "seed": 2,
          "decode_video": False}
    plain = sample_i2v(wan22, image, "a still picture", None, **kw).latents
    start = torch.randn(1, 16, 3, 6, 8)
    assert torch.equal(sample_i2v(wan22, image, "a still picture", None, start_latents=start, strength=1.0,
                                  **kw).latents, plain)
    calls = []
    handle = wan22.transformer_2.register_forward_hook(lambda *a: calls.append(1))
    try:
        sample_i2v(wan22, image, "a still picture", None, start_latents=start, strength=0.5,
                   expert="transformer_2", **kw)
    finally:
        handle.remove()
    assert len(calls) == 2  # half of the 4 steps, all on the low-noise expert


@pytest.mark.parametrize("mode", ["i2v", "sdedit"])
def test_refiner_returns_the_sharpest_frame_of_its_still_clip(wan22, mode):
    frame = image_from_uint8(synthetic_source(70, 50))
    result = refine_still(wan22, frame, mode=mode, frames=9, steps=4, strength=0.5, seed=1, size_mode="pad")
    assert result.clip.shape == (9, 50, 70, 3) and result.frame.shape == (1, 50, 70, 3)
    assert result.index >= 1 and torch.equal(result.frame[0], result.clip[result.index])
    assert result.scores[result.index] == result.scores[1:].max()
    assert torch.allclose(result.scores, sharpness(result.clip))


def test_refiner_options_are_checked(wan22):
    frame = image_from_uint8(synthetic_source(64, 48))
    with pytest.raises(InputError, match="Unknown refine mode"):
        refine_still(wan22, frame, mode="upscale")
    with pytest.raises(InputError, match="at least 5"):
        refine_still(wan22, frame, frames=3)
    with pytest.raises(InputError, match="Strength must be in"):
        refine_still(wan22, frame, mode="sdedit", strength=0.0)


def test_still_latents_are_the_encoded_repeated_frame(wan22):
    from videoprior_edit.if_edit.refine import _still_latents

    frame = image_from_uint8(synthetic_source(64, 48))
    ours = _still_latents(wan22, frame, 9)
    pixels = frame.permute(0, 3, 1, 2).float() * 2 - 1
    ref = normalize_latents(wan22.vae, encode_mode(wan22.vae, pixels.unsqueeze(2).repeat(1, 1, 9, 1, 1)))
    assert torch.equal(ours, ref) and ours.shape == (1, 16, 3, 6, 8)


def test_scpr_nodes(pack, wan22):
    nodes = pack.nodes.nodes_by_id()
    frames = _blurred_series(_pictures()[5])[[2, 0, 4]]
    frame, index, scores, plot = nodes["VPE_SharpestFrame"].execute(frames, "variance")
    assert index == 1 and torch.equal(frame[0], frames[1])
    data = json.loads(scores)
    assert data["best"] == 1 and len(data["scores"]) == 3 and plot.shape == (1, 192, 512, 3)
    latents = {"latents": torch.randn(1, 16, 3, 6, 8), "positions": [0, 3, 6], "size": (64, 48)}
    (tail,) = nodes["VPE_DecodeLastFrames"].execute(wan22, latents, 1, True)
    assert tail.shape == (4, 48, 64, 3)
    out = nodes["VPE_StillVideoRefiner"].execute(wan22, frames[:1, :48, :64], "still", "sdedit", 9, 4, 0.5, 1.0,
                                                   5.0, "lightning", 0, "variance")
    refined, clip, clip_scores, idx, info = out.args
    assert clip.shape == (9, 48, 64, 3) and torch.equal(refined[0], clip[idx]) and "sharpest" in info
    assert json.loads(clip_scores)["best"] == idx


def test_editor_can_decode_only_the_tail(wan22):
    from videoprior_edit.if_edit import edit_image

    image = image_from_uint8(synthetic_source(64, 48))
    full = edit_image(wan22, image, "the disc rolls away", frames=17, steps=4, seed=3)
    tail = edit_image(wan22, image, "the disc rolls away", frames=17, steps=4, seed=3, tail_latents=1)
    assert full.frames.shape[0] == 5 and tail.frames.shape[0] == 4  # TLD keeps latents [0, 3] of 5
    assert torch.equal(tail.frames, full.frames[-4:]) and torch.equal(tail.latents, full.latents)
