"""Pickle-free training checkpoints: exact optimizer / scheduler / RNG round-trips, atomic saves, clear refusals."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from videoprior_edit.checkpoint import (
    load_training_state,
    prune_checkpoints,
    save_training_state,
    step_checkpoints,
)
from videoprior_edit.errors import InputError


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01, betas=(0.8, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 4))
    return model, optimizer, schedule


def _steps(model, optimizer, schedule, count: int) -> list[float]:
    """Train `count` steps on data drawn from the global torch RNG (so the RNG state matters too)."""
    losses = []
    for _ in range(count):
        x, y = torch.randn(4, 6), torch.randn(4, 3)
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_adamw_resume_equals_uninterrupted_training_bit_for_bit(tmp_path):
    model, optimizer, schedule = _setup()
    _steps(model, optimizer, schedule, 3)
    folder = save_training_state(tmp_path / "step-3", None, optimizer, _weights(model), {"step": 3}, schedule)
    expected_losses = _steps(model, optimizer, schedule, 3)
    expected = _weights(model)

    model2, optimizer2, schedule2 = _setup(seed=123)  # other initial weights: the checkpoint must bring them
    torch.manual_seed(999)  # and another RNG state: the checkpoint restores it
    tensors, meta = load_training_state(folder, None, optimizer2, schedule2)
    assert meta == {"step": 3}
    model2.load_state_dict(tensors)
    for state in optimizer2.state.values():  # AdamW's step counts are float32 scalar tensors
        assert state["step"].dtype == torch.float32 and state["step"].shape == ()
    assert schedule2.last_epoch == 3
    assert _steps(model2, optimizer2, schedule2, 3) == expected_losses
    for k, v in _weights(model2).items():
        assert torch.equal(v, expected[k]), k
    assert optimizer2.state_dict()["param_groups"] == optimizer.state_dict()["param_groups"]
    assert schedule2.state_dict() == schedule.state_dict()
    for i in optimizer.state_dict()["state"]:
        a, b = optimizer.state_dict()["state"][i], optimizer2.state_dict()["state"][i]
        assert a.keys() == b.keys()
        for name in a:
            assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), (i, name)


def test_param_groups_keep_their_types(tmp_path):
    model, optimizer, schedule = _setup()
    _steps(model, optimizer, schedule, 1)
    save_training_state(tmp_path / "c", None, optimizer, {}, {"step": 1}, schedule)
    _, optimizer2, schedule2 = _setup()
    load_training_state(tmp_path / "c", None, optimizer2, schedule2)
    group = optimizer2.param_groups[0]
    assert group["betas"] == (0.8, 0.95) and isinstance(group["betas"], tuple)
    assert group["lr"] == optimizer.param_groups[0]["lr"]


def test_rng_round_trip(tmp_path):
    _, optimizer, _ = _setup()
    torch.manual_seed(5)
    random.seed(6)
    np.random.seed(7)
    random.gauss(0, 1)  # a cached gaussian in Python's state
    np.random.standard_normal()
    save_training_state(tmp_path / "r", None, optimizer, {}, {})
    expected = (torch.rand(5), [random.random() for _ in range(3)], random.gauss(0, 1), np.random.rand(4))
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    load_training_state(tmp_path / "r", None, optimizer)
    got = (torch.rand(5), [random.random() for _ in range(3)], random.gauss(0, 1), np.random.rand(4))
    assert torch.equal(got[0], expected[0])
    assert got[1] == expected[1] and got[2] == expected[2]
    assert np.array_equal(got[3], expected[3])


def test_saved_folder_holds_no_pickle(tmp_path):
    from safetensors import safe_open

    model, optimizer, schedule = _setup()
    _steps(model, optimizer, schedule, 2)
    folder = save_training_state(tmp_path / "p", None, optimizer, _weights(model), {"step": 2, "note": "x"},
                                 schedule)
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["optimizer.json", "optimizer.safetensors", "rng_0.json", "rng_0.safetensors", "state.json",
                     "trainable.safetensors"]
    for path in folder.iterdir():
        head = path.read_bytes()[:2]
        assert head[:1] != b"\x80" and head != b"PK", path  # pickle protocol 2+ / torch.save zip
        if path.suffix == ".safetensors":
            with safe_open(str(path), "pt") as f:
                list(f.keys())
        else:
            assert path.suffix == ".json"
            json.loads(path.read_text())
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob("*.old"))


def test_saving_again_replaces_the_folder_and_a_stale_partial_is_ignored(tmp_path):
    _, optimizer, _ = _setup()
    (tmp_path / "c.partial").mkdir()
    (tmp_path / "c.partial" / "junk").write_text("half a save")
    save_training_state(tmp_path / "c", None, optimizer, {"w": torch.ones(2)}, {"step": 1})
    save_training_state(tmp_path / "c", None, optimizer, {"w": torch.zeros(2)}, {"step": 2})
    tensors, meta = load_training_state(tmp_path / "c", None, optimizer)
    assert meta["step"] == 2 and torch.equal(tensors["w"], torch.zeros(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_step_checkpoints_in_step_order_without_partial_or_unfinished_folders(tmp_path):
    _, optimizer, _ = _setup()
    root = tmp_path / "checkpoints"
    for step in (10, 9, 100):
        save_training_state(root / f"step-{step:06d}", None, optimizer, {"w": torch.ones(1)}, {"step": step})
    (root / "step-000200.partial").mkdir()  # an interrupted save
    (root / "step-000300").mkdir()  # a folder without a finished state
    (root / "notes").mkdir()
    assert [p.name for p in step_checkpoints(tmp_path)] == ["step-000009", "step-000010", "step-000100"]
    assert [p.name for p in step_checkpoints(tmp_path, complete=False)][-1] == "step-000300"
    prune_checkpoints(tmp_path, 2)
    assert sorted(p.name for p in root.iterdir()) == ["notes", "step-000010", "step-000100", "step-000200.partial",
                                                      "step-000300"]
    prune_checkpoints(tmp_path, 0)  # keeps at least one
    assert [p.name for p in step_checkpoints(tmp_path)] == ["step-000100"]
    assert step_checkpoints(tmp_path / "nothing") == []


def test_an_old_accelerate_checkpoint_is_refused_clearly(tmp_path):
    folder = tmp_path / "step-000010"
    folder.mkdir()
    for name in ("pytorch_model.bin", "optimizer.bin", "random_states_0.pkl"):
        (folder / name).write_bytes(b"\x80\x04\x95")  # what a pickle starts with; never read
    _, optimizer, _ = _setup()
    with pytest.raises(InputError, match="pickles") as e:
        load_training_state(folder, None, optimizer)
    assert "LoRA" in str(e.value) and "Restart" in str(e.value)


def test_missing_or_corrupt_files_are_input_errors(tmp_path):
    _, optimizer, _ = _setup()
    with pytest.raises(InputError, match="No checkpoint folder"):
        load_training_state(tmp_path / "nothing", None, optimizer)
    folder = save_training_state(tmp_path / "c", None, optimizer, {"w": torch.ones(2)}, {"step": 1})
    (folder / "trainable.safetensors").write_bytes(b"garbage")
    with pytest.raises(InputError, match="corrupt"):
        load_training_state(folder, None, optimizer)
    folder = save_training_state(tmp_path / "d", None, optimizer, {}, {"step": 1})
    (folder / "optimizer.json").unlink()
    with pytest.raises(InputError, match="incomplete"):
        load_training_state(folder, None, optimizer)
    folder = save_training_state(tmp_path / "e", None, optimizer, {}, {"step": 1})
    (folder / "state.json").write_text("{not json")
    with pytest.raises(InputError, match="corrupt"):
        load_training_state(folder, None, optimizer)


def test_an_optimizer_of_other_shapes_is_an_input_error(tmp_path):
    _, optimizer, _ = _setup()
    save_training_state(tmp_path / "c", None, optimizer, {}, {})
    other = torch.optim.AdamW([nn.Parameter(torch.zeros(3))])
    with pytest.raises(InputError, match="does not fit"):
        load_training_state(tmp_path / "c", None, other)


def test_works_with_accelerate(tmp_path):
    from accelerate import Accelerator

    model, optimizer, schedule = _setup()
    accelerator = Accelerator(cpu=True)
    model, optimizer = accelerator.prepare(model, optimizer)
    _steps(model, optimizer, schedule, 2)
    save_training_state(tmp_path / "a", accelerator, optimizer, _weights(model), {"step": 2}, schedule)
    expected = _steps(model, optimizer, schedule, 2)
    model2, optimizer2, schedule2 = _setup(seed=1)
    model2, optimizer2 = accelerator.prepare(model2, optimizer2)
    tensors, _ = load_training_state(tmp_path / "a", accelerator, optimizer2, schedule2)
    accelerator.unwrap_model(model2).load_state_dict(tensors)
    assert _steps(model2, optimizer2, schedule2, 2) == expected


class _ShardedRun:
    """What the checkpoint module reads of an accelerate FSDP / DeepSpeed run (one process here)."""

    def __init__(self, kind: str):
        from accelerate.utils import DistributedType

        self.distributed_type = getattr(DistributedType, kind)
        self.process_index, self.is_main_process, self.num_processes, self.step = 0, True, 1, 0

    def wait_for_everyone(self):
        pass


@pytest.mark.parametrize("kind", ["FSDP", "DEEPSPEED"])
def test_a_sharded_run_keeps_weights_schedule_and_rng_but_not_adamw_moments(tmp_path, kind, caplog):
    from videoprior_edit.checkpoint import check_checkpointable, sharded

    run = _ShardedRun(kind)
    assert sharded(run) and not sharded(None)
    with caplog.at_level("WARNING", logger="videoprior_edit.checkpoint"):
        check_checkpointable(run)
    assert "AdamW's moments" in caplog.text
    model, optimizer, schedule = _setup()
    _steps(model, optimizer, schedule, 3)
    folder = save_training_state(tmp_path / "s", run, optimizer, _weights(model), {"step": 3}, schedule)
    assert json.loads((folder / "state.json").read_text())["optimizer_saved"] is False
    draws = torch.rand(3)
    _, optimizer2, schedule2 = _setup(seed=5)
    caplog.clear()
    with caplog.at_level("WARNING", logger="videoprior_edit.checkpoint"):
        tensors, meta = load_training_state(folder, run, optimizer2, schedule2)
    assert "without its optimizer state (written by a sharded run)" in caplog.text
    assert meta == {"step": 3} and all(torch.equal(tensors[k], v) for k, v in _weights(model).items())
    assert optimizer2.state_dict()["state"] == {} and schedule2.last_epoch == 3  # fresh moments, schedule continues
    assert torch.equal(torch.rand(3), draws)  # RNG restored to the save point
    with caplog.at_level("WARNING", logger="videoprior_edit.checkpoint"):  # a whole checkpoint read by a sharded run
        whole = save_training_state(tmp_path / "w", None, optimizer, _weights(model), {"step": 3}, schedule)
        load_training_state(whole, run, _setup()[1])
    assert "this run is sharded" in caplog.text
