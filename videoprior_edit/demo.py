"""The image-edit demo and the `edit` command: source image + prompt -> edited image and the clip, on the tiny zoo
or on real weights (Wan2.2-I2V-A14B + Lightning LoRAs, found by manifest id in a ComfyUI models folder).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from .errors import ModelFileError
from .folders import ModelFolders
from .manifest import load_manifest
from .models.sets import load_wan_models

DEFAULT_INSTRUCTION = "take the paper card out of her hand"
# Real files the demo uses: manifest ids per input, first present wins.
REAL_FILES = {
    "model": ("wan2.2_i2v_high_noise_14B_fp16", "wan2.2_i2v_high_noise_14B_fp8_scaled"),
    "model_low": ("wan2.2_i2v_low_noise_14B_fp16", "wan2.2_i2v_low_noise_14B_fp8_scaled"),
    "text_encoder": ("umt5_xxl_fp16", "umt5_xxl_fp8_e4m3fn_scaled"),
    "vae": ("wan_2.1_vae",),
}
OPTIONAL_FILES = {"lora_high": ("wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise",),
                  "lora_low": ("wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise",)}


def pick_files(models_dir: Path) -> dict[str, Path]:
    """The real files for an IF-Edit run in a ComfyUI models folder (Lightning LoRAs when present)."""
    entries = {e["id"]: e for e in load_manifest()}
    folders, picked, missing = ModelFolders(models_dir), {}, []
    for slot, ids in {**REAL_FILES, **OPTIONAL_FILES}.items():
        for i in ids:
            try:
                picked[slot] = folders.path(entries[i]["folder"], entries[i]["file"])
                break
            except ModelFileError:
                continue
        else:
            if slot in REAL_FILES:
                missing.append(f"{entries[ids[0]]['folder']}/{entries[ids[0]]['file']}")
    if missing:
        raise ModelFileError(f"Missing in {models_dir}: {', '.join(missing)}.",
                             f"Run `videoprior-edit models download if-edit --models {models_dir}` or see "
                             "`videoprior-edit models check`.")
    return picked


def synthetic_source(width: int, height: int) -> np.ndarray:
    """A simple test picture (gradient, a disc and a bar) as uint8 RGB."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([x / width, y / height, 0.5 + 0 * x], -1)
    disc = (x - width * 0.35) ** 2 + (y - height * 0.5) ** 2 < (min(width, height) * 0.22) ** 2
    img[disc] = (0.9, 0.2, 0.2)
    img[int(height * 0.6):int(height * 0.7), int(width * 0.55):int(width * 0.85)] = (0.95, 0.95, 0.9)
    return (img * 255).round().astype(np.uint8)


def load_source(image: str | Path | None, width: int, height: int) -> np.ndarray:
    from PIL import Image

    if image is None:
        return synthetic_source(width, height)
    pic = Image.open(image).convert("RGB")
    if pic.width % 16 or pic.height % 16:
        w, h = max(16, pic.width // 16 * 16), max(16, pic.height // 16 * 16)
        print(f"note: {pic.width}x{pic.height} is not a multiple of 16; using a centre crop of {w}x{h}")
        left, top = (pic.width - w) // 2, (pic.height - h) // 2
        pic = pic.crop((left, top, left + w, top + h))
    return np.asarray(pic)


def zoo_files(root: Path, seed: int = 0) -> dict[str, Path]:
    """The tiny zoo's Wan2.2-I2V files (written under `root` on first use) with its Lightning-layout LoRAs."""
    from .zoo import Zoo, write_zoo

    zoo = Zoo(Path(root))
    if not (zoo.root / "zoo.json").is_file():
        print(f"writing the tiny zoo (random weights, real architectures) to {zoo.root}")
        write_zoo(zoo.root, seed=seed)
    return {s: zoo.file(k) for s, k in (("model", "wan22_i2v_high"), ("model_low", "wan22_i2v_low"),
                                         ("text_encoder", "umt5"), ("vae", "vae"), ("lora_high", "lightning_high"),
                                         ("lora_low", "lightning_low"))}


def load_edit_models(files: dict[str, Path], dtype: str = "bf16", weight_storage: str = "default",
                     placement=None):
    """Load the I2V model set from `files` and apply the Lightning LoRAs in it (if any) to their experts."""
    from .lora import add_lora

    models = load_wan_models(files["model"], files.get("model_low"), files["text_encoder"], files["vae"],
                             files.get("clip_vision"), dtype=dtype, weight_storage=weight_storage,
                             placement=placement, task="i2v")
    for slot, expert in (("lora_high", "high"), ("lora_low", "low")):
        if files.get(slot):
            add_lora(models, files[slot], 1.0, expert)
    return models


def save_edit(result, source: np.ndarray, out: str | Path, frames: bool = True) -> dict[str, str]:
    """Write source.png, edited.png (the last frame) and frames/NNN.png; returns the paths."""
    from PIL import Image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    as_uint8 = lambda t: (t.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    paths = {"source": out / "source.png", "edited": out / "edited.png"}
    Image.fromarray(source).save(paths["source"])
    Image.fromarray(as_uint8(result.last_frame[0])).save(paths["edited"])
    if frames:
        (out / "frames").mkdir(exist_ok=True)
        for i, frame in enumerate(result.frames):
            Image.fromarray(as_uint8(frame)).save(out / "frames" / f"{i:03d}.png")
        paths["frames"] = out / "frames"
    return {k: str(v) for k, v in paths.items()}


def run_demo(out_dir: str | Path = "demo_output", models_dir: str | Path | None = None,
             image: str | Path | None = None, instruction: str = DEFAULT_INSTRUCTION, seed: int = 0,
             placement: str | None = None) -> dict:
    """Edit an image with IF-Edit's settings and write the outputs into `out_dir`; returns the report it also
    writes as report.json. Without `models_dir` it runs on the tiny zoo (random weights: the output is noise, the
    code path is the real one)."""
    from .if_edit import edit_image
    from .placement import Placement
    from .sampling.condition import image_from_uint8

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if models_dir is None:
        files, size, dtype = zoo_files(out / "zoo", seed), (64, 64), "fp32"
    else:
        files, size, dtype = pick_files(Path(models_dir)), (832, 480), "bf16"
    place = Placement(mode=placement or "one_expert")
    t1 = time.perf_counter()
    models = load_edit_models(files, dtype, placement=place)
    t2 = time.perf_counter()
    source = load_source(image, *size)
    lightning = bool(models.loras)
    result = edit_image(models, image_from_uint8(source), instruction, frames=33, seed=seed,
                        steps=8 if lightning else 40, scheduler="lightning" if lightning else "unipc",
                        cfg_high=1.0 if lightning else 3.5, cfg_low=1.0 if lightning else 3.5, size_mode="crop",
                        max_side=832)
    t3 = time.perf_counter()
    paths = save_edit(result, source, out)
    report = {
        "model_set": models.summary().splitlines(), "placement": place.describe(), "instruction": instruction,
        "settings": "33 frames, " + ("8 Lightning steps, CFG 1" if lightning else "40 UniPC steps, CFG 3.5") +
                    ", TLD K=3 from t=900 (original positions)",
        "notes": result.notes, "source_size": [source.shape[1], source.shape[0]],
        "frames": int(result.frames.shape[0]), "latent_shape": list(result.latents.shape),
        "seconds": {"prepare": round(t1 - t0, 2), "load_models": round(t2 - t1, 2), "edit": round(t3 - t2, 2)},
        "outputs": {**paths, "report": str(out / "report.json")},
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report
