"""The one Wan sampling loop of the pack.

`denoise` runs the steps: expert choice at the boundary (Wan2.2-A14B) or one model, classifier-free guidance with a
scale per expert (two separate forwards, as diffusers runs them, so results match it bit for bit), the scheduler
step, and the methods' hooks (frame selection, RoPE positions, extra tokens, replaced blocks). `sample_i2v` wraps it
with prompt encoding (cached), the I2V condition, the seeded noise and decoding; with no hooks it reproduces
diffusers' `WanImageToVideoPipeline` exactly. Models are moved only by the set's placement policy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import InputError
from ..lora import sync_loras
from ..models.sets import I2V_FAMILIES
from ..speed import speed_run
from ..text import PromptEncoder
from .condition import (
    clip_embeds,
    decode,
    i2v_condition,
    latent_frames,
    pixels_from_image,
    to_pil,
)
from .rope import temporal_positions
from .schedules import NUM_TRAIN_TIMESTEPS, make_scheduler, set_schedule
from .state import SamplerState, SamplingHook


class _StayPut:
    """Placement used when a model set has none: nothing moves; compute where the model already is."""

    def __init__(self, models):
        self.compute_device = next(models.transformer.parameters()).device

    def activate(self, models, name):
        return getattr(models, name)

    def release(self, models, name):
        pass

    def finish(self, models):
        pass


def placement_of(models):
    return models.placement if models.placement is not None else _StayPut(models)


def compute_dtype(model) -> torch.dtype:
    """The dtype a Wan transformer computes in (its patch embedding's; block weights may be stored in fp8)."""
    return model.patch_embedding.weight.dtype


@dataclass
class Guidance:
    """Classifier-free guidance scales: `high` for the single model / high-noise expert, `low` for the low-noise
    expert (None: same as high). A scale <= 1 runs one forward (no negative prompt)."""

    high: float = 1.0
    low: float | None = None

    def scale(self, expert: str) -> float:
        return self.high if expert == "transformer" or self.low is None else self.low


@dataclass
class Embeds:
    prompt: torch.Tensor
    negative: torch.Tensor | None = None
    image: torch.Tensor | None = None


def encode_prompts(models, prompt: str, negative: str | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prompt (and negative) embeddings, each encoded once per model set and cached on CPU."""
    encoder = models.__dict__.setdefault("_prompt_encoder", PromptEncoder(None, models.tokenizer))
    wanted = [p for p in dict.fromkeys((prompt, negative)) if p is not None and not encoder.has(p)]
    if wanted:
        place = placement_of(models)
        encoder.text_encoder = place.activate(models, "text_encoder")
        try:
            for p in wanted:  # one at a time: diffusers encodes each prompt on its own
                encoder([p])
        finally:
            encoder.text_encoder = None
            place.release(models, "text_encoder")
    return encoder([prompt]), None if negative is None else encoder([negative])


def denoise(models, state: SamplerState, embeds: Embeds, timesteps: torch.Tensor, guidance: Guidance,
            hooks: Sequence[SamplingHook] = (), progress: Callable[[int], None] | None = None,
            expert: str | None = None) -> SamplerState:
    """Run the denoising steps on `state` (in place) and return it. `expert` ("transformer" / "transformer_2")
    forces one model for every step instead of switching at the boundary."""
    place = placement_of(models)
    boundary = None if models.transformer_2 is None else models.boundary_ratio * NUM_TRAIN_TIMESTEPS
    experts = [expert or ("transformer" if boundary is None or t >= boundary else "transformer_2") for t in timesteps]
    for hook in hooks:
        hook.start(state)
    with speed_run(models, state, timesteps, experts):  # speed options' caches (a no-op when none is applied)
        for i, t in enumerate(timesteps):
            state.step, state.t, state.expert = i, t, experts[i]
            for hook in hooks:
                hook.before_step(state)
            model = place.activate(models, state.expert)
            sync_loras(models, state.expert)
            prediction = _predict(model, state, embeds, guidance.scale(state.expert), hooks)
            state.latents = state.scheduler.step(prediction, t, state.latents, return_dict=False)[0]
            if progress is not None:
                progress(1)
    return state


def _predict(model, state: SamplerState, embeds: Embeds, scale: float, hooks) -> torch.Tensor:
    """The guided prediction for this step: cond and uncond as two forwards, `uncond + g (cond - uncond)`."""
    dtype = compute_dtype(model)
    x = state.latents if state.condition is None else torch.cat([state.latents, state.condition], dim=1)
    x, timestep, positions = x.to(dtype), state.t.expand(state.latents.shape[0]), state.positions
    for hook in hooks:
        x, timestep, positions = hook.model_input(state, x, timestep, positions)
    image = None if embeds.image is None else embeds.image.to(dtype)
    with contextlib.ExitStack() as stack:
        stack.enter_context(temporal_positions(model, positions))
        for hook in hooks:
            stack.enter_context(hook.forward_context(state, model))

        def forward(text, branch):
            with model.cache_context(branch):
                return model(hidden_states=x, timestep=timestep, encoder_hidden_states=text.to(dtype),
                             encoder_hidden_states_image=image, return_dict=False)[0]

        prediction = forward(embeds.prompt, "cond")
        if scale > 1:
            uncond = forward(embeds.negative, "uncond")
            prediction = uncond + scale * (prediction - uncond)
    for hook in hooks:
        prediction = hook.model_output(state, prediction)
    return prediction


@dataclass
class I2VResult:
    """Final normalised latents `(B, 16, F', h, w)`, their temporal positions (None: 0..F'-1, i.e. no frame was
    dropped), the decoded video `(B, 3, 1+4(F'-1), H, W)` in [-1, 1] (None if not decoded) and the loop's notes."""

    latents: torch.Tensor
    positions: list[int] | None
    video: torch.Tensor | None
    notes: list[str] = field(default_factory=list)


def sample_i2v(models, image: torch.Tensor, prompt: str, negative_prompt: str | None = "", num_frames: int = 33,
               steps: int = 40, scheduler: str = "unipc", shift: float = 5.0, guidance: Guidance | None = None,
               seed: int | torch.Generator = 0, last_image: torch.Tensor | None = None,
               hooks: Sequence[SamplingHook] = (), progress: Callable[[int], None] | None = None,
               decode_video: bool = True, start_latents: torch.Tensor | None = None, strength: float = 1.0,
               expert: str | None = None) -> I2VResult:
    """Image-to-video with a Wan I2V model set, in diffusers' order of operations.

    `image` / `last_image` are ComfyUI IMAGEs `(1, H, W, C)` in [0, 1], H and W multiples of 16; `num_frames` is
    4k+1. The negative prompt is encoded only when a guidance scale is > 1. With `start_latents` (normalised, e.g.
    a VAE-encoded clip) sampling is SDEdit-style: those latents are noised to the schedule's point `strength`
    (1 = pure noise) and only the remaining steps run; `expert` forces one model ("transformer_2": low-noise).
    """
    guidance = guidance or Guidance(5.0)
    check_i2v_request(models, image, num_frames, last_image)
    if not 0 < strength <= 1:
        raise InputError(f"Strength must be in (0, 1] (got {strength}).", "1 = from noise; 0.3-0.6 keeps the clip.")
    place = placement_of(models)
    device = place.compute_device
    try:
        embeds = _embeds(models, place, image, last_image, prompt, negative_prompt, guidance)
        sched = make_scheduler(scheduler, shift)
        timesteps = set_schedule(sched, scheduler, steps, device=device)
        generator = seed if isinstance(seed, torch.Generator) else torch.Generator("cpu").manual_seed(int(seed))
        latents = _noise(generator, image, num_frames, device)
        vae = place.activate(models, "vae")
        condition = i2v_condition(vae, pixels_from_image(image).to(device), num_frames,
                                  None if last_image is None else pixels_from_image(last_image).to(device), device)
        place.release(models, "vae")
        if start_latents is not None:
            timesteps, latents = start_from(sched, timesteps, strength, start_latents.to(device), latents)
        state = SamplerState(latents=latents, condition=condition, scheduler=sched)
        with torch.no_grad():
            denoise(models, state, embeds, timesteps, guidance, hooks, progress, expert)
            video = None
            if decode_video:
                video = decode(place.activate(models, "vae"), state.latents)
                place.release(models, "vae")
    finally:
        place.finish(models)
    return I2VResult(state.latents, state.positions, video, state.notes)


def _embeds(models, place, image, last_image, prompt: str, negative_prompt: str | None, guidance: Guidance) -> Embeds:
    """Prompt (and negative, when a scale is > 1) embeddings and, for CLIP models, the image embeddings."""
    device = place.compute_device
    cfg = max(guidance.high, guidance.low if guidance.low is not None else guidance.high) > 1
    prompt_embeds, negative_embeds = encode_prompts(models, prompt, (negative_prompt or "") if cfg else None)
    image_embeds = None
    if models.image_encoder is not None:
        pictures = [to_pil(image[0])] + ([] if last_image is None else [to_pil(last_image[0])])
        encoder = place.activate(models, "image_encoder")
        image_embeds = clip_embeds(encoder, models.image_processor, pictures[0] if len(pictures) == 1 else pictures)
        place.release(models, "image_encoder")
    return Embeds(prompt_embeds.to(device), None if negative_embeds is None else negative_embeds.to(device),
                  None if image_embeds is None else image_embeds.to(device))


def start_from(scheduler, timesteps: torch.Tensor, strength: float, start: torch.Tensor, noise: torch.Tensor):
    """SDEdit: skip the first steps, noise `start` to the first remaining step's sigma (flow matching)."""
    if start.shape != noise.shape:
        raise InputError(f"Start latents {tuple(start.shape)} do not fit the clip {tuple(noise.shape)}.",
                         "Encode a clip of the same size and frame count.")
    skip = len(timesteps) - max(1, round(len(timesteps) * strength))
    scheduler.set_begin_index(skip)
    sigma = scheduler.sigmas[skip].to(start.device, torch.float32)
    return timesteps[skip:], (1.0 - sigma) * start.float() + sigma * noise


def _noise(generator: torch.Generator, image: torch.Tensor, num_frames: int, device) -> torch.Tensor:
    from diffusers.utils.torch_utils import randn_tensor

    _, height, width, _ = image.shape
    shape = (image.shape[0], 16, latent_frames(num_frames), height // 8, width // 8)
    return randn_tensor(shape, generator=generator, device=torch.device(device), dtype=torch.float32)


def check_i2v_request(models, image: torch.Tensor, num_frames: int, last_image: torch.Tensor | None = None) -> None:
    """Clear messages for requests the models cannot run (before anything heavy happens)."""
    family = models.transformer.vpe_info.family
    if family not in I2V_FAMILIES:
        raise InputError(f"{models.name} is a {family.upper()} model; image-to-video editing needs an I2V model.",
                         "Load Wan2.2-I2V-A14B (both experts) or Wan2.1-I2V / ChronoEdit with CLIP in the loader.")
    if image.dim() != 4 or image.shape[-1] not in (3, 4):
        raise InputError(f"Expected an image (1, H, W, 3), got shape {tuple(image.shape)}.", "Connect an IMAGE.")
    _, height, width, _ = image.shape
    if height % 16 or width % 16:
        raise InputError(f"Image size {width}x{height} is not a multiple of 16.",
                         "Resize, crop or pad it to multiples of 16 (the editor node can do this for you).")
    if num_frames < 5 or (num_frames - 1) % 4:
        raise InputError(f"{num_frames} frames: Wan clips have 4k+1 frames, at least 5.",
                         "Use 5, 9, 13, ... 33 (IF-Edit's default), ... 81.")
    if last_image is not None and tuple(last_image.shape[1:3]) != (height, width):
        raise InputError(f"The last image is {last_image.shape[2]}x{last_image.shape[1]}, the first {width}x{height}.",
                         "Give both images the same size.")
