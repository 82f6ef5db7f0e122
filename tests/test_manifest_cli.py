"""models_manifest.json, the check/download commands (on the tiny zoo), and the demo command."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from videoprior_edit.errors import ModelFileError
from videoprior_edit.manifest import check, download, format_report, load_manifest, zoo_manifest

REQUIRED = {"id", "name", "architecture", "purpose", "folder", "file", "source", "size_bytes", "sha256", "license"}


def test_pack_manifest_is_complete():
    entries = load_manifest()
    ids = [e["id"] for e in entries]
    assert len(ids) == len(set(ids))
    for e in entries:
        assert REQUIRED <= e.keys(), e["id"]
        assert e["folder"] in {"diffusion_models", "text_encoders", "vae", "clip_vision", "loras", "LLM"}
        assert e["file"].endswith(".safetensors") or e["file"].endswith((".json", ".txt", ".model")), e["file"]
        assert e["source"]["repo"].count("/") == 1 and e["source"]["path"]
        assert e["sha256"] is None or len(e["sha256"]) == 64
    files = {e["file"] for e in entries}
    for needed in ("wan2.2_i2v_high_noise_14B_fp16.safetensors", "wan2.2_i2v_low_noise_14B_fp16.safetensors",
                   "umt5_xxl_fp16.safetensors", "wan_2.1_vae.safetensors", "clip_vision_h.safetensors"):
        assert needed in files


def _zoo_copy(zoo, tmp_path):
    import shutil

    models = tmp_path / "models"
    shutil.copytree(zoo.models, models)
    return models, zoo_manifest(models)


def test_check_reports_ok_missing_size_and_checksum(zoo, tmp_path):
    models, entries = _zoo_copy(zoo, tmp_path)
    assert {r.status for r in check(models, entries, verify_sha=True)} == {"ok"}
    by_file = {e["file"]: e for e in entries}
    (models / "vae" / "tiny_wan_2.1_vae.safetensors").unlink()
    te = models / "text_encoders" / "tiny_umt5_xxl_fp32.safetensors"
    te.write_bytes(te.read_bytes()[:-10])
    clip = models / "clip_vision" / "tiny_clip_vision_h.safetensors"
    data = bytearray(clip.read_bytes())
    data[-1] ^= 0xFF
    clip.write_bytes(bytes(data))
    results = {r.entry["file"]: r for r in check(models, entries, verify_sha=True)}
    assert results["tiny_wan_2.1_vae.safetensors"].status == "missing"
    assert results["tiny_umt5_xxl_fp32.safetensors"].status == "wrong_size"
    assert results["tiny_clip_vision_h.safetensors"].status == "bad_checksum"
    assert results["tiny_wan2.1_t2v_1.3B_fp32.safetensors"].status == "ok"
    report = format_report(list(results.values()))
    assert "MISSING  vae/tiny_wan_2.1_vae.safetensors" in report
    assert "https://huggingface.co/local/tiny-zoo/resolve/main/vae/tiny_wan_2.1_vae.safetensors" in report
    assert by_file["tiny_wan_2.1_vae.safetensors"]["id"] in report.split("download")[1]


def test_download_never_touches_a_good_file_and_fails_clearly_offline(zoo, tmp_path, monkeypatch):
    models, entries = _zoo_copy(zoo, tmp_path)
    good = next(e for e in entries if e["folder"] == "vae")
    path = models / "vae" / good["file"]
    stamp = path.stat().st_mtime_ns
    assert download(good, models).status == "ok"  # no network needed, nothing rewritten
    assert path.stat().st_mtime_ns == stamp
    path.unlink()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelFileError, match="Could not download") as e:
        download(good, models)
    assert "by hand" in str(e.value) and str(models / "vae") in str(e.value)


def test_check_command_exit_codes(zoo, tmp_path):
    models, entries = _zoo_copy(zoo, tmp_path)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"version": 1, "models": entries}))
    cmd = [sys.executable, "-m", "videoprior_edit.cli", "models", "check", "--models", str(models),
           "--manifest", str(manifest)]
    ok = subprocess.run(cmd + ["--sha256"], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.count("ok ") == len(entries)
    (models / "vae" / "tiny_wan_2.1_vae.safetensors").unlink()
    bad = subprocess.run(cmd, capture_output=True, text=True)
    assert bad.returncode == 1 and "MISSING" in bad.stdout
    unknown = subprocess.run(cmd + ["no-such-model"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "Unknown model id" in unknown.stderr


def test_demo_command_writes_outputs(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "videoprior_edit.cli", "demo", "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["latent_shape"] == [1, 16, 3, 8, 8] and report["frames"] == 9  # 33 frames, TLD K=3 keeps 3
    assert "Wan2.2-I2V-A14B" in report["model_set"][0] and "8 Lightning steps" in report["settings"]
    assert any("kept latent frames [0, 3, 6]" in n for n in report["notes"])
    assert len(list((tmp_path / "out" / "frames").glob("*.png"))) == 9
    assert report["rewriter"] == "template" and "the paper card" in report["prompt"]  # the instruction, rewritten
    assert report["sharpest"]["frame"] == 5 + max(range(4), key=report["sharpest"]["scores"].__getitem__)
    assert report["refined"] and any("sharpest of the still clip" in n for n in report["notes"])
    from PIL import Image

    pictures = {n: np.asarray(Image.open(tmp_path / "out" / f"{n}.png"))
                for n in ("source", "edited", "clip_last_frame", "sharpest_frame")}
    assert all(p.shape == (64, 64, 3) for p in pictures.values())
    assert np.array_equal(pictures["sharpest_frame"],
                          np.asarray(Image.open(tmp_path / "out" / "frames" / f"{report['sharpest']['frame']:03d}.png")))
    assert not np.array_equal(pictures["edited"], pictures["sharpest_frame"])  # the refined frame is a new picture
    assert str(tmp_path / "out" / "report.json") in run.stdout
    missing = subprocess.run([sys.executable, "-m", "videoprior_edit.cli", "demo", "--models", str(tmp_path),
                              "--out", str(tmp_path / "o2")], capture_output=True, text=True, env=env)
    assert missing.returncode == 2 and "wan2.2_i2v_high_noise_14B_fp16.safetensors" in missing.stderr


def test_edit_command_writes_the_library_result(tmp_path, zoo, capsys):
    import numpy as np
    import torch
    from PIL import Image

    from videoprior_edit.cli import main
    from videoprior_edit.demo import load_edit_models, save_edit, zoo_files
    from videoprior_edit.if_edit import edit_image
    from videoprior_edit.placement import Placement
    from videoprior_edit.sampling.condition import image_from_uint8

    source = (np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)
    Image.fromarray(source).save(tmp_path / "in.png")
    args = ["edit", str(tmp_path / "in.png"), "--prompt", "the cat walks away", "--zoo", str(zoo.root), "--out",
            str(tmp_path / "out"), "--precision", "fp32", "--frames", "13", "--k", "2", "--keep-last", "--size-mode", "pad"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "padded to 80x64" in printed and "kept latent frames [0, 2, 3]" in printed
    models = load_edit_models(zoo_files(zoo.root), "fp32", placement=Placement("one_expert"))
    ref = edit_image(models, image_from_uint8(source), "the cat walks away", frames=13, tld_k=2, keep_last=True, size_mode="pad",
                     max_side=832)
    save_edit(ref, source, tmp_path / "ref", frames=False)
    edited = np.asarray(Image.open(tmp_path / "out" / "edited.png"))
    assert edited.shape == (50, 70, 3)
    assert np.array_equal(edited, np.asarray(Image.open(tmp_path / "ref" / "edited.png")))
    assert len(list((tmp_path / "out" / "frames").glob("*.png"))) == 9 and torch.isfinite(ref.latents).all()
    assert main(["edit", str(tmp_path / "in.png"), "--prompt", "x", "--zoo", str(zoo.root), "--frames", "3",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "at least 5" in capsys.readouterr().err


class _HubLikeServer:
    """A loopback server answering like a Hugging Face `resolve` endpoint (HEAD metadata, GET with Range)."""

    def __init__(self, files: dict[str, bytes]):
        import http.server
        import threading

        served = files

        class Handler(http.server.BaseHTTPRequestHandler):
            def _headers(self, body: bytes, status: int = 200, start: int = 0):
                self.send_response(status)
                self.send_header("X-Repo-Commit", "0" * 40)
                self.send_header("ETag", '"%s"' % __import__("hashlib").sha256(body).hexdigest())
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()

            def _body(self):
                key = self.path.split("/resolve/main/", 1)[-1]
                return served.get(key)

            def do_HEAD(self):  # noqa: N802
                body = self._body()
                if body is None:
                    self.send_response(404)
                    self.end_headers()
                else:
                    self._headers(body)

            def do_GET(self):  # noqa: N802
                body = self._body()
                if body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                start = int(self.headers.get("Range", "bytes=0-").split("=")[1].split("-")[0] or 0)
                self._headers(body, 206 if start else 200, start)
                self.wfile.write(body[start:])

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_download_fetches_verifies_and_replaces_only_bad_files(zoo, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    models, entries = _zoo_copy(zoo, tmp_path)
    vae = next(e for e in entries if e["folder"] == "vae")
    clip = next(e for e in entries if e["folder"] == "clip_vision")
    good = {e["source"]["path"]: (models / e["folder"] / e["file"]).read_bytes() for e in (vae, clip)}
    server = _HubLikeServer({vae["source"]["path"]: good[vae["source"]["path"]],
                             clip["source"]["path"]: good[clip["source"]["path"]][:-1] + b"\0"})  # corrupted
    try:
        target = models / "vae" / vae["file"]
        target.write_bytes(b"partial")  # a bad local file is replaced by a verified download
        result = download(vae, models, endpoint=server.url)
        assert result.status == "ok" and target.read_bytes() == good[vae["source"]["path"]]
        clip_path = models / "clip_vision" / clip["file"]
        clip_path.unlink()
        with pytest.raises(ModelFileError, match="does not verify"):
            download(clip, models, endpoint=server.url)
        assert not clip_path.exists()  # a download that fails verification never lands in the models folder
    finally:
        server.close()


def test_models_check_reports_exactly_the_models_a_shipped_workflow_uses(tmp_path, capsys):
    from pathlib import Path

    from videoprior_edit.cli import main
    from videoprior_edit.workflow import workflow_model_files

    repo = Path(__file__).resolve().parent.parent
    root = repo / "example_workflows"
    by_file = {e["file"]: e for e in load_manifest(trained=True)}
    for ui_file in sorted(root.glob("*.json")):
        ui = json.loads(ui_file.read_text())
        names = workflow_model_files(ui)
        api = json.loads((repo / "workflows" / "api" / ui_file.name).read_text())
        assert names and names == workflow_model_files(api)
        assert main(["models", "check", "--models", str(tmp_path), "--workflow", str(ui_file)]) == 1  # all missing
        listed = [line.split("/", 1)[1].split()[0] for line in capsys.readouterr().out.splitlines()
                  if line.startswith("MISSING")]
        assert sorted(listed) == sorted(names) and all(n in by_file for n in names), ui_file.name
    broken = json.loads((root / "IF-Edit image edit (no VLM).json").read_text())
    node = next(n for n in broken["nodes"] if "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors" in (n["widgets_values"] or []))
    node["widgets_values"][node["widgets_values"].index("wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors")] = "my_wan.safetensors"
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    assert main(["models", "check", "--models", str(tmp_path), "--workflow", str(tmp_path / "broken.json")]) == 2
    assert "Not in the manifest: broken.json: my_wan.safetensors" in capsys.readouterr().err


def test_trained_files_are_listed_with_the_command_that_makes_them(tmp_path, capsys):
    from pathlib import Path

    from videoprior_edit.cli import main

    trained = [e for e in load_manifest(trained=True) if "made_by" in e]
    assert trained and not any("made_by" in e for e in load_manifest())  # downloads never include them
    for e in trained:
        assert {"id", "name", "architecture", "purpose", "folder", "file", "groups"} <= e.keys()
        assert e["made_by"].startswith("videoprior-edit train-") and "source" not in e
    flow = str(Path(__file__).resolve().parent.parent / "example_workflows" / "ByG image edit (FLUX.1-dev LoRA).json")
    assert main(["models", "check", "--models", str(tmp_path), "--workflow", flow]) == 1
    out = capsys.readouterr().out
    assert "1 file(s) to train" in out and "loras/byg_flux_lora.safetensors\n    <- videoprior-edit train-byg" in out
    assert main(["models", "download", "--models", str(tmp_path), "byg_flux_lora"]) == 0  # nothing to fetch
    assert capsys.readouterr().out.startswith("train    loras/byg_flux_lora.safetensors  <- videoprior-edit train-byg")
