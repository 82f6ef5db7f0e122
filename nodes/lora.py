"""LoRA nodes: apply a LoRA (e.g. the Wan2.2 Lightning 4/8-step LoRAs) to a Wan model set, chainable."""

from __future__ import annotations

from comfy_api.latest import io

from ..videoprior_edit.lora import EXPERTS, with_lora
from . import host
from .loaders import CATEGORY, WAN_MODELS


class WanLoraLoader(io.ComfyNode):
    """Returns the model set with one more LoRA; the input set is left as it was (its experts follow whichever set
    runs: unmerged LoRAs are switched in place, merged ones make the expert re-read its file)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VPE_WanLoraLoader",
            display_name="Apply Wan LoRA (VideoPrior Edit)",
            category=CATEGORY,
            description=(
                "Applies a LoRA (lightx2v/Kijai/ComfyUI, musubi-tuner/kohya, diffusers/PEFT, LyCORIS or OneTrainer "
                "keys) to a Wan model set, merged or unmerged; chain several nodes to stack LoRAs. One summary line"
                " says how many modules it matched, and a LoRA for another model is refused with the model it seems"
                " made for."),
            inputs=[
                io.Custom(WAN_MODELS).Input("wan_models", tooltip=(
                    "A Wan model set from Load Wan Models (or another LoRA node).")),
                io.Combo.Input("lora", options=host.model_choices("loras"), tooltip=(
                    "LoRA from models/loras. For IF-Edit: wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise on the high"
                    " expert and ..._low_noise on the low expert (two nodes), then 8 steps, CFG 1, scheduler "
                    "lightning.")),
                io.Float.Input("strength", default=1.0, min=-4.0, max=4.0, step=0.05, tooltip=(
                    "How strongly the LoRA applies (1 = as trained; negative values push the other way).")),
                io.Combo.Input("expert", options=list(EXPERTS), default="both", tooltip=(
                    "Wan2.2-A14B: which expert gets the LoRA (high = high-noise, low = low-noise, both). Single "
                    "models: 'both' or 'high'.")),
                io.Boolean.Input("merge", optional=True, default=True, tooltip=(
                    "On: the LoRA is merged into the weights (fastest sampling; changing or removing it later "
                    "re-reads the model file). Off: kept beside the weights (a little slower per step, more "
                    "memory), so changing its strength or bypassing the node is instant and reads no model file.")),
            ],
            outputs=[
                io.Custom(WAN_MODELS).Output(display_name="wan_models", tooltip=(
                    "The model set with the LoRA (merged, or kept beside the weights) when the set is used.")),
            ],
        )

    @classmethod
    def execute(cls, wan_models, lora, strength, expert, merge=True):
        return io.NodeOutput(with_lora(wan_models, host.folders().path("loras", lora), strength, expert,
                                       merge=merge))


NODES = [WanLoraLoader]
