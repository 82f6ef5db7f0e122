"""The shared Wan sampling loop, its schedulers, conditions, RoPE positions and Temporal Latent Dropout."""

from .loop import Embeds, Guidance, I2VResult, denoise, encode_prompts, sample_i2v
from .schedules import SCHEDULERS, lightning_timesteps, make_scheduler, set_schedule
from .state import SamplerState, SamplingHook
from .tld import TemporalLatentDropout, kept_indices, output_frames

__all__ = [
           "SCHEDULERS",
           "Embeds",
           "Guidance",
           "I2VResult",
           "SamplerState",
           "SamplingHook",
           "TemporalLatentDropout",
           "denoise",
           "encode_prompts",
           "kept_indices",
           "lightning_timesteps",
           "make_scheduler",
           "output_frames",
           "sample_i2v",
           "set_schedule",
]
