"""Video4Edit: the tail-frame editor and the FLF2V teacher against diffusers' WanImageToVideoPipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from videoprior_edit.demo import synthetic_source
from videoprior_edit.errors import InputError
from videoprior_edit.models.sets import load_wan_models
from videoprior_edit.sampling import make_scheduler
from videoprior_edit.sampling.condition import image_from_uint8
from videoprior_edit.video4edit import edit_tail_frame, teacher_trajectory

SOURCE, AFTER = synthetic_source(64, 48), synthetic_source(64, 48)[:, ::-1].copy()


def _load(zoo, key):
    return load_wan_models(zoo.file(key), None, zoo.file("umt5"), zoo.file("vae"), zoo.file("clip_vision"),
                           dtype="fp32")


@pytest.fixture(scope="module")
def i2v(zoo):
    return _load(zoo, "wan21_i2v")


@pytest.fixture(scope="module")
def flf2v(zoo):
    return _load(zoo, "wan21_flf2v")


def _pipeline_frames(models, prompt, frames, steps, cfg, shift, seed, last=None):
    from diffusers import WanImageToVideoPipeline

    pipe = WanImageToVideoPipeline(tokenizer=models.tokenizer, text_encoder=models.text_encoder, vae=models.vae,
                                   scheduler=make_scheduler("unipc", shift), transformer=models.transformer,
                                   image_encoder=models.image_encoder, image_processor=models.image_processor)
    pipe.set_progress_bar_config(disable=True)
    return pipe(image=Image.fromarray(SOURCE), last_image=None if last is None else Image.fromarray(last),
                prompt=prompt, negative_prompt="blurry", height=48, width=64, num_frames=frames,
                num_inference_steps=steps, guidance_scale=cfg, generator=torch.Generator("cpu").manual_seed(seed),
                output_type="np", max_sequence_length=512).frames[0]


def test_tail_frame_equals_the_last_frame_of_diffusers_pipeline(i2v):
    ours = edit_tail_frame(i2v, image_from_uint8(SOURCE), "turn the disc blue", "blurry", frames=5, steps=6,
                           cfg=5.0, shift=5.0, seed=4)
    ref = _pipeline_frames(i2v, "turn the disc blue", 5, 6, 5.0, 5.0, 4)
    assert ours.edited.shape == (1, 48, 64, 3) and ours.clip.shape == (4, 48, 64, 3)  # only the tail was decoded
    assert np.array_equal(ours.edited[0].numpy(), ref[-1])
    assert np.array_equal(ours.clip.numpy(), ref[-4:])
    full = edit_tail_frame(i2v, image_from_uint8(SOURCE), "turn the disc blue", "blurry", frames=5, steps=6,
                           cfg=5.0, shift=5.0, seed=4, decode_clip=True)
    assert np.array_equal(full.clip.numpy(), ref) and torch.equal(full.edited, ours.edited)


def test_teacher_trajectory_equals_diffusers_with_last_image(flf2v):
    ours, notes = teacher_trajectory(flf2v, image_from_uint8(SOURCE), image_from_uint8(AFTER), "the disc moves",
                                     "blurry", frames=9, steps=4, cfg=5.0, shift=16.0, seed=2)
    ref = _pipeline_frames(flf2v, "the disc moves", 9, 4, 5.0, 16.0, 2, last=AFTER)
    assert ours.shape == (9, 48, 64, 3) and notes == []
    assert np.array_equal(ours.numpy(), ref)


def test_teacher_needs_a_first_last_frame_model(i2v):
    with pytest.raises(InputError, match="not a first-last-frame model"):
        teacher_trajectory(i2v, image_from_uint8(SOURCE), image_from_uint8(AFTER), "x", steps=1)


def test_video4edit_nodes(pack, i2v, flf2v):
    nodes = pack.nodes.nodes_by_id()
    editor = nodes["VPE_TailFrameEditor"]
    spec = editor.GET_NODE_INFO_V1()["input"]["required"]
    assert (spec["frames"][1]["default"], spec["steps"][1]["default"], spec["cfg"][1]["default"],
            spec["shift"][1]["default"]) == (5, 50, 5.0, 5.0)  # ChronoEdit's published defaults
    odd = torch.rand(1, 50, 70, 3, generator=torch.Generator().manual_seed(0))
    edited, clip, info = editor.execute(i2v, odd, "turn it blue", "", 5, 2, 1.0, 2.0, "unipc", 0, False,
                                     size_mode="pad", max_side=0).args
    assert edited.shape == (1, 50, 70, 3) and clip.shape == (4, 50, 70, 3) and "padded to 80x64" in info
    frames, _ = nodes["VPE_FLF2VTeacher"].execute(flf2v, image_from_uint8(SOURCE), odd, "morph", "", 9, 2, 1.0,
                                                     16.0, "unipc", 0).args
    assert frames.shape == (9, 48, 64, 3)


def test_chronoedit_positions_equal_diffusers_chronoedit_pipeline(i2v):
    from diffusers import ChronoEditPipeline, ChronoEditTransformer3DModel

    config = {k: v for k, v in i2v.transformer.config.items() if not k.startswith("_")}
    chrono = ChronoEditTransformer3DModel(**config).eval()
    chrono.load_state_dict(i2v.transformer.state_dict())
    pipe = ChronoEditPipeline(tokenizer=i2v.tokenizer, text_encoder=i2v.text_encoder, vae=i2v.vae,
                              scheduler=make_scheduler("unipc", 5.0), transformer=chrono,
                              image_encoder=i2v.image_encoder, image_processor=i2v.image_processor)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(image=Image.fromarray(SOURCE), prompt="add a hat", negative_prompt="blurry", height=48, width=64,
               num_frames=5, num_inference_steps=4, guidance_scale=5.0, output_type="np",
               generator=torch.Generator("cpu").manual_seed(1)).frames[0]
    ours = edit_tail_frame(i2v, image_from_uint8(SOURCE), "add a hat", "blurry", frames=5, steps=4, cfg=5.0,
                           shift=5.0, seed=1, positions="chronoedit")
    # ChronoEditTransformer3DModel's forward rounds differently from WanTransformer3DModel's (max 5e-7 on one
    # forward with equal RoPE tables), so this comparison has a float tolerance; the positions matter far more.
    diff = np.abs(ours.edited[0].numpy() - ref[-1]).max()
    plain = edit_tail_frame(i2v, image_from_uint8(SOURCE), "add a hat", "blurry", frames=5, steps=4, cfg=5.0,
                            shift=5.0, seed=1)  # auto: the zoo's Wan2.1-I2V file is not ChronoEdit
    assert diff < 1e-4 and np.abs(plain.edited[0].numpy() - ref[-1]).max() > 100 * max(diff, 1e-6)
    assert "ChronoEdit temporal positions" in ours.notes and "ChronoEdit temporal positions" not in plain.notes


def test_chronoedit_files_are_recognised(zoo, tmp_path):
    from videoprior_edit.models.sets import load_wan_models
    from videoprior_edit.video4edit.editor import is_chronoedit

    single = tmp_path / "chrono_edit_14B_fp16.safetensors"
    single.write_bytes(zoo.file("wan21_i2v").read_bytes())  # ComfyUI's repackaged ChronoEdit: Wan2.1-I2V keys
    models = load_wan_models(single, None, zoo.file("umt5"), zoo.file("vae"), zoo.file("clip_vision"), dtype="fp32")
    assert models.variant == "wan2.1-i2v-14b" and "ChronoEdit" in models.name and is_chronoedit(models)
