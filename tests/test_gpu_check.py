"""bench/gpu_check.py, the GPU check, at the tiny size on CPU: every measurement runs and the JSON holds numbers."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.py"
TIMED = ["build", "step_high", "step_low", "step_low_tld3", "edit_k1", "edit_k3", "edit_k3_last", "fp8_storage",
         "fp8_step_high", "attention_native", "compile"]
PEAKS = ["edit_k1", "edit_k3", "edit_k3_last"] + [f"{p}_{m}" for p in ("placement", "fp8")
                                                   for m in ("all_on_device", "one_expert", "block_offload")]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    done = subprocess.run([sys.executable, str(SCRIPT), "--size", "tiny", "--repeat", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), done.stdout, out


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def test_every_measurement_has_finite_numbers(tiny_run):
    data, _, _ = tiny_run
    m = data["measurements"]
    assert data["complete"] and data["meta"]["size"] == "tiny" and data["meta"]["tokens"] == 9 * 4 * 4
    for name in TIMED + PEAKS:
        assert "error" not in m[name] and "skipped" not in m[name], (name, m[name])
        assert _finite(m[name]["seconds"]) and m[name]["seconds"] > 0, name
    for name in PEAKS:
        assert _finite(m[name]["peak_gb"]) and m[name]["finite"], name
    assert _finite(m["edit_k3"]["ratio"]) and m["edit_k3"]["vs"] == "edit_k1"
    assert _finite(m["edit_k3"]["low_stage_seconds"]) and _finite(m["edit_k3"]["low_stage_ratio"])
    assert m["fp8_storage"]["expert_gb"] < m["build"]["expert_gb"]
    native = m["native_comfyui"]  # runs where ComfyUI is importable, else says why not
    assert _finite(native.get("seconds")) or "ComfyUI" in native.get("skipped", ""), native


def test_tld_keeps_every_third_latent_of_33_frames(tiny_run):
    m = tiny_run[0]["measurements"]
    assert m["edit_k1"]["kept"] == list(range(9))
    assert m["edit_k3"]["kept"] == [0, 3, 6]
    assert m["edit_k3_last"]["kept"] == [0, 3, 6, 8]
    assert m["placement_one_expert"]["kept"] == [0, 3, 6]
    assert m["step_low_tld3"]["latent_frames"] == 3 and m["step_high"]["latent_frames"] == 9


def test_the_table_is_printed_and_written(tiny_run):
    _, stdout, out = tiny_run
    table = (out / "gpu_check.txt").read_text()
    assert table.strip() in stdout
    for row in ("measurement", "step_low_tld3", "edit_k3", "placement_block_offload", "fp8_one_expert"):
        assert row in table


def _module():
    spec = importlib.util.spec_from_file_location("vpe_gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["vpe_gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_budget_skips_with_a_note_and_saves_each_measurement(tmp_path):
    gpu_check = _module()
    args = Namespace(size="tiny", device=None, repeat=1, budget=5.0, out=str(tmp_path))
    check = gpu_check.Check(args)
    assert check.measure("fits", lambda: {"seconds": 2.0}, need=1.0)["seconds"] == 2.0
    called = []
    skipped = check.measure("too_long", lambda: called.append(1) or {"seconds": 1.0}, need=60.0, vs="fits")
    assert not called and skipped["skipped"].startswith("time budget")
    failed = check.measure("broken", lambda: 1 / 0)
    assert failed["error"].startswith("ZeroDivisionError")
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(saved["measurements"]) == {"fits", "too_long", "broken"} and saved["complete"] is False


def test_wrapper_is_valid_shell():
    assert subprocess.run(["bash", "-n", str(ROOT / "bench" / "gpu_check.sh")], check=False).returncode == 0
