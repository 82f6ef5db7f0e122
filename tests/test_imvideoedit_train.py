"""ImVideoEdit's trainer and pair builder on the tiny zoo's Wan2.1-T2V (CPU, a few dozen steps)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from videoprior_edit.checkpoint import read_training_meta
from videoprior_edit.errors import InputError
from videoprior_edit.imvideoedit import create_adapter, edit_video, load_adapter
from videoprior_edit.imvideoedit.pairs import add_parser as pairs_parser
from videoprior_edit.imvideoedit.pairs import build_pairs, read_pairs
from videoprior_edit.imvideoedit.train import TrainOptions, add_parser, main, train
from videoprior_edit.models.sets import load_wan_models
from videoprior_edit.weights import WeightFile


def _raw(root: Path, count: int = 4) -> Path:
    """Sources (random smooth colours), targets (the same picture with inverted, swapped colours), prompts."""
    rng = np.random.default_rng(0)
    for kind in ("src", "tgt"):
        (root / kind).mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        source = Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8)).resize((64, 48), Image.BICUBIC)
        source.save(root / "src" / f"{i:02d}.png")
        Image.fromarray(255 - np.asarray(source)[:, :, ::-1]).save(root / "tgt" / f"{i:02d}.jpg")
        lines.append(f"{i:02d}.png\tthe same room, colours inverted, picture {i}")
    (root / "prompts.tsv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    raw = _raw(tmp_path_factory.mktemp("raw"))
    out = tmp_path_factory.mktemp("pairs")
    build_pairs(raw / "src", raw / "tgt", raw / "prompts.tsv", out)
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def _opts(zoo, data, out, cache, **kw) -> TrainOptions:
    files = {"data": data, "model": zoo.file("wan21_t2v"), "text_encoder": zoo.file("umt5"), "vae": zoo.file("vae"),
             "output": out, "cache_dir": cache}
    return TrainOptions(**{k: str(v) for k, v in files.items()}, **{
        "precision": "fp32", "height": 48, "width": 64, "batch_size": 2, "lr": 1e-3, "validate_every": 0,
        "val_count": 4, "val_steps": 0, "save_every": 0, "log_every": 1000, "save_dtype": "fp32", **kw})


def test_loss_falls_only_the_adapter_learns_and_the_file_reloads(zoo, pairs, cache, tmp_path):
    models = load_wan_models(zoo.file("wan21_t2v"), None, zoo.file("umt5"), zoo.file("vae"), dtype="fp32")
    frozen = {k: v.clone() for k, v in models.transformer.state_dict().items()}
    run = train(_opts(zoo, pairs, tmp_path, cache, max_steps=30, validate_every=30, val_steps=1, val_cfg=1.0),
                models=models)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    evals = [r["eval_loss"] for r in log if "eval_loss" in r]
    assert [r["step"] for r in log if "eval_loss" in r] == [0, 30] and evals[1] < 0.9 * evals[0]
    assert sum("loss" in r for r in log) == 30
    after = models.transformer.state_dict()
    assert after.keys() == frozen.keys() and all(torch.equal(after[k], v) for k, v in frozen.items())
    assert models.transformer._vpe_imvideoedit is None and not models.transformer.gradient_checkpointing
    fresh = create_adapter(models.transformer)
    assert all(not torch.equal(a, b) for a, b in zip(run.adapter.state_dict().values(), fresh.state_dict().values())
               if a.dim() == 2)  # every trained matrix moved
    loaded = load_adapter(run.path, models.transformer)
    frames = torch.rand(9, 48, 64, 3, generator=torch.Generator().manual_seed(0))
    ours, reloaded = (edit_video(models, a, frames, "the same room, colours inverted", steps=2, cfg=1.0).frames
                      for a in (run.adapter, loaded))
    assert torch.equal(ours, reloaded)
    assert sorted(p.name for p in (tmp_path / "validation" / "step-000030").iterdir()) == \
        [f"pair-{i}.png" for i in range(4)]
    assert Image.open(tmp_path / "validation" / "step-000000" / "pair-0.png").size == (3 * 64, 48)


def test_resumed_run_continues_exactly(zoo, pairs, cache, tmp_path):
    first = train(_opts(zoo, pairs, tmp_path / "a", cache, max_steps=6, save_every=3, micro_batch_size=1))
    checkpoint = tmp_path / "a" / "checkpoints" / "step-000003"
    assert read_training_meta(checkpoint)["step"] == 3
    assert {p.suffix for p in checkpoint.iterdir()} == {".safetensors", ".json"}  # no pickles
    second = train(_opts(zoo, pairs, tmp_path / "b", cache, max_steps=6, resume=str(checkpoint)))
    a, b = WeightFile(first.path), WeightFile(second.path)
    tensors = dict(b.tensors())
    assert all(torch.equal(t, tensors[k]) for k, t in a.tensors())
    assert json.loads(a.metadata["config"])["base"].startswith("Wan2.1-T2V-1.3B")


def test_trainer_refuses_what_it_cannot_train(zoo, pairs, cache, tmp_path):
    with pytest.raises(InputError, match="multiple of micro batch"):
        train(_opts(zoo, pairs, tmp_path, cache, batch_size=3, micro_batch_size=2))
    with pytest.raises(InputError, match="needs mixed precision"):
        train(_opts(zoo, pairs, tmp_path, cache, precision="bf16", mixed_precision="no"))
    i2v = load_wan_models(zoo.file("wan21_i2v"), None, zoo.file("umt5"), zoo.file("vae"), zoo.file("clip_vision"),
                          dtype="fp32")
    with pytest.raises(InputError, match="not a single text-to-video model"):
        train(_opts(zoo, pairs, tmp_path, cache), models=i2v)
    with pytest.raises(InputError, match="No checkpoint"):
        train(_opts(zoo, pairs, tmp_path / "none", cache, max_steps=1, resume="latest"))


@pytest.mark.parametrize("kind", ["json", "jsonl", "tsv"])
def test_pair_builder_reads_each_prompts_format(tmp_path, kind):
    raw = _raw(tmp_path / "raw", 3)
    prompts = {f"{i:02d}": f"edited picture {i}" for i in range(3)}
    path = raw / f"prompts.{kind}"
    path.write_text(json.dumps(prompts) if kind == "json" else "".join(
        (json.dumps({"name": k + ".png", "prompt": v}) if kind == "jsonl" else f"{k}\t{v}") + "\n"
        for k, v in prompts.items()))
    built = build_pairs(raw / "src", raw / "tgt", path, tmp_path / "out", link=kind == "tsv")
    assert [(p.source.name, p.target.name, p.prompt) for p in built] == \
        [(f"{i:02d}.png", f"{i:02d}.jpg", f"edited picture {i}") for i in range(3)]
    assert read_pairs(tmp_path / "out") == built and (tmp_path / "out" / "source" / "00.png").is_file()


def test_pair_builder_reports_unmatched_names(tmp_path):
    raw = _raw(tmp_path / "raw", 3)
    (raw / "tgt" / "01.jpg").unlink()
    with pytest.raises(InputError, match=r"1 name\(s\) lack .*01 \(no target\)"):
        build_pairs(raw / "src", raw / "tgt", raw / "prompts.tsv", tmp_path / "out")
    built = build_pairs(raw / "src", raw / "tgt", raw / "prompts.tsv", tmp_path / "out", skip_missing=True)
    assert [p.source.stem for p in built] == ["00", "02"]
    with pytest.raises(InputError, match="No metadata.jsonl"):
        read_pairs(raw)


def test_command_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and "--batch-size" in capsys.readouterr().out
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_parser(sub)
    pairs_parser(sub)
    raw = _raw(tmp_path / "raw", 2)
    args = parser.parse_args(["build-imvideoedit-pairs", "--sources", str(raw / "src"), "--targets", str(raw / "tgt"),
                              "--prompts", str(raw / "prompts.tsv"), "--out", str(tmp_path / "out")])
    assert args.run(args) == 0 and len(read_pairs(tmp_path / "out")) == 2
    args = parser.parse_args(["train-imvideoedit", "--data", "d", "--model", "m", "--text-encoder", "t", "--vae", "v",
                              "--output", "o"])
    assert (args.epochs, args.batch_size, args.height, args.width, args.lr, args.gradient_checkpointing) == \
        (5, 16, 480, 832, 1e-5, True)


def test_bf16_training_with_autocast_and_cfg_renders(zoo, pairs, cache, tmp_path):
    """The real-scale settings on the tiny zoo: bf16 model, autocast, fp32 adapter, bf16 adapter file, CFG renders
    from prompts encoded before the text encoder is dropped."""
    run = train(_opts(zoo, pairs, tmp_path, cache, precision="bf16", mixed_precision="auto", max_steps=2,
                      batch_size=1, validate_every=2, val_count=1, val_steps=1, val_cfg=3.0, save_dtype="bf16"))
    assert all(p.dtype == torch.float32 for p in run.adapter.parameters())
    assert {t.dtype for _, t in WeightFile(run.path).tensors()} == {torch.bfloat16}
    assert (tmp_path / "validation" / "step-000002" / "pair-0.png").is_file()
