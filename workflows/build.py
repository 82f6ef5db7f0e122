"""Writes the shipped workflows: UI files (what artists load: example_workflows/, ComfyUI's template folder), their
API twins (workflows/api/, converted, never hand-kept), a thumbnail each, and the subgraph blueprints (subgraphs/).
Run: python workflows/build.py  (tests check the committed files equal what this writes)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from videoprior_edit.if_edit import STILL_PROMPT, WAN_NEGATIVE
from videoprior_edit.workflow import (
    Graph,
    blueprint,
    is_widget,
    ui_to_api,
    widget_slots,
)


def pack_nodes() -> dict:
    """The pack's V3 nodes by id, imported the way ComfyUI imports a custom-node folder. ComfyUI's node API
    (`comfy_api`) comes from ComfyUI's venv, else from the ComfyUI folder in $COMFYUI_PATH or ../shared/comfyui/src."""
    if importlib.util.find_spec("comfy_api") is None:
        sys.path.append(os.environ.get("COMFYUI_PATH", str(REPO.parent / "shared" / "comfyui" / "src")))
    name = "comfyui-videoprior-edit"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name].nodes.nodes_by_id()


def node_info(cls) -> dict:
    """A node's /object_info entry, as ComfyUI's server writes it (JSON types)."""
    return json.loads(json.dumps(cls.GET_NODE_INFO_V1()))


# Inputs whose options are the files of one ComfyUI installation: kept empty in the snapshot (the workflow checks take
# model names from the manifest instead).
FILE_LISTS = {("LoadImage", "image"), ("LoadVideo", "file"), ("UNETLoader", "unet_name"), ("CLIPLoader", "clip_name"),
              ("VAELoader", "vae_name"), ("CLIPVisionLoader", "clip_name"), ("LoraLoaderModelOnly", "lora_name"),
              ("DualCLIPLoader", "clip_name1"), ("DualCLIPLoader", "clip_name2")}


def core_snapshot(object_info: dict, names) -> dict:
    """The schemas of core nodes `names` from a running ComfyUI's /object_info, file lists emptied."""
    out = {}
    for name in sorted(names):
        schema = json.loads(json.dumps(object_info[name]))
        for section in schema["input"].values():
            for input_name, spec in section.items():
                if (name, input_name) in FILE_LISTS:
                    section[input_name] = [[], *spec[1:]] if isinstance(spec[0], list) else \
                        [spec[0], {**spec[1], "options": []}]
        out[name] = schema
    return out


def refresh_snapshot(url: str) -> Path:
    """Rewrite schemas/core_nodes.json from the ComfyUI at `url` (same nodes as now)."""
    from urllib.request import urlopen

    path = HERE / "schemas" / "core_nodes.json"
    old = json.loads(path.read_text())
    with urlopen(url.rstrip("/") + "/object_info") as r:
        live = json.loads(r.read())
    new = {"_source": old["_source"], **core_snapshot(live, [k for k in old if not k.startswith("_")])}
    path.write_text(json.dumps(new, indent=1, ensure_ascii=False) + "\n")
    return path


def pack_schemas() -> dict:
    """The pack's nodes' /object_info entries by id."""
    return {node_id: node_info(cls) for node_id, cls in pack_nodes().items()}


def schemas(pack: dict | None = None) -> dict:
    """Core node schemas (the snapshot) and the pack's (`pack`, else built now)."""
    core = {k: v for k, v in json.loads((HERE / "schemas" / "core_nodes.json").read_text()).items() if not k.startswith("_")}
    return {**core, **(pack if pack is not None else pack_schemas())}


class Column:
    """Nodes stacked top to bottom at `x` with no two boxes overlapping in either renderer: each node saved as tall
    as the classic canvas draws it (`box_height`), the next one placed below what the Vue renderer ("Nodes 2.0")
    draws, which is taller (`drawn_height`; tests/test_frontend.py checks both)."""

    def __init__(self, g: Graph, x: int, width: int, y: int = 80, gap: int = 40):
        self.g, self.x, self.width, self.y, self.gap = g, x, width, y, gap

    def add(self, kind: str, title: str, height: int | None = None, **widgets) -> dict:
        schema = self.g.schemas[kind]
        height = height or box_height(schema)
        node = self.g.node(kind, (self.x, self.y), title, (self.width, height), **widgets)
        self.y += max(height + TITLE, drawn_height(schema, height)) + after_run(kind) + self.gap
        return node


TITLE = 30  # LiteGraph's title bar, drawn above a node's position
PREVIEWS = ("VPE_IFEditImageToVideo", "VPE_StillVideoRefiner", "VPE_TailFrameEditor", "VPE_ByGImageEdit",
            "VPE_ByGVideoEdit", "VPE_ImVideoEditVideoEdit", "VPE_FLF2VTeacher", "SaveImage", "PreviewImage")


def after_run(kind: str) -> int:
    """How much a node grows after a run: the pack's report box (web/js/node_report.js) and image previews."""
    return (120 if kind.startswith("VPE_") else 0) + (300 if kind in PREVIEWS and kind.startswith("VPE_") else 0)


def _rows(schema: dict) -> tuple[int, list]:
    """(link slot rows: the larger of inputs without a widget and outputs, the widget slots)."""
    links = sum(1 for section in ("required", "optional") for spec in schema["input"].get(section, {}).values()
                if not is_widget(spec))
    return max(links, len(schema["output"])), widget_slots(schema)


def box_height(schema: dict) -> int:
    """A node body as tall as the classic canvas needs: 20 px a link row, 24 px a widget (a multiline text box
    110 px, an image preview 300 px)."""
    rows, slots = _rows(schema)
    height = 20 * rows + 16
    for name, spec in slots:
        multiline = spec[0] == "STRING" and len(spec) > 1 and spec[1].get("multiline")
        height += 300 if name.endswith("#upload") else 110 if multiline else 24
    return height


def drawn_height(schema: dict, saved: int) -> int:
    """What the Vue renderer draws, title included (measured in frontends 1.49 and 1.58: about 30 px a link row,
    32 px a widget row, previews and text boxes as saved)."""
    rows, slots = _rows(schema)
    widgets = sum(1 for name, _ in slots if not name.endswith(("#control", "#upload")))
    return max(TITLE + saved, TITLE + 30 * rows + 32 * widgets + (300 if any(n.endswith("#upload") for n, _ in slots)
                                                                 else 0))


def note_size(text: str) -> tuple[int, int]:
    """A note box that shows its whole text in the frontend's default font (no scrolling)."""
    lines = text.splitlines()
    return 7 * max(len(line) for line in lines) + 40, 16 * len(lines) + 60


IF_EDIT_NOTE = """IF-Edit image edit on the pack's own loaders ({what})

Chain: the rewriter turns the instruction into an evolution prompt -> a 33-frame image-to-video clip on
Wan2.2-I2V-A14B with the Lightning LoRAs (8 steps, CFG 1) and Temporal Latent Dropout (K=3 after t=900) ->
the last latent's frames -> the sharpest -> a still clip of it (Still-Video Refiner) -> its sharpest frame.

Models (videoprior-edit models download if-edit --models ComfyUI/models):
- diffusion_models/wan2.2_i2v_high_noise_14B_fp16.safetensors (28.6 GB)
- diffusion_models/wan2.2_i2v_low_noise_14B_fp16.safetensors (28.6 GB; or the _fp8_scaled pair: half
  the download, the memory saving needs weight_storage fp8_e4m3fn)
- loras/wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors (merged: no extra memory)
- loras/wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors
- text_encoders/umt5_xxl_fp16.safetensors (11.4 GB), vae/wan_2.1_vae.safetensors
{vlm}
GPU memory per placement (estimates from the weight sizes in bf16, not measured; activations at 480p x
33 frames on top):
- all_on_device: ~70 GB (both experts, UMT5-XXL and the VAE stay on the GPU)
- one_expert (default): ~29 GB (one big model at a time: UMT5-XXL, then each expert)
- one_expert_disk: ~29 GB as one_expert; what waits is dropped from RAM and re-read from its file
- weight_storage fp8_e4m3fn: ~15 GB with one_expert (24 GB cards), ~41 GB with all_on_device
- block_offload: ~12 GB while UMT5-XXL encodes the prompt, < 2 GB while sampling (slow)

Tweak: tld_k 1 turns TLD off (slower, same quality per the paper); tld_keep_last keeps the clip's last
latent; more frames let bigger changes play out; the refiner's mode sdedit is cheaper."""

VLM_LINES = {"template": "No VLM: the template rewriter writes a simple evolution prompt.",
             "openai": "VLM: an OpenAI-compatible server (default Ollama at 127.0.0.1:11434 with qwen3-vl:8b; the paper\n"
                       "used Qwen3-VL-30B-A3B-Instruct). Put an API key in an environment variable and write its\n"
                       "NAME in api_key_env. An unreachable server stops the run with a message naming the URL; backend\n"
                       "'local' runs a Qwen-VL from models/LLM instead, 'template' needs no VLM. A VLM on the same\n"
                       "GPU needs its own memory while it answers (start Ollama with OLLAMA_KEEP_ALIVE=0 to free it)."}


def if_edit(g: Graph, backend: str) -> None:
    """The IF-Edit chain on the pack's own loaders (the legacy path: low-RAM disk parking, the diffusers-exact run)."""
    pics, loaders, prompts, editing, picking, refining, out = (
        Column(g, x, w) for x, w in ((40, 340), (420, 380), (840, 380), (1260, 380), (1680, 340), (2060, 380),
                                     (2480, 380)))
    image = pics.add("LoadImage", "Source image", image="example.png")
    loader = loaders.add("VPE_WanModelLoader", "Wan2.2-I2V-A14B",
                         model="wan2.2_i2v_high_noise_14B_fp16.safetensors",
                         model_low_noise="wan2.2_i2v_low_noise_14B_fp16.safetensors",
                         text_encoder="umt5_xxl_fp16.safetensors", vae="wan_2.1_vae.safetensors", clip_vision="none",
                         precision="bf16", placement="one_expert_disk")
    high, low = (loaders.add("VPE_WanLoraLoader", f"Lightning ({expert} noise)",
                             lora=f"wan2.2_i2v_lightx2v_4steps_lora_v1_{expert}_noise.safetensors", strength=1.0,
                             expert=expert) for expert in ("high", "low"))
    rewrite = prompts.add("VPE_PromptRewriter", "Evolution prompt", instruction="take the paper card out of her hand",
                          mode="edit", backend=backend, local_model="none", seed=0)
    editor = editing.add("VPE_IFEditImageToVideo", "I2V edit with TLD", seed=42)
    tail = picking.add("VPE_DecodeLastFrames", "Last latent's frames", tail_latents=1, exact=True)
    pick = picking.add("VPE_SharpestFrame", "Sharpest candidate")
    refine = refining.add("VPE_StillVideoRefiner", "Still-video refine", seed=42)
    save = out.add("SaveImage", "Edited image", height=340, filename_prefix="videoprior/if_edit")
    for src, o, dst, name in ((loader, "wan_models", high, "wan_models"), (high, "wan_models", low, "wan_models"),
                              (image, "IMAGE", rewrite, "image"), (low, "wan_models", rewrite, "wan_models"),
                              (low, "wan_models", editor, "wan_models"), (image, "IMAGE", editor, "image"),
                              (rewrite, "prompt", editor, "prompt"), (low, "wan_models", tail, "wan_models"),
                              (editor, "wan_latents", tail, "wan_latents"), (tail, "frames", pick, "images"),
                              (low, "wan_models", refine, "wan_models"), (pick, "frame", refine, "image"),
                              (refine, "refined_frame", save, "images")):
        g.link(src, o, dst, name)
    text = IF_EDIT_NOTE.format(what="the pack's own loaders", vlm=VLM_LINES[backend])
    g.note(text, (40, max(c.y for c in (pics, loaders)) + 40), note_size(text))


BYG_IMAGE_NOTE = """ByG image edit on ComfyUI's own FLUX.1-dev nodes, with an editing LoRA

The source picture's clean latent tokens sit beside the noisy ones under the same position ids (ByG
Source Tokens: source tokens concatenated, prediction sliced back; positions 'kontext' gives them
FLUX.1-Kontext's ids instead); the LoRA makes FLUX.1-dev edit as the instruction says. The paper's
sampling: 20 steps, FLUX guidance 3.5, CFG 1 (the negative is not used); FLUX's resolution-dependent
shift as diffusers computes it (Model Sampling Flux, fed the picture's size). The picture is scaled to
max_side 1024 (FLUX.1-dev's native size, sides in multiples of 16).

Models (videoprior-edit models download byg-image --models ComfyUI/models; FLUX.1-dev is gated: accept
its license on Hugging Face and set HF_TOKEN):
- diffusion_models/flux1-dev.safetensors (23.8 GB)
- text_encoders/clip_l.safetensors (0.25 GB), text_encoders/t5xxl_fp16.safetensors (9.8 GB; or
  t5xxl_fp8_e4m3fn.safetensors, 4.9 GB)
- vae/ae.safetensors (0.3 GB)
- loras/byg_flux_lora.safetensors: train it with `videoprior-edit train-byg --family flux`, or pick any
  FLUX.1-dev editing LoRA (kohya / BFL / diffusers / PEFT names: the pack's LoRA loader reads them all and
  shows how many modules matched).
Other files for the same loaders: weight_dtype fp8_e4m3fn on Load Diffusion Model (the same file stored
in 11.9 GB); GGUF files through city96's "Unet Loader (GGUF)" (city96/FLUX.1-dev-gguf, about 7-13 GB
from Q4 to Q8: estimates from 12B weights x bits per weight).

GPU memory by card (estimates from the weight sizes, not measured; the source tokens double the image
sequence: 8192 image tokens at 1024x1024; T5-XXL encodes first and is offloaded; 32 GB+ RAM):
- 32 GB+: flux1-dev.safetensors as shipped (23.8 GB + activations)
- 24 GB: weight_dtype fp8_e4m3fn (11.9 GB), or bf16 with part of the model offloaded (slower)
- 16 GB: weight_dtype fp8_e4m3fn, or a Q6_K / Q8_0 GGUF; t5xxl_fp8_e4m3fn
- 12 GB: a Q4_K_S / Q5_K_S GGUF, max_side 768

Tweak: LoRA strength 0.6-1.2; guidance 2.5-4; max_side 768 for speed; positions 'kontext' if the LoRA
was trained that way (train-byg --source-positions offset)."""


def byg_image(g: Graph) -> None:
    pics, loaders, models, prompts, sampling, out = (
        Column(g, x, w) for x, w in ((40, 340), (420, 400), (860, 380), (1280, 420), (1740, 380), (2160, 360)))
    image = pics.add("LoadImage", "Source image", image="example.png")
    fit = pics.add("VPE_FitImageForWan", "Fit (multiples of 16, 1024)", max_side=1024)
    unet = loaders.add("UNETLoader", "FLUX.1-dev", unet_name="flux1-dev.safetensors")
    clip = loaders.add("DualCLIPLoader", "CLIP-L + T5-XXL", clip_name1="clip_l.safetensors",
                       clip_name2="t5xxl_fp16.safetensors", type="flux")
    vae = loaders.add("VAELoader", "FLUX VAE", vae_name="ae.safetensors")
    encode = loaders.add("VAEEncode", "Source latent")
    lora = models.add("VPE_LoraLoaderModelOnly", "ByG editing LoRA", lora_name="byg_flux_lora.safetensors",
                      strength_model=1.0)
    shift = models.add("ModelSamplingFlux", "FLUX shift for the picture's size", max_shift=1.15, base_shift=0.5)
    tokens = models.add("VPE_ByGImageSourceTokens", "ByG source tokens", positions="byg")
    text = prompts.add("CLIPTextEncode", "Edit instruction", height=150, text="make it a snowy winter evening")
    guidance = prompts.add("FluxGuidance", "FLUX guidance 3.5", guidance=3.5)
    negative = prompts.add("ConditioningZeroOut", "No negative (CFG 1)")
    sampler = sampling.add("KSampler", "Sampler (20 steps, CFG 1)", seed=42, steps=20, cfg=1.0, sampler_name="euler",
                           scheduler="simple")
    decode = out.add("VAEDecode", "Decode")
    save = out.add("SaveImage", "Edited image", height=340, filename_prefix="videoprior/byg_image")
    for src, o, dst, name in ((image, "IMAGE", fit, "image"), (fit, "image", encode, "pixels"),
                              (vae, "VAE", encode, "vae"), (unet, "MODEL", lora, "model"),
                              (lora, "model", shift, "model"), (fit, "width", shift, "width"),
                              (fit, "height", shift, "height"), (shift, "MODEL", tokens, "model"),
                              (encode, "LATENT", tokens, "source"), (clip, "CLIP", text, "clip"),
                              (text, "CONDITIONING", guidance, "conditioning"),
                              (text, "CONDITIONING", negative, "conditioning"), (tokens, "model", sampler, "model"),
                              (guidance, "CONDITIONING", sampler, "positive"),
                              (negative, "CONDITIONING", sampler, "negative"), (tokens, "latent", sampler, "latent_image"),
                              (sampler, "LATENT", decode, "samples"), (vae, "VAE", decode, "vae"),
                              (decode, "IMAGE", save, "images")):
        g.link(src, o, dst, name)
    g.note(BYG_IMAGE_NOTE, (40, max(c.y for c in (pics, loaders, models)) + 40), note_size(BYG_IMAGE_NOTE))


BYG_VIDEO_NOTE = """ByG video edit on ComfyUI's own Wan2.2-T2V-A14B nodes, with editing LoRAs

The source clip's clean latents sit beside the noisy ones under the same temporal positions (ByG Source
Tokens, one per expert: source tokens concatenated, prediction sliced back); the LoRAs (one per expert)
make the text-to-video model edit as the prompt says. Sampling is Wan2.2-T2V's: 40 steps, shift 12, CFG
4 on the high-noise expert (steps 0-25) and 3 on the low-noise one (26-39: the switch at t < 875), Wan's
negative prompt. The clip keeps its sound and frame rate; the picture is scaled to max_side 832 (480p).
Load Video reads every frame: trim long videos first (Wan2.2 was trained on 81 frames at 16 fps).

Models (videoprior-edit models download byg-video-fp8 --models ComfyUI/models):
- diffusion_models/wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors (14.3 GB)
- diffusion_models/wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors (14.3 GB)
- text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors (6.7 GB), vae/wan_2.1_vae.safetensors (0.25 GB)
- loras/byg_lora_high_noise.safetensors, loras/byg_lora_low_noise.safetensors: train them with
  `videoprior-edit train-byg --expert both`, or pick any Wan2.2-T2V editing LoRA pair (any format).
Other files for the same loaders: the _fp16 experts (28.6 GB each); GGUF experts through city96's
"Unet Loader (GGUF)" (QuantStack/Wan2.2-T2V-A14B-GGUF, about 9-15 GB per expert: estimates).

GPU memory by card (estimates from the weight sizes, not measured; the source tokens double the attention
sequence, so keep clips short: 33 frames at 480p; both experts wait in RAM: 32 GB+ RAM):
- 24 GB: the fp8_scaled experts as shipped, 33 frames at 480p
- 16 GB: fp8_scaled with part of each expert offloaded (slower), or Q5_K_M GGUF experts; 33 frames
- 12 GB: Q4_K_M GGUF experts, 17-33 frames, max_side 640

Tweak: source_timestep 'zero' or positions 'offset' if the LoRAs were trained that way; LoRA strengths
0.6-1.2; fewer steps (20, switch at 13) for a quick look."""


def byg_video(g: Graph) -> None:
    source, loaders, models, prompts, sampling, out = (
        Column(g, x, w) for x, w in ((40, 340), (420, 400), (860, 380), (1280, 420), (1740, 380), (2160, 360)))
    video = source.add("LoadVideo", "Source video", file="example.mp4")
    parts = source.add("GetVideoComponents", "Frames, sound, rate")
    fit = source.add("VPE_FitImageForWan", "Fit for Wan (480p)", max_side=832)
    experts = {e: loaders.add("UNETLoader", f"Wan2.2-T2V {e}-noise expert",
                              unet_name=f"wan2.2_t2v_{e}_noise_14B_fp8_scaled.safetensors") for e in ("high", "low")}
    clip = loaders.add("CLIPLoader", "UMT5-XXL", clip_name="umt5_xxl_fp8_e4m3fn_scaled.safetensors", type="wan")
    vae = loaders.add("VAELoader", "Wan VAE", vae_name="wan_2.1_vae.safetensors")
    encode = loaders.add("VAEEncode", "Source latents")
    tokens = {}
    for expert in ("high", "low"):
        lora = models.add("VPE_LoraLoaderModelOnly", f"ByG LoRA ({expert} noise)",
                          lora_name=f"byg_lora_{expert}_noise.safetensors", strength_model=1.0)
        shift = models.add("ModelSamplingSD3", f"Shift 12 ({expert} noise)", shift=12.0)
        tokens[expert] = models.add("VPE_ByGSourceTokens", f"ByG source tokens ({expert} noise)")
        for src, o, dst, name in ((experts[expert], "MODEL", lora, "model"), (lora, "model", shift, "model"),
                                  (shift, "MODEL", tokens[expert], "model"),
                                  (encode, "LATENT", tokens[expert], "source")):
            g.link(src, o, dst, name)
    positive = prompts.add("CLIPTextEncode", "Edit prompt", height=150, text="the same scene on a snowy winter day")
    negative = prompts.add("CLIPTextEncode", "Negative prompt", text=WAN_NEGATIVE)
    high = ksampler(sampling, "High-noise expert: steps 0-25", True, 0, 26, steps=40, cfg=4.0, sampler="uni_pc")
    low = ksampler(sampling, "Low-noise expert: steps 26-39", False, 26, 10000, steps=40, cfg=3.0, sampler="uni_pc")
    decode = out.add("VAEDecode", "Decode")
    make = out.add("CreateVideo", "Edited clip (source sound)", fps=16.0)
    save = out.add("SaveVideo", "Save video", height=340, filename_prefix="videoprior/byg_video")
    for sampler, expert in ((high, "high"), (low, "low")):
        for src, o, name in ((tokens[expert], "model", "model"), (positive, "CONDITIONING", "positive"),
                             (negative, "CONDITIONING", "negative")):
            g.link(src, o, sampler, name)
    for src, o, dst, name in ((video, "VIDEO", parts, "video"), (parts, "images", fit, "image"),
                              (fit, "image", encode, "pixels"), (vae, "VAE", encode, "vae"),
                              (clip, "CLIP", positive, "clip"), (clip, "CLIP", negative, "clip"),
                              (tokens["high"], "latent", high, "latent_image"), (high, "LATENT", low, "latent_image"),
                              (low, "LATENT", decode, "samples"), (vae, "VAE", decode, "vae"),
                              (decode, "IMAGE", make, "images"), (parts, "audio", make, "audio"),
                              (parts, "fps", make, "fps"), (make, "VIDEO", save, "video")):
        g.link(src, o, dst, name)
    g.note(BYG_VIDEO_NOTE, (40, max(c.y for c in (source, loaders, models)) + 40), note_size(BYG_VIDEO_NOTE))


IMVIDEOEDIT_NOTE = """ImVideoEdit spatial-difference video edit on ComfyUI's own Wan2.1-T2V-1.3B nodes

A trained adapter (Predict-Update spatial-difference attention blocks + a text gate) on the frozen T2V
model edits each frame's content while the model keeps the motion: the ImVideoEdit Adapter node puts the
source video's latents in the batch beside the clip being sampled. Wan2.1-T2V's sampling: 50 steps,
CFG 5, shift 3 (480p), Wan's negative prompt. The clip is cut to 4k+1 frames (10 -> 9), keeps its sound and
frame rate, and is scaled to max_side 832 (480p). Load Video reads every frame: trim long videos first.

Models (videoprior-edit models download imvideoedit --models ComfyUI/models):
- diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors (2.8 GB)
- text_encoders/umt5_xxl_fp16.safetensors (11.4 GB; or umt5_xxl_fp8_e4m3fn_scaled, 6.7 GB)
- vae/wan_2.1_vae.safetensors (0.25 GB)
- loras/imvideoedit_adapter.safetensors (~2.1 GB in bf16 for 1.3B): train it from image pairs with
  `videoprior-edit train-imvideoedit` (no adapter is published).

GPU memory by card (estimates from the weight sizes, not measured; the source chunk doubles the batch;
ComfyUI offloads the text encoder after encoding):
- 12 GB and up: the model (2.8 GB) + the adapter (~2.1 GB) + activations of 33 frames at 480p
- 8 GB: max_side 640 and 17-33 frames, or weight_dtype fp8_e4m3fn on the loader

Tweak: write the prompt as the edited video ("a red car on a snowy road"), not as an instruction; fewer
frames for a quick try; a KSamplerAdvanced starting at a later step on the source latent (add noise on)
keeps more of the source."""


def imvideoedit(g: Graph) -> None:
    source, loaders, models, prompts, out = (
        Column(g, x, w) for x, w in ((40, 340), (420, 400), (860, 380), (1280, 420), (1740, 380)))
    video = source.add("LoadVideo", "Source video", file="example.mp4")
    parts = source.add("GetVideoComponents", "Frames, sound, rate")
    fit = source.add("VPE_FitImageForWan", "Fit for Wan (480p)", max_side=832)
    unet = loaders.add("UNETLoader", "Wan2.1-T2V-1.3B", unet_name="wan2.1_t2v_1.3B_fp16.safetensors")
    clip = loaders.add("CLIPLoader", "UMT5-XXL", clip_name="umt5_xxl_fp16.safetensors", type="wan")
    vae = loaders.add("VAELoader", "Wan VAE", vae_name="wan_2.1_vae.safetensors")
    encode = loaders.add("VAEEncode", "Source latents")
    shift = models.add("ModelSamplingSD3", "Shift 3 (480p)", shift=3.0)
    adapter = models.add("VPE_ImVideoEditAdapter", "ImVideoEdit adapter", adapter="imvideoedit_adapter.safetensors")
    positive = prompts.add("CLIPTextEncode", "The edited video", height=150,
                           text="a red sports car drives along a snowy mountain road")
    negative = prompts.add("CLIPTextEncode", "Negative prompt", text=WAN_NEGATIVE)
    sampler = prompts.add("KSampler", "Sampler (50 steps, CFG 5)", seed=42, steps=50, cfg=5.0, sampler_name="uni_pc",
                          scheduler="simple")
    decode = out.add("VAEDecode", "Decode")
    make = out.add("CreateVideo", "Edited clip (source sound)", fps=16.0)
    save = out.add("SaveVideo", "Save video", height=340, filename_prefix="videoprior/imvideoedit")
    for src, o, dst, name in ((video, "VIDEO", parts, "video"), (parts, "images", fit, "image"),
                              (fit, "image", encode, "pixels"), (vae, "VAE", encode, "vae"),
                              (unet, "MODEL", shift, "model"), (shift, "MODEL", adapter, "model"),
                              (encode, "LATENT", adapter, "source"), (clip, "CLIP", positive, "clip"),
                              (clip, "CLIP", negative, "clip"), (adapter, "model", sampler, "model"),
                              (positive, "CONDITIONING", sampler, "positive"),
                              (negative, "CONDITIONING", sampler, "negative"), (adapter, "latent", sampler, "latent_image"),
                              (sampler, "LATENT", decode, "samples"), (vae, "VAE", decode, "vae"),
                              (decode, "IMAGE", make, "images"), (parts, "audio", make, "audio"),
                              (parts, "fps", make, "fps"), (make, "VIDEO", save, "video")):
        g.link(src, o, dst, name)
    g.note(IMVIDEOEDIT_NOTE, (40, max(c.y for c in (source, loaders, models)) + 40), note_size(IMVIDEOEDIT_NOTE))


NATIVE_MODELS = """Models (videoprior-edit models download if-edit-fp8 --models ComfyUI/models):
- diffusion_models/wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors (14.3 GB)
- diffusion_models/wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors (14.3 GB)
- loras/wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors (1.2 GB)
- loras/wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors (1.2 GB)
- text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors (6.7 GB), vae/wan_2.1_vae.safetensors (0.25 GB)
Other files for the same loaders: the _fp16 experts (28.6 GB each, 48 GB+ cards); GGUF experts through
city96's ComfyUI-GGUF "Unet Loader (GGUF)" (QuantStack/Wan2.2-I2V-A14B-GGUF: about 15 GB per expert
at Q8_0, 10 GB at Q5_K_M, 9 GB at Q4_K_M: estimates from 14B weights x bits per weight).

GPU memory by card (estimates from the weight sizes, not measured; 480p x 33 frames; ComfyUI loads
one expert at a time and offloads to RAM what does not fit; both experts wait in RAM: 32 GB+ RAM):
- 24 GB: the fp8_scaled experts as shipped (one 14.3 GB expert + ~3 GB of activations)
- 16 GB: fp8_scaled with part of each expert offloaded (slower), or Q5_K_M / Q6_K GGUF experts
- 12 GB: Q4_K_M or Q3_K_M GGUF experts; stay at 480p and 33 frames"""

IF_EDIT_NATIVE_NOTE = """IF-Edit image edit on ComfyUI's own Wan2.2 nodes ({what})

Chain: {chain} -> Wan2.2-I2V-A14B image-to-video (33 frames, 8 Lightning steps, CFG 1): the
high-noise expert lays the clip out (steps 0-2), Temporal Latent Dropout keeps latents [0, 3, 6], the
low-noise expert finishes them (steps 3-7) -> the sharpest of the last latent's 4 frames -> a 9-frame
still clip of it (same experts, still prompt) -> its sharpest frame (self-consistent refinement).

{models}
{vlm}
Tweak: k 1 turns Temporal Latent Dropout off (slower, the same quality per the paper); keep_last keeps
the clip's last latent; more frames (length) let bigger changes play out; max_side 1280 = 720p."""

NATIVE_VLM = {"openai": VLM_LINES["openai"],
              "template": "No VLM: the template rewriter turns the instruction into a simple evolution prompt."}


def wan22_i2v_native(g: Graph, columns: list[Column]) -> dict:
    """Source picture, the two experts with their Lightning LoRA and shift 5, UMT5 and the VAE: {name: node}."""
    pics, loaders, models = columns
    n = {"image": pics.add("LoadImage", "Source image", image="example.png"),
         "fit": pics.add("VPE_FitImageForWan", "Fit for Wan (480p)", max_side=832)}
    for expert in ("high", "low"):
        n[f"unet_{expert}"] = loaders.add("UNETLoader", f"Wan2.2-I2V {expert}-noise expert",
                                          unet_name=f"wan2.2_i2v_{expert}_noise_14B_fp8_scaled.safetensors")
    n["clip"] = loaders.add("CLIPLoader", "UMT5-XXL", clip_name="umt5_xxl_fp8_e4m3fn_scaled.safetensors", type="wan")
    n["vae"] = loaders.add("VAELoader", "Wan VAE", vae_name="wan_2.1_vae.safetensors")
    for expert in ("high", "low"):
        n[f"lora_{expert}"] = models.add(
            "VPE_LoraLoaderModelOnly", f"Lightning ({expert} noise)",
            lora_name=f"wan2.2_i2v_lightx2v_4steps_lora_v1_{expert}_noise.safetensors", strength_model=1.0)
        n[f"shift_{expert}"] = models.add("ModelSamplingSD3", f"Shift 5 ({expert} noise)", shift=5.0)
        g.link(n[f"unet_{expert}"], "MODEL", n[f"lora_{expert}"], "model")
        g.link(n[f"lora_{expert}"], "model", n[f"shift_{expert}"], "model")
    g.link(n["image"], "IMAGE", n["fit"], "image")
    return n


def ksampler(column: Column, title: str, first: bool, start: int, end: int, steps: int = 8, cfg: float = 1.0,
             sampler: str = "euler") -> dict:
    return column.add("KSamplerAdvanced", title, add_noise="enable" if first else "disable", noise_seed=42,
                      steps=steps, cfg=cfg, sampler_name=sampler, scheduler="simple", start_at_step=start,
                      end_at_step=end, return_with_leftover_noise="enable" if first else "disable")


def link_sampler(g: Graph, node: dict, model: tuple, cond: tuple, latent: tuple) -> None:
    """Connect a sampler to (model node, output), (conditioning node, positive out, negative out), (latent out)."""
    g.link(model[0], model[1], node, "model")
    g.link(cond[0], cond[1], node, "positive")
    g.link(cond[0], cond[2], node, "negative")
    g.link(latent[0], latent[1], node, "latent_image" if node["type"] == "KSamplerAdvanced" else "latent")


def if_edit_native(g: Graph, backend: str) -> None:
    cols = [Column(g, x, w) for x, w in ((40, 340), (420, 400), (860, 380), (1280, 420), (1740, 380), (2160, 360),
                                         (2560, 420), (3020, 380))]
    n = wan22_i2v_native(g, cols[:3])
    prompts, sampling, pick, still, final = cols[3:]
    if backend == "openai":
        rewrite = prompts.add("VPE_PromptRewriter", "Evolution prompt (VLM)", height=560,
                              instruction="take the paper card out of her hand", mode="edit", backend=backend,
                              local_model="none", seed=0)
        g.link(n["fit"], "image", rewrite, "image")
    else:
        rewrite = prompts.add("VPE_PromptRewriter", "Evolution prompt (template)", height=560,
                              instruction="take the paper card out of her hand", mode="edit", backend=backend,
                              local_model="none", seed=0)
    positive = prompts.add("CLIPTextEncode", "Evolution prompt (encoded)", height=150, text="")
    negative = prompts.add("CLIPTextEncode", "Negative prompt", text=WAN_NEGATIVE)
    i2v = prompts.add("WanImageToVideo", "33-frame clip from the picture", length=33)
    for src, out, dst, name in ((rewrite, "prompt", positive, "text"), (n["clip"], "CLIP", positive, "clip"),
                                (n["clip"], "CLIP", negative, "clip"), (positive, "CONDITIONING", i2v, "positive"),
                                (negative, "CONDITIONING", i2v, "negative"), (n["vae"], "VAE", i2v, "vae"),
                                (n["fit"], "image", i2v, "start_image"), (n["fit"], "width", i2v, "width"),
                                (n["fit"], "height", i2v, "height")):
        g.link(src, out, dst, name)
    if backend == "openai":  # the three pieces, visible
        high = ksampler(sampling, "High-noise expert: steps 0-2", True, 0, 3)
        link_sampler(g, high, (n["shift_high"], "MODEL"), (i2v, "positive", "negative"), (i2v, "latent"))
        tld = sampling.add("VPE_TemporalLatentDropout", "Temporal Latent Dropout", k=3)
        link_sampler(g, tld, (n["shift_low"], "MODEL"), (i2v, "positive", "negative"), (high, "LATENT"))
        low = ksampler(sampling, "Low-noise expert: steps 3-7", False, 3, 10000)
        link_sampler(g, low, (tld, "model"), (tld, "positive", "negative"), (tld, "latent"))
        edited = (low, "LATENT")
    else:  # the same three in one box
        box = sampling.add("VPE_IFEditSampler", "IF-Edit Sampler (two experts + TLD)", seed=42)
        for src, out, name in ((n["shift_high"], "MODEL", "model_high_noise"), (n["shift_low"], "MODEL",
                                "model_low_noise"), (i2v, "positive", "positive"), (i2v, "negative", "negative"),
                               (i2v, "latent", "latent")):
            g.link(src, out, box, name)
        edited = (box, "latent")
    decode = pick.add("VAEDecode", "Decode the clip")
    sharp = pick.add("VPE_SharpestFrame", "Sharpest of the last latent's 4", candidates=4)
    still_text = still.add("CLIPTextEncode", "Still-video prompt", height=190, text=STILL_PROMPT)
    still_i2v = still.add("WanImageToVideo", "9-frame still clip", length=9)
    still_high = ksampler(still, "Still clip: high-noise steps 0-2", True, 0, 3)
    still_low = ksampler(still, "Still clip: low-noise steps 3-7", False, 3, 10000)
    decode_still = final.add("VAEDecode", "Decode the still clip")
    best = final.add("VPE_SharpestFrame", "Sharpest still frame (SCPR)", skip_first=True)
    save = final.add("SaveImage", "Edited image", height=340, filename_prefix="videoprior/if_edit")
    for src, out, dst, name in ((edited[0], edited[1], decode, "samples"), (n["vae"], "VAE", decode, "vae"),
                                (decode, "IMAGE", sharp, "images"), (n["clip"], "CLIP", still_text, "clip"),
                                (still_text, "CONDITIONING", still_i2v, "positive"),
                                (negative, "CONDITIONING", still_i2v, "negative"), (n["vae"], "VAE", still_i2v, "vae"),
                                (sharp, "frame", still_i2v, "start_image"), (n["fit"], "width", still_i2v, "width"),
                                (n["fit"], "height", still_i2v, "height"), (n["vae"], "VAE", decode_still, "vae"),
                                (decode_still, "IMAGE", best, "images"), (best, "frame", save, "images")):
        g.link(src, out, dst, name)
    link_sampler(g, still_high, (n["shift_high"], "MODEL"), (still_i2v, "positive", "negative"), (still_i2v, "latent"))
    link_sampler(g, still_low, (n["shift_low"], "MODEL"), (still_i2v, "positive", "negative"), (still_high, "LATENT"))
    g.link(still_low, "LATENT", decode_still, "samples")
    what = "full chain with a VLM rewriter" if backend == "openai" else "no VLM: template rewriter, one-box sampler"
    chain = ("a VLM turns the instruction into an evolution prompt" if backend == "openai" else
             "the template rewriter turns the instruction into an evolution prompt")
    text = IF_EDIT_NATIVE_NOTE.format(what=what, chain=chain, models=NATIVE_MODELS, vlm=NATIVE_VLM[backend])
    g.note(text, (40, max(c.y for c in cols[:3]) + 40), note_size(text))


CHRONOEDIT_NATIVE_NOTE = """ChronoEdit tail-frame edit with temporal reasoning, on ComfyUI's own nodes

The edit is the last frame of a short clip that starts at your picture (Video4Edit / ChronoEdit). With
temporal reasoning the model first denoises a 29-frame clip (steps 0-3: it reasons through the change
over time), End Temporal Reasoning then keeps only the first and last latent frames, and steps 4-7
finish the edit on those two at ChronoEdit's positions (0 and 7). Decode -> the last frame.

Models (videoprior-edit models download chronoedit --models ComfyUI/models):
- diffusion_models/chrono_edit_14B_fp16.safetensors (32.8 GB; weight_dtype fp8_e4m3fn on the loader
  stores it in 16.4 GB)
- loras/chronoedit_distill_lora.safetensors (8 steps, CFG 1, shift 2)
- text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors (6.7 GB), vae/wan_2.1_vae.safetensors (0.25 GB)
- clip_vision/clip_vision_h.safetensors (1.3 GB)

GPU memory by card (estimates from the weight sizes, not measured; 720p; ComfyUI offloads to RAM what
does not fit; 48 GB+ RAM for the fp16 file):
- 48 GB+: fp16 weights as shipped
- 24 GB: weight_dtype fp8_e4m3fn (16.4 GB of weights + activations of the 29-frame reasoning clip)
- 16 GB and 12 GB: fp8_e4m3fn with part of the model offloaded (slow), max_side 832, or no reasoning

Tweak: no reasoning = length 5 on the clip node, bypass End Temporal Reasoning; ChronoEdit's own default
reasons for every step (end_at_step 8 on the first sampler). Without the distill LoRA: 50 steps, CFG 5,
shift 5. Write the instruction plainly ("add a small hat on the cat")."""


def chronoedit_native(g: Graph) -> None:
    pics, loaders, models, prompts, sampling, final = (
        Column(g, x, w) for x, w in ((40, 340), (420, 400), (860, 380), (1280, 420), (1740, 400), (2180, 380)))
    image = pics.add("LoadImage", "Source image", image="example.png")
    fit = pics.add("VPE_FitImageForWan", "Fit for Wan (720p)", max_side=1280)
    unet = loaders.add("UNETLoader", "ChronoEdit-14B", unet_name="chrono_edit_14B_fp16.safetensors")
    clip = loaders.add("CLIPLoader", "UMT5-XXL", clip_name="umt5_xxl_fp8_e4m3fn_scaled.safetensors", type="wan")
    vae = loaders.add("VAELoader", "Wan VAE", vae_name="wan_2.1_vae.safetensors")
    vision = loaders.add("CLIPVisionLoader", "CLIP ViT-H", clip_name="clip_vision_h.safetensors")
    lora = models.add("VPE_LoraLoaderModelOnly", "8-step distill LoRA", lora_name="chronoedit_distill_lora.safetensors",
                      strength_model=1.0)
    shift = models.add("ModelSamplingSD3", "Shift 2 (distilled)", shift=2.0)
    chrono = models.add("VPE_ChronoEditPositions", "ChronoEdit temporal positions")
    positive = prompts.add("CLIPTextEncode", "Edit instruction", height=150,
                           text="add a small red party hat on the cat's head")
    negative = prompts.add("CLIPTextEncode", "Negative prompt", text="")
    seen = prompts.add("CLIPVisionEncode", "The picture for CLIP", crop="center")
    i2v = prompts.add("WanImageToVideo", "29-frame reasoning clip", length=29)
    reason = ksampler(sampling, "Temporal reasoning: steps 0-3", True, 0, 4)
    keep = sampling.add("VPE_ChronoEditTemporalReasoning", "End Temporal Reasoning")
    edit = ksampler(sampling, "Edit: steps 4-7 on first + last", False, 4, 10000)
    decode = final.add("VAEDecode", "Decode")
    last = final.add("VPE_SharpestFrame", "Last frame", candidates=1)
    save = final.add("SaveImage", "Edited image (last frame)", height=340, filename_prefix="videoprior/chronoedit")
    for src, out, dst, name in ((image, "IMAGE", fit, "image"), (unet, "MODEL", lora, "model"),
                                (lora, "model", shift, "model"), (shift, "MODEL", chrono, "model"),
                                (clip, "CLIP", positive, "clip"), (clip, "CLIP", negative, "clip"),
                                (vision, "CLIP_VISION", seen, "clip_vision"), (fit, "image", seen, "image"),
                                (positive, "CONDITIONING", i2v, "positive"), (negative, "CONDITIONING", i2v, "negative"),
                                (vae, "VAE", i2v, "vae"), (seen, "CLIP_VISION_OUTPUT", i2v, "clip_vision_output"),
                                (fit, "image", i2v, "start_image"), (fit, "width", i2v, "width"),
                                (fit, "height", i2v, "height"), (vae, "VAE", decode, "vae"),
                                (decode, "IMAGE", last, "images"), (last, "frame", save, "images")):
        g.link(src, out, dst, name)
    link_sampler(g, reason, (chrono, "model"), (i2v, "positive", "negative"), (i2v, "latent"))
    link_sampler(g, keep, (chrono, "model"), (i2v, "positive", "negative"), (reason, "LATENT"))
    link_sampler(g, edit, (keep, "model"), (keep, "positive", "negative"), (keep, "latent"))
    g.link(edit, "LATENT", decode, "samples")
    g.note(CHRONOEDIT_NATIVE_NOTE, (40, max(c.y for c in (pics, loaders, models)) + 40),
           note_size(CHRONOEDIT_NATIVE_NOTE))


def still_refinement_blueprint(schemas: dict) -> dict:
    """IF-Edit's self-consistent refinement as one node: the frame -> a 9-frame still clip on the same two experts
    -> its sharpest frame (never the first: the input re-decoded)."""
    g = Graph(schemas)
    size, prompts, sampling, pick = (Column(g, x, w) for x, w in ((40, 320), (400, 400), (840, 380), (1260, 340)))
    measure = size.add("GetImageSize", "Frame size")
    text = prompts.add("CLIPTextEncode", "Still-video prompt", height=190, text=STILL_PROMPT)
    clip = prompts.add("WanImageToVideo", "9-frame still clip", length=9)
    high = ksampler(sampling, "High-noise expert: steps 0-2", True, 0, 3)
    low = ksampler(sampling, "Low-noise expert: steps 3-7", False, 3, 10000)
    decode = pick.add("VAEDecode", "Decode the still clip")
    best = pick.add("VPE_SharpestFrame", "Sharpest still frame", skip_first=True)
    for src, out, dst, name in ((measure, "width", clip, "width"), (measure, "height", clip, "height"),
                                (text, "CONDITIONING", clip, "positive"), (clip, "latent", high, "latent_image"),
                                (clip, "positive", high, "positive"), (clip, "negative", high, "negative"),
                                (high, "LATENT", low, "latent_image"), (clip, "positive", low, "positive"),
                                (clip, "negative", low, "negative"), (low, "LATENT", decode, "samples"),
                                (decode, "IMAGE", best, "images")):
        g.link(src, out, dst, name)
    return blueprint(
        g, "Still-Video Refinement (IF-Edit)",
        inputs=[("image", "IMAGE", [(measure, "image"), (clip, "start_image")]),
                ("model_high_noise", "MODEL", [(high, "model")]), ("model_low_noise", "MODEL", [(low, "model")]),
                ("clip", "CLIP", [(text, "clip")]), ("negative", "CONDITIONING", [(clip, "negative")]),
                ("vae", "VAE", [(clip, "vae"), (decode, "vae")])],
        outputs=[("refined", "IMAGE", best, "frame")],
        widgets=[(text, "text"), (clip, "length"), (high, "noise_seed"), (high, "steps"), (low, "steps")],
        description=("IF-Edit's self-consistent post-refinement: the edited frame becomes a short still clip on the "
                     "same Wan2.2-I2V experts (still-video prompt), and the clip's sharpest frame is the final image."),
        category="VideoPriorEdit/IF-Edit")


def if_edit_blueprint(schemas: dict) -> dict:
    """IF-Edit's image-to-video edit as one node: picture + evolution prompt -> the sharpest of the last latent's
    frames, on the two Wan2.2-I2V experts with Temporal Latent Dropout (the IF-Edit Sampler inside)."""
    g = Graph(schemas)
    pics, prompts, sampling, pick = (Column(g, x, w) for x, w in ((40, 340), (420, 420), (880, 380), (1300, 340)))
    fit = pics.add("VPE_FitImageForWan", "Fit for Wan (480p)", max_side=832)
    positive = prompts.add("CLIPTextEncode", "Evolution prompt", height=150, text="")
    negative = prompts.add("CLIPTextEncode", "Negative prompt", text=WAN_NEGATIVE)
    i2v = prompts.add("WanImageToVideo", "33-frame clip", length=33)
    box = sampling.add("VPE_IFEditSampler", "IF-Edit Sampler", seed=42)
    decode = pick.add("VAEDecode", "Decode the clip")
    best = pick.add("VPE_SharpestFrame", "Sharpest of the last latent's 4", candidates=4)
    for src, out, dst, name in ((fit, "image", i2v, "start_image"), (fit, "width", i2v, "width"),
                                (fit, "height", i2v, "height"), (positive, "CONDITIONING", i2v, "positive"),
                                (negative, "CONDITIONING", i2v, "negative"), (i2v, "positive", box, "positive"),
                                (i2v, "negative", box, "negative"), (i2v, "latent", box, "latent"),
                                (box, "latent", decode, "samples"), (decode, "IMAGE", best, "images")):
        g.link(src, out, dst, name)
    return blueprint(
        g, "IF-Edit Image Edit",
        inputs=[("image", "IMAGE", [(fit, "image")]), ("model_high_noise", "MODEL", [(box, "model_high_noise")]),
                ("model_low_noise", "MODEL", [(box, "model_low_noise")]),
                ("clip", "CLIP", [(positive, "clip"), (negative, "clip")]), ("vae", "VAE", [(i2v, "vae"), (decode, "vae")])],
        outputs=[("edited", "IMAGE", best, "frame")],
        widgets=[(positive, "text"), (i2v, "length"), (box, "seed"), (box, "steps"), (box, "tld_k")],
        description=("IF-Edit: the picture becomes the first frame of a short clip that plays out the evolution prompt "
                     "on Wan2.2-I2V-A14B (both experts, Temporal Latent Dropout between them); the sharpest of the "
                     "last latent's frames is the edit. Connect the experts after their Lightning LoRA and shift 5."),
        category="VideoPriorEdit/IF-Edit")


def chronoedit_blueprint(schemas: dict) -> dict:
    """ChronoEdit with temporal reasoning as one node: picture + instruction -> the edited picture."""
    g = Graph(schemas)
    pics, prompts, sampling, pick = (Column(g, x, w) for x, w in ((40, 340), (420, 420), (880, 400), (1320, 340)))
    fit = pics.add("VPE_FitImageForWan", "Fit for Wan (720p)", max_side=1280)
    positive = prompts.add("CLIPTextEncode", "Edit instruction", height=150, text="")
    negative = prompts.add("CLIPTextEncode", "Negative prompt", text="")
    seen = prompts.add("CLIPVisionEncode", "The picture for CLIP", crop="center")
    i2v = prompts.add("WanImageToVideo", "29-frame reasoning clip", length=29)
    reason = ksampler(sampling, "Temporal reasoning: steps 0-3", True, 0, 4)
    keep = sampling.add("VPE_ChronoEditTemporalReasoning", "End Temporal Reasoning")
    edit = ksampler(sampling, "Edit: steps 4-7", False, 4, 10000)
    decode = pick.add("VAEDecode", "Decode")
    last = pick.add("VPE_SharpestFrame", "Last frame", candidates=1)
    for src, out, dst, name in ((fit, "image", i2v, "start_image"), (fit, "image", seen, "image"),
                                (fit, "width", i2v, "width"), (fit, "height", i2v, "height"),
                                (positive, "CONDITIONING", i2v, "positive"), (negative, "CONDITIONING", i2v, "negative"),
                                (seen, "CLIP_VISION_OUTPUT", i2v, "clip_vision_output"), (i2v, "positive", reason, "positive"),
                                (i2v, "negative", reason, "negative"), (i2v, "latent", reason, "latent_image"),
                                (i2v, "positive", keep, "positive"), (i2v, "negative", keep, "negative"),
                                (reason, "LATENT", keep, "latent"), (keep, "model", edit, "model"),
                                (keep, "positive", edit, "positive"), (keep, "negative", edit, "negative"),
                                (keep, "latent", edit, "latent_image"), (edit, "LATENT", decode, "samples"),
                                (decode, "IMAGE", last, "images")):
        g.link(src, out, dst, name)
    return blueprint(
        g, "ChronoEdit Reasoning Edit",
        inputs=[("image", "IMAGE", [(fit, "image")]), ("model", "MODEL", [(reason, "model"), (keep, "model")]),
                ("clip", "CLIP", [(positive, "clip"), (negative, "clip")]),
                ("clip_vision", "CLIP_VISION", [(seen, "clip_vision")]), ("vae", "VAE", [(i2v, "vae"), (decode, "vae")])],
        outputs=[("edited", "IMAGE", last, "frame")],
        widgets=[(positive, "text"), (reason, "noise_seed"), (reason, "end_at_step"), (edit, "start_at_step")],
        description=("ChronoEdit-14B with temporal reasoning: a 29-frame clip for the first steps, then only its first "
                     "and last latent frames; the last frame is the edit. Connect ChronoEdit after its distill LoRA, "
                     "shift 2 and ChronoEdit Temporal Positions."),
        category="VideoPriorEdit/Video4Edit")


BLUEPRINTS = {"Still-Video Refinement (IF-Edit)": still_refinement_blueprint,
              "IF-Edit Image Edit": if_edit_blueprint,
              "ChronoEdit Reasoning Edit": chronoedit_blueprint}


# Each workflow's file name in example_workflows/ (ComfyUI's template browser shows it as the card's title; a
# same-name .jpg is its thumbnail) and of its API twin in workflows/api/.
TITLES = {"if_edit_image_edit_full": "IF-Edit image edit (VLM rewriter)",
          "if_edit_image_edit_no_vlm": "IF-Edit image edit (no VLM)",
          "video4edit_chronoedit_tail_frame_edit": "ChronoEdit tail-frame edit (temporal reasoning)",
          "if_edit_image_edit_own_loaders": "IF-Edit image edit (own loaders, low RAM)",
          "byg_image_edit_flux_lora": "ByG image edit (FLUX.1-dev LoRA)",
          "byg_video_edit_wan22_t2v_lora": "ByG video edit (Wan2.2-T2V LoRAs)",
          "imvideoedit_spatial_difference_video_edit": "ImVideoEdit video edit (Wan2.1-T2V adapter)"}
EXAMPLES = REPO / "example_workflows"


WORKFLOWS = {"if_edit_image_edit_full": lambda g: if_edit_native(g, "openai"),
             "if_edit_image_edit_no_vlm": lambda g: if_edit_native(g, "template"),
             "video4edit_chronoedit_tail_frame_edit": chronoedit_native,
             "if_edit_image_edit_own_loaders": lambda g: if_edit(g, "template"),
             "byg_image_edit_flux_lora": byg_image,
             "byg_video_edit_wan22_t2v_lora": byg_video,
             "imvideoedit_spatial_difference_video_edit": imvideoedit}


def thumbnail(ui: dict, path: Path, title: str) -> None:
    """A small picture of the graph: one box per node, its title, the links."""
    from PIL import Image, ImageDraw

    nodes = {n["id"]: n for n in ui["nodes"]}
    x0 = min(n["pos"][0] for n in ui["nodes"]) - 20
    y0 = min(n["pos"][1] for n in ui["nodes"]) - 60
    x1 = max(n["pos"][0] + n["size"][0] for n in ui["nodes"]) + 20
    y1 = max(n["pos"][1] + n["size"][1] for n in ui["nodes"]) + 20
    scale = min(512 / (x1 - x0), 288 / (y1 - y0))
    picture = Image.new("RGB", (512, 288), (30, 30, 34))
    draw = ImageDraw.Draw(picture)
    at = lambda x, y: ((x - x0) * scale, (y - y0) * scale)
    for _, src, _, dst, _, _ in ui["links"]:
        a, b = nodes[src], nodes[dst]
        draw.line([at(a["pos"][0] + a["size"][0], a["pos"][1] + 30), at(b["pos"][0], b["pos"][1] + 30)],
                  fill=(150, 150, 160), width=2)
    for n in ui["nodes"]:
        fill = (84, 51, 34) if n["type"] == "Note" else (55, 70, 95) if n["type"].startswith("VPE_") else (60, 60, 64)
        draw.rectangle([at(*n["pos"]), at(n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])], fill=fill,
                       outline=(200, 200, 210))
        draw.text(at(n["pos"][0] + 8, n["pos"][1] + 8), n.get("title", n["type"])[:28], fill=(235, 235, 235))
    draw.text((8, 6), title, fill=(255, 200, 120))
    picture.save(path, quality=85)


def help_page(node_id: str, info: dict) -> str:
    """A node's help page (ComfyUI's node library shows web/docs/<node id>.md) from its /object_info entry: what it
    does, its inputs and outputs with their tooltips."""
    lines = [f"# {info['display_name']}", "", info["description"], "",
             f"Category: `{info['category']}` · node id: `{node_id}`", "",
             "## Inputs", "", "| input | type | default | what it does |", "| --- | --- | --- | --- |"]
    for section in ("required", "optional"):
        for name, (kind, *rest) in info["input"].get(section, {}).items():
            options = rest[0] if rest else {}
            shown = "choice" if isinstance(kind, list) or kind == "COMBO" else kind
            default = options.get("default", "")  # file lists depend on the installation: no default shown
            tip = (options.get("tooltip", "") + ("" if section == "required" else " (optional)")).replace("|", "\\|")
            lines.append(f"| `{name}` | {shown} | {'' if default == '' else f'`{default}`'} | {tip.strip()} |")
    lines += ["", "## Outputs", "", "| output | type | what it is |", "| --- | --- | --- |"]
    for name, kind, tip in zip(info["output_name"], info["output"], info["output_tooltips"]):
        lines.append(f"| `{name}` | {kind} | {(tip or '').replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def write_help_pages(out: Path, pack: dict) -> list[Path]:
    """web/docs/<node id>.md for every node of the pack (`pack`: their /object_info entries by id)."""
    folder = out / "web" / "docs"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for node_id, info in sorted(pack.items()):
        path = folder / f"{node_id}.md"
        path.write_text(help_page(node_id, info))
        written.append(path)
    return written


def build(out: Path = REPO) -> list[Path]:
    """Write every workflow (UI file + thumbnail in out/example_workflows, its API twin of the same name in
    out/workflows/api) and every subgraph blueprint (out/subgraphs); returns the paths written."""
    pack = pack_schemas()
    written, all_schemas = [], schemas(pack)
    for folder in ("example_workflows", "workflows/api", "subgraphs"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    for name, make in WORKFLOWS.items():
        graph = Graph(all_schemas)
        make(graph)
        ui = graph.to_ui()
        ui_path = out / "example_workflows" / f"{TITLES[name]}.json"
        api_path = out / "workflows" / "api" / ui_path.name
        for path, data in ((ui_path, ui), (api_path, ui_to_api(ui, all_schemas))):
            path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
            written.append(path)
        thumbnail(ui, ui_path.with_suffix(".jpg"), TITLES[name])
        written.append(ui_path.with_suffix(".jpg"))
    for name, make in BLUEPRINTS.items():
        path = out / "subgraphs" / f"{name}.json"
        path.write_text(json.dumps(make(all_schemas), indent=1, ensure_ascii=False) + "\n")
        written.append(path)
    return written + write_help_pages(out, pack)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--schemas-from":  # python workflows/build.py --schemas-from URL
        print(refresh_snapshot(sys.argv[2]).relative_to(REPO))
    for path in build():
        print(path.relative_to(REPO))
