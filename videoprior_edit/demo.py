"""The image-edit demo (IF-Edit's whole chain: rewrite, I2V edit with TLD, sharpest frame, still refinement) and the
`edit` command's helpers, on the tiny zoo or on real weights (Wan2.2-I2V-A14B + Lightning LoRAs, found by manifest id
in a ComfyUI models folder).
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
    paths = {"source": out / "source.png", "edited": out / "edited.png"}
    Image.fromarray(source).save(paths["source"])
    Image.fromarray(_uint8(result.last_frame[0])).save(paths["edited"])
    if frames:
        (out / "frames").mkdir(exist_ok=True)
        for i, frame in enumerate(result.frames):
            Image.fromarray(_uint8(frame)).save(out / "frames" / f"{i:03d}.png")
        paths["frames"] = out / "frames"
    return {k: str(v) for k, v in paths.items()}


def _uint8(frame: torch.Tensor) -> np.ndarray:
    return (frame.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def demo_backend(vlm: str | None = None, vlm_model: str = "", api_key_env: str = ""):
    """The prompt rewriter's backend: none given -> the template (no VLM); a folder -> that local Qwen-VL; an http(s)
    URL -> an OpenAI-compatible server (`vlm_model`, the API key read from the `api_key_env` variable)."""
    from .rewrite import make_backend

    if not vlm:
        return make_backend("template")
    if vlm.startswith(("http://", "https://")):
        return make_backend("openai", base_url=vlm, model=vlm_model, api_key_env=api_key_env)
    return make_backend("local", model_path=vlm)


def run_demo(out_dir: str | Path = "demo_output", models_dir: str | Path | None = None,
             image: str | Path | None = None, instruction: str = DEFAULT_INSTRUCTION, seed: int = 0,
             placement: str | None = None, vlm: str | None = None, vlm_model: str = "", api_key_env: str = "",
             refine: bool = True) -> dict:
    """IF-Edit's whole chain on one image, written into `out_dir`: the instruction rewritten as an evolution prompt
    (template, or the VLM `vlm` names), the I2V edit with TLD, the sharpest of the clip's last 4 frames, and the
    still-video refinement of it (`refine`). Returns the report it also writes as report.json. Without `models_dir`
    it runs on the tiny zoo (random weights: the output is noise, the code path is the real one)."""
    from .if_edit import STILL_PROMPT, edit_image, refine_still, sharpest
    from .placement import Placement
    from .rewrite import rewrite_prompt
    from .sampling.condition import image_from_uint8

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clock = [time.perf_counter()]
    lap = lambda: clock.append(time.perf_counter()) or round(clock[-1] - clock[-2], 2)
    if models_dir is None:
        files, size, dtype = zoo_files(out / "zoo", seed), (64, 64), "fp32"
    else:
        files, size, dtype = pick_files(Path(models_dir)), (832, 480), "bf16"
    place = Placement(mode=placement or "one_expert")
    seconds = {"prepare": lap()}
    models = load_edit_models(files, dtype, placement=place)
    seconds["load_models"] = lap()
    source = image_from_uint8(load_source(image, *size))
    backend = demo_backend(vlm, vlm_model, api_key_env)
    prompt = rewrite_prompt(source, instruction, backend, "edit", seed, tokenizer=models.tokenizer)
    still = rewrite_prompt(source, instruction, backend, "still", seed, tokenizer=models.tokenizer) \
        if backend.name != "template" else None
    seconds["rewrite"] = lap()
    lightning = bool(models.loras)
    steps, scheduler, cfg = (8, "lightning", 1.0) if lightning else (40, "unipc", 3.5)
    result = edit_image(models, source, prompt.prompt, frames=33, seed=seed, steps=steps, scheduler=scheduler,
                        cfg_high=cfg, cfg_low=cfg, size_mode="crop", max_side=832)
    seconds["edit"] = lap()
    tail = result.frames[-4:]  # the frames of the last latent: the sharpness candidates
    best, scores = sharpest(tail)
    picked = tail[best:best + 1]
    refined = refine_still(models, picked, still.prompt if still else STILL_PROMPT, steps=steps,
                           scheduler=scheduler, cfg=cfg, seed=seed, size_mode="crop", max_side=832) if refine else None
    seconds["refine"] = lap()
    report = _report(models, place, instruction, prompt, result, tail, best, scores, refined, steps, lightning)
    report.update(seconds={**seconds, "total": round(clock[-1] - clock[0], 2)},
                  outputs=_save_chain(out, source, result, picked, refined))
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def _report(models, place, instruction, prompt, result, tail, best, scores, refined, steps, lightning) -> dict:
    return {
        "model_set": models.summary().splitlines(), "placement": place.describe(), "instruction": instruction,
        "prompt": prompt.prompt, "rewriter": prompt.backend, "rewriter_warnings": prompt.warnings,
        "settings": "33 frames, " + ("8 Lightning steps, CFG 1" if lightning else "40 UniPC steps, CFG 3.5") +
                    ", TLD K=3 from t=900 (original positions)",
        "notes": result.notes + (refined.notes if refined else []),
        "source_size": [int(result.frames.shape[2]), int(result.frames.shape[1])],
        "frames": int(result.frames.shape[0]), "latent_shape": list(result.latents.shape),
        "sharpest": {"frame": len(result.frames) - len(tail) + best, "scores": [round(float(s), 3) for s in scores]},
        "refined": refined is not None, "refine_steps": steps if refined else 0,
    }


def _save_chain(out: Path, source: torch.Tensor, result, picked: torch.Tensor, refined) -> dict[str, str]:
    """source.png, edited.png (the final image), clip_last_frame.png, sharpest_frame.png, frames/, report path."""
    from PIL import Image

    final = refined.frame if refined is not None else picked
    pictures = {"source": source, "edited": final, "clip_last_frame": result.last_frame, "sharpest_frame": picked}
    paths = {}
    for name, picture in pictures.items():
        paths[name] = str(out / f"{name}.png")
        Image.fromarray(_uint8(picture[0])).save(paths[name])
    (out / "frames").mkdir(exist_ok=True)
    for i, frame in enumerate(result.frames):
        Image.fromarray(_uint8(frame)).save(out / "frames" / f"{i:03d}.png")
    return {**paths, "frames": str(out / "frames"), "report": str(out / "report.json")}
