"""The Video4Edit training loop: accelerate set-up, caching, the step loop (accumulation, clipping, schedule), logs,
checkpoints and validation renders."""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..checkpoint import check_checkpointable
from ..errors import InputError, VPEError
from .cache import (
    _EmbeddingTable,
    _safe,
    build_cache,
    check_sets,
    encode_texts,
    load_batch,
    load_models,
)
from .config import FULL_FILE, LORA_FILE, TrainConfig, TrainResult, _print
from .data import Triplet, load_image, read_triplets
from .distill import Distiller, draw, sample_index, student_positions
from .editor import edit_tail_frame
from .outputs import _resume, _save


# ----------------------------------------------------------------------------------------------- training
def _accelerator(config: TrainConfig):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()  # a second run in one process may use another precision
    GradientState._reset_state()
    mixed = config.mixed_precision
    if mixed == "auto":
        mixed = {"fp32": "no"}.get(config.precision, config.precision)
    if mixed not in ("no", "bf16", "fp16"):
        raise InputError(f"Unknown mixed precision '{config.mixed_precision}'.", "Use auto, no, bf16 or fp16.")
    if mixed == "no" and config.precision != "fp32":
        raise InputError(f"Weights in {config.precision} need mixed precision (trainable tensors are float32).",
                         "Use --mixed-precision auto (or bf16), or --precision fp32.")
    return Accelerator(mixed_precision=mixed, project_dir=config.output)


def _teacher_mode(config: TrainConfig, student, teacher, device: torch.device) -> str:
    if config.teacher_placement != "auto":
        return config.teacher_placement
    if device.type != "cuda":
        return "all_on_device"
    need = sum(p.numel() * p.element_size() for m in (student.transformer, teacher.transformer)
               for p in m.parameters())
    return "all_on_device" if need + 12 * 2**30 < torch.cuda.get_device_properties(device).total_memory \
        else "block_offload"


def _accumulation(config: TrainConfig, processes: int) -> int:
    per_step = config.micro_batch_size * processes
    if config.batch_size % per_step:
        raise InputError(f"Batch size {config.batch_size} is not a multiple of micro batch x processes ({per_step}).",
                         "Pick a batch size that the processes and micro batches divide.")
    return config.batch_size // per_step


def train(config: TrainConfig, student=None, teacher=None) -> TrainResult:
    """Distil the teacher into the student on `config.data` and write the student file into `config.output`.

    `student` / `teacher`: model sets already loaded (a Wan2.1-I2V set with CLIP, a Wan2.1-FLF2V set); default:
    loaded from the config's files (and the text encoder dropped after encoding). A LoRA run leaves the student set
    as it was (the adapter is removed at the end); a full run trains the set's transformer in place (cast back to
    its load dtypes at the end). Placements of the sets are restored."""
    config.check()
    Path(config.output).mkdir(parents=True, exist_ok=True)
    accelerator = _accelerator(config)
    check_checkpointable(accelerator)  # says what a sharded run's checkpoints keep
    accum = _accumulation(config, accelerator.num_processes)
    own = student is None
    if own:
        student, teacher = load_models(config)
    elif teacher is None:
        raise InputError("A student set was given without a teacher set.", "Pass both, or neither (files).")
    check_sets(student, teacher)
    triplets = read_triplets(config.data)
    placements = (student.placement, teacher.placement)
    prompt_encoder = student.__dict__.get("_prompt_encoder")
    dtypes = {n: p.dtype for n, p in student.transformer.named_parameters()}
    distiller = None
    try:
        distiller, files, val, teacher_where = _prepare(accelerator, student, teacher, triplets, config, own)
        return _fit(accelerator, distiller, student, triplets, files, val, config, accum, teacher_where)
    finally:
        if distiller is not None:
            distiller.close()
            student.transformer.disable_gradient_checkpointing()
        if config.full:
            for n, p in student.transformer.named_parameters():
                p.requires_grad_(False)
                p.data = p.data.to(dtypes[n])
        student.placement, teacher.placement = placements
        if prompt_encoder is None:
            student.__dict__.pop("_prompt_encoder", None)
        else:
            student.__dict__["_prompt_encoder"] = prompt_encoder


def _prepare(accelerator, student, teacher, triplets: list[Triplet], config: TrainConfig, own: bool):
    """Encode the triplets (cache) and the validation prompts, place the models for training and build the
    `Distiller`: (distiller, cache files, validation triplets, where the teacher is)."""
    from ..placement import Placement

    device = accelerator.device
    student.placement = teacher.placement = Placement("one_expert", device=device)
    files = build_cache(student, teacher, triplets, config, accelerator)
    val = triplets[:config.val_count] if config.validate_every and config.val_steps else []
    table = encode_texts(student, [t.instruction for t in val] + [""]) if val else {}
    student.__dict__["_prompt_encoder"] = _EmbeddingTable(student.tokenizer, table)
    if own:
        student.text_encoder = teacher.text_encoder = None  # every prompt is encoded: its RAM back
    student.placement = Placement("all_on_device", device=device)
    teacher.placement = Placement(_teacher_mode(config, student, teacher, device), device=device)
    distiller = Distiller(student.placement.activate(student, "transformer"),
                          teacher.placement.activate(teacher, "transformer"), config,
                          student_positions(student, config))
    if config.gradient_checkpointing:
        student.transformer.enable_gradient_checkpointing()
    return distiller, files, val, teacher.placement.describe()


def _fit(accelerator, distiller: Distiller, student, triplets, files, val, config: TrainConfig, accum: int,
         teacher_where: str) -> TrainResult:
    named = distiller.trainable_parameters()
    params = [p for _, p in named]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    warmup = max(0, config.lr_warmup_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / (warmup + 1)))
    net, optimizer = accelerator.prepare(distiller, optimizer)
    step = _resume(accelerator, distiller, optimizer, schedule, config)
    out = Path(config.output)
    if accelerator.is_main_process:
        (out / "training_config.json").write_text(json.dumps(asdict(config), indent=1))
    what = "full fine-tune" if config.full else f"LoRA rank {config.lora_rank}"
    _print(accelerator, f"video4edit: {len(triplets)} triplets, {what} ({sum(p.numel() for p in params):,} trainable "
           f"values), distilled blocks {distiller.blocks or 'none'}, teacher: {teacher_where}; steps {step + 1}.."
           f"{config.steps}")
    if step == 0 and val:
        _validate(accelerator, student, val, config, 0)
    history, window, started = [], [], time.time()
    while step < config.steps:
        sums = _accumulate(accelerator, net, files, config, accum, step)
        if config.max_grad_norm > 0:
            accelerator.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        record = _record(accelerator, sums, step, schedule.get_last_lr()[0], distiller.blocks)
        history.append(record)
        window.append(record)
        if accelerator.is_main_process:
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        if step % max(1, config.log_every) == 0 or step == config.steps:
            _log(accelerator, window, step, config, (time.time() - started) / len(window))
            window, started = [], time.time()
        last = step == config.steps
        if last or (config.save_every and step % config.save_every == 0):
            _save(accelerator, distiller, optimizer, schedule, student, config, step)
        if val and (last or step % config.validate_every == 0):
            _validate(accelerator, student, val, config, step)
    path = out / (FULL_FILE if config.full else LORA_FILE)
    trainable = {} if config.full else {n: p.detach().float().cpu().clone() for n, p in named}
    return TrainResult(out, path, step, history, trainable)


def _accumulate(accelerator, net, files, config: TrainConfig, accum: int, step: int) -> dict[str, torch.Tensor]:
    """Forward and backward of this process's micro-batches of optimizer step `step` (gradients synchronised on the
    last one); returns the mean losses. Samples, noise and timesteps depend on the sample positions only."""
    sums, shape, device = {}, None, accelerator.device
    for micro in range(accum):
        positions = [step * config.batch_size + (micro * accelerator.num_processes + accelerator.process_index)
                     * config.micro_batch_size + j for j in range(config.micro_batch_size)]
        indices = [0] * len(positions) if config.overfit else \
            [sample_index(p, len(files), config.seed) for p in positions]
        batch = load_batch(files, indices, device)
        shape = shape or batch["x0"].shape[1:]
        noise, sigma = draw(config.seed, [0] * len(positions) if config.overfit else positions, shape,
                            config.timestep_shift)
        sync = contextlib.nullcontext() if micro == accum - 1 else accelerator.no_sync(net)
        with sync, accelerator.autocast():
            losses = net(batch, noise.to(device), sigma.to(device))
            accelerator.backward(losses["total"] / accum)
        for k, v in losses.items():
            sums[k] = sums.get(k, 0) + v.detach().float() / accum
    return sums


def _record(accelerator, sums: dict, step: int, lr: float, blocks: list[int]) -> dict:
    keys = ["total", "distill", "tail_flow", "tail_x0", "inbetween_flow"]
    stacked = torch.stack([sums[k].reshape(()) for k in keys])
    per_block = sums["distill_blocks"].reshape(-1)
    both = accelerator.reduce(torch.cat([stacked, per_block]), "mean")
    record = {"step": step, **{k: float(v) for k, v in zip(keys, both[:len(keys)])}, "lr": lr}
    if blocks:
        record["blocks"] = {str(b): float(v) for b, v in zip(blocks, both[len(keys):])}
    for k, v in record.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise VPEError(f"The {k} loss is not finite at step {step} ({v}).",
                           "Lower --lr, use --mixed-precision bf16 rather than fp16, or check the data.")
    return record


def _log(accelerator, window: list[dict], step: int, config: TrainConfig, seconds: float) -> None:
    """One line for the last `log_every` steps (means): total, each weighted loss (distill per block), lr, speed."""
    mean = lambda k: sum(r[k] for r in window) / len(window)
    parts = [f"step {step}/{config.steps}: loss {mean('total'):.4f}"]
    if window[-1].get("blocks"):
        blocks = " ".join(f"b{b} {sum(r['blocks'][b] for r in window) / len(window):.3f}" for b in window[-1]["blocks"])
        parts.append(f"distill {mean('distill'):.4f} [{blocks}]")
    for key, label, weight in (("tail_flow", "tail", config.tail_flow_weight),
                               ("tail_x0", "tail x0", config.tail_x0_weight),
                               ("inbetween_flow", "in-between", config.inbetween_flow_weight)):
        if weight:
            parts.append(f"{label} {mean(key):.4f}")
    parts += [f"lr {window[-1]['lr']:.2e}", f"{seconds:.2f} s/step"]
    _print(accelerator, ", ".join(parts))


# ----------------------------------------------------------------------------------------------- validation
def _validate(accelerator, student, val: list[Triplet], config: TrainConfig, step: int) -> None:
    """Edit the first triplets' sources with the student as it is now: validation/step-N/<name>.png holds
    source | student's edit | target."""
    if accelerator.is_main_process:
        from PIL import Image

        folder = Path(config.output) / "validation" / f"step-{step:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        for t in val:
            source = load_image(t.source, config.width, config.height)
            with torch.no_grad(), accelerator.autocast():
                edit = edit_tail_frame(student, source, t.instruction, "", config.frames, config.val_steps,
                                       config.val_cfg, config.val_shift, seed=config.seed, max_side=0,
                                       positions=config.positions).edited
            target = load_image(t.edited, config.width, config.height)
            strip = torch.cat([source, edit.cpu(), target], dim=2)[0]
            Image.fromarray((strip.clamp(0, 1) * 255).round().to(torch.uint8).numpy()).save(folder / f"{_safe(t.name)}.png")
        _print(accelerator, f"step {step}: validation renders in {folder}")
    accelerator.wait_for_everyone()

