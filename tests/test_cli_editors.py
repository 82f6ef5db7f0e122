"""The single-item editor commands (`edit-tail`, `edit-byg-image`, `edit-byg-video`, `edit-imvideoedit`) on the tiny
zoo, the model-file flags they share with `edit` and `batch`, and what they say when files are missing."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from PIL import Image
from test_batch import HEIGHT, WIDTH, video_frames, write_image, write_video

from videoprior_edit.cli import build_parser, main


@pytest.mark.parametrize("command,source,extra", [
    ("edit-tail", "pic.png", ["--frames", "9", "--reasoning-steps", "1", "--positions", "chronoedit"]),
    ("edit-byg-image", "pic.png", ["--guidance", "2.5"]),
    ("edit-byg-video", "clip.mp4", ["--max-frames", "5", "--fps", "8"]),
    ("edit-imvideoedit", "frames", ["--strength", "0.5"]),
])
def test_single_item_commands_write_their_output(zoo, tmp_path, capsys, command, source, extra):
    path = write_image(tmp_path / source) if source.endswith(".png") else write_video(tmp_path / source, frames=7)
    out = tmp_path / "out"
    assert main([command, str(path), "--prompt", "make it blue", "--zoo", str(zoo.root), "--out", str(out),
                 "--steps", "2", "--seed", "4", *extra]) == 0
    printed = capsys.readouterr().out
    assert "seed 4" in printed
    if source.endswith(".png"):
        assert np.asarray(Image.open(out / "edited.png")).shape == (HEIGHT, WIDTH, 3)
        assert f"output: {out / 'edited.png'}" in printed
    else:  # byg-video: 4k+1 frames (--max-frames 5) at --fps; imvideoedit: the source's 7, a frame folder's 16 fps
        import cv2

        frames = video_frames(out / "edited.mp4")
        assert frames.shape == ((5 if command == "edit-byg-video" else 7), HEIGHT, WIDTH, 3)
        fps = cv2.VideoCapture(str(out / "edited.mp4")).get(cv2.CAP_PROP_FPS)
        assert fps == (8 if command == "edit-byg-video" else 16)
    if command == "edit-tail":
        assert "temporal reasoning for 1 steps" in printed


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def test_only_lora_flags_offer_none(capsys):
    from videoprior_edit.batch import EDITORS

    top = dict(_subparsers(build_parser()))
    parsers = {name: top[name] for name in ("edit", "edit-tail", "edit-byg-image", "edit-byg-video",
                                            "edit-imvideoedit")}
    parsers.update({f"batch {n}": p for n, p in _subparsers(top["batch"])})
    assert len(parsers) == 5 + len(EDITORS)
    slot_flags = {s.flag: s.lora for e in EDITORS.values() for s in e.slots}
    for name, parser in parsers.items():
        flags = {a.option_strings[0]: a.help for a in parser._actions if a.option_strings}
        model_flags = [f for f in flags if f in slot_flags]
        assert "--model" in model_flags and "--vae" in model_flags, name
        for flag in model_flags:
            assert ("'none'" in flags[flag]) == slot_flags[flag], (name, flag, flags[flag])
    with pytest.raises(SystemExit):
        main(["edit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(overrides the folder's)" in text and "(overrides the folder's; 'none' for no LoRA)" in text
    assert text.count("'none'") == 2  # --lora-high and --lora-low


def test_missing_model_files_say_what_to_do(tmp_path, capsys):
    write_image(tmp_path / "pic.png")
    assert main(["edit-tail", str(tmp_path / "pic.png"), "--prompt", "x", "--models", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "diffusion_models/chrono_edit_14B_fp16.safetensors" in err and "vae/wan_2.1_vae.safetensors" in err
    assert f"videoprior-edit models download chronoedit --models {tmp_path}" in err
    assert main(["edit-imvideoedit", str(tmp_path / "pic.png"), "--prompt", "x", "--models", str(tmp_path)]) == 2
    assert "imvideoedit_adapter.safetensors is made by `videoprior-edit train-imvideoedit" in capsys.readouterr().err
    assert main(["edit-byg-image", str(tmp_path / "pic.png"), "--prompt", "x"]) == 2
    assert "Give --models with a ComfyUI models folder" in capsys.readouterr().err


def test_speed_flags_reach_the_editor(zoo, tmp_path, capsys):
    """--cache on a single-item command: the note says what it skipped and the result changes; a threshold that can
    skip nothing gives exactly the result without the flag; a FLUX editor refuses a cache with what to use."""
    path = write_image(tmp_path / "pic.png")

    def edit(name: str, *flags: str) -> np.ndarray:
        out = tmp_path / name
        assert main(["edit-tail", str(path), "--prompt", "make it blue", "--zoo", str(zoo.root), "--out", str(out),
                     "--frames", "9", "--steps", "4", "--seed", "1", *flags]) == 0
        return np.asarray(Image.open(out / "edited.png"))

    plain = edit("plain")
    capsys.readouterr()
    never_skips = edit("fbc0", "--cache", "first_block", "--cache-threshold", "0")
    assert "speed: cache: first_block, threshold 0" in capsys.readouterr().out
    np.testing.assert_array_equal(never_skips, plain)
    predicted = edit("taylor", "--cache", "taylorseer", "--cache-warmup", "1")
    printed = capsys.readouterr().out
    assert "taylorseer: 4 of 8 transformer forwards skipped or predicted" in printed  # 4 steps x cond/uncond, printed
    assert not np.array_equal(predicted, plain)
    assert main(["edit-byg-image", str(path), "--prompt", "x", "--zoo", str(zoo.root), "--out", str(tmp_path / "f"),
                 "--steps", "2", "--cache", "magcache"]) != 0
    assert "The 'magcache' cache works with the Wan editors only" in capsys.readouterr().err
