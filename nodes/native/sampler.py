"""IF-Edit Sampler: the two passes of a native Wan2.2-A14B image-to-video graph with Temporal Latent Dropout between
them, in one node. Each pass is ComfyUI's own KSamplerAdvanced sampling (`nodes.common_ksampler`), so the result is
the one the three-node graph (KSamplerAdvanced, Temporal Latent Dropout, KSamplerAdvanced) gives."""

from __future__ import annotations

from comfy_api.latest import io

from ...videoprior_edit.errors import InputError
from ...videoprior_edit.sampling.frames import ROPE_MODES, tld_plan
from .. import host
from .frames import frames_report
from .patches import drop_frames, latent_frames, latent_positions


def switch_step(model, scheduler: str, steps: int, boundary: float) -> int:
    """The first step whose timestep is below `boundary` x 1000 (Wan2.2's expert switch; the library's rule)."""
    import comfy.samplers

    sampling = model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling, scheduler, steps)
    for i, sigma in enumerate(sigmas[:-1]):
        if float(sampling.timestep(sigma)) < boundary * 1000:
            return i
    return steps


class IFEditSampler(io.ComfyNode):
    """High-noise pass, Temporal Latent Dropout, low-noise pass: IF-Edit's sampling in one box."""

    @classmethod
    def define_schema(cls):
        samplers, schedulers = host.sampler_choices()
        return io.Schema(
            node_id="VPE_IFEditSampler",
            display_name="IF-Edit Sampler (two experts + TLD)",
            category="VideoPriorEdit/IF-Edit",
            description=(
                "IF-Edit's image-to-video edit on your own Wan2.2-I2V-A14B models: the high-noise expert lays the "
                "clip out, Temporal Latent Dropout keeps every K-th latent frame, the low-noise expert finishes "
                "them. The same as two KSamplerAdvanced with the Temporal Latent Dropout node between them."),
            inputs=[
                io.Model.Input("model_high_noise", tooltip=(
                    "Wan2.2-I2V-A14B high-noise expert (after its Lightning LoRA and ModelSamplingSD3 shift 5).")),
                io.Model.Input("model_low_noise", tooltip=(
                    "Wan2.2-I2V-A14B low-noise expert (after its LoRA and shift).")),
                io.Conditioning.Input("positive", tooltip=(
                    "Positive conditioning from WanImageToVideo (the evolution prompt and the source image).")),
                io.Conditioning.Input("negative", tooltip="Negative conditioning from WanImageToVideo."),
                io.Latent.Input("latent", tooltip=(
                    "The empty video latent from WanImageToVideo (33 frames in the paper).")),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip=(
                    "Noise seed.")),
                io.Int.Input("steps", default=8, min=1, max=200, tooltip=(
                    "Denoising steps: 8 with the Lightning LoRAs (the paper), about 40 without.")),
                io.Float.Input("cfg_high_noise", default=1.0, min=0.0, max=20.0, step=0.1, tooltip=(
                    "Guidance of the high-noise pass. 1 = off (Lightning); 3.5 is Wan's default without Lightning.")),
                io.Float.Input("cfg_low_noise", default=1.0, min=0.0, max=20.0, step=0.1, tooltip=(
                    "Guidance of the low-noise pass.")),
                io.Combo.Input("sampler_name", options=samplers, default="euler", tooltip=(
                    "ComfyUI sampler: euler with the Lightning LoRAs (what they were distilled with).")),
                io.Combo.Input("scheduler", options=schedulers, default="simple", tooltip=(
                    "ComfyUI scheduler: simple with 8 steps and shift 5 gives the Lightning schedule (t = 1000, "
                    "972, 938, 893, 833, 750, 625, 417).")),
                io.Float.Input("boundary", default=0.9, min=0.0, max=1.0, step=0.005, tooltip=(
                    "Switch to the low-noise expert (and drop frames) at the first step whose timestep is below "
                    "boundary x 1000: 0.9 for Wan2.2-I2V (step 3 of 8 on the Lightning schedule).")),
                io.Int.Input("tld_k", default=3, min=1, max=40, tooltip=(
                    "Temporal Latent Dropout: keep latent frame 0 and every K-th one for the low-noise pass (the "
                    "paper: 3). 1 = off.")),
                io.Boolean.Input("tld_keep_last", default=False, tooltip=(
                    "Also keep the last latent frame (one more latent of work; off = the paper).")),
                io.Combo.Input("tld_rope", options=list(ROPE_MODES), default="original", tooltip=(
                    "Temporal positions of the kept frames: original (0, K, 2K, ...) or compact (0, 1, 2, ...).")),
            ],
            outputs=[
                io.Latent.Output(display_name="latent", tooltip=(
                    "The edited clip's latent (fewer frames with TLD: 1 + 4(kept - 1)); VAE Decode it and take its "
                    "last frame, or pick the sharpest of the last four.")),
            ],
        )

    @classmethod
    def execute(cls, model_high_noise, model_low_noise, positive, negative, latent, seed, steps, cfg_high_noise,
                cfg_low_noise, sampler_name, scheduler, boundary, tld_k, tld_keep_last, tld_rope):
        import nodes as comfy_nodes

        frames = latent_frames(latent)
        plan = tld_plan(frames, tld_k, tld_keep_last, tld_rope, latent_positions(latent))
        switch = switch_step(model_high_noise, scheduler, steps, boundary)
        if switch in (0, steps):
            raise InputError(f"With {steps} steps of '{scheduler}' the boundary {boundary} falls on step {switch}: "
                             "one of the experts would not run.", "Use more steps or a boundary inside the schedule "
                             "(0.9 for Wan2.2-I2V).")
        (laid_out,) = comfy_nodes.common_ksampler(
            model_high_noise, seed, steps, cfg_high_noise, sampler_name, scheduler, positive, negative, latent,
            start_step=0, last_step=switch, force_full_denoise=False)
        low, lines = model_low_noise, [f"high-noise expert: steps 0-{switch - 1}; low-noise: {switch}-{steps - 1}"]
        if tld_k > 1:
            low, positive, negative, laid_out = drop_frames(model_low_noise, positive, negative, laid_out, plan)
            lines.append(f"TLD at step {switch}: " + frames_report(plan, frames))
        (done,) = comfy_nodes.common_ksampler(
            low, seed, steps, cfg_low_noise, sampler_name, scheduler, positive, negative, laid_out,
            disable_noise=True, start_step=switch, last_step=10000, force_full_denoise=True)
        return host.node_output("\n".join(lines), (done,))


NODES = [IFEditSampler]
