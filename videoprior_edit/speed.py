"""Speed options for the editors: attention backend, regional torch.compile and step caches, all off by default.

`apply_speed(models, Speed(...))` sets them on every transformer of a model set (Wan: `transformer` and, for
Wan2.2-A14B, `transformer_2`; FLUX: `transformer`, attention and compile only) and returns notes saying what it did;
`remove_speed(models)` undoes them. Applying the same options again changes nothing; other options change only what
differs. bench/bench_speed.py measures each option against off in one run (time ratio and the largest difference of
the result): none is assumed to help.

- attention: one of `ATTENTION` through diffusers' attention dispatcher (`set_attention_backend`). Each name is
  checked before it is set (the package diffusers needs, then one tiny attention call on the compute device and dtype),
  so a missing or unusable backend is refused with what to install. "default" leaves the models as loaded (torch's
  scaled_dot_product_attention unless DIFFUSERS_ATTN_BACKEND says otherwise). The backend is set on these models'
  attention processors only: diffusers' process-wide default is put back, other models are unaffected.
- compile: `compile_repeated_blocks` (torch.compile of each transformer block, not the whole model). Compiling happens
  during the first run (and again for each new clip size); CPU needs a C++ compiler, CUDA needs triton. A compile
  failure turns compile off for the set and says so.
- cache: diffusers' cache hooks, run by the sampling loop (`sampling.loop.denoise`), which gives each forward its
  branch ("cond"/"uncond") so CFG keeps two caches, and resets them at the start and end of every run. Each expert
  has its own hooks and counts its own steps. When Temporal Latent Dropout changes the number of latent frames in the
  middle of an expert's steps, what was cached for the old size is dropped (the next forward computes in full).

  - "first_block": First-Block cache: the first block always runs; when its output changed by less than
    `cache_threshold` (relative mean absolute difference, default 0.05) since the last full forward, the other
    blocks are skipped and their last residual is reused.
  - "magcache": MagCache: skips whole forwards while the accumulated error predicted from per-step magnitude ratios
    stays under `cache_threshold` (default 0.06), at most 2 steps in a row, never in the first `cache_warmup` steps
    of an expert. The ratios depend on the model and the timesteps, and none are published for these schedules, so
    they are calibrated: the first run of a set with a given expert's timesteps computes every step (its result is the
    same as with the cache off) and records them (the "cond" branch's, used for both branches); later runs with the
    same timesteps use them (kept on the model object for the session; `magcache_ratios` reads them).
  - "taylorseer": TaylorSeer: after `cache_warmup` full steps per expert, only every `cache_interval`-th step runs the
    self-attention, cross-attention and FFN of each block; the others predict those outputs from a first-order Taylor
    expansion over steps. Memory: it keeps two copies of every block's attention and FFN output per CFG branch (for a
    14B expert at 480p x 81 frames that is far more than a GPU holds): use "taylorseer_lite" there.
  - "taylorseer_lite": the same schedule, but a predicted step skips all blocks and extrapolates the transformer's
    output (keeps two output-sized tensors per branch).
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass, field

import torch

from .errors import InputError

# Name -> (diffusers AttentionBackendName value, what to install / have when it is missing). Any other value of
# diffusers' AttentionBackendName is accepted as well.
ATTENTION = {
    "default": (None, ""),
    "native": ("native", ""),
    "native_flash": ("_native_flash", "a PyTorch build whose scaled_dot_product_attention has the flash kernel"),
    "native_efficient": ("_native_efficient", "a CUDA GPU (PyTorch's memory-efficient attention kernel)"),
    "native_cudnn": ("_native_cudnn", "a CUDA GPU with cuDNN"),
    "native_math": ("_native_math", ""),
    "flex": ("flex", "torch >= 2.5"),
    "flash": ("flash", "pip install flash-attn (needs a CUDA GPU and fp16/bf16 models)"),
    "flash_varlen": ("flash_varlen", "pip install flash-attn (needs a CUDA GPU and fp16/bf16 models)"),
    "flash3": ("_flash_3", "FlashAttention-3 built from source (Hopper GPUs: H100/H200)"),
    "flash_hub": ("flash_hub", "pip install kernels (it fetches the kernel from the Hugging Face Hub)"),
    "flash3_hub": ("_flash_3_hub", "pip install kernels (it fetches the kernel from the Hugging Face Hub)"),
    "sage": ("sage", "pip install sageattention (needs a CUDA GPU)"),
    "sage_hub": ("sage_hub", "pip install kernels (it fetches the kernel from the Hugging Face Hub)"),
    "xformers": ("xformers", "pip install xformers (the build matching your torch)"),
}
CACHES = ("off", "first_block", "magcache", "taylorseer", "taylorseer_lite")
DEFAULT_THRESHOLDS = {"first_block": 0.05, "magcache": 0.06}
MAGCACHE_MAX_SKIP = 2  # MagCache's K: at most this many steps skipped in a row
# TaylorSeer's default patterns ("^blocks.*attn") match no Wan module (Wan's are attn1 / attn2): name them.
_WAN_TAYLOR_MODULES = [r"blocks\.\d+\.(attn1|attn2|ffn)"]
_EXPERTS = ("transformer", "transformer_2")
_LABELS = {"transformer": "high-noise expert", "transformer_2": "low-noise expert"}


@dataclass(frozen=True)
class Speed:
    """Speed options (see the module docstring); `Speed()` is everything off.

    attention: a name in `ATTENTION` (or a diffusers backend name); compile: regional torch.compile; cache: one of
    `CACHES`; cache_threshold: first_block / magcache threshold (None: 0.05 / 0.06, higher skips more);
    cache_warmup: first steps of each expert always computed (magcache, taylorseer); cache_interval: taylorseer runs
    a full step every `cache_interval` steps after the warm-up."""

    attention: str = "default"
    compile: bool = False
    cache: str = "off"
    cache_threshold: float | None = None
    cache_warmup: int = 2
    cache_interval: int = 2

    def check(self) -> None:
        """Raise InputError for names and values that cannot work (before anything is changed)."""
        backend_name(self.attention)
        if self.cache not in CACHES:
            raise InputError(f"Unknown cache '{self.cache}'.", f"Use one of {', '.join(CACHES)}.")
        if self.cache_threshold is not None and not self.cache_threshold >= 0:
            raise InputError(f"cache_threshold must be >= 0 (got {self.cache_threshold}).",
                             "Use e.g. 0.05 (first_block) or 0.06 (magcache); higher skips more steps.")
        if int(self.cache_warmup) < 0 or int(self.cache_interval) < 1:
            raise InputError(f"cache_warmup must be >= 0 and cache_interval >= 1 (got {self.cache_warmup}, "
                             f"{self.cache_interval}).", "Use e.g. cache_warmup=2, cache_interval=2.")

    @property
    def threshold(self) -> float | None:
        return self.cache_threshold if self.cache_threshold is not None else DEFAULT_THRESHOLDS.get(self.cache)

    def cache_settings(self) -> tuple:
        """What a cache's hooks depend on (a change re-installs them)."""
        if self.cache == "off":
            return ()
        if self.cache == "first_block":
            return (self.cache, self.threshold)
        return (self.cache, self.threshold, int(self.cache_warmup), int(self.cache_interval))


OFF = Speed()


@dataclass
class _ModelSpeed:
    """What `apply_speed` set on one transformer (kept on it as `_vpe_speed`)."""

    attention: str = "default"
    compiled: bool = False
    cache: tuple = ()  # Speed.cache_settings() of the installed hooks
    dtype: torch.dtype = torch.float32
    mag_ratios: dict = field(default_factory=dict)  # timesteps of one expert -> calibrated MagCache ratios

    @property
    def active(self) -> bool:
        return self.compiled or bool(self.cache)


def backend_name(name: str) -> str | None:
    """The diffusers attention backend for `name` (None: leave the models as they are); InputError if unknown."""
    if name in ATTENTION:
        return ATTENTION[name][0]
    from diffusers.models.attention_dispatch import AttentionBackendName

    if name in {b.value for b in AttentionBackendName}:
        return name
    raise InputError(f"Unknown attention backend '{name}'.", f"Use one of {', '.join(ATTENTION)}.")


def _install_hint(name: str) -> str:
    hint = ATTENTION.get(name, (None, ""))[1]
    return f"Install what it needs ({hint}), or use attention='default'." if hint else "Use attention='default'."


def check_attention(name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> None:
    """Raise InputError unless backend `name` is installed and runs one tiny attention call on `device` in `dtype`."""
    backend = backend_name(name)
    if backend is None:
        return
    from diffusers.models import attention_dispatch as ad

    member = ad.AttentionBackendName(backend)
    try:
        ad._check_attention_backend_requirements(member)  # the package check diffusers itself does
    except RuntimeError as e:
        raise InputError(f"Attention backend '{name}' is not available: {e}", _install_hint(name)) from None
    try:
        ad._maybe_download_kernel_for_backend(member)  # hub backends: fetch the kernel now, not mid-run
    except Exception as e:  # noqa: BLE001 - any failure means the backend cannot be used
        raise InputError(f"Attention backend '{name}' could not get its kernel: {e}", _install_hint(name)) from None
    q = torch.randn(1, 16, 2, 64, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)
    try:
        with warnings.catch_warnings():  # e.g. flex's "use torch.compile(flex_attention)": the run says it if so
            warnings.simplefilter("ignore")
            out = ad.dispatch_attention_fn(q, q, q, backend=member)
        ok = bool(torch.isfinite(out.float()).all())
    except Exception as e:  # noqa: BLE001
        raise InputError(f"Attention backend '{name}' is installed but does not run on {torch.device(device)} with "
                         f"{str(dtype).removeprefix('torch.')} models: {str(e).splitlines()[0] if str(e) else e}",
                         "Most fused backends need a CUDA GPU and fp16/bf16 weights; use attention='native' or "
                         "'default' here.") from None
    if not ok:
        raise InputError(f"Attention backend '{name}' returned non-finite values on {torch.device(device)}.",
                         "Use attention='native' or 'default'.")


def available_attention(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> list[str]:
    """The names in `ATTENTION` (but "default") that pass `check_attention` here (hub backends are not tried)."""
    found = []
    for name in ATTENTION:
        if name == "default" or name.endswith("_hub"):
            continue
        try:
            check_attention(name, device, dtype)
        except InputError:
            continue
        found.append(name)
    return found


def compile_problem(device: str | torch.device) -> str | None:
    """Why torch.compile (inductor) cannot work on `device` here, or None."""
    device = torch.device(device)
    if device.type == "cpu":
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler

            compiler = get_cpp_compiler()
        except Exception as e:  # noqa: BLE001
            return f"no C++ compiler for torch.compile on the CPU ({e}); install g++ (e.g. apt-get install g++) or " \
                   "set CXX"
        if shutil.which(compiler) is None:
            return f"torch.compile on the CPU needs a C++ compiler and '{compiler}' is not installed; install g++ " \
                   "(e.g. apt-get install g++) or point CXX at one"
    elif device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "torch.compile on a CUDA GPU needs triton: pip install triton (Linux) or triton-windows (Windows)"
    return None


def _transformers(models) -> list[tuple[str, torch.nn.Module]]:
    return [(n, getattr(models, n)) for n in _EXPERTS if getattr(models, n, None) is not None]


def _is_wan(models) -> bool:
    return hasattr(models, "transformer_2") and hasattr(models, "boundary_ratio")


def _compute(models) -> tuple[torch.device, torch.dtype]:
    module = models.transformer
    embed = getattr(module, "patch_embedding", None)
    embed = getattr(module, "x_embedder", None) if embed is None else embed
    dtype = embed.weight.dtype if embed is not None else torch.float32
    if getattr(models, "placement", None) is not None:
        return models.placement.compute_device, dtype
    p = next((p for p in module.parameters() if not p.is_meta), None)
    return (p.device if p is not None else torch.device("cpu")), dtype


def apply_speed(models, speed: Speed) -> list[str]:
    """Set `speed` on every transformer of `models` (a Wan or FLUX set), replacing options applied before; returns
    notes saying what is on. Everything is checked before anything changes; `Speed()` turns everything off."""
    speed.check()
    wan = _is_wan(models)
    if speed.cache != "off" and not wan:
        raise InputError(f"The '{speed.cache}' cache works with the Wan editors only (their sampling loop gives the "
                         "cache hooks the CFG branch and resets them per run).",
                         "Use cache='off' for FLUX; attention and compile work there.")
    device, dtype = _compute(models)
    targets = _transformers(models)
    current = [getattr(m, "_vpe_speed", None) for _, m in targets]
    if speed.attention != "default" and any(s is None or s.attention != speed.attention for s in current):
        check_attention(speed.attention, device, dtype)
    if speed.compile and any(s is None or not s.compiled for s in current):
        problem = compile_problem(device)
        if problem:
            raise InputError(f"compile is not possible here: {problem}.", "Install it, or run with compile off.")
    for _, module in targets:
        _apply_one(module, speed, dtype)
    return speed_notes(models, speed)


def remove_speed(models) -> None:
    """Turn every speed option off on `models` (the models compute as loaded again; MagCache ratios are dropped)."""
    for _, module in _transformers(models):
        if getattr(module, "_vpe_speed", None) is not None:
            _apply_one(module, OFF, module._vpe_speed.dtype)
            del module._vpe_speed
        for sub in module.modules():
            sub.__dict__.pop("_vpe_compiled", None)


def magcache_ratios(models) -> dict[str, dict[tuple, list[float]]]:
    """The MagCache ratios calibrated so far: expert -> {timesteps: ratios}."""
    return {name: dict(m._vpe_speed.mag_ratios) for name, m in _transformers(models)
            if getattr(m, "_vpe_speed", None) is not None and m._vpe_speed.mag_ratios}


def speed_notes(models, speed: Speed) -> list[str]:
    what = "both experts" if getattr(models, "transformer_2", None) is not None else "the transformer"
    notes = []
    if speed.attention != "default":
        notes.append(f"attention: {speed.attention} (diffusers backend '{backend_name(speed.attention)}') on {what}")
    if speed.compile:
        notes.append(f"compile: the repeated blocks of {what} are compiled during the first run (and again for each "
                     "new clip size); results differ from eager by float rounding")
    if speed.cache == "first_block":
        notes.append(f"cache: first_block, threshold {speed.threshold:g} on {what}; changes results when it skips")
    elif speed.cache == "magcache":
        notes.append(f"cache: magcache, threshold {speed.threshold:g}, warm-up {speed.cache_warmup} steps on {what}; "
                     "the first run with a given schedule calibrates (skips nothing), later ones skip")
    elif speed.cache.startswith("taylorseer"):
        notes.append(f"cache: {speed.cache}, warm-up {speed.cache_warmup} steps, a full step every "
                     f"{speed.cache_interval} on {what}; changes results on the predicted steps")
    return notes


def _apply_one(module, speed: Speed, dtype: torch.dtype) -> None:
    state = module.__dict__.get("_vpe_speed") or _ModelSpeed(dtype=dtype)
    if state.attention != speed.attention:
        _set_attention(module, backend_name(speed.attention))
        state.attention = speed.attention
    if state.compiled != speed.compile:
        _set_compile(module, speed.compile)
        state.compiled = speed.compile
    if state.cache != speed.cache_settings():
        if state.cache and module.is_cache_enabled:
            module.disable_cache()
        if speed.cache != "off":
            if module.is_cache_enabled:  # someone else's cache: diffusers allows one at a time
                module.disable_cache()
            module.enable_cache(_cache_config(speed, dtype))
        state.cache = speed.cache_settings()
    module._vpe_speed = state


def _set_attention(module, backend: str | None) -> None:
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry
    from diffusers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # "attention backends are experimental", once per call
    try:
        if backend is None:  # back to the processors' class default, as loaded (compiled blocks guard on it)
            module.reset_attention_backend()
            for sub in module.modules():
                processor = getattr(sub, "processor", None)
                if processor is not None and "_attention_backend" in vars(processor) \
                        and hasattr(type(processor), "_attention_backend"):
                    del processor._attention_backend
        else:
            active = _AttentionBackendRegistry._active_backend
            module.set_attention_backend(backend)
            _AttentionBackendRegistry.set_active_backend(active)  # only these models change
    finally:
        logging.set_verbosity(verbosity)


def _set_compile(module, on: bool) -> None:
    """Regional compile on / off. Off keeps the compiled blocks aside, so turning it on again reuses their code."""
    names = set(getattr(module, "_repeated_blocks", ()) or ())
    blocks = [sub for sub in module.modules() if type(sub).__name__ in names]
    if on:
        if blocks and all(sub.__dict__.get("_vpe_compiled") is not None for sub in blocks):
            for sub in blocks:
                sub._compiled_call_impl = sub._vpe_compiled
        else:
            module.compile_repeated_blocks(fullgraph=False)  # graph breaks (cache hooks) fall back to eager
            for sub in blocks:
                sub._vpe_compiled = sub._compiled_call_impl
        return
    for sub in blocks:
        sub._compiled_call_impl = None  # what nn.Module.compile set


def _cache_config(speed: Speed, dtype: torch.dtype):
    from diffusers.hooks import (
        FirstBlockCacheConfig,
        MagCacheConfig,
        TaylorSeerCacheConfig,
    )

    if speed.cache == "first_block":
        return FirstBlockCacheConfig(threshold=speed.threshold)
    if speed.cache == "magcache":  # calibrating until a run sets the expert's schedule (`_Run`)
        return MagCacheConfig(threshold=speed.threshold, max_skip_steps=MAGCACHE_MAX_SKIP, retention_ratio=0.0,
                              num_inference_steps=10**9, calibrate=True)
    lite = speed.cache == "taylorseer_lite"
    return TaylorSeerCacheConfig(cache_interval=int(speed.cache_interval),
                                 disable_cache_before_step=int(speed.cache_warmup), max_order=1,
                                 taylor_factors_dtype=dtype, use_lite_mode=lite,
                                 cache_identifiers=None if lite else list(_WAN_TAYLOR_MODULES))


# ---- one sampling run (called by sampling.loop.denoise) ----

def speed_run(models, state, timesteps, experts: list[str]):
    """A context manager around one run of the sampling loop: resets and configures the caches, counts skipped
    forwards into `state.notes`, turns a compile failure into an InputError. A no-op when no option needs it."""
    import contextlib

    runs = [(n, m) for n, m in _transformers(models) if getattr(m, "_vpe_speed", None) is not None
            and m._vpe_speed.active]
    return _Run(models, state, timesteps, experts, runs) if runs else contextlib.nullcontext()


class _Run:
    def __init__(self, models, state, timesteps, experts, runs):
        self.models, self.state, self.runs = models, state, runs
        self.steps = {n: [round(float(t), 3) for t, e in zip(timesteps, experts) if e == n] for n, _ in runs}
        self.handles, self.counts, self.calibrating = [], {}, {}

    def __enter__(self):
        for name, module in self.runs:
            speed = module._vpe_speed
            if not speed.cache:
                continue
            module._reset_stateful_cache()
            managers = _state_managers(module)
            if speed.cache[0] == "magcache":
                self._configure_magcache(name, module)
            self.counts[name] = [0, 0]  # skipped, forwards
            seen = {}

            def before(mod, args, kwargs, managers=managers, seen=seen):
                shape = tuple(kwargs["hidden_states"].shape) if "hidden_states" in kwargs else None
                if seen.get("shape") not in (None, shape):
                    for manager in managers:
                        _forget(manager)
                seen["shape"] = shape

            def after(mod, args, kwargs, output, managers=managers, count=self.counts[name]):
                count[0] += int(_skipped(managers))
                count[1] += 1

            self.handles += [module.register_forward_pre_hook(before, with_kwargs=True),
                             module.register_forward_hook(after, with_kwargs=True)]
        return self

    def _configure_magcache(self, name, module) -> None:
        config, speed, steps = module._cache_config, module._vpe_speed, tuple(self.steps[name])
        ratios = speed.mag_ratios.get(steps)
        config.calibrate = ratios is None
        config.num_inference_steps = len(steps) if ratios is not None else 10**9  # calibrating: no reset, no print
        config.mag_ratios = None if ratios is None else torch.tensor(ratios)
        config.retention_ratio = speed.cache[2] / max(1, len(steps))
        self.calibrating[name] = ratios is None and bool(steps)

    def __exit__(self, kind, error, trace):
        for handle in self.handles:
            handle.remove()
        for name, module in self.runs:
            if not module._vpe_speed.cache:
                continue
            if error is None and self.calibrating.get(name):
                recorded = _calibration(module, len(self.steps[name]))
                if recorded is not None:
                    module._vpe_speed.mag_ratios[tuple(self.steps[name])] = recorded
            module._reset_stateful_cache()  # frees what was cached
        if error is None:
            self._notes()
        elif any(m._vpe_speed.compiled for _, m in self.runs) and _compile_error(error):
            for _, module in _transformers(self.models):
                if getattr(module, "_vpe_speed", None) is not None and module._vpe_speed.compiled:
                    _set_compile(module, False)
                    module._vpe_speed.compiled = False
            first_line = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
            raise InputError(f"torch.compile failed (or the compiled blocks raised): {first_line}",
                             "compile is now off for this model set; run again (or reload the models).") from error
        return False

    def _label(self, name: str) -> str:
        return _LABELS[name] if getattr(self.models, "transformer_2", None) is not None else "model"

    def _notes(self) -> None:
        parts, skipped, total = [], 0, 0
        for name, (s, n) in self.counts.items():
            if n:
                parts.append(f"{self._label(name)} {s}/{n}")
                skipped, total = skipped + s, total + n
        cache = next((m._vpe_speed.cache[0] for _, m in self.runs if m._vpe_speed.cache), None)
        if cache:
            self.state.notes.append(f"{cache}: {skipped} of {total} transformer forwards skipped or predicted "
                                    f"({', '.join(parts)})")
        for name, on in self.calibrating.items():
            if on:
                self.state.notes.append(f"magcache: calibrated the {self._label(name)} for its {len(self.steps[name])} "
                                        "steps on this run (nothing skipped); later runs with these steps skip")


def _state_managers(module) -> list:
    """The StateManagers of the cache hooks on `module` (one per cache; TaylorSeer: one per hooked module)."""
    from diffusers.hooks.hooks import StateManager

    found = {}
    for sub in module.modules():
        registry = sub.__dict__.get("_diffusers_hook")
        if registry is None:
            continue
        for hook in registry.hooks.values():
            for value in vars(hook).values():
                if isinstance(value, StateManager):
                    found.setdefault(id(value), value)
    return list(found.values())


def _skipped(managers) -> bool:
    """Whether the forward that just ran skipped (first_block, magcache) or predicted (taylorseer) its blocks."""
    for manager in managers[:1]:
        if manager._context is None or manager._context.name not in manager._state_cache:
            return False
        state = manager._state_cache[manager._context.name]
        if hasattr(state, "should_compute"):
            return not state.should_compute
        if hasattr(state, "last_update_step"):
            return state.last_update_step != state.current_step
    return False


def _forget(manager) -> None:
    """Drop what a cache holds for the old latent size, keeping its step count (TLD dropped frames mid-expert)."""
    for state in manager._state_cache.values():
        kind = type(state).__name__
        if kind == "FBCSharedBlockState":
            state.head_block_residual = None  # the next forward computes every block
            state.should_compute = True
        elif kind == "MagCacheState":
            state.previous_residual = None
            state.accumulated_ratio, state.accumulated_err, state.accumulated_steps = 1.0, 0.0, 0
        else:  # TaylorSeer (and anything else): start over with the warm-up
            state.reset()


def _calibration(module, steps: int) -> list[float] | None:
    """The MagCache ratios the calibrating run recorded (the "cond" branch), or None if it saw too few steps."""
    for manager in _state_managers(module):
        state = manager._state_cache.get("cond")
        ratios = getattr(state, "calibration_ratios", None)
        if ratios is not None and len(ratios) == steps:
            return [float(r) for r in ratios]
    return None


def _compile_error(error: BaseException) -> bool:
    while error is not None:
        if type(error).__module__.startswith(("torch._dynamo", "torch._inductor")):
            return True
        error = error.__cause__
    return False


__all__ = ["ATTENTION", "CACHES", "Speed", "apply_speed", "available_attention", "check_attention", "compile_problem",
           "magcache_ratios", "remove_speed", "speed_notes"]
