"""The real ComfyUI the tests run graphs in: found, given a Python that has its and this pack's requirements, and
started on CPU with the pack (and the test-only stand-in loaders of `tests/comfy_nodes/`) in its custom_nodes.

Where it comes from: $COMFYUI_PATH, else the shared tree `../shared/comfyui/src` (copied to a temporary folder:
the shared tree is read-only). Its Python: $COMFYUI_PYTHON, else the venv `../shared/comfyui/setup.sh` builds or
reuses; the pack's requirements are installed into it when missing. Without a ComfyUI tree the tests that need it
are skipped with the reason; in CI the shared tree is there, so they run.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "comfyui"
TEST_NODES = Path(__file__).resolve().parent / "comfy_nodes"
PACK_IMPORTS = "import diffusers, transformers, ftfy, cv2, peft, accelerate, safetensors, sentencepiece, gguf"


def comfyui_source() -> Path | None:
    path = os.environ.get("COMFYUI_PATH")
    if path:
        return Path(path)
    return SHARED / "src" if (SHARED / "src" / "main.py").is_file() else None


def comfyui_python() -> str:
    """ComfyUI's Python with this pack's requirements (built and installed on first use, then reused)."""
    python = os.environ.get("COMFYUI_PYTHON")
    if not python:
        setup = subprocess.run(["bash", str(SHARED / "setup.sh")], capture_output=True, text=True, timeout=1800,
                               check=False)
        if setup.returncode != 0:
            raise RuntimeError("building ComfyUI's venv failed:\n" + setup.stderr[-3000:])
        python = setup.stdout.strip().splitlines()[-1]
    if subprocess.run([python, "-c", PACK_IMPORTS], capture_output=True, check=False).returncode != 0:
        install = subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r",
                                  str(REPO / "requirements.txt")], capture_output=True, text=True, timeout=1800,
                                 check=False)
        if install.returncode != 0:
            raise RuntimeError("installing the pack's requirements into ComfyUI's venv failed:\n" + install.stderr[-3000:])
    return python


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A ComfyUI server on a free loopback port, its base directory (models/, input/, output/, custom_nodes/) apart
    from the tree, started with `--cpu`."""

    def __init__(self, source: Path, python: str, base: Path, log: Path):
        self.source, self.python, self.base, self.log = source, python, base, log
        self.url = f"http://127.0.0.1:{_free_port()}"
        self.process = None

    def start(self, timeout: int = 240) -> None:
        custom = self.base / "custom_nodes"
        custom.mkdir(parents=True, exist_ok=True)
        for name, target in (("comfyui-videoprior-edit", REPO), ("vpe_test_stand_ins", TEST_NODES / "vpe_test_stand_ins")):
            if not (custom / name).exists():
                (custom / name).symlink_to(target, target_is_directory=True)
        port = self.url.rsplit(":", 1)[1]
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(
                [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", port, "--base-directory",
                 str(self.base), "--disable-api-nodes"], cwd=self.source, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"})
        for _ in range(timeout):
            if self.process.poll() is not None:
                raise RuntimeError("ComfyUI exited:\n" + self.log_tail())
            try:
                self.get("/object_info/VPE_TemporalLatentDropout")
                return
            except OSError:
                time.sleep(1)
        raise RuntimeError("ComfyUI did not answer in time:\n" + self.log_tail())

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.is_file() else ""

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=60) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(self.url + path, json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise AssertionError(f"POST {path} -> {e.code}: {e.read().decode(errors='replace')[:3000]}") from e

    def run(self, prompt: dict, minutes: int = 5, expect_error: bool = False) -> dict:
        """Queue an API-format prompt and wait for it: its history entry (outputs, status, messages)."""
        prompt_id = self.post("/prompt", {"prompt": prompt, "client_id": "vpe-test"})["prompt_id"]
        for _ in range(minutes * 60 * 4):
            history = self.get(f"/history/{prompt_id}").get(prompt_id)
            if history and history.get("status", {}).get("completed") is not None:
                ok = history["status"]["status_str"] == "success"
                assert ok != expect_error, (history["status"], self.log_tail())
                return history
            time.sleep(0.25)
        raise AssertionError("the graph did not finish:\n" + self.log_tail())

    def run_script(self, script: str, *args: str) -> dict:
        """Run tests/comfy_scripts/`script` in this ComfyUI's Python (its tree and this pack as arguments, then
        `args`): the JSON object its last output line prints."""
        done = subprocess.run([self.python, str(REPO / "tests" / "comfy_scripts" / script), str(self.source),
                               str(REPO), *args], capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stderr[-4000:]
        return json.loads(done.stdout.splitlines()[-1])

    def interrupt(self) -> None:
        """ComfyUI's Cancel button."""
        request = urllib.request.Request(self.url + "/interrupt", b"{}", {"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=60).close()


# Real file names the shipped workflows use -> the tiny zoo model that stands in for it.
STAND_INS = {"chrono_edit_14B_fp16.safetensors": "wan21_i2v", "chronoedit_distill_lora.safetensors": "lightning_high",
             "wan2.2_i2v_high_noise_14B_fp16.safetensors": "wan22_i2v_high",
             "wan2.2_i2v_low_noise_14B_fp16.safetensors": "wan22_i2v_low",
             "wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors": "lightning_high",
             "wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors": "lightning_low",
             "wan2.1_t2v_1.3B_fp16.safetensors": "wan21_t2v", "umt5_xxl_fp16.safetensors": "umt5",
             "wan_2.1_vae.safetensors": "vae", "clip_vision_h.safetensors": "clip_vision",
             "wan2.2_t2v_high_noise_14B_fp16.safetensors": "wan21_t2v",
             "wan2.2_t2v_low_noise_14B_fp16.safetensors": "wan21_t2v",
             "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors": "wan22_i2v_high",
             "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors": "wan22_i2v_low",
             "umt5_xxl_fp8_e4m3fn_scaled.safetensors": "umt5",
             "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors": "wan21_t2v",
             "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors": "wan21_t2v"}
FLUX_STAND_INS = {"flux1-dev.safetensors": "transformer", "clip_l.safetensors": "clip_l",
                  "t5xxl_fp16.safetensors": "t5xxl", "ae.safetensors": "vae"}


def models_tree(zoo, root: Path) -> None:
    """The zoo's models as a ComfyUI models folder, plus the real file names linked to their tiny stand-ins."""
    for folder in zoo.models.iterdir():
        (root / folder.name).mkdir(parents=True)
        for item in folder.iterdir():
            (root / folder.name / item.name).symlink_to(item, target_is_directory=item.is_dir())
    for real, target in [(r, zoo.file(k)) for r, k in STAND_INS.items()] + \
            [(r, zoo.flux[k]) for r, k in FLUX_STAND_INS.items()]:
        link = root / target.parent.name / real
        if not link.exists():
            link.symlink_to(target)
    _trained_stand_ins(zoo, root / "loras")


def _trained_stand_ins(zoo, loras: Path) -> None:
    """Tiny stand-ins of the files the pack's trainers make (the manifest's 'trained' entries): ByG LoRAs for the
    tiny Wan T2V and FLUX models, and an ImVideoEdit adapter, written with the library's own code."""
    import torch
    from safetensors.torch import save_file

    from videoprior_edit.imvideoedit import create_adapter, save_adapter
    from videoprior_edit.models.wan import load_wan_transformer
    from videoprior_edit.zoo import tiny_lightning_lora

    t2v = load_wan_transformer(zoo.file("wan21_t2v"), dtype="fp32")
    for i, expert in enumerate(("high", "low")):
        save_file(tiny_lightning_lora(t2v, seed=30 + i), loras / f"byg_lora_{expert}_noise.safetensors")
    save_adapter(create_adapter(t2v), loras / "imvideoedit_adapter.safetensors", "fp32")
    from safetensors import safe_open

    gen, flux_lora = torch.Generator().manual_seed(7), {}
    with safe_open(str(zoo.flux["transformer"]), "pt") as f:  # BFL names: a LoRA on every attention qkv
        for key in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
            if key.endswith(".qkv.weight"):
                out_dim, in_dim = f.get_slice(key).get_shape()
                stem = "lora_unet_" + key[: -len(".weight")].replace(".", "_")
                flux_lora[stem + ".lora_down.weight"] = 0.1 * torch.randn(4, in_dim, generator=gen)
                flux_lora[stem + ".lora_up.weight"] = 0.1 * torch.randn(out_dim, 4, generator=gen)
                flux_lora[stem + ".alpha"] = torch.tensor(4.0)
    assert flux_lora, "the tiny FLUX file has no attention qkv weights"
    save_file(flux_lora, loras / "byg_flux_lora.safetensors")


def with_av(python: str, code: str, *args: str) -> str:
    """Run `code` in ComfyUI's Python (which has PyAV: ComfyUI's video nodes need it); returns its stdout."""
    run = subprocess.run([python, "-c", code, *args], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


def source_video(path: Path, python: str) -> None:
    """A small H.264 clip with sound for LoadVideo: 10 frames of 70x50 noise at 12 fps (not 4k+1: ByG cuts it to 9
    frames, ImVideoEdit pads it for Wan and cuts the result back to 10; not Wan's 16 fps: the editors pass its rate
    on) and a 440 Hz tone as long as the clip (the video workflows keep the source's sound)."""
    with_av(python, """
import sys, av, numpy as np
rng = np.random.default_rng(1)
with av.open(sys.argv[1], "w") as container:
    stream = container.add_stream("libx264", rate=12)
    stream.width, stream.height, stream.pix_fmt = 70, 50, "yuv420p"
    sound = container.add_stream("aac", rate=16000)
    sound.layout = "mono"
    for i in range(10):
        frame = av.VideoFrame.from_ndarray((rng.random((50, 70, 3)) * 120 + i * 12).astype(np.uint8), format="rgb24")
        container.mux(stream.encode(frame))
    container.mux(stream.encode())
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(16000 * 10 // 12) / 16000)).astype(np.float32)
    for start in range(0, len(tone), 1024):
        chunk = av.AudioFrame.from_ndarray(tone[None, start:start + 1024], format="fltp", layout="mono")
        chunk.sample_rate = 16000
        container.mux(sound.encode(chunk))
    container.mux(sound.encode())
""", str(path))


def source_image():
    """The 70x50 noise picture the graphs edit (not a multiple of 16: the nodes resize it)."""
    import numpy as np
    from PIL import Image

    return Image.fromarray((np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8))


def writable_copy(source: Path, folder: Path) -> Path:
    """The ComfyUI tree copied into `folder` (its files are only read, but the shared tree may be read-only)."""
    target = folder / "ComfyUI"
    if not target.exists():
        shutil.copytree(source, target, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", ".git"))
    return target



# Where a shipped workflow loads a model with a loader that cannot build the zoo's tiny stand-in (see
# tests/comfy_nodes/vpe_test_stand_ins), the test stand-in loader takes its place, with the same inputs.
STAND_IN_LOADERS = {"CLIPLoader": "VPETest_TinyTextEncoderLoader", "CLIPVisionLoader": "VPETest_TinyClipVisionLoader",
                    "DualCLIPLoader": "VPETest_TinyDualCLIPLoader", "VAELoader": "VPETest_TinyVAELoader"}


def on_zoo(prompt: dict, server: ComfyServer) -> dict:
    """A shipped workflow's API prompt made to run on the tiny zoo in a few seconds: small pictures, the zoo's tiny
    Qwen-VL instead of a VLM server, the test stand-in loaders where core's loaders need full-size files."""
    rewriter = server.get("/object_info/VPE_PromptRewriter")["VPE_PromptRewriter"]
    choices = rewriter["input"]["required"]["local_model"][1]["options"]
    llm = next(c for c in choices if c != "none")
    for node in prompt.values():
        inputs = node["inputs"]
        if "max_side" in inputs:
            inputs["max_side"] = 64
        if inputs.get("backend") == "openai":
            inputs.update(backend="local", local_model=llm)
        if node["class_type"] in STAND_IN_LOADERS:
            node["class_type"] = STAND_IN_LOADERS[node["class_type"]]
            inputs.pop("device", None)
    return prompt
