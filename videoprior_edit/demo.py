"""The image-edit demo: source image + instruction -> edited image, on the tiny zoo or on real weights.

Today it loads the Wan2.2-I2V-A14B model set, encodes the instruction and the source image (the I2V condition
the editor starts from) and reports; the editing step itself arrives with the I2V editor (IF-Edit) issue.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from .errors import InputError, ModelFileError
from .folders import ModelFolders
from .manifest import load_manifest
from .models.sets import load_wan_models
from .text import PromptEncoder

DEFAULT_INSTRUCTION = "take the paper card out of her hand"
# Real files the demo uses: manifest ids per input, first present wins.
REAL_FILES = {
    "model": ("wan2.2_i2v_high_noise_14B_fp16", "wan2.2_i2v_high_noise_14B_fp8_scaled"),
    "model_low": ("wan2.2_i2v_low_noise_14B_fp16", "wan2.2_i2v_low_noise_14B_fp8_scaled"),
    "text_encoder": ("umt5_xxl_fp16", "umt5_xxl_fp8_e4m3fn_scaled"),
    "vae": ("wan_2.1_vae",),
}


def _pick_files(models_dir: Path) -> dict[str, Path]:
    entries = {e["id"]: e for e in load_manifest()}
    folders, picked, missing = ModelFolders(models_dir), {}, []
    for slot, ids in REAL_FILES.items():
        for i in ids:
            try:
                picked[slot] = folders.path(entries[i]["folder"], entries[i]["file"])
                break
            except ModelFileError:
                continue
        else:
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


@torch.no_grad()
def run_demo(out_dir: str | Path = "demo_output", models_dir: str | Path | None = None,
             image: str | Path | None = None, instruction: str = DEFAULT_INSTRUCTION, seed: int = 0) -> dict:
    """Run the demo and write its outputs into `out_dir`; returns the report it also writes as report.json."""
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if models_dir is None:
        from .zoo import Zoo, write_zoo

        zoo = Zoo(out / "zoo")
        if not (zoo.root / "zoo.json").is_file():
            print(f"writing the tiny zoo (random weights, real architectures) to {zoo.root}")
            write_zoo(zoo.root, seed=seed)
        files = {s: zoo.file(k) for s, k in (("model", "wan22_i2v_high"), ("model_low", "wan22_i2v_low"),
                                              ("text_encoder", "umt5"), ("vae", "vae"))}
        size, dtype = (64, 64), "fp32"
    else:
        files, size, dtype = _pick_files(Path(models_dir)), (832, 480), "bf16"
    t1 = time.perf_counter()
    models = load_wan_models(files["model"], files["model_low"], files["text_encoder"], files["vae"], dtype=dtype)
    t2 = time.perf_counter()
    encoder = PromptEncoder(models.text_encoder, models.tokenizer)
    embeds = encoder([instruction])
    source = load_source(image, *size)
    h, w = source.shape[:2]
    if h % 16 or w % 16:
        raise InputError(f"Image size {w}x{h} is not a multiple of 16.", "Crop or resize it.")
    Image.fromarray(source).save(out / "source.png")
    pixels = torch.from_numpy(source).float().div(127.5).sub(1).permute(2, 0, 1)[None, :, None]
    vae = models.vae
    latents = vae.encode(pixels.to(vae.dtype)).latent_dist.mode()
    t3 = time.perf_counter()
    report = {
        "status": "loaded models, encoded the instruction and the source image; the editing step (I2V with "
                  "Temporal Latent Dropout) arrives with the IF-Edit I2V editor issue",
        "model_set": models.summary().splitlines(), "instruction": instruction,
        "instruction_tokens": encoder.token_count(instruction),
        "prompt_embeddings_shape": list(embeds.shape), "source_size": [w, h],
        "source_latent_shape": list(latents.shape),
        "seconds": {"prepare": round(t1 - t0, 2), "load_models": round(t2 - t1, 2), "encode": round(t3 - t2, 2)},
        "outputs": {"source": str(out / "source.png"), "report": str(out / "report.json")},
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report
