"""IF-Edit's prompt rewriter node: a VLM (local, a chat server, or none) turns an edit instruction into a prompt that
describes how the picture evolves over time."""

from __future__ import annotations

from pathlib import Path

from comfy_api.latest import io

from ..videoprior_edit.rewrite import (
    BACKENDS,
    FAILURE_MODES,
    MODES,
    PRECISIONS,
    generation_tokens,
    make_backend,
    request_for_vlm,
    rewrite_prompt,
)
from . import host
from .if_edit import CATEGORY
from .loaders import WAN_MODELS

DEVICES = ("auto", "cpu")


def _local_settings(local_model, local_model_path, precision, device, keep_loaded, temperature) -> dict:
    """A folder the user names (absolute, or inside models/LLM) wins over the dropdown."""
    path = local_model_path.strip() or (None if local_model in ("", "none") else local_model)
    if path and not Path(path).expanduser().is_absolute():
        path = host.folders().path("LLM", path)
    return {"model_path": path, "precision": precision, "device": host.device() if device == "auto" else device,
            "keep_loaded": keep_loaded, "temperature": temperature}


def _openai_settings(api_base_url, api_model, api_key_env, timeout, retries, temperature) -> dict:
    return {"base_url": api_base_url, "model": api_model, "api_key_env": api_key_env.strip(),
            "timeout": float(timeout), "retries": retries, "temperature": temperature}


class PromptRewriter(io.ComfyNode):
    """Rewrites a static edit instruction into a temporal evolution prompt (or a still-video prompt)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VPE_PromptRewriter",
            display_name="Evolution Prompt Rewriter (IF-Edit)",
            category=CATEGORY,
            description=(
                "IF-Edit's chain-of-thought prompt augmentation: a VLM looks at the image and the instruction and "
                "writes how the scene evolves over time, keeping everything else unchanged."),
            inputs=[
                io.String.Input("instruction", multiline=True, default="", tooltip=(
                    "What should change, as you would tell an image editor, e.g. 'take the paper out of her hand'. "
                    "In still mode: optional, the edit that produced the image.")),
                io.Combo.Input("mode", options=list(MODES), default="edit", tooltip=(
                    "edit: how the picture evolves over time toward the edit (for the I2V editor). still: the image"
                    " as a perfectly still, sharper video (for the Still-Video Refiner).")),
                io.Combo.Input("backend", options=list(BACKENDS), default="local", tooltip=(
                    "local: a Qwen-VL model folder from models/LLM run here. openai: an OpenAI-compatible chat "
                    "server (Ollama, vLLM, LM Studio, llama.cpp server, hosted APIs). template: no model, a simple "
                    "evolution prompt from the instruction alone. generated_text: ComfyUI's own Generate Text node "
                    "ran the VLM (connect its answer to vlm_answer); the answer is cleaned and checked here.")),
                io.Combo.Input("local_model", options=host.model_choices("LLM", optional=True), tooltip=(
                    "local backend: a Qwen2.5-VL / Qwen3-VL / Qwen3-VL-MoE folder in models/LLM, e.g. "
                    "Qwen3-VL-8B-Instruct (the paper: Qwen3-VL-30B-A3B-Instruct). Press 'r' after adding one.")),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip=(
                    "Sampling seed: the same seed, model and settings give the same prompt (local backend; chat "
                    "servers when they honour seeds).")),
                io.Image.Input("image", optional=True, tooltip=(
                    "The picture the VLM looks at: the source image (edit) or the frame to refine (still). Without "
                    "it the VLM sees only the instruction.")),
                io.Custom(WAN_MODELS).Input("wan_models", optional=True, tooltip=(
                    "Optional: the Wan model set, only to count prompt tokens exactly with its UMT5 tokenizer (else"
                    " a safe estimate is used).")),
                io.String.Input("vlm_answer", optional=True, force_input=True, tooltip=(
                    "generated_text backend: the generated_text output of ComfyUI's Generate Text node (a Qwen3-VL "
                    "or Qwen2.5-VL loaded with ComfyUI's own loader, so ComfyUI manages its memory; its prompt from"
                    " Evolution Prompt Request).")),
                io.Int.Input("max_tokens", optional=True, default=220, min=16, max=512, tooltip=(
                    "Longest prompt, in the video model's (UMT5) tokens; Wan reads at most 512. Longer answers are "
                    "cut at a sentence end.")),
                io.Float.Input("temperature", optional=True, default=0.7, min=0.0, max=2.0, step=0.05, tooltip=(
                    "Sampling temperature of the VLM; 0 = always the most likely words (greedy).")),
                io.Combo.Input("on_failure", options=list(FAILURE_MODES), optional=True, default="template", tooltip=(
                    "When the VLM's answer holds no usable prompt: template = use the template prompt and show a "
                    "warning on the node; error = stop the workflow.")),
                io.String.Input("local_model_path", optional=True, default="", tooltip=(
                    "local backend: a model folder anywhere on disk (absolute path); overrides local_model when "
                    "set.")),
                io.Combo.Input("precision", options=list(PRECISIONS), optional=True, default="auto", tooltip=(
                    "local backend: weight precision. auto = bf16 (fp16 on GPUs without bf16). 8B models need about"
                    " 17 GB in bf16, the 30B-A3B MoE about 62 GB.")),
                io.Combo.Input("device", options=list(DEVICES), optional=True, default="auto", tooltip=(
                    "local backend: auto = ComfyUI's GPU; cpu = run the VLM on the CPU (slow, leaves the GPU free).")),
                io.Boolean.Input("keep_loaded", optional=True, default=False, tooltip=(
                    "local backend: off = free the VLM right after writing the prompt, so the video model gets the "
                    "memory. On = keep it in RAM (off the GPU) for the next run: faster repeats, more RAM.")),
                io.String.Input("api_base_url", optional=True, default="http://127.0.0.1:11434/v1", tooltip=(
                    "openai backend: the server's OpenAI-compatible base URL. Ollama http://127.0.0.1:11434/v1, LM "
                    "Studio http://127.0.0.1:1234/v1, vLLM http://127.0.0.1:8000/v1, llama.cpp "
                    "http://127.0.0.1:8080/v1.")),
                io.String.Input("api_model", optional=True, default="qwen3-vl:8b", tooltip=(
                    "openai backend: the model name the server knows (a vision model), e.g. qwen3-vl:8b or "
                    "qwen2.5vl:7b (Ollama), Qwen/Qwen3-VL-8B-Instruct (vLLM).")),
                io.String.Input("api_key_env", optional=True, default="", tooltip=(
                    "openai backend: the NAME of the environment variable holding the API key (e.g. "
                    "OPENAI_API_KEY), never the key itself; the key is read when the request is sent. Empty = no "
                    "key (local servers).")),
                io.Int.Input("timeout", optional=True, default=120, min=1, max=3600, tooltip=(
                    "openai backend: seconds to wait for the server (and between streamed pieces) before giving up.")),
                io.Int.Input("retries", optional=True, default=2, min=0, max=10, tooltip=(
                    "openai backend: extra attempts after a timeout, a dropped connection or a busy server "
                    "(429/5xx).")),
            ],
            outputs=[
                io.String.Output(display_name="prompt", tooltip=(
                    "The rewritten prompt: one clean paragraph for the video model.")),
                io.String.Output(display_name="raw", tooltip=(
                    "The VLM's own text before cleaning (thinking, markdown, ...), for inspection.")),
            ],
        )

    @classmethod
    def execute(cls, instruction, mode, backend, local_model, seed, image=None, wan_models=None, vlm_answer=None,
                max_tokens=220,
                temperature=0.7, on_failure="template", local_model_path="", precision="auto", device="auto",
                keep_loaded=False, api_base_url="http://127.0.0.1:11434/v1", api_model="qwen3-vl:8b",
                api_key_env="", timeout=120, retries=2):
        settings = {}
        if backend == "local":
            settings = _local_settings(local_model, local_model_path, precision, device, keep_loaded, temperature)
        elif backend == "openai":
            settings = _openai_settings(api_base_url, api_model, api_key_env, timeout, retries, temperature)
        elif backend == "generated_text":
            settings = {"text": vlm_answer}
        chosen = make_backend(backend, **settings)
        if backend == "local":
            host.free_memory()
        progress = host.Progress(chosen.steps(generation_tokens(max_tokens, chosen)), "Prompt rewriter")
        try:
            result = rewrite_prompt(image, instruction, chosen, mode, seed, on_failure, max_tokens, progress,
                                    getattr(wan_models, "tokenizer", None))
        finally:
            progress.close()
        text = "\n".join([*(f"Warning: {w}" for w in result.warnings), result.prompt])
        return io.NodeOutput(result.prompt, result.raw, ui={"text": [text]})


class RewriterRequest(io.ComfyNode):
    """The rewriter's request as one message, for ComfyUI's own Generate Text node."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VPE_RewriterRequest",
            display_name="Evolution Prompt Request (for Generate Text)",
            category=CATEGORY,
            description=(
                "IF-Edit's rewriter request (instructions, worked examples, your instruction) for a VLM that "
                "ComfyUI runs itself: Generate Text with a Qwen3-VL / Qwen2.5-VL from ComfyUI's loader, so its "
                "memory is managed with the video model's."),
            inputs=[
                io.String.Input("instruction", multiline=True, default="", tooltip=(
                    "What should change, e.g. 'take the paper out of her hand'.")),
                io.Combo.Input("mode", options=list(MODES), default="edit", tooltip=(
                    "edit: how the picture evolves toward the edit; still: the picture as a perfectly still video.")),
                io.Int.Input("max_tokens", optional=True, default=220, min=16, max=512, tooltip=(
                    "The prompt's length the request asks for, in UMT5 tokens (use the same on the rewriter).")),
            ],
            outputs=[
                io.String.Output(display_name="request", tooltip=(
                    "The request for the VLM: connect it to Generate Text's prompt (with the picture on its image "
                    "input), and Generate Text's answer to the rewriter's vlm_answer (backend generated_text).")),
            ],
        )

    @classmethod
    def execute(cls, instruction, mode, max_tokens=220):
        return io.NodeOutput(request_for_vlm(instruction, mode, max_tokens))


NODES = [PromptRewriter, RewriterRequest]
