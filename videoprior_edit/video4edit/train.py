"""The Video4Edit distillation trainer: a frozen Wan2.1-FLF2V teacher, a Wan2.1-I2V student, block-wise DiT feature
distillation and tail-frame supervision in the VAE latent space (LoRA or full fine-tune of the student).

Command: `videoprior-edit train-video4edit --data my_edits/ --models /path/to/ComfyUI/models --output runs/v4e`
(or `python -m videoprior_edit.video4edit.train ...`; explicit files with --student/--teacher/--text-encoder/--vae/
--clip-vision); several GPUs: `accelerate launch -m videoprior_edit.video4edit.train ...`. On the tiny zoo (random
weights, a generated dataset, CPU, seconds): `python -m videoprior_edit.video4edit.train --zoo /tmp/zoo --out run`.

What one training example is (`data.py` has the dataset folder format):
- teacher (frozen Wan2.1-FLF2V-14B): the source image as first frame, the edited image as last frame, the evolution
  prompt, CLIP embeddings of both images;
- student (Wan2.1-I2V-14B, or ChronoEdit-14B): the source image as first frame, the instruction, CLIP of the source;
- the clip: `frames` frames (default 5 = 2 latent frames: the tail latent is the edit) whose first frame is the
  source and whose last frame is the edited image; the frames between come from the teacher's trajectory (rolled out
  once per triplet with FLF2V and cached as PNGs), resampled uniformly to the clip's length (`clip_mode`).
  x0 = VAE latents of that clip (normalised).

One step: sigma = shift(u), u ~ U(0, 1), t = 1000 sigma; x_t = (1 - sigma) x0 + sigma eps. Teacher and student run on
the same x_t (each with its own 20-channel condition, text and CLIP tokens); forward hooks keep the chosen blocks'
outputs (diffusers classes are never modified). Losses:
- distill: mean over the chosen blocks of MSE(norm(student features), norm(teacher features)), norm = per-token
  LayerNorm without affine (the residual stream's scale grows with depth and has outlier channels; normalising makes
  each block count alike and the loss about 2 (1 - cosine)). A linear projector per block is added only when the
  widths differ (they do not for Wan2.1-I2V-14B / FLF2V-14B, both 40 x 5120);
- tail_flow: flow matching on the tail latent frame(s), |v - (eps - x0)|^2 (the paper's tail-frame supervision);
- tail_x0: optional x0 prediction of the tail, |x_t - sigma v - x0|^2 (= sigma^2-weighted tail_flow);
- inbetween_flow: optional flow matching on the latents between the first and the tail (none in a 5-frame clip).
total = distill_weight * distill + tail_flow_weight * tail_flow + tail_x0_weight * tail_x0 + inbetween_flow_weight
* inbetween_flow.

Choices the paper leaves open, and the defaults (all options of `TrainConfig` / the command):
- blocks: "quarters" = the last block of each quarter of the student (9, 19, 29, 39 for 40 blocks): four depths
  from the layout to the output, the last block included because it is nearest to the prediction; four hooks, four
  feature maps per model held per step. "all", "every:N", "none" or indices ("0,10,20") are options;
- loss weights 1 / 1 / 0 / 0: the two losses the paper names, equal weight (both are MSEs of unit-scale tensors);
- student clip 5 frames (2 latents): the shortest clip with an edited frame, as the tail-frame editor and ChronoEdit
  run; the teacher's trajectory is 33 frames (its rollout: 50 UniPC steps, CFG 5, shift 16: Wan2.1-FLF2V's official
  settings) resampled to the clip;
- timestep shift 5: sigma is sampled with the shift the student samples with (Wan I2V, ChronoEdit);
- LoRA rank 32, alpha 32 (scale 1) on every block's attention q/k/v/o (self and cross), the image K/V of the
  cross-attention (the CLIP tokens of the source) and the FFN Linears (the Lightning LoRAs' modules + k_img/v_img);
  lr 1e-4 (LoRA) / 1e-5 (full), AdamW, weight decay 0.01, grad-norm clip 1, global batch 4 (micro-batch 1 +
  accumulation), 2000 steps (a common LoRA budget: watch the validation renders, written every 250 steps);
- training size 832x480 (Wan's 480p: the one-off teacher rollouts dominate the cost; the paper's models are the
  720P ones: `--width 1280 --height 720` trains at 720p).

Real scale (Wan2.1-I2V-14B student + FLF2V-14B teacher, bf16, 832x480, 5 frames = 3120 video tokens; estimates from
weight sizes, not yet measured on a GPU):
- caching (once per triplet): UMT5-XXL (11.4 GB) encodes every prompt first and leaves the GPU; then per triplet the
  teacher (28.6 GB) rolls out 33 frames (50 steps x 2 forwards at 14,040 tokens: minutes on one H100) and the VAE
  and CLIP encode; `Placement("one_expert")` keeps one big model on the GPU at a time. `--teacher-steps 20-30`
  roughly halves the rollout time; trajectories you already have (`trajectory` field) skip it;
- training, LoRA: student weights 28.6 GB + LoRA (rank 32: 0.18 B values, 2.9 GB with fp32 grads and AdamW states) +
  activations with gradient checkpointing (~2-3 GB at 3120 tokens: 40 block inputs of 3120 x 5120 bf16 = 1.3 GB,
  one block recomputed, the distilled blocks' features) + teacher 28.6 GB (`--teacher-placement all_on_device`) =
  ~63 GB: one 80 GB H100/A100. `block_offload` keeps the teacher in RAM and streams one block at a
  time (< 2 GB on the GPU, slower): ~35 GB, a 48 GB card; `--student-weight-storage fp8_e4m3fn` (and the teacher
  in fp8) brings the student to ~15 GB: ~21 GB, tight on 24 GB. `auto` picks block_offload when both models do not
  fit the GPU with 12 GB to spare. RAM: both DiTs (57 GB) + CLIP; the text encoder is dropped after caching;
- training, full fine-tune: the student is trained in fp32 (56 GB) with grads and AdamW states (168 GB more): that
  needs sharding over several GPUs (FSDP / DeepSpeed ZeRO-3; not yet tried at that scale; their checkpoints keep the
  weights, step and RNG but not AdamW's moments, see `videoprior_edit.checkpoint`); on one GPU train a LoRA. `--full` runs as is on the tiny zoo and small models;
- several GPUs: `accelerate launch` runs one process per GPU (DDP); each holds both models; the global batch is
  split over processes and micro-batches.

Outputs in `--output`: the student (`video4edit_student_lora.safetensors`: diffusers/PEFT keys
`transformer.blocks.0.attn1.to_q.lora_A.weight` with the alpha in the `lora_adapter_metadata`, for Apply Wan LoRA /
`add_lora`; or with `--full` `video4edit_student.safetensors`, a ComfyUI single file in original Wan keys for Load
Wan Models / `load_wan_models`), `training_config.json`, `log.jsonl` (one line per step), `checkpoints/step-N/`
(trainable tensors, optimizer, schedule and RNG as safetensors + JSON, no pickles: `videoprior_edit.checkpoint`;
`--resume latest` continues from the newest),
`cache/` (encoded triplets and teacher trajectories), `validation/step-N/<name>.png` (source | student | target).

The code: `config.py` (TrainConfig), `distill.py` (blocks, feature hooks, the Distiller's losses, LoRA, the seeded
data order and noise), `cache.py` (model sets, encoded triplets), `trainer.py` (the loop), `outputs.py` (student
files, checkpoints), `command.py` (the command line). This module gathers their public names.
"""


from __future__ import annotations

import argparse
import sys

from ..checkpoint import (
    step_checkpoints as checkpoints,  # this module's public name for them
)
from ..errors import VPEError
from .cache import (
    build_cache,
    cache_folder,
    check_sets,
    encode_texts,
    load_batch,
    load_models,
    teacher_set,
)
from .command import (
    REAL_FILES,
    ZOO_SETTINGS,
    add_arguments,
    add_parser,
    config_from_args,
    run,
)
from .config import (
    ADAPTER,
    DEFAULT_LORA_TARGETS,
    FEATURE_NORMS,
    FULL_FILE,
    LORA_FILE,
    POSITION_MODES,
    TEACHER_PLACEMENTS,
    TrainConfig,
    TrainResult,
)
from .distill import (
    Distiller,
    FeatureTap,
    draw,
    normalize_features,
    sample_index,
    select_blocks,
    student_positions,
    teacher_block,
)
from .outputs import save_full, save_lora
from .trainer import train

__all__ = [
    "ADAPTER", "DEFAULT_LORA_TARGETS", "FEATURE_NORMS", "FULL_FILE", "LORA_FILE", "POSITION_MODES", "REAL_FILES",
    "TEACHER_PLACEMENTS", "ZOO_SETTINGS", "Distiller", "FeatureTap", "TrainConfig", "TrainResult", "add_arguments",
    "add_parser", "build_cache", "cache_folder", "check_sets", "checkpoints", "config_from_args", "draw",
    "encode_texts", "load_batch", "load_models", "main", "normalize_features", "run", "sample_index", "save_full",
    "save_lora", "select_blocks", "student_positions", "teacher_block", "teacher_set", "train",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m videoprior_edit.video4edit.train",
                                description=__doc__.split("\n\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except VPEError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
