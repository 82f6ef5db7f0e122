"""GPU check: real-size time and memory of the Wan2.2-I2V-A14B editor in one short run, with random weights.

On a GPU machine (no network, no weight files; stops starting measurements at --budget, 8 minutes by default):
    bash bench/gpu_check.sh             # installs bench/wheels/*.whl, runs --size real, writes to --out / $OUT
On CPU at the test zoo's size (the test suite runs this):
    python bench/gpu_check.py --size tiny --out /tmp/gpu_check
Here, before carrying bench/wheels/ to a bare GPU machine (needs PyPI; bench/wheels/ is kept out of git):
    python bench/gpu_check.py --fetch-wheels

Carried set (what a bare GPU image with torch, transformers, accelerate and peft lacks), about 12 MB:
diffusers==0.42.1; for the optional native ComfyUI row also comfy-kitchen==0.2.31 (its pure-Python wheel),
comfy-aimdo==0.4.13 and the Python files of ComfyUI's `comfy/` package (from $COMFYUI_PATH or ../shared/comfyui).

What runs: two Wan2.2-I2V-A14B experts (config "14B": 40 blocks, hidden 5120; `--size tiny`: the zoo's "tiny"
config) built empty and filled with random bf16 weights on the compute device (no files, no fp32 copy), through the
pack's own code: the sampling loop (`sampling.denoise`, Lightning schedule, CFG 1, the TLD hook), `Placement` and
fp8 weight storage (`models.core.apply_weight_storage`). Not run: the text encoder (random (1, 512, 4096) text
embeddings instead) and the VAE (a random I2V condition instead), so every time is sampling only. The Lightning
LoRAs are merged into the weights in real runs and cost nothing per step, so none is applied here.

Measurements (each written to <out>/gpu_check.json when done; the time budget skips the rest with a note):
  step_*          one denoising step at 480x832 x 33 frames (9 latents, 14,040 tokens): high / low expert,
                  and the low expert on the 3 latents TLD K=3 keeps
  edit_*          the 8-step edit with TLD K=1, K=3, K=3 + last latent: total and low-noise stage
  placement_*     the K=3 edit per placement (all_on_device, one_expert, block_offload): peak memory and time
  fp8_*           fp8 weight storage: expert size, one step, the K=3 edit per placement
  attention_*     diffusers' attention backends that are installed: one step each, difference to `native`
  compile         torch.compile of the repeated blocks (diffusers `compile_repeated_blocks`): compile time, step
  native_comfyui  one forward of ComfyUI's own WanModel (the native nodes' path), when ComfyUI is importable
The library has no step cache; diffusers' caches decide from real outputs, which random weights do not have, so
caching is not measured. Peak memory: CUDA `max_memory_allocated` on a GPU, the process's peak RSS on CPU (GB=1e9).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

STARTED = time.perf_counter()  # the budget counts from here: imports and CUDA start-up included

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from videoprior_edit.models.configs import config_data
from videoprior_edit.models.core import apply_weight_storage, build_empty, keep_fp32_names
from videoprior_edit.models.sets import WanModels
from videoprior_edit.placement import EXPERTS, Placement
from videoprior_edit.sampling import (
    Embeds,
    Guidance,
    SamplerState,
    SamplingHook,
    TemporalLatentDropout,
    denoise,
    kept_indices,
    make_scheduler,
    set_schedule,
)

VARIANT = "wan2.2-i2v-a14b"
STEPS, SHIFT, TLD_THRESHOLD, TEXT_TOKENS = 8, 5.0, 0.9, 512
GROUPS = ("steps", "edits", "placement", "fp8", "attention", "compile", "native")
WHEELS_DIR = ROOT / "bench" / "wheels"
PURE_WHEELS = ("diffusers==0.42.1", "comfy-kitchen==0.2.31")
BINARY_WHEELS = ("comfy-aimdo==0.4.13",)
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_27_x86_64", "manylinux_2_28_x86_64")
GPU_BACKENDS = ("native", "_native_cudnn", "_native_flash", "_native_efficient", "flash", "_flash_3", "sage",
                "xformers")


@dataclass(frozen=True)
class Size:
    """A check size: the expert config (configs/wan_transformer.json), the clip, the default device and options."""

    config: str
    height: int
    width: int
    frames: int
    device: str
    backends: tuple[str, ...]
    compile_backend: str
    step_guess_s: float  # a step's time before one is measured (for the time budget)

    @property
    def latent_shape(self) -> tuple[int, int, int, int, int]:
        return 1, 16, (self.frames - 1) // 4 + 1, self.height // 8, self.width // 8

    @property
    def tokens(self) -> int:
        _, _, f, h, w = self.latent_shape
        return f * (h // 2) * (w // 2)


SIZES = {
    "tiny": Size("tiny", 64, 64, 33, "cpu", ("native", "_native_math"), "eager", 0.1),
    "real": Size("14B", 480, 832, 33, "cuda", GPU_BACKENDS, "inductor", 2.0),
}


# ---------------------------------------------------------------------------------------------- models and inputs
def expert_config(size: str) -> dict:
    """The diffusers config of a Wan2.2-I2V-A14B expert of `size` (the pack's config data)."""
    data = config_data("wan_transformer")
    family = data["families"][data["variants"][VARIANT]["family"]]
    config = {**data["base"], **data["sizes"][size], "in_channels": family["in_channels"], "image_dim": None}
    config.pop("test_only", None)
    return config


def build_expert(size: str, device: torch.device, seed: int, dtype=torch.bfloat16):
    """An expert with random weights made directly on `device` (built on the meta device: no other copy). Modules
    diffusers keeps in fp32 stay fp32, as the pack's loader does."""
    from diffusers import WanTransformer3DModel

    model = build_empty(lambda: WanTransformer3DModel(**expert_config(size)))
    keep = keep_fp32_names(model, dtype)
    randomize(model, device, seed, lambda name, p: torch.float32 if any(k in name.split(".") for k in keep) else dtype)
    return model.to(device).eval()


def randomize(model, device: torch.device, seed: int, dtype_for) -> None:
    """Give every (meta) parameter random values made on `device` in `dtype_for(name, parameter)`: norm scales 1,
    matrices N(0, 1/fan_in), other vectors N(0, 0.02^2), so activations stay finite over 40 blocks."""
    gen = torch.Generator(device).manual_seed(seed)
    for prefix, module in model.named_modules():
        for key, p in list(module._parameters.items()):
            if p is None:
                continue
            name = f"{prefix}.{key}".strip(".")
            t = torch.empty(p.shape, dtype=dtype_for(name, p), device=device)
            if p.dim() == 1 and "norm" in name:
                t.fill_(1.0)
            else:
                t.normal_(0.0, math.prod(p.shape[1:]) ** -0.5 if p.dim() > 1 else 0.02, generator=gen)
            module._parameters[key] = torch.nn.Parameter(t, requires_grad=False)


def expert_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def wan_set(high, low, placement) -> WanModels:
    """A model set holding only the experts (no text encoder, no VAE)."""
    boundary = config_data("wan_transformer")["variants"][VARIANT]["boundary_ratio"] if low is not None else None
    return WanModels(variant=VARIANT, transformer=high, transformer_2=low, text_encoder=None, tokenizer=None,
                     vae=None, boundary_ratio=boundary, placement=placement)


@dataclass
class Inputs:
    """Noise, a random I2V condition (mask + image latents) and random text embeddings, made once per run."""

    latents: torch.Tensor
    condition: torch.Tensor
    text: torch.Tensor

    @classmethod
    def make(cls, size: Size, device: torch.device, seed: int = 0) -> Inputs:
        g = torch.Generator("cpu").manual_seed(seed)
        b, c, f, h, w = size.latent_shape
        text_dim = expert_config(size.config)["text_dim"]
        tensors = (torch.randn(b, c, f, h, w, generator=g), torch.randn(b, 20, f, h, w, generator=g),
                   torch.randn(1, TEXT_TOKENS, text_dim, generator=g))
        return cls(*(t.to(device) for t in tensors))

    def state(self) -> tuple[SamplerState, Embeds, torch.Tensor]:
        """A fresh sampler state (Lightning scheduler), the embeddings and the 8 timesteps."""
        scheduler = make_scheduler("lightning", SHIFT)
        timesteps = set_schedule(scheduler, "lightning", STEPS, device=self.latents.device)
        state = SamplerState(latents=self.latents.clone(), condition=self.condition.clone(), scheduler=scheduler)
        return state, Embeds(self.text), timesteps


# ---------------------------------------------------------------------------------------------- timing and memory
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeat: int, warmup: int = 0):
    """(seconds, result) of the lower-median call of `repeat` timed calls, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(max(1, repeat)):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        runs.append((time.perf_counter() - start, out))
    runs.sort(key=lambda run: run[0])
    return runs[(len(runs) - 1) // 2]


class Memory:
    """Peak memory of the compute device: CUDA's allocator peak, or on CPU the process's peak resident set."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device

    def reset(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux)
            except OSError:
                pass

    def peak_gb(self) -> float:
        return (torch.cuda.max_memory_allocated(self.device) if self.cuda else _proc_status("VmHWM")) / 1e9

    def now_gb(self) -> float:
        return (torch.cuda.memory_allocated(self.device) if self.cuda else _proc_status("VmRSS")) / 1e9


def _proc_status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


class LowStageClock(SamplingHook):
    """The time the low-noise stage starts (its first step)."""

    def __init__(self, device: torch.device):
        self.device, self.started = device, None

    def start(self, state) -> None:
        self.started = None

    def before_step(self, state) -> None:
        if state.expert == "transformer_2" and self.started is None:
            sync(self.device)
            self.started = time.perf_counter()


# ---------------------------------------------------------------------------------------------- one step, one edit
def one_step(models, inputs: Inputs, expert: str, keep: list[int] | None = None) -> torch.Tensor:
    """One denoising step of `expert` at its first timestep (1000 high, 892.9 low) on the whole clip, or on the
    latent frames `keep` at their original positions (as after TLD). Returns the latents."""
    state, embeds, timesteps = inputs.state()
    index = 0 if expert == "transformer" else next(
        i for i, t in enumerate(timesteps) if t < models.boundary_ratio * 1000)
    if keep is not None:
        state.select_frames(keep, positions="original")
    with torch.no_grad():
        denoise(models, state, embeds, timesteps[index:index + 1], Guidance(1.0), expert=expert)
    return state.latents


def edit(models, inputs: Inputs, k: int, keep_last: bool = False) -> dict:
    """The 8-step Lightning edit at CFG 1 with TLD K (from t = 900): total and low-noise-stage seconds, kept frames."""
    device = inputs.latents.device
    state, embeds, timesteps = inputs.state()
    tld = TemporalLatentDropout(k, TLD_THRESHOLD, keep_last) if k > 1 else None
    clock = LowStageClock(device)
    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        denoise(models, state, embeds, timesteps, Guidance(1.0, 1.0), ([tld] if tld else []) + [clock])
    sync(device)
    end = time.perf_counter()
    return {"seconds": end - start, "low_stage_seconds": end - clock.started,
            "kept": tld.kept if tld else list(range(inputs.latents.shape[2])),
            "finite": bool(torch.isfinite(state.latents).all())}


def settle(models, device: torch.device, on_device: bool) -> None:
    """Both experts on the compute device (`on_device`) or in RAM, with no offloading hooks attached."""
    place = Placement("all_on_device" if on_device else "one_expert", device=device, offload_device="cpu")
    for name in EXPERTS:
        if on_device:
            place.activate(models, name)
        else:
            place.release(models, name)


# ---------------------------------------------------------------------------------------------- the run
class Check:
    """The measurements of one run, the time budget, and the JSON / table written after each measurement."""

    def __init__(self, args):
        self.size = SIZES[args.size]
        self.device = torch.device(args.device or self.size.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--size real needs a CUDA GPU; use --size tiny on CPU (or --device cpu).")
        self.repeat, self.budget, self.start = args.repeat, args.budget, STARTED
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.memory = Memory(self.device)
        self.inputs = Inputs.make(self.size, self.device)
        self.results: dict[str, dict] = {}
        self.notes: list[str] = []
        self.meta = describe_run(args, self.size, self.device)
        self.step_s = self.size.step_guess_s
        self.expert_gb = 0.0

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.start)

    def cost(self, forwards: float, moved_gb: float = 0.0) -> float:
        """Rough seconds for `forwards` steps and `moved_gb` of host-device transfers (for the budget guard)."""
        return forwards * self.step_s + moved_gb / 5.0 + (2.0 if self.device.type == "cuda" else 0.0)

    def measure(self, name: str, fn, need: float = 0.0, vs: str | None = None) -> dict:
        """Run one measurement unless the budget is short; keep its result (or error), its speed-up over the
        measurement `vs` (ratio > 1: faster), and save."""
        if self.left() < need:
            result = {"skipped": f"time budget: needs ~{need:.0f} s, {max(0.0, self.left()):.0f} s left"}
        else:
            try:
                result = fn()
            except Exception as e:  # one failure must not lose the other measurements
                traceback.print_exc()
                result = {"error": f"{type(e).__name__}: {e}"[:400]}
        base = self.results.get(vs or "", {})
        if result.get("seconds") and base.get("seconds"):
            result["ratio"], result["vs"] = base["seconds"] / result["seconds"], vs
        self.results[name] = result
        print(table_row(name, result), flush=True)
        self.save(complete=False)
        return result

    def save(self, complete: bool) -> None:
        self.meta["elapsed_s"] = round(time.perf_counter() - self.start, 1)
        data = {"meta": self.meta, "measurements": self.results, "notes": self.notes, "complete": complete}
        tmp = self.out / "gpu_check.json.tmp"
        tmp.write_text(json.dumps(data, indent=1, default=_plain))
        tmp.replace(self.out / "gpu_check.json")


def _plain(value):
    return float(value) if isinstance(value, torch.Tensor) else str(value)


def describe_run(args, size: Size, device: torch.device) -> dict:
    import diffusers

    config = expert_config(size.config)
    cuda = device.type == "cuda"
    gpu = torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu"
    gpu_gb = torch.cuda.get_device_properties(device).total_memory / 1e9 if cuda else None
    return {"size": args.size, "config": size.config, "device": str(device), "gpu": gpu, "gpu_memory_gb": gpu_gb,
            "blocks": config["num_layers"], "hidden": config["num_attention_heads"] * config["attention_head_dim"],
            "clip": f"{size.width}x{size.height} x {size.frames} frames", "latent_shape": size.latent_shape,
            "tokens": size.tokens, "steps": STEPS, "scheduler": f"lightning, shift {SHIFT}", "cfg": 1.0,
            "dtype": "bf16 (diffusers' fp32 modules in fp32)", "torch": torch.__version__,
            "cuda": torch.version.cuda, "diffusers": diffusers.__version__, "python": platform.python_version(),
            "repeat": args.repeat, "budget_s": args.budget, "date": time.strftime("%Y-%m-%d %H:%M"),
            "memory": "cuda max_memory_allocated" if cuda else "process peak RSS (VmHWM)",
            "what": "sampling only: random text embeddings (1, 512, 4096) and I2V condition; no text encoder, no "
                    "VAE; random weights in the real architecture"}


# ---------------------------------------------------------------------------------------------- the pack's path
def build_pair(check: Check):
    """Both experts with random bf16 weights on the compute device, in a set with the all_on_device placement."""
    built = {}

    def build():
        start = time.perf_counter()
        built["set"] = wan_set(build_expert(check.size.config, check.device, 1),
                               build_expert(check.size.config, check.device, 2),
                               Placement("all_on_device", device=check.device))
        sync(check.device)
        check.expert_gb = expert_bytes(built["set"].transformer) / 1e9
        params = sum(p.numel() for p in built["set"].transformer.parameters())
        count = f"{params / 1e9:.2f} B" if params >= 1e9 else f"{params / 1e6:.1f} M"
        return {"seconds": time.perf_counter() - start, "expert_gb": check.expert_gb, "parameters": params,
                "note": f"two experts of {count} parameters ({check.expert_gb:.3g} GB each), made on {check.device}"}

    check.measure("build", build, check.cost(0))
    return built.get("set")


def measure_steps(check: Check, models) -> None:
    frames = check.size.latent_shape[2]
    kept = kept_indices(frames, 3)

    def row(expert: str, keep=None) -> dict:
        seconds, latents = timed(lambda: one_step(models, check.inputs, expert, keep), check.device, check.repeat, 1)
        label = "high-noise" if expert == "transformer" else "low-noise"
        where = f"latents {keep} (TLD K=3)" if keep else f"{frames} latents"
        return {"seconds": seconds, "latent_frames": len(keep or range(frames)),
                "finite": bool(torch.isfinite(latents).all()), "note": f"one step, {label} expert, {where}"}

    need = check.cost(1 + check.repeat)
    check.step_s = check.measure("step_high", lambda: row("transformer"), need).get("seconds", check.step_s)
    check.measure("step_low", lambda: row("transformer_2"), need, vs="step_high")
    check.measure("step_low_tld3", lambda: row("transformer_2", kept), need, vs="step_low")


def measure_edits(check: Check, models) -> None:
    for name, k, keep_last in (("edit_k1", 1, False), ("edit_k3", 3, False), ("edit_k3_last", 3, True)):
        def row(k=k, keep_last=keep_last) -> dict:
            check.memory.reset()
            seconds, result = timed(lambda: edit(models, check.inputs, k, keep_last), check.device, check.repeat)
            base = check.results.get("edit_k1", {}).get("low_stage_seconds")
            if base and k > 1:
                result["low_stage_ratio"] = base / result["low_stage_seconds"]
            label = "TLD off" if k == 1 else f"TLD K={k}" + (" + last latent" if keep_last else "")
            return {**result, "seconds": seconds, "peak_gb": check.memory.peak_gb(),
                    "note": f"8 steps, {label}; low stage {result['low_stage_seconds']:.2f} s"
                            + (f" ({result['low_stage_ratio']:.2f}x)" if "low_stage_ratio" in result else "")}

        check.measure(name, row, check.cost(STEPS * check.repeat), vs=None if k == 1 else "edit_k1")


def placed_edit(check: Check, models, mode: str) -> dict:
    """The K=3 edit under placement `mode`, starting where that placement keeps the experts between runs (both on
    the device for all_on_device, else in RAM); the time includes every move between RAM and the device."""
    settle(models, check.device, on_device=mode == "all_on_device")
    models.placement = Placement(mode, device=check.device, offload_device="cpu")
    check.memory.reset()
    resident = check.memory.now_gb()
    result = edit(models, check.inputs, 3)
    return {**result, "peak_gb": check.memory.peak_gb(), "resident_before_gb": resident,
            "note": f"K=3 edit, {mode}" + ("" if mode == "all_on_device" else ", from RAM, moves timed")}


def measure_placements(check: Check, models, prefix: str = "placement") -> None:
    gb = check.expert_gb
    base = f"{prefix}_all_on_device"
    check.measure(base, lambda: placed_edit(check, models, "all_on_device"), check.cost(STEPS, 2 * gb))
    for mode, moved in (("one_expert", 5 * gb), ("block_offload", (STEPS + 2) * gb)):
        check.measure(f"{prefix}_{mode}", lambda mode=mode: placed_edit(check, models, mode), check.cost(STEPS, moved),
                      vs=base)


def to_fp8(check: Check, models) -> dict:
    """fp8 weight storage for both experts' blocks (converted on the device), as the loader applies it."""
    start, bf16_gb = time.perf_counter(), check.expert_gb
    models.placement = place = Placement("all_on_device", device=check.device)
    for name in EXPERTS:
        apply_weight_storage(place.activate(models, name).blocks, "fp8_e4m3fn")
        check.memory.reset()  # frees the bf16 weights
    sync(check.device)
    check.expert_gb = expert_bytes(models.transformer) / 1e9
    return {"seconds": time.perf_counter() - start, "expert_gb": check.expert_gb,
            "note": f"fp8_e4m3fn blocks: {check.expert_gb:.3g} GB per expert ({bf16_gb / check.expert_gb:.2f}x "
                    "smaller than bf16)"}


def measure_fp8(check: Check, models) -> None:
    converted = check.measure("fp8_storage", lambda: to_fp8(check, models), check.cost(0, 3 * check.expert_gb))
    if "expert_gb" not in converted:
        check.notes.append("fp8 rows not run: the conversion did not happen")
        return
    frames = check.size.latent_shape[2]
    check.measure("fp8_step_high", lambda: {
        "seconds": timed(lambda: one_step(models, check.inputs, "transformer"), check.device, check.repeat, 1)[0],
        "note": f"one step, high-noise expert, {frames} latents, fp8 storage"}, check.cost(1 + check.repeat),
        vs="step_high")
    measure_placements(check, models, "fp8")


# ---------------------------------------------------------------------------------------------- options and ComfyUI
def build_probe(check: Check):
    """A fresh bf16 high-noise expert alone in a set, for the option rows (None, with a note, if it cannot be made)."""
    try:
        return wan_set(build_expert(check.size.config, check.device, 1), None,
                       Placement("all_on_device", device=check.device))
    except Exception as e:
        check.notes.append(f"attention and compile rows not run: the expert could not be built ({type(e).__name__}: "
                           f"{e})"[:300])
        return None


def measure_attention(check: Check, probe) -> None:
    """One step of a fresh bf16 expert per diffusers attention backend (those installed here)."""
    reference = {}
    for backend in check.size.backends:
        def row(backend=backend) -> dict:
            model = probe.transformer
            try:
                model.set_attention_backend(backend)
            except Exception as e:  # backend package not installed, or not for this device
                return {"skipped": f"not available: {type(e).__name__}: {str(e).splitlines()[0][:160]}"}
            try:
                seconds, latents = timed(lambda: one_step(probe, check.inputs, "transformer"), check.device,
                                         check.repeat, 1)
            finally:
                model.reset_attention_backend()
            reference.setdefault("latents", latents)
            diff = float((latents - reference["latents"]).abs().max())
            return {"seconds": seconds, "max_abs_diff_vs_native": diff,
                    "note": f"one step, high-noise expert; max |diff| to native {diff:.3g}"}

        check.measure(f"attention_{backend}", row, check.cost(1 + check.repeat),
                      vs=None if backend == "native" else "attention_native")


def measure_compile(check: Check, probe) -> None:
    """torch.compile of the transformer blocks (diffusers' regional compile): compile time, then step time."""
    backend = check.size.compile_backend

    def row() -> dict:
        model = probe.transformer
        model.compile_repeated_blocks(fullgraph=True, backend=backend)
        sync(check.device)
        start = time.perf_counter()
        one_step(probe, check.inputs, "transformer")
        sync(check.device)
        first = time.perf_counter() - start
        seconds, _ = timed(lambda: one_step(probe, check.inputs, "transformer"), check.device, check.repeat)
        took = first - seconds
        return {"seconds": seconds, "compile_seconds": took, "backend": backend,
                "note": f"torch.compile(backend={backend}, fullgraph) per block; compiling took {took:.1f} s"}

    need = check.cost(2 + check.repeat) + (150.0 if backend == "inductor" else 0.0)
    check.measure("compile", row, need, vs="attention_native" if "attention_native" in check.results else "step_high")


def comfy_tree(carried: bool = True) -> Path | None:
    """A ComfyUI tree with `comfy/`: $COMFYUI_PATH, the carried bench/wheels/comfyui (unless `carried` is False), or
    ../shared/comfyui/src."""
    candidates = (os.environ.get("COMFYUI_PATH"), WHEELS_DIR / "comfyui" if carried else None,
                  ROOT.parent / "shared" / "comfyui" / "src")
    for path in candidates:
        if path and (Path(path) / "comfy" / "ldm" / "wan" / "model.py").is_file():
            return Path(path)
    return None


def build_native(check: Check):
    """ComfyUI's own WanModel for a Wan2.2-I2V-A14B expert (in_dim 36, no CLIP), random bf16 weights on the device."""
    tree = comfy_tree()
    if tree is None:
        raise ImportError("no ComfyUI tree ($COMFYUI_PATH, bench/wheels/comfyui or ../shared/comfyui/src)")
    if str(tree) not in sys.path:
        sys.path.append(str(tree))  # appended: ComfyUI's top-level names never shadow installed packages
    import comfy.cli_args

    comfy.cli_args.args.cpu = check.device.type == "cpu"  # read when comfy.model_management is imported
    import comfy.ops
    from comfy.ldm.wan.model import WanModel

    c = expert_config(check.size.config)
    model = WanModel(model_type="t2v", in_dim=c["in_channels"], dim=c["num_attention_heads"] * c["attention_head_dim"],
                     ffn_dim=c["ffn_dim"], freq_dim=c["freq_dim"], text_dim=c["text_dim"], out_dim=c["out_channels"],
                     num_heads=c["num_attention_heads"], num_layers=c["num_layers"], device="meta",
                     dtype=torch.bfloat16, operations=comfy.ops.disable_weight_init)
    randomize(model, check.device, 3, lambda name, p: p.dtype)
    if any(b.is_meta for b in model.buffers()):
        raise RuntimeError("ComfyUI's WanModel has buffers this check cannot fill")
    return model.eval()


def measure_native(check: Check) -> None:
    """One forward of ComfyUI's WanModel at the same size (what each KSampler step of the native nodes runs)."""
    def row() -> dict:
        try:
            model = build_native(check)
        except ImportError as e:
            return {"skipped": f"ComfyUI not importable here: {e}"}
        x = torch.cat([check.inputs.latents, check.inputs.condition], dim=1).to(torch.bfloat16)
        t = torch.full((1,), 1000.0, device=check.device)
        context = check.inputs.text.to(torch.bfloat16)
        with torch.no_grad():
            seconds, out = timed(lambda: model(x, t, context), check.device, check.repeat, 1)
        import comfy_kitchen  # RoPE kernels: its CUDA backend only in the full wheel (58 MB, not carried)

        kitchen = [k for k, v in comfy_kitchen.list_backends().items() if v["available"] and not v["disabled"]]
        return {"seconds": seconds, "finite": bool(torch.isfinite(out).all()), "kitchen_backends": kitchen,
                "note": f"ComfyUI WanModel forward, {check.size.latent_shape[2]} latents (one KSampler step, CFG 1); "
                        f"comfy-kitchen backends {'/'.join(kitchen)}"}

    check.measure("native_comfyui", row, check.cost(2 + check.repeat) + 10.0, vs="step_high")


# ---------------------------------------------------------------------------------------------- table
def table_row(name: str, r: dict) -> str:
    def num(key, fmt):
        return format(r[key], fmt) if isinstance(r.get(key), (int, float)) else format("-", ">" + fmt.split(".")[0])

    ratio = f"{r['ratio']:.2f}x {r['vs']}" if "ratio" in r else ""
    note = r.get("note", "")
    if "skipped" in r or "error" in r:
        note = ("skipped: " + r["skipped"]) if "skipped" in r else "ERROR: " + r["error"]
    return f"{name:24s} {num('seconds', '9.3f')} {ratio:28s} {num('peak_gb', '8.2f')}  {note}"


def table(check: Check) -> str:
    m = check.meta
    head = (f"GPU check --size {m['size']}: Wan2.2-I2V-A14B experts (config {m['config']}, {m['blocks']} blocks, "
            f"hidden {m['hidden']}), {m['clip']} ({m['tokens']} tokens), random bf16 weights, {m['gpu']}, "
            f"torch {m['torch']}, diffusers {m['diffusers']}; {m['what']}")
    cols = f"{'measurement':24s} {'seconds':>9s} {'ratio (speed-up vs)':28s} {'peak GB':>8s}  note"
    rows = [table_row(name, r) for name, r in check.results.items()]
    return "\n".join([head, cols, *rows, *(f"note: {n}" for n in check.notes)])


# ---------------------------------------------------------------------------------------------- carried wheels
def fetch_wheels(dest: Path = WHEELS_DIR) -> None:
    """Download the carried set for the GPU machine's Python 3.12 and copy ComfyUI's `comfy/` Python files."""
    dest.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "-d", str(dest)]
    subprocess.run([*pip, "--platform", "any", *PURE_WHEELS], check=True)
    subprocess.run([*pip, "--implementation", "cp", *(a for p in PLATFORMS for a in ("--platform", p)),
                    *BINARY_WHEELS], check=True)
    tree = comfy_tree(carried=False)
    if tree is None:
        print("no ComfyUI tree to copy: the native_comfyui row will be skipped on the GPU machine")
    else:
        shutil.rmtree(dest / "comfyui", ignore_errors=True)
        shutil.copytree(tree / "comfy", dest / "comfyui" / "comfy", ignore=_not_python)
    exclude = ROOT / ".git" / "info" / "exclude"
    if exclude.parent.is_dir() and "/bench/wheels/*" not in (exclude.read_text() if exclude.exists() else ""):
        with exclude.open("a") as f:
            f.write("/bench/wheels/*\n!/bench/wheels/README.md\n")
    total = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    print(f"{dest}: {total / 2**20:.1f} MiB (the device tool carries at most 64 MiB with the tree); on the GPU "
          "machine run `bash bench/gpu_check.sh` with bench/wheels carried")


def _not_python(folder: str, names: list[str]) -> list[str]:
    """copytree filter: keep folders and .py files; drop caches, tokenizer data and the rest."""
    return [n for n in names if n == "__pycache__" or not (n.endswith(".py") or (Path(folder) / n).is_dir())]


# ---------------------------------------------------------------------------------------------- main
def run(check: Check, groups: set[str]) -> None:
    models = build_pair(check) if groups & {"steps", "edits", "placement", "fp8"} else None
    if models is not None:
        for group, fn in (("steps", measure_steps), ("edits", measure_edits), ("placement", measure_placements),
                          ("fp8", measure_fp8)):
            if group in groups:
                fn(check, models)
        del models
        check.memory.reset()
    if groups & {"attention", "compile"}:
        probe = build_probe(check)
        if probe is not None and "attention" in groups:
            measure_attention(check, probe)
        if probe is not None and "compile" in groups:
            measure_compile(check, probe)
        del probe
        check.memory.reset()
    if "native" in groups:  # last: importing ComfyUI changes global torch settings
        measure_native(check)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default="real", help="real: H200 run; tiny: CPU test size")
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out", help="folder for gpu_check.json/.txt "
                   "(default: $OUT when set)")
    p.add_argument("--device", help="compute device (default: cuda for real, cpu for tiny)")
    p.add_argument("--repeat", type=int, default=2, help="timed repeats per measurement (lower median)")
    p.add_argument("--budget", type=float, default=480.0, help="seconds; measurements that would overrun are skipped")
    p.add_argument("--only", default=",".join(GROUPS), help=f"comma-separated groups of {','.join(GROUPS)}")
    p.add_argument("--fetch-wheels", action="store_true", help="download the carried set into bench/wheels/ and exit")
    args = p.parse_args(argv)
    if args.fetch_wheels:
        return fetch_wheels()
    groups = set(args.only.split(","))
    if groups - set(GROUPS):
        p.error(f"unknown groups {sorted(groups - set(GROUPS))}; use {','.join(GROUPS)}")
    check = Check(args)
    check.notes.append("caching not measured: the library has no step cache, and diffusers' caches decide from real "
                       "outputs that random weights do not have")
    finished = False
    try:
        run(check, groups)
        finished = True
    finally:
        check.save(complete=finished)
        text = table(check)
        (check.out / "gpu_check.txt").write_text(text + "\n")
        print("\n" + text + f"\n\nwritten: {check.out / 'gpu_check.json'}, {check.out / 'gpu_check.txt'}")


if __name__ == "__main__":
    main()
