"""The model sets (student, teacher sharing its encoders) and the encoded-triplet cache: prompts encoded once,
teacher trajectories rolled out once (PNGs), latents / conditions / CLIP / text embeddings per triplet in one
safetensors file each."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch

from ..errors import InputError
from ..sampling.condition import (
    clip_embeds,
    encode_mode,
    i2v_condition,
    normalize_latents,
    pixels_from_image,
    to_pil,
)
from ..sampling.loop import placement_of
from ..text import MAX_TOKENS, PromptEncoder
from .config import TrainConfig, _print
from .data import Triplet, load_frames, load_image, save_frames, student_clip
from .editor import teacher_trajectory


# ----------------------------------------------------------------------------------------------- models
def load_models(config: TrainConfig):
    """The student set (Wan2.1-I2V / ChronoEdit with CLIP, UMT5, VAE) and the teacher set (Wan2.1-FLF2V sharing the
    student's encoders and VAE: UMT5 is read once)."""
    from ..models.sets import load_wan_models

    for what, value in (("--student", config.student), ("--teacher", config.teacher),
                        ("--text-encoder", config.text_encoder), ("--vae", config.vae),
                        ("--clip-vision", config.clip_vision)):
        if not value:
            raise InputError(f"No {what} file given.", "Give the files, or --models DIR (a ComfyUI models folder) "
                             "or --zoo DIR (the tiny test zoo).")
    student = load_wan_models(config.student, None, config.text_encoder, config.vae, config.clip_vision,
                              dtype=config.precision, weight_storage=config.student_weight_storage, task="i2v")
    return student, teacher_set(student, config.teacher, config.precision, config.teacher_weight_storage)


def teacher_set(student, path: str | Path, dtype: str = "bf16", weight_storage: str = "default"):
    """A Wan2.1-FLF2V model set that shares the student set's text encoder, CLIP and VAE."""
    from ..models.sets import WanModels
    from ..models.wan import load_wan_transformer

    model = load_wan_transformer(path, dtype, weight_storage, expect=("flf2v",), slot="teacher")
    variant = next(iter(model.vpe_info.variants), "wan2.1-flf2v-14b")
    return WanModels(variant=variant, transformer=model, text_encoder=student.text_encoder,
                     tokenizer=student.tokenizer, vae=student.vae, image_encoder=student.image_encoder,
                     image_processor=student.image_processor, sources={**student.sources, "model": str(path)},
                     load_options={**student.load_options, "dtype": dtype, "weight_storage": weight_storage})


def check_sets(student, teacher) -> None:
    if student.family != "i2v" or student.transformer_2 is not None or student.image_encoder is None:
        raise InputError(f"The student is {student.name}; Video4Edit's student is Wan2.1-I2V-14B (or ChronoEdit-14B) "
                         "with its CLIP image encoder.", "Load wan2.1_i2v_720p_14B_fp16 with clip_vision_h.")
    if teacher.family != "flf2v" or teacher.image_encoder is None:
        raise InputError(f"The teacher is {teacher.name}; Video4Edit's teacher is Wan2.1-FLF2V-14B-720P.",
                         "Load wan2.1_flf2v_720p_14B_fp16 with clip_vision_h.")


# ----------------------------------------------------------------------------------------------- cache
class _EmbeddingTable(PromptEncoder):
    """A prompt encoder that serves embeddings computed beforehand (trimmed to their tokens), so the sampling loop
    (teacher rollouts, validation renders) never needs the text encoder on the device again."""

    def __init__(self, tokenizer, table: dict[str, torch.Tensor]):
        super().__init__(None, tokenizer)
        self.table = table

    def has(self, prompt: str) -> bool:
        return prompt in self.table or super().has(prompt)

    def _encode(self, prompts: list[str]) -> None:
        for prompt in prompts:
            if prompt not in self.table:
                raise InputError(f"The prompt '{prompt[:60]}' was not encoded before training.",
                                 "This is a bug in the trainer's prompt list; please report it.")
            self._cache[prompt] = _pad(self.table[prompt])


def _pad(embedding: torch.Tensor) -> torch.Tensor:
    out = embedding.new_zeros(MAX_TOKENS, embedding.shape[-1])
    out[:embedding.shape[0]] = embedding[:MAX_TOKENS]
    return out


def encode_texts(models, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Each prompt's UMT5 embedding trimmed to its real tokens (CPU), with the text encoder on the device once."""
    prompts = list(dict.fromkeys(prompts))
    if not prompts:
        return {}
    place = placement_of(models)
    encoder = PromptEncoder(place.activate(models, "text_encoder"), models.tokenizer)
    try:
        table = {}
        for prompt in prompts:
            n = max(1, min(MAX_TOKENS, encoder.token_count(prompt)))
            table[prompt] = encoder([prompt])[0][:n].clone()
            encoder.clear()
        return table
    finally:
        place.release(models, "text_encoder")


def _stamp(path: Path) -> list:
    path = Path(path)
    if path.is_dir():
        return [_stamp(p) for p in sorted(path.iterdir()) if p.is_file()]
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:40] or "triplet"


def _rollout_key(t: Triplet, config: TrainConfig, teacher_source: str) -> str:
    what = [_stamp(t.source), _stamp(t.edited), t.teacher_prompt, config.teacher_negative, config.width,
            config.height, config.teacher_frames, config.teacher_steps, config.teacher_cfg, config.teacher_shift,
            config.seed, Path(teacher_source).name, config.precision]
    return hashlib.sha1(json.dumps(what).encode()).hexdigest()[:16]


def _cache_key(t: Triplet, config: TrainConfig, teacher_source: str, student_source: str) -> str:
    trajectory = _stamp(t.trajectory) if t.trajectory else (
        _rollout_key(t, config, teacher_source) if config.clip_mode.startswith("teacher") else None)
    what = [_stamp(t.source), _stamp(t.edited), t.instruction, t.teacher_prompt, trajectory, config.width,
            config.height, config.frames, config.clip_mode, Path(student_source).name, config.precision]
    return hashlib.sha1(json.dumps(what).encode()).hexdigest()[:16]


def cache_folder(config: TrainConfig) -> Path:
    return Path(config.cache_dir or Path(config.output) / "cache")


def build_cache(student, teacher, triplets: list[Triplet], config: TrainConfig, accelerator=None) -> list[Path]:
    """Encode every triplet once (each process a share; what is cached is skipped) and return the cache files.

    Per triplet: the teacher trajectory (given, cached, or rolled out with FLF2V and saved as PNGs under
    cache/trajectories/), the student clip, its VAE latents x0, the student's and the teacher's I2V conditions,
    CLIP embeddings (source; source + edited) and the instruction's / evolution prompt's embeddings. All prompts
    are encoded first, so the text encoder is on the device once."""
    folder = cache_folder(config)
    src_t, src_s = teacher.sources.get("model", ""), student.sources.get("model", "")
    files = [folder / f"{_safe(t.name)}-{_cache_key(t, config, src_t, src_s)}.safetensors" for t in triplets]
    rank, world = (0, 1) if accelerator is None else (accelerator.process_index, accelerator.num_processes)
    todo = [i for i in range(rank, len(triplets), world) if not files[i].is_file()]
    if todo:
        rollout = config.clip_mode.startswith("teacher")
        prompts = [p for i in todo for p in (triplets[i].instruction, triplets[i].teacher_prompt)]
        prompts += [config.teacher_negative] if rollout and config.teacher_cfg > 1 else []
        table = encode_texts(student, prompts)
        saved = teacher.__dict__.get("_prompt_encoder")
        teacher.__dict__["_prompt_encoder"] = _EmbeddingTable(teacher.tokenizer, table)
        try:
            for n, i in enumerate(todo):
                _encode_triplet(student, teacher, triplets[i], config, table, files[i], folder)
                teacher.__dict__["_prompt_encoder"].clear()
                if n % 10 == 0 or n == len(todo) - 1:
                    _print(accelerator, f"cache: {n + 1}/{len(todo)} triplets encoded ({triplets[i].name})")
        finally:
            if saved is None:
                teacher.__dict__.pop("_prompt_encoder", None)
            else:
                teacher.__dict__["_prompt_encoder"] = saved
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return files


@torch.no_grad()
def _encode_triplet(student, teacher, t: Triplet, config: TrainConfig, table, path: Path, folder: Path) -> None:
    from ..weights import save_file

    w, h = config.width, config.height
    source, edited = load_image(t.source, w, h), load_image(t.edited, w, h)
    trajectory = None
    if config.clip_mode.startswith("teacher"):
        trajectory = _trajectory(teacher, t, source, edited, config, folder)
    clip = student_clip(source, edited, config.frames, config.clip_mode, trajectory)
    place = placement_of(student)
    out = {}
    vae = place.activate(student, "vae")
    device = next(vae.parameters()).device
    video = pixels_from_image(clip).permute(1, 0, 2, 3).unsqueeze(0)  # (1, 3, F, H, W)
    out["x0"] = normalize_latents(vae, encode_mode(vae, video.to(device)).float())[0]
    first, last = pixels_from_image(source).to(device), pixels_from_image(edited).to(device)
    out["cond_student"] = i2v_condition(vae, first, config.frames, device=device)[0]
    out["cond_teacher"] = i2v_condition(vae, first, config.frames, last, device=device)[0]
    place.release(student, "vae")
    for key, models, pictures in (("clip_student", student, [to_pil(source[0])]),
                                  ("clip_teacher", teacher, [to_pil(source[0]), to_pil(edited[0])])):
        tplace = placement_of(models)
        encoder = tplace.activate(models, "image_encoder")
        # (images, tokens, width): FLF2V's image embedder pairs each clip's two images up itself
        out[key] = clip_embeds(encoder, models.image_processor, pictures if len(pictures) > 1 else pictures[0])
        tplace.release(models, "image_encoder")
    out["text_student"], out["text_teacher"] = table[t.instruction], table[t.teacher_prompt]
    save_file({k: v.detach().cpu().contiguous() for k, v in out.items()}, path,
              metadata={"name": t.name, "instruction": t.instruction, "evolution": t.teacher_prompt})


def _trajectory(teacher, t: Triplet, source, edited, config: TrainConfig, folder: Path) -> torch.Tensor:
    """The teacher's frames from source to edited: the triplet's own folder, a cached rollout, or a new rollout
    (saved as PNGs so it is done once and can be looked at)."""
    w, h = config.width, config.height
    if t.trajectory is not None:
        return load_frames(t.trajectory, w, h)
    cached = folder / "trajectories" / f"{_safe(t.name)}-{_rollout_key(t, config, teacher.sources.get('model', ''))}"
    if (cached / "done").is_file():
        return load_frames(cached, w, h)
    frames, _ = teacher_trajectory(teacher, source, edited, t.teacher_prompt, config.teacher_negative,
                                   frames=config.teacher_frames, steps=config.teacher_steps, cfg=config.teacher_cfg,
                                   shift=config.teacher_shift, seed=config.seed, size_mode="resize", max_side=0)
    save_frames(frames, cached)
    (cached / "done").write_text("")
    return load_frames(cached, w, h)  # the saved (8-bit) frames, so a rerun sees exactly the same clip


def load_batch(files: list[Path], indices: list[int], device=None) -> dict[str, torch.Tensor]:
    """Stacked cached triplets; the text embeddings zero-padded to 512 tokens (as Wan's pipelines pad)."""
    from safetensors.torch import load_file

    items = [load_file(str(files[i])) for i in indices]
    batch = {k: torch.stack([item[k] for item in items]) for k in items[0] if not k.startswith("text_")}
    for k in ("text_student", "text_teacher"):
        batch[k] = torch.stack([_pad(item[k]) for item in items])
    return {k: v.to(device) for k, v in batch.items()}

