"""Video4Edit distillation trainer on the tiny zoo: dataset format, losses, block-wise hooks, learning, resume, and
the trained student (LoRA and full) reloaded through the real loaders into the tail-frame editor node."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from videoprior_edit.errors import InputError
from videoprior_edit.lora import add_lora
from videoprior_edit.models.sets import load_wan_models
from videoprior_edit.video4edit.data import (
    read_triplets,
    student_clip,
    write_tiny_dataset,
)
from videoprior_edit.video4edit.train import (
    LORA_FILE,
    Distiller,
    TrainConfig,
    build_cache,
    draw,
    load_batch,
    main,
    select_blocks,
    train,
)

REPO_ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def _load(zoo, key):
    return load_wan_models(zoo.file(key), None, zoo.file("umt5"), zoo.file("vae"), zoo.file("clip_vision"),
                           dtype="fp32")


@pytest.fixture(scope="module")
def i2v(zoo):
    return _load(zoo, "wan21_i2v")


@pytest.fixture(scope="module")
def flf2v(zoo):
    return _load(zoo, "wan21_flf2v")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("v4e_data"), count=2, width=64, height=48)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("v4e_cache")  # teacher rollouts and encoded triplets, shared by the tests


def _config(dataset, cache_dir, output, **changes) -> TrainConfig:
    settings = {"data": str(dataset[0].source.parent.parent), "output": str(output), "cache_dir": str(cache_dir),
                "width": 64, "height": 48, "teacher_frames": 9, "teacher_steps": 2, "precision": "fp32",
                "lora_rank": 4, "lr": 1e-3, "batch_size": 1, "steps": 4, "save_every": 0, "validate_every": 0,
                "log_every": 100, "save_dtype": "fp32"}
    return TrainConfig(**{**settings, **changes})


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------------------------- data
def test_dataset_folder_formats_and_clip_modes(tmp_path):
    triplets = write_tiny_dataset(tmp_path / "jsonl", count=2)
    assert [t.name for t in triplets] == ["0000", "0001"] and triplets[0].instruction == "make the disc blue"
    assert "slowly turns blue" in triplets[0].teacher_prompt and triplets[0].trajectory is None
    csv_folder = tmp_path / "csv"
    (csv_folder / "img").mkdir(parents=True)
    for t in triplets[:1]:
        (csv_folder / "img" / "a.png").write_bytes(t.source.read_bytes())
        (csv_folder / "img" / "b.png").write_bytes(t.edited.read_bytes())
    (csv_folder / "metadata.csv").write_text("source,target,prompt\nimg/a.png,img/b.png,make it blue\n\n")
    (row,) = read_triplets(csv_folder)
    assert (row.name, row.instruction, row.teacher_prompt) == ("a", "make it blue", "make it blue")  # no evolution
    (csv_folder / "metadata.csv").write_text("source,edited,instruction\nimg/a.png,img/missing.png,x\n")
    with pytest.raises(InputError, match="line 2: .*missing.png does not exist"):
        read_triplets(csv_folder)
    with pytest.raises(InputError, match="No metadata.jsonl or metadata.csv"):
        read_triplets(tmp_path)

    source, edited = torch.zeros(1, 16, 16, 3), torch.ones(1, 16, 16, 3)
    trajectory = torch.linspace(0, 1, 9).view(9, 1, 1, 1).expand(9, 16, 16, 3)
    uniform = student_clip(source, edited, 5, "teacher", trajectory)
    assert uniform[:, 0, 0, 0].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]  # frames 0, 2, 4, 6, 8 of the trajectory
    assert student_clip(source, edited, 5, "teacher_tail", trajectory)[:, 0, 0, 0].tolist() == [0, 0.625, 0.75,
                                                                                                0.875, 1.0]
    assert student_clip(source, edited, 5, "hold")[:, 0, 0, 0].tolist() == [0, 1, 1, 1, 1]
    assert student_clip(source, edited, 5, "blend")[:, 0, 0, 0].tolist() == [0, 0.25, 0.5, 0.75, 1.0]
    with pytest.raises(InputError, match="needs a trajectory of at least 5 frames"):
        student_clip(source, edited, 5, "teacher", trajectory[:3])


def test_block_choices():
    assert select_blocks("quarters", 40) == [9, 19, 29, 39] and select_blocks("quarters", 2) == [0, 1]
    assert select_blocks("every:10", 40) == [9, 19, 29, 39] and select_blocks("every:16", 40) == [15, 31, 39]
    assert select_blocks("0, 20,-1", 40) == [0, 20, 39] and select_blocks("none", 40) == []
    with pytest.raises(InputError, match="do not exist"):
        select_blocks("2", 2)
    with pytest.raises(InputError, match="multiple of 16"):
        TrainConfig(width=70).check()
    from types import SimpleNamespace

    from videoprior_edit.video4edit.train import student_positions

    chrono, wan = (SimpleNamespace(sources={"model": f"/m/{n}.safetensors"}) for n in ("chrono_edit_14B", "wan2.1_i2v"))
    assert student_positions(chrono, TrainConfig()) == [0, 7] and student_positions(wan, TrainConfig()) is None
    assert student_positions(wan, TrainConfig(positions="chronoedit")) == [0, 7]


# ----------------------------------------------------------------------------------------------- losses & hooks
def test_losses_finite_and_distillation_reaches_only_the_chosen_blocks(i2v, flf2v, dataset, cache_dir, tmp_path):
    config = _config(dataset, cache_dir, tmp_path, distill_blocks="0")
    files = build_cache(i2v, flf2v, dataset, config)
    assert all(f.is_file() for f in files) and len(list((cache_dir / "trajectories").iterdir())) == 2
    batch = load_batch(files, [0, 1])
    assert batch["x0"].shape == (2, 16, 2, 6, 8) and batch["clip_teacher"].shape[1] == 2  # source + edited
    noise, sigma = draw(0, [0, 1], batch["x0"].shape[1:], config.timestep_shift)
    distiller = Distiller(i2v.transformer, flf2v.transformer, config)
    try:
        losses = distiller(batch, noise, sigma)
        assert all(torch.isfinite(v).all() for v in losses.values())
        assert losses["distill"] > 0 and losses["tail_flow"] > 0
        assert distiller.student_tap.fired == [0] and distiller.teacher_tap.fired == [0]  # only block 0's hooks ran
        named = distiller.trainable_parameters()
        assert named and all(".lora_" in n for n, _ in named)
        assert all(not p.requires_grad for p in flf2v.transformer.parameters())  # the teacher is frozen
        params = [p for _, p in named]
        distill = torch.autograd.grad(losses["distill"], params, retain_graph=True, allow_unused=True)
        tail = torch.autograd.grad(losses["tail_flow"], params, allow_unused=True)
        nonzero = lambda g: g is not None and bool(g.abs().sum() > 0)
        by_block = {b: [i for i, (n, _) in enumerate(named) if n.startswith(f"blocks.{b}.")] for b in (0, 1)}
        assert any(nonzero(distill[i]) for i in by_block[0])
        assert not any(nonzero(distill[i]) for i in by_block[1])  # block 1 cannot change block 0's output
        assert any(nonzero(tail[i]) for i in by_block[1])  # but the tail loss reaches it
        i2v.transformer.enable_gradient_checkpointing()  # the block recomputed in backward is not captured again
        try:
            again = torch.autograd.grad(distiller(batch, noise, sigma)["distill"], params, allow_unused=True)
        finally:
            i2v.transformer.disable_gradient_checkpointing()
        assert all((a is None and b is None) or torch.allclose(a, b, atol=1e-7) for a, b in zip(distill, again))
    finally:
        distiller.close()
    assert all(not b._forward_hooks for m in (i2v.transformer, flf2v.transformer) for b in m.blocks)
    assert not any("lora" in n for n, _ in i2v.transformer.named_parameters())  # the student is its base again


def test_projectors_when_the_teacher_is_wider(i2v, flf2v, dataset, cache_dir, tmp_path):
    from videoprior_edit.zoo import tiny_wan_transformer

    wide = tiny_wan_transformer("flf2v", seed=11, size="tiny_wide").requires_grad_(False)  # 4 blocks x 384 vs 2 x 256
    config = _config(dataset, cache_dir, tmp_path, distill_blocks="all")
    batch = load_batch(build_cache(i2v, flf2v, dataset, config), [0])  # FLF2V-shaped inputs fit both teachers
    distiller = Distiller(i2v.transformer, wide, config)
    try:
        assert distiller.pairs == [(0, 1), (1, 3)] and set(distiller.projectors) == {"0", "1"}
        losses = distiller(batch, *draw(0, [0], batch["x0"].shape[1:], 5.0))
        assert torch.isfinite(losses["total"]) and distiller.teacher_tap.fired == [1, 3]
        assert any(n.startswith("projectors.") for n, _ in distiller.trainable_parameters())
    finally:
        distiller.close()


# ----------------------------------------------------------------------------------------------- training
def test_loss_falls_on_a_fixed_tiny_batch(i2v, flf2v, dataset, cache_dir, tmp_path):
    teacher_before = _state(flf2v.transformer)
    student_before = _state(i2v.transformer)
    config = _config(dataset, cache_dir, tmp_path, overfit=True, steps=12, lr=1e-2, distill_blocks="all",
                     gradient_checkpointing=False)
    result = train(config, i2v, flf2v)
    totals = [h["total"] for h in result.history]
    assert len(totals) == 12 and all(math.isfinite(v) for h in result.history for v in h.values()
                                     if isinstance(v, float))
    assert sum(totals[-3:]) / 3 < 0.8 * sum(totals[:3]) / 3, totals
    assert result.history[-1]["distill"] < result.history[0]["distill"]
    assert set(result.history[0]["blocks"]) == {"0", "1"}
    assert all(torch.equal(v, flf2v.transformer.state_dict()[k]) for k, v in teacher_before.items())
    assert all(torch.equal(v, i2v.transformer.state_dict()[k]) for k, v in student_before.items())  # LoRA removed
    assert i2v.placement is None and flf2v.placement is None  # the sets' placements are restored
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(lines) == 12 and json.loads(lines[0])["step"] == 1


@pytest.fixture(scope="module")
def lora_run(i2v, flf2v, dataset, cache_dir, tmp_path_factory):
    config = _config(dataset, cache_dir, tmp_path_factory.mktemp("v4e_lora"), steps=4, save_every=2)
    return config, train(config, i2v, flf2v)


def test_resume_continues_from_the_saved_step_with_identical_state(i2v, flf2v, lora_run, tmp_path):
    config, full_run = lora_run
    assert [p.name for p in sorted((full_run.output / "checkpoints").iterdir())] == ["step-000002", "step-000004"]
    middle = full_run.output / "checkpoints" / "step-000002"
    resumed = train(_config_like(config, output=str(tmp_path), resume=str(middle)), i2v, flf2v)
    assert [h["step"] for h in resumed.history] == [3, 4]
    assert resumed.history == full_run.history[2:]  # same losses, bit for bit
    assert resumed.trainable.keys() == full_run.trainable.keys()
    assert all(torch.equal(resumed.trainable[k], full_run.trainable[k]) for k in full_run.trainable)
    with pytest.raises(InputError, match="other lora_rank"):
        train(_config_like(config, output=str(tmp_path), resume=str(middle), lora_rank=8), i2v, flf2v)
    assert {p.suffix for p in middle.iterdir()} == {".safetensors", ".json"}  # no pickles
    old = tmp_path / "old" / "checkpoints" / "step-000002"  # an accelerate checkpoint of earlier versions
    old.mkdir(parents=True)
    (old / "optimizer.bin").write_bytes(b"\x80\x04")
    with pytest.raises(InputError, match="holds pickles"):
        train(_config_like(config, output=str(tmp_path / "old"), resume="latest"), i2v, flf2v)


def _config_like(config: TrainConfig, **changes) -> TrainConfig:
    from dataclasses import replace

    return replace(config, **changes)


def test_lora_student_reloads_and_runs_in_the_editor_node(zoo, pack, i2v, lora_run):
    from diffusers import WanImageToVideoPipeline
    from safetensors.torch import load_file

    from videoprior_edit.demo import synthetic_source
    from videoprior_edit.sampling.condition import image_from_uint8

    _, run = lora_run
    assert run.student_file == run.output / LORA_FILE
    tensors = load_file(str(run.student_file))
    assert "transformer.blocks.0.attn1.to_q.lora_A.weight" in tensors
    assert all(torch.equal(tensors["transformer." + k.replace(".video4edit.", ".")], v)
               for k, v in run.trainable.items())
    _, metadata = WanImageToVideoPipeline.lora_state_dict(str(run.student_file), return_lora_metadata=True)
    assert metadata["transformer.r"] == 4 and metadata["transformer.lora_alpha"] == 4  # diffusers reads it too

    student = _load(zoo, "wan21_i2v")
    base = student.transformer.blocks[1].ffn.net[2].weight.clone()
    (report,) = add_lora(student, run.student_file, 1.0)
    assert report.matched == report.total == 24  # 12 Linears per block
    down, up = (tensors[f"transformer.blocks.1.ffn.net.2.lora_{x}.weight"] for x in "AB")
    assert torch.allclose(student.transformer.blocks[1].ffn.net[2].weight - base, up @ down, atol=1e-6)

    editor = pack.nodes.nodes_by_id()["VPE_TailFrameEditor"]
    image = image_from_uint8(synthetic_source(64, 48))
    args = (image, "make the disc blue", "", 5, 2, 1.0, 5.0, "unipc", 0, False)
    edited, clip, _ = editor.execute(student, *args, max_side=0).args
    before, _, _ = editor.execute(i2v, *args, max_side=0).args
    assert edited.shape == (1, 48, 64, 3) and clip.shape == (4, 48, 64, 3) and torch.isfinite(edited).all()
    assert not torch.equal(edited, before)  # the LoRA changed the student


def test_full_student_reloads_and_runs_in_the_editor_node(zoo, pack, flf2v, dataset, cache_dir, tmp_path):
    from videoprior_edit.demo import synthetic_source
    from videoprior_edit.sampling.condition import image_from_uint8
    from videoprior_edit.video4edit import edit_tail_frame

    student = _load(zoo, "wan21_i2v")  # trained in place
    original = _state(student.transformer)
    result = train(_config(dataset, cache_dir, tmp_path, full=True, steps=2, lr=1e-3), student, flf2v)
    assert result.student_file.name == "video4edit_student.safetensors"
    assert any(not torch.equal(v, student.transformer.state_dict()[k]) for k, v in original.items())
    reloaded = _load_file_as_student(zoo, result.student_file)
    assert reloaded.variant == "wan2.1-i2v-14b"
    trained = student.transformer.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in reloaded.transformer.state_dict().items())
    image = image_from_uint8(synthetic_source(64, 48))
    node = pack.nodes.nodes_by_id()["VPE_TailFrameEditor"]
    edited = node.execute(reloaded, image, "make the disc blue", "", 5, 2, 1.0, 5.0, "unipc", 0, False,
                       max_side=0).args[0]
    direct = edit_tail_frame(student, image, "make the disc blue", "", 5, 2, 1.0, 5.0, "unipc", 0, max_side=0)
    # equal weights; CPU matmuls round by memory alignment (a copy of the same weights differs by ~3e-6 here)
    assert (edited - direct.edited).abs().max() < 1e-5


def _load_file_as_student(zoo, path):
    return load_wan_models(path, None, zoo.file("umt5"), zoo.file("vae"), zoo.file("clip_vision"), dtype="fp32")


# ----------------------------------------------------------------------------------------------- command line
def test_command_line_on_the_tiny_zoo(zoo, dataset, cache_dir, tmp_path, capsys):
    import argparse

    from videoprior_edit.video4edit.train import add_arguments, config_from_args

    out = tmp_path / "run"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = config_from_args(parser.parse_args(["--zoo", str(zoo.root), "--out", str(out), "--lora-rank", "2"]))
    assert (config.width, config.height, config.lora_rank, config.student) == (64, 48, 2, str(zoo.file("wan21_i2v")))
    assert len(read_triplets(config.data)) == 2 and config.data == str(out / "tiny_dataset")  # generated
    # the module's dataset and cache (same settings): no teacher rollouts here
    common = ["--zoo", str(zoo.root), "--out", str(out), "--data", str(dataset[0].source.parent.parent),
              "--cache-dir", str(cache_dir), "--teacher-steps", "2"]
    rc = main(common + ["--steps", "2", "--validate-every", "2", "--val-steps", "1", "--save-every", "1"])
    assert rc == 0 and (out / LORA_FILE).is_file() and (out / "validation" / "step-000002" / "0000.png").is_file()
    saved = json.loads((out / "training_config.json").read_text())
    assert saved["steps"] == 2 and saved["width"] == 64 and saved["lora_rank"] == 4
    text = capsys.readouterr().out
    assert "step 2/2: loss" in text and "distill" in text
    rc = main(common + ["--steps", "3", "--resume", "--validate-every", "0"])
    assert rc == 0 and "resumed from" in capsys.readouterr().out and (out / "checkpoints" / "step-000003").is_dir()
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step-000002", "step-000003"]
    assert main(common + ["--width", "70"]) == 2  # a clear error, no traceback
    assert "multiple of 16" in capsys.readouterr().err


def test_help_runs_on_its_own():
    done = subprocess.run([sys.executable, "-m", "videoprior_edit.video4edit.train", "--help"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and "--distill-blocks" in done.stdout and "--zoo" in done.stdout
    import argparse

    from videoprior_edit.video4edit.train import add_parser

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    add_parser(sub)
    args = parser.parse_args(["train-video4edit", "--data", "x", "--full", "--lora-rank", "8"])
    assert args.full and args.lora_rank == 8 and callable(args.run)
