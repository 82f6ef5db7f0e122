"""The pack's editors as batch editors: for each, the files it loads (`Slot`s), its options (`Option`s, also the
command line flags), how its models load once (`load`) and how one item is edited (`run`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..byg.image import POSITION_MODES as FLUX_POSITIONS
from ..byg.video import POSITION_MODES as WAN_POSITIONS
from ..byg.video import SOURCE_TIMESTEPS
from ..demo import OPTIONAL_FILES, REAL_FILES
from ..errors import InputError
from ..if_edit.refine import MODES as REFINE_MODES
from ..images import SIZE_MODES
from ..placement import FLUX_PLACEMENTS, PLACEMENTS
from ..sampling import SCHEDULERS
from ..sampling.tld import ROPE_MODES, SOLVER_MODES
from ..video4edit.editor import POSITIONS as TAIL_POSITIONS
from .models import CLIP_VISION, TEXT_ENCODER, VAE, Slot
from .options import Option


@dataclass
class LoadSettings:
    """How an editor's models load: `precision` ("auto": bf16, fp32 on the tiny zoo), fp8 `weight_storage`, memory
    `placement` on `device` (None: cuda if available), the strength of user LoRAs, and the IF-Edit rewriter's VLM
    (`vlm`: a Qwen-VL folder or an OpenAI-compatible URL; empty: the template rewriter)."""

    precision: str = "auto"
    weight_storage: str = "default"
    placement: str = "one_expert"
    device: str | None = None
    lora_strength: float = 1.0
    zoo: bool = False
    vlm: str = ""
    vlm_model: str = ""
    api_key_env: str = ""

    @property
    def dtype(self) -> str:
        return ("fp32" if self.zoo else "bf16") if self.precision == "auto" else self.precision

    def make_placement(self):
        from ..placement import Placement

        return Placement(mode=self.placement, device=self.device)


@dataclass
class Edited:
    """One item's result: `output` (IMAGE `(1, H, W, 3)` or frames `(N, H, W, 3)`), the `prompt` the model saw,
    `notes`, and `extra` facts for the summary."""

    output: torch.Tensor
    prompt: str
    notes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


class Clock:
    """Seconds per stage of one item (`lap("edit")`)."""

    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = round(now - self.last, 3)
        self.last = now

    def total(self) -> float:
        return round(time.perf_counter() - self.start, 3)


@dataclass(frozen=True)
class Editor:
    """A batch editor: `name` (`batch NAME`), its single-item `command`, `media` ("image" or "video") read and
    written, the manifest `group` to download, file `slots`, `options`, and `load(files, LoadSettings)` /
    `run(loaded, item, source, options, clock) -> Edited`."""

    name: str
    command: str
    help: str
    media: str
    group: str
    slots: tuple[Slot, ...]
    options: tuple[Option, ...]
    load: Callable
    run: Callable
    placements: tuple[str, ...] = PLACEMENTS
    user_loras: bool = True

    @property
    def suffix(self) -> str:
        return ".png" if self.media == "image" else ".mp4"


# ----------------------------------------------------------------------------------------------- shared options
SEED = Option("seed", int, 0, "random seed")
NEGATIVE = Option("negative_prompt", str, "", "negative prompt (used where the guidance is above 1)")


def _size(max_side: int) -> tuple[Option, ...]:
    return (Option("size_mode", str, "resize", "how the source is brought to multiples of 16", SIZE_MODES),
            Option("max_side", int, max_side, f"longer side scaled down to this first (0: keep; default {max_side})"))


def _sampling(steps, cfg, shift, scheduler="unipc", experts: bool = False) -> tuple[Option, ...]:
    """steps, cfg, shift, scheduler; None = the model's own default (`byg.video.T2V_DEFAULTS`)."""
    cfg_help = "guidance, high-noise expert / single model" if experts else "classifier-free guidance"
    return (Option("steps", int, steps, f"denoising steps ({_default(steps)})"),
            Option("cfg", float, cfg, f"{cfg_help} ({_default(cfg)})"),
            Option("shift", float, shift, f"timestep shift ({_default(shift)})"),
            Option("scheduler", str, scheduler, f"sampler (default {scheduler})", SCHEDULERS))


def _default(value) -> str:
    if value is not None:
        return f"default {value}"
    return "default: the model's; Wan2.2-T2V-A14B: 40 steps, CFG 4, shift 12; Wan2.1-T2V: 50, 5, 5"


_VIDEO = (Option("max_frames", int, 0, "read at most this many source frames (0: all)"),
          Option("fps", float, 0.0, "output frame rate (0: the source's; 16 for frame folders)"))


def _lora(name: str, help: str, ids: tuple[str, ...] = (), zoo=None) -> Slot:
    return Slot(name, "loras", help, ids, zoo, required=False, lora=True)


# ----------------------------------------------------------------------------------------------- IF-Edit
def _load_if_edit(files: dict[str, Path], settings: LoadSettings):
    from ..demo import load_edit_models
    from ..rewrite import make_backend

    models = load_edit_models(files, settings.dtype, settings.weight_storage, settings.make_placement())
    vlm = settings.vlm
    if not vlm:
        backend = make_backend("template")
    elif vlm.startswith(("http://", "https://")):
        backend = make_backend("openai", base_url=vlm, model=settings.vlm_model, api_key_env=settings.api_key_env)
    else:  # a local Qwen-VL: loaded once, kept in RAM between items
        backend = make_backend("local", model_path=vlm, keep_loaded=True, device=settings.device)
    return models, backend


def _if_edit_prompts(models, backend, item, source, o) -> tuple[str, str, dict]:
    """The edit prompt (the instruction rewritten, or the item's prompt) and the refiner's still prompt."""
    from ..if_edit import STILL_PROMPT
    from ..rewrite import rewrite_prompt

    if item.text_kind == "prompt":
        return item.text, o["still_prompt"] or STILL_PROMPT, {}
    edit = rewrite_prompt(source, item.text, backend, "edit", o["seed"], tokenizer=models.tokenizer)
    still = o["still_prompt"]
    if not still and o["refine"] and backend.name != "template":
        still_result = rewrite_prompt(source, item.text, backend, "still", o["seed"], tokenizer=models.tokenizer)
        still, edit.warnings = still_result.prompt, edit.warnings + still_result.warnings
    return edit.prompt, still or STILL_PROMPT, {"rewriter": edit.backend, "rewriter_warnings": edit.warnings}


def _run_if_edit(loaded, item, source: torch.Tensor, o: dict, clock: Clock) -> Edited:
    """IF-Edit's chain: rewrite, I2V edit with TLD, sharpest of the last latent's frames, still refinement."""
    from ..if_edit import edit_image, refine_still, sharpest

    models, backend = loaded
    prompt, still, extra = _if_edit_prompts(models, backend, item, source, o)
    clock.lap("rewrite")
    lightning = bool(models.loras)
    steps = o["steps"] or (8 if lightning else 40)
    scheduler = o["scheduler"] or ("lightning" if lightning else "unipc")
    cfg = o["cfg"] if o["cfg"] is not None else (1.0 if lightning else 3.5)
    cfg_low = o["cfg_low"] if o["cfg_low"] is not None else cfg
    size = {"size_mode": o["size_mode"], "max_side": o["max_side"]}
    result = edit_image(models, source, prompt, o["negative_prompt"], frames=o["frames"], steps=steps,
                        scheduler=scheduler, shift=o["shift"], cfg_high=cfg, cfg_low=cfg_low, seed=o["seed"],
                        tld_k=o["k"], tld_threshold=o["threshold"], keep_last=o["keep_last"], rope=o["rope"],
                        solver=o["solver"], **size)
    clock.lap("edit")
    tail = result.frames[-4:]  # the last latent's frames: the sharpness candidates
    best, _ = sharpest(tail)
    final, notes = tail[best:best + 1], list(result.notes)
    extra.update(sharpest_frame=len(result.frames) - len(tail) + best, steps=steps, scheduler=scheduler, cfg=cfg)
    if o["refine"]:
        refined = refine_still(models, final, still, o["negative_prompt"], mode=o["refine_mode"],
                               frames=o["refine_frames"], steps=steps, scheduler=scheduler, shift=o["shift"],
                               cfg=cfg, seed=o["seed"], **size)
        final, notes = refined.frame, notes + refined.notes
        extra["still_prompt"] = still
        clock.lap("refine")
    return Edited(final, prompt, notes, extra)


IF_EDIT = Editor(
    "if-edit", "edit", "IF-Edit: rewrite the instruction, edit with Wan2.2-I2V + TLD, pick the sharpest frame, "
    "refine it as a still clip", "image", "if-edit",
    slots=(Slot("model", "diffusion_models", "I2V model, high-noise expert (wan2.2_i2v_high_noise_14B_*)",
                REAL_FILES["model"], lambda z: z.file("wan22_i2v_high")),
           Slot("model_low", "diffusion_models", "low-noise expert (wan2.2_i2v_low_noise_14B_*)",
                REAL_FILES["model_low"], lambda z: z.file("wan22_i2v_low"), required=False, with_folder_model=True),
           TEXT_ENCODER, VAE,
           Slot("clip_vision", "clip_vision", "CLIP image encoder, only for Wan2.1-I2V models (clip_vision_h)",
                required=False),
           _lora("lora_high", "Lightning LoRA, high-noise expert", OPTIONAL_FILES["lora_high"],
                 lambda z: z.file("lightning_high")),
           _lora("lora_low", "Lightning LoRA, low-noise expert", OPTIONAL_FILES["lora_low"],
                 lambda z: z.file("lightning_low"))),
    options=(SEED, NEGATIVE,
             Option("steps", int, None, "denoising steps (default: 8 with the Lightning LoRAs, else 40)"),
             Option("cfg", float, None, "guidance, high-noise expert / single model (default: 1 with the "
                    "Lightning LoRAs, else 3.5)"),
             Option("cfg_low", float, None, "guidance, low-noise expert (default: as --cfg)"),
             Option("shift", float, 5.0, "timestep shift (default 5)"),
             Option("scheduler", str, None, "sampler (default: lightning with the Lightning LoRAs, else unipc)",
                    SCHEDULERS),
             Option("frames", int, 33, "clip length, 4k+1 (default 33)"),
             Option("k", int, 3, "TLD stride (1 = off; default 3)"),
             Option("threshold", float, 0.9, "TLD threshold, fraction of 1000 timesteps (default 0.9)"),
             Option("keep_last", bool, False, "TLD: also keep the last latent frame"),
             Option("rope", str, "original", "TLD temporal positions", ROPE_MODES),
             Option("solver", str, "slice", "TLD solver history", SOLVER_MODES),
             *_size(832),
             Option("refine", bool, True, "still-video refinement of the sharpest frame (default: on)"),
             Option("refine_mode", str, "i2v", "refinement: a full I2V still clip, or SDEdit", REFINE_MODES),
             Option("refine_frames", int, 9, "still clip length (default 9)"),
             Option("still_prompt", str, "", "the refiner's prompt (default: the VLM's still description, else "
                    "the built-in one)")),
    load=_load_if_edit, run=_run_if_edit, user_loras=False)


# ----------------------------------------------------------------------------------------------- tail frame
def _load_tail(files: dict[str, Path], settings: LoadSettings):
    from ..lora import add_lora
    from ..models.sets import load_wan_models

    models = load_wan_models(files["model"], None, files["text_encoder"], files["vae"], files["clip_vision"],
                             dtype=settings.dtype, weight_storage=settings.weight_storage,
                             placement=settings.make_placement(), task="i2v")
    if files.get("lora"):
        add_lora(models, files["lora"], settings.lora_strength, "both")
    return models


def _run_tail(models, item, source: torch.Tensor, o: dict, clock: Clock) -> Edited:
    from ..video4edit.editor import edit_tail_frame

    r = edit_tail_frame(models, source, item.text, o["negative_prompt"], frames=o["frames"], steps=o["steps"],
                        cfg=o["cfg"], shift=o["shift"], scheduler=o["scheduler"], seed=o["seed"],
                        size_mode=o["size_mode"], max_side=o["max_side"], positions=o["positions"],
                        reasoning_steps=o["reasoning_steps"])
    clock.lap("edit")
    return Edited(r.edited, item.text, r.notes)


TAIL = Editor(
    "tail", "edit-tail", "Video4Edit / ChronoEdit: the edit is the last frame of a short I2V clip (ChronoEdit's "
    "temporal reasoning with --reasoning-steps)", "image", "chronoedit",
    slots=(Slot("model", "diffusion_models", "I2V model with CLIP: ChronoEdit-14B or Wan2.1-I2V-14B",
                ("chrono_edit_14B_fp16", "wan2.1_i2v_720p_14B_fp16", "wan2.1_i2v_480p_14B_fp16"),
                lambda z: z.file("wan21_i2v")),
           TEXT_ENCODER, VAE, CLIP_VISION,
           _lora("lora", "LoRA for the model, e.g. chronoedit_distill_lora (then --steps 8 --cfg 1 --shift 2)")),
    options=(SEED, NEGATIVE, *_sampling(50, 5.0, 5.0),
             Option("frames", int, 5, "clip length, 4k+1 (default 5; 29 with temporal reasoning)"),
             Option("positions", str, "auto", "temporal RoPE: auto = ChronoEdit's for ChronoEdit models",
                    TAIL_POSITIONS),
             Option("reasoning_steps", int, 0, "ChronoEdit temporal reasoning: steps on the whole clip before "
                    "only its first and last latents go on (0: off; needs --frames above 5)"),
             *_size(832)),
    load=_load_tail, run=_run_tail)


# ----------------------------------------------------------------------------------------------- ByG image
def _load_byg_image(files: dict[str, Path], settings: LoadSettings):
    from ..byg import load_flux_models, with_flux_lora

    models = load_flux_models(files["model"], files["clip_l"], files["t5xxl"], files["vae"], dtype=settings.dtype,
                              weight_storage=settings.weight_storage, placement=settings.make_placement())
    if files.get("lora"):
        models = with_flux_lora(models, files["lora"], settings.lora_strength)
    return models


def _run_byg_image(models, item, source: torch.Tensor, o: dict, clock: Clock) -> Edited:
    from ..byg import edit_image

    r = edit_image(models, source, item.text, steps=o["steps"], guidance=o["guidance"], seed=o["seed"],
                   positions=o["positions"], size_mode=o["size_mode"], max_side=o["max_side"])
    clock.lap("edit")
    return Edited(r.image[:1], item.text, r.notes)


BYG_IMAGE = Editor(
    "byg-image", "edit-byg-image", "ByG image edit on FLUX.1-dev with a ByG LoRA (source tokens concatenated)",
    "image", "byg-image",
    slots=(Slot("model", "diffusion_models", "FLUX.1-dev transformer (flux1-dev.safetensors)", ("flux1-dev",),
                lambda z: z.flux["transformer"]),
           Slot("clip_l", "text_encoders", "CLIP-L text encoder (clip_l.safetensors)", ("clip_l",),
                lambda z: z.flux["clip_l"]),
           Slot("t5xxl", "text_encoders", "T5-XXL text encoder (t5xxl_fp16.safetensors)",
                ("t5xxl_fp16", "t5xxl_fp8_e4m3fn"), lambda z: z.flux["t5xxl"]),
           Slot("vae", "vae", "FLUX VAE (ae.safetensors)", ("flux_ae",), lambda z: z.flux["vae"]),
           _lora("lora", "ByG FLUX LoRA (byg_flux_lora.safetensors)", ("byg_flux_lora",))),
    options=(SEED, Option("steps", int, 20, "denoising steps (default 20, the paper's)"),
             Option("guidance", float, 3.5, "FLUX guidance (default 3.5)"),
             Option("positions", str, "byg", "source token ids: byg = the noisy tokens', kontext = FLUX Kontext's",
                    FLUX_POSITIONS),
             *_size(1024)),
    load=_load_byg_image, run=_run_byg_image, placements=FLUX_PLACEMENTS)


# ----------------------------------------------------------------------------------------------- ByG video
def _load_byg_video(files: dict[str, Path], settings: LoadSettings):
    from ..lora import add_lora
    from ..models.sets import load_wan_models

    models = load_wan_models(files["model"], files.get("model_low"), files["text_encoder"], files["vae"],
                             dtype=settings.dtype, weight_storage=settings.weight_storage,
                             placement=settings.make_placement())
    if models.family != "t2v":
        raise InputError(f"{models.name} is not a text-to-video model; ByG video editing needs one.",
                         "Give Wan2.2-T2V-A14B (--model high-noise, --model-low low-noise) or Wan2.1-T2V.")
    for slot, expert in (("lora_high", "high"), ("lora_low", "low")):
        if files.get(slot):
            add_lora(models, files[slot], settings.lora_strength, expert)
    return models


def _run_byg_video(models, item, source: torch.Tensor, o: dict, clock: Clock) -> Edited:
    from ..byg import edit_video

    r = edit_video(models, source, item.text, o["negative_prompt"], steps=o["steps"], cfg=o["cfg"],
                   cfg_low=o["cfg_low"], shift=o["shift"], scheduler=o["scheduler"], seed=o["seed"],
                   positions=o["positions"], source_timestep=o["source_timestep"], size_mode=o["size_mode"],
                   max_side=o["max_side"])
    clock.lap("edit")
    return Edited(r.frames, item.text, r.notes)


BYG_VIDEO = Editor(
    "byg-video", "edit-byg-video", "ByG video edit on Wan T2V with ByG LoRAs (source tokens concatenated)",
    "video", "byg-video",
    slots=(Slot("model", "diffusion_models", "T2V model: Wan2.2-T2V-A14B high-noise expert or Wan2.1-T2V",
                ("wan2.2_t2v_high_noise_14B_fp16", "wan2.2_t2v_high_noise_14B_fp8_scaled"),
                lambda z: z.file("wan21_t2v")),
           Slot("model_low", "diffusion_models", "Wan2.2-T2V-A14B low-noise expert",
                ("wan2.2_t2v_low_noise_14B_fp16", "wan2.2_t2v_low_noise_14B_fp8_scaled"), required=False,
                with_folder_model=True),
           TEXT_ENCODER, VAE,
           _lora("lora_high", "ByG LoRA, high-noise expert (or the single model)", ("byg_wan22_t2v_lora_high_noise",)),
           _lora("lora_low", "ByG LoRA, low-noise expert", ("byg_wan22_t2v_lora_low_noise",))),
    options=(SEED, NEGATIVE,
             *_sampling(None, None, None, experts=True),
             Option("cfg_low", float, None, "guidance, low-noise expert (default: the model's, 3 for A14B)"),
             Option("positions", str, "same", "source RoPE positions: same (the paper) or offset", WAN_POSITIONS),
             Option("source_timestep", str, "same", "timestep of the source tokens", SOURCE_TIMESTEPS),
             *_size(832), *_VIDEO),
    load=_load_byg_video, run=_run_byg_video)


# ----------------------------------------------------------------------------------------------- ImVideoEdit
ZOO_ADAPTER = "generated/tiny_imvideoedit_adapter.safetensors"  # under the zoo's root, outside its models tree


def _load_imvideoedit(files: dict[str, Path], settings: LoadSettings):
    from ..imvideoedit import load_adapter
    from ..models.sets import load_wan_models
    from ..sampling.loop import compute_dtype

    models = load_wan_models(files["model"], None, files["text_encoder"], files["vae"], dtype=settings.dtype,
                             weight_storage=settings.weight_storage, placement=settings.make_placement())
    if settings.zoo and not Path(files["adapter"]).is_file():
        _write_zoo_adapter(models, Path(files["adapter"]))
    return models, load_adapter(files["adapter"], models.transformer, compute_dtype(models.transformer))


def _write_zoo_adapter(models, path: Path) -> None:
    """An untrained adapter for the tiny zoo's Wan2.1-T2V (random gate, zero update: edits as the base model)."""
    from ..imvideoedit import create_adapter, save_adapter
    from .media import atomic_target

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_target(path, shared=True) as temporary:
        save_adapter(create_adapter(models.transformer), temporary, "fp32")


def _run_imvideoedit(loaded, item, source: torch.Tensor, o: dict, clock: Clock) -> Edited:
    from ..imvideoedit import edit_video

    models, adapter = loaded
    r = edit_video(models, adapter, source, item.text, o["negative_prompt"], steps=o["steps"], cfg=o["cfg"],
                   shift=o["shift"], scheduler=o["scheduler"], seed=o["seed"], strength=o["strength"],
                   size_mode=o["size_mode"], max_side=o["max_side"])
    clock.lap("edit")
    return Edited(r.frames, item.text, r.notes)


IMVIDEOEDIT = Editor(
    "imvideoedit", "edit-imvideoedit", "ImVideoEdit: spatial-difference adapter on Wan2.1-T2V (the prompt "
    "describes the video after the edit)", "video", "imvideoedit",
    slots=(Slot("model", "diffusion_models", "Wan2.1-T2V model (wan2.1_t2v_1.3B_fp16.safetensors)",
                ("wan2.1_t2v_1.3B_fp16", "wan2.1_t2v_14B_fp16"), lambda z: z.file("wan21_t2v")),
           TEXT_ENCODER, VAE,
           Slot("adapter", "loras", "ImVideoEdit adapter (imvideoedit_adapter.safetensors)", ("imvideoedit_adapter",),
                lambda z: z.root / ZOO_ADAPTER)),
    options=(SEED, NEGATIVE, *_sampling(50, 5.0, 3.0),
             Option("strength", float, 1.0, "1 = from noise; lower starts SDEdit-style from the source (default 1)"),
             *_size(832), *_VIDEO),
    load=_load_imvideoedit, run=_run_imvideoedit, user_loras=False)


EDITORS = {e.name: e for e in (IF_EDIT, TAIL, BYG_IMAGE, BYG_VIDEO, IMVIDEOEDIT)}
