"""The `train-video4edit` command line: flags (from `TrainConfig`), the tiny-zoo and ComfyUI-models-folder
shortcuts, and `add_parser` for the `videoprior-edit` command."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from ..errors import InputError
from .config import FEATURE_NORMS, POSITION_MODES, TEACHER_PLACEMENTS, TrainConfig
from .data import CLIP_MODES
from .trainer import train

# ----------------------------------------------------------------------------------------------- command line
# (flag, config field, type, help); defaults come from TrainConfig (or the tiny-zoo settings with --zoo).
_OPTIONS = [
    ("--data", "data", str, ("dataset folder: metadata.jsonl (or .csv) + images (see videoprior_edit/video4edit/"
                             "data.py)")),
    ("--output", "output", str, "run folder: student file, checkpoints/, cache/, validation/, log.jsonl"),
    ("--student", "student", str, "Wan2.1-I2V-14B file (wan2.1_i2v_720p_14B_fp16) or ChronoEdit-14B"),
    ("--teacher", "teacher", str, "Wan2.1-FLF2V-14B-720P file (wan2.1_flf2v_720p_14B_fp16)"),
    ("--text-encoder", "text_encoder", str, "umt5_xxl_fp16.safetensors"),
    ("--vae", "vae", str, "wan_2.1_vae.safetensors"),
    ("--clip-vision", "clip_vision", str, "clip_vision_h.safetensors"),
    ("--width", "width", int, "training width (multiple of 16)"),
    ("--height", "height", int, "training height (multiple of 16)"),
    ("--frames", "frames", int, "student clip length, 4k+1 (5 = 2 latent frames: the tail latent is the edit)"),
    ("--clip-mode", "clip_mode", str, (f"middle frames of the clip: {', '.join(CLIP_MODES)} (teacher: its "
                                       "trajectory resampled to the clip)")),
    ("--teacher-frames", "teacher_frames", int, "length of the teacher's rollout (4k+1)"),
    ("--teacher-steps", "teacher_steps", int, "denoising steps of the teacher's rollout (once per triplet)"),
    ("--teacher-cfg", "teacher_cfg", float, "CFG of the teacher's rollout"),
    ("--teacher-shift", "teacher_shift", float, "shift of the teacher's rollout (FLF2V official: 16)"),
    ("--teacher-negative", "teacher_negative", str, "negative prompt of the teacher's rollout"),
    ("--distill-blocks", "distill_blocks", str, ("student blocks whose outputs match the teacher's: quarters, all, "
                                                 "none, every:N or indices 0,10,20")),
    ("--distill-weight", "distill_weight", float, "weight of the block-wise feature distillation"),
    ("--feature-norm", "feature_norm", str, f"feature normalisation before the MSE: {', '.join(FEATURE_NORMS)}"),
    ("--tail-flow-weight", "tail_flow_weight", float, "weight of the flow-matching loss on the tail latent"),
    ("--tail-x0-weight", "tail_x0_weight", float, "weight of the x0-prediction loss on the tail latent"),
    ("--inbetween-flow-weight", "inbetween_flow_weight", float, "weight of flow matching on the middle latents"),
    ("--tail-latents", "tail_latents", int, "how many last latent frames count as the tail"),
    ("--timestep-shift", "timestep_shift", float, "sigma = shift u / (1 + (shift - 1) u), u ~ U(0, 1)"),
    ("--positions", "positions", str, (f"student temporal RoPE: {', '.join(POSITION_MODES)} (auto: ChronoEdit's for "
                                       "ChronoEdit students)")),
    ("--lora-rank", "lora_rank", int, "LoRA rank"),
    ("--lora-alpha", "lora_alpha", float, "LoRA alpha (default: the rank, scale 1)"),
    ("--lora-targets", "lora_targets", str, "comma-separated Linear names the LoRA adapts (in every block)"),
    ("--steps", "steps", int, "optimizer steps (total, also when resuming)"),
    ("--lr", "lr", float, "AdamW learning rate (default 1e-4 LoRA, 1e-5 full)"),
    ("--lr-warmup-steps", "lr_warmup_steps", int, "linear warm-up steps"),
    ("--weight-decay", "weight_decay", float, "AdamW weight decay"),
    ("--max-grad-norm", "max_grad_norm", float, "gradient clipping (0: off)"),
    ("--batch-size", "batch_size", int, "global batch per optimizer step"),
    ("--micro-batch-size", "micro_batch_size", int, "triplets per forward per process; the rest is accumulation"),
    ("--seed", "seed", int, "seed of the data order, noise, timesteps, LoRA init and teacher rollouts"),
    ("--precision", "precision", str, "frozen weights: bf16, fp16 or fp32 (trainable tensors are fp32)"),
    ("--mixed-precision", "mixed_precision", str, "autocast: auto (the weights' precision), bf16, fp16, no"),
    ("--teacher-placement", "teacher_placement", str, (f"teacher during training: {', '.join(TEACHER_PLACEMENTS)} "
                                                       "(block_offload: weights in RAM, one block on the GPU)")),
    ("--teacher-weight-storage", "teacher_weight_storage", str, "default or fp8_e4m3fn"),
    ("--student-weight-storage", "student_weight_storage", str, "default or fp8_e4m3fn (LoRA only)"),
    ("--save-every", "save_every", int, "checkpoint + student file every N steps (0: at the end only)"),
    ("--keep-checkpoints", "keep_checkpoints", int, "how many checkpoints to keep"),
    ("--log-every", "log_every", int, "one log line per N steps"),
    ("--validate-every", "validate_every", int, "validation renders every N steps (0: never)"),
    ("--val-count", "val_count", int, "triplets rendered (the first ones)"),
    ("--val-steps", "val_steps", int, "denoising steps of a validation render"),
    ("--val-cfg", "val_cfg", float, "CFG of a validation render"),
    ("--val-shift", "val_shift", float, "shift of a validation render"),
    ("--cache-dir", "cache_dir", str, "where encoded triplets and trajectories go (default: <output>/cache)"),
    ("--save-dtype", "save_dtype", str, "precision of the saved student: bf16, fp16, fp32"),
]
# The tiny zoo: small enough for a CPU in seconds (options given on the command line still win).
ZOO_SETTINGS = {"width": 64, "height": 48, "teacher_frames": 9, "teacher_steps": 4, "precision": "fp32",
                "steps": 10, "lora_rank": 4, "lr": 1e-3, "batch_size": 1, "save_every": 5, "log_every": 1,
                "validate_every": 10, "val_count": 1, "val_steps": 4, "save_dtype": "fp32"}
# Real files in a ComfyUI models folder, by manifest id (first present wins).
REAL_FILES = {"student": ("wan2.1_i2v_720p_14B_fp16", "wan2.1_i2v_480p_14B_fp16", "chrono_edit_14B_fp16"),
              "teacher": ("wan2.1_flf2v_720p_14B_fp16",), "text_encoder": ("umt5_xxl_fp16",),
              "vae": ("wan_2.1_vae",), "clip_vision": ("clip_vision_h",)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    for flag, name, kind, text in _OPTIONS:
        default = getattr(defaults, name)
        shown = f" (default: {default})" if default not in (None, "") else ""
        p.add_argument(flag, dest=name, type=kind, default=None, help=text + shown)
    p.add_argument("--out", dest="output", help="same as --output")
    p.add_argument("--full", action="store_true", default=None, help="full fine-tune of the student instead of LoRA")
    p.add_argument("--overfit", action="store_true", default=None,
                   help="sanity check: the first batch with the same noise and timestep every step (the loss must "
                        "fall)")
    p.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false", default=None,
                   help="keep every block's activations (faster, more memory)")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue from the newest checkpoint in --output (or the checkpoints/step-N folder given)")
    p.add_argument("--models", help="a ComfyUI models folder: the student, teacher, UMT5, VAE and CLIP files are "
                                    "found there (`videoprior-edit models download video4edit` fetches them)")
    p.add_argument("--zoo", help="train on the tiny random-weight zoo in this folder (written if missing) with a "
                                 "generated tiny dataset (unless --data): a CPU smoke run")


def config_from_args(args) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    base: dict = {}
    if getattr(args, "zoo", None):
        base = {**ZOO_SETTINGS, **_zoo_files(Path(args.zoo))}
        if "data" not in given:
            from .data import write_tiny_dataset

            folder = Path(given.get("output", TrainConfig.output)) / "tiny_dataset"
            if not (folder / "metadata.jsonl").is_file():
                write_tiny_dataset(folder, count=2, width=64, height=48)
            base["data"] = str(folder)
    elif getattr(args, "models", None):
        base = _real_files(Path(args.models))
    config = TrainConfig(**{**base, **given})
    if not config.data:
        raise InputError("No --data folder given.", "Point --data at a dataset folder (see --help), or use --zoo.")
    return config


def _zoo_files(root: Path) -> dict[str, str]:
    from ..zoo import Zoo, write_zoo

    zoo = Zoo(root)
    if not (root / "zoo.json").is_file():
        print(f"writing the tiny zoo (random weights, real architectures) to {root}", flush=True)
        write_zoo(root)
    return {"student": str(zoo.file("wan21_i2v")), "teacher": str(zoo.file("wan21_flf2v")),
            "text_encoder": str(zoo.file("umt5")), "vae": str(zoo.file("vae")),
            "clip_vision": str(zoo.file("clip_vision"))}


def _real_files(models: Path) -> dict[str, str]:
    from ..errors import ModelFileError
    from ..folders import ModelFolders
    from ..manifest import load_manifest

    entries = {e["id"]: e for e in load_manifest()}
    folders, picked, missing = ModelFolders(models), {}, []
    for slot, ids in REAL_FILES.items():
        for i in ids:
            try:
                picked[slot] = str(folders.path(entries[i]["folder"], entries[i]["file"]))
                break
            except ModelFileError:
                continue
        else:
            missing.append(f"{entries[ids[0]]['folder']}/{entries[ids[0]]['file']}")
    if missing:
        raise ModelFileError(f"Missing in {models}: {', '.join(missing)}.",
                             f"Run `videoprior-edit models download video4edit --models {models}`, or give the files "
                             "with --student/--teacher/--text-encoder/--vae/--clip-vision.")
    return picked


def run(args) -> int:
    result = train(config_from_args(args))
    print(f"student: {result.student_file} ({result.steps} steps)")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `train-video4edit` on a `videoprior-edit` subparsers object."""
    p = subparsers.add_parser("train-video4edit", help="Video4Edit: distil Wan2.1-FLF2V (teacher) into a Wan2.1-I2V "
                              "student (LoRA or full) from (source, edited, instruction) triplets; accelerate launch "
                              "for several GPUs")
    add_arguments(p)
    p.set_defaults(run=run)
    return p

