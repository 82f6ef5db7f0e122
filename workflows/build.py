"""Writes the shipped workflows: UI files (what artists load), their API twins (converted, never hand-kept) and a
thumbnail each. Run: python workflows/build.py  (tests check the committed files equal what this writes)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from videoprior_edit.workflow import Graph, schemas_of, ui_to_api


def pack_nodes() -> dict:
    """The pack's NODE_CLASS_MAPPINGS, imported the way ComfyUI imports a custom-node folder."""
    name = "comfyui-videoprior-edit"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name].NODE_CLASS_MAPPINGS


def schemas() -> dict:
    core = {k: v for k, v in json.loads((HERE / "core_nodes.json").read_text()).items() if not k.startswith("_")}
    return {**core, **schemas_of(pack_nodes())}


CHRONOEDIT_NOTE = """Video4Edit / ChronoEdit tail-frame edit

The edit is the last frame of a 5-frame clip that starts at your image.

Models (videoprior-edit models download chronoedit --models ComfyUI/models):
- diffusion_models/chrono_edit_14B_fp16.safetensors
- loras/chronoedit_distill_lora.safetensors (8 steps, CFG 1, shift 2)
- text_encoders/umt5_xxl_fp16.safetensors, vae/wan_2.1_vae.safetensors
- clip_vision/clip_vision_h.safetensors

GPU memory (weights, bf16): all_on_device ~48 GB; one_expert (default: the text encoder, then the
model) ~33 GB; with weight_storage fp8_e4m3fn ~17 GB; block_offload < 4 GB (slow).

Tweak: without the distill LoRA use 50 steps, CFG 5, shift 5 (ChronoEdit's defaults). Write the
instruction plainly ("add a small hat on the cat"). max_side 1280 = 720p."""


def chronoedit(g: Graph) -> None:
    image = g.node("LoadImage", (40, 80), "Source image", (320, 320), image="example.png")
    loader = g.node("VPE_WanModelLoader", (40, 460), "ChronoEdit-14B", (380, 280),
                    model="chrono_edit_14B_fp16.safetensors", model_low_noise="none",
                    text_encoder="umt5_xxl_fp16.safetensors", vae="wan_2.1_vae.safetensors",
                    clip_vision="clip_vision_h.safetensors", precision="bf16", placement="one_expert")
    lora = g.node("VPE_WanLoraLoader", (460, 460), "8-step distill LoRA", (340, 130),
                  lora="chronoedit_distill_lora.safetensors", strength=1.0, expert="both")
    editor = g.node("VPE_TailFrameEditor", (840, 80), "Tail-frame edit", (380, 520),
                    instruction="add a small red party hat on the cat's head", steps=8, cfg=1.0, shift=2.0,
                    scheduler="unipc", seed=42)
    save = g.node("SaveImage", (1260, 80), "Edited image", (360, 380), filename_prefix="videoprior/chronoedit")
    g.link(image, "IMAGE", editor, "image")
    g.link(loader, "wan_models", lora, "wan_models")
    g.link(lora, "wan_models", editor, "wan_models")
    g.link(editor, "edited", save, "images")
    g.note(CHRONOEDIT_NOTE, (460, 640), (560, 380))


IF_EDIT_NOTE = """IF-Edit image edit ({what})

Chain: the rewriter turns the instruction into an evolution prompt -> a 33-frame image-to-video clip on
Wan2.2-I2V-A14B with the Lightning LoRAs (8 steps, CFG 1) and Temporal Latent Dropout (K=3 after t=900) ->
the last latent's frames -> the sharpest -> a still clip of it (Still-Video Refiner) -> its sharpest frame.

Models (videoprior-edit models download if-edit --models ComfyUI/models):
- diffusion_models/wan2.2_i2v_high_noise_14B_fp16.safetensors
- diffusion_models/wan2.2_i2v_low_noise_14B_fp16.safetensors (or the _fp8_scaled pair)
- loras/wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors
- loras/wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors
- text_encoders/umt5_xxl_fp16.safetensors, vae/wan_2.1_vae.safetensors
{vlm}
GPU memory (weights, bf16): all_on_device ~70 GB; one_expert (default: one expert or the text encoder at
a time) ~29 GB; with weight_storage fp8_e4m3fn ~15 GB (24 GB cards); block_offload < 4 GB (slow).
Activations at 480p x 33 frames come on top.

Tweak: tld_k 1 turns TLD off (slower, same quality per the paper); tld_keep_last keeps the clip's last
latent; more frames let bigger changes play out; the refiner's mode sdedit is cheaper."""

VLM_LINES = {"template": "No VLM: the template rewriter writes a simple evolution prompt.",
             "openai": "VLM: an OpenAI-compatible server (default Ollama at 127.0.0.1:11434 with qwen3-vl:8b; the paper\n"
                       "used Qwen3-VL-30B-A3B-Instruct). Put an API key in an environment variable and write its\n"
                       "NAME in api_key_env. An unreachable server stops the run with a message naming the URL; backend\n"
                       "'local' runs a Qwen-VL from models/LLM instead, 'template' needs no VLM."}


def if_edit(g: Graph, backend: str) -> None:
    image = g.node("LoadImage", (40, 80), "Source image", (320, 320), image="example.png")
    loader = g.node("VPE_WanModelLoader", (40, 460), "Wan2.2-I2V-A14B", (380, 280),
                    model="wan2.2_i2v_high_noise_14B_fp16.safetensors",
                    model_low_noise="wan2.2_i2v_low_noise_14B_fp16.safetensors",
                    text_encoder="umt5_xxl_fp16.safetensors", vae="wan_2.1_vae.safetensors", clip_vision="none",
                    precision="bf16", placement="one_expert")
    high = g.node("VPE_WanLoraLoader", (460, 460), "Lightning (high noise)", (340, 130),
                  lora="wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors", strength=1.0, expert="high")
    low = g.node("VPE_WanLoraLoader", (460, 620), "Lightning (low noise)", (340, 130),
                 lora="wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors", strength=1.0, expert="low")
    rewrite = g.node("VPE_PromptRewriter", (440, 80), "Evolution prompt", (380, 340),
                     instruction="take the paper card out of her hand", mode="edit", backend=backend,
                     local_model="none", seed=0)
    editor = g.node("VPE_IFEditImageToVideo", (860, 80), "I2V edit with TLD", (380, 560), seed=42)
    tail = g.node("VPE_DecodeLastFrames", (1280, 80), "Last latent's frames", (320, 130), tail_latents=1, exact=True)
    pick = g.node("VPE_SharpestFrame", (1280, 260), "Sharpest candidate", (320, 130))
    refine = g.node("VPE_StillVideoRefiner", (1640, 80), "Still-video refine", (380, 460), seed=42)
    save = g.node("SaveImage", (2060, 80), "Edited image", (380, 380), filename_prefix="videoprior/if_edit")
    for src, out, dst, name in ((loader, "wan_models", high, "wan_models"), (high, "wan_models", low, "wan_models"),
                                (image, "IMAGE", rewrite, "image"), (low, "wan_models", rewrite, "wan_models"),
                                (low, "wan_models", editor, "wan_models"), (image, "IMAGE", editor, "image"),
                                (rewrite, "prompt", editor, "prompt"), (low, "wan_models", tail, "wan_models"),
                                (editor, "wan_latents", tail, "wan_latents"), (tail, "frames", pick, "images"),
                                (low, "wan_models", refine, "wan_models"), (pick, "frame", refine, "image"),
                                (refine, "refined_frame", save, "images")):
        g.link(src, out, dst, name)
    what = "no VLM: template rewriter" if backend == "template" else "full chain with a VLM rewriter"
    g.note(IF_EDIT_NOTE.format(what=what, vlm=VLM_LINES[backend]), (860, 700), (640, 470))


BYG_IMAGE_NOTE = """ByG image edit on FLUX.1-dev with an editing LoRA

The source image's tokens sit beside the noisy tokens under the same positions (ByG; 'kontext' offsets
them); the LoRA teaches FLUX to edit as the instruction says. 20 steps, guidance 3.5 (the paper's).

Models (videoprior-edit models download byg-image --models ComfyUI/models; FLUX.1-dev is gated: accept
its license on Hugging Face and set HF_TOKEN):
- diffusion_models/flux1-dev.safetensors
- text_encoders/clip_l.safetensors, text_encoders/t5xxl_fp16.safetensors (or t5xxl_fp8_e4m3fn)
- vae/ae.safetensors
- loras/byg_flux_lora.safetensors: train it with `videoprior-edit train-byg --family flux`, or pick any
  FLUX.1-dev editing LoRA (kohya, BFL or diffusers format; the node says how many keys matched).

GPU memory (weights, bf16; estimates from file sizes): everything resident ~34 GB; the text encoders
are released after encoding, as with one_expert on Wan (~24 GB); weight_storage fp8_e4m3fn ~13 GB.
Activations at 1024 px come on top (the source tokens double the sequence).

Tweak: LoRA strength 0.6-1.2; guidance 2.5-4; max_side 768 for speed; merge off to try strengths fast."""


def byg_image(g: Graph) -> None:
    image = g.node("LoadImage", (40, 80), "Source image", (320, 320), image="example.png")
    loader = g.node("VPE_FluxModelLoader", (40, 460), "FLUX.1-dev", (380, 230), model="flux1-dev.safetensors",
                    clip_l="clip_l.safetensors", t5xxl="t5xxl_fp16.safetensors", vae="ae.safetensors",
                    precision="bf16")
    lora = g.node("VPE_FluxLoraLoader", (460, 460), "ByG editing LoRA", (340, 150),
                  lora="byg_flux_lora.safetensors", strength=1.0)
    editor = g.node("VPE_ByGImageEdit", (840, 80), "ByG image edit", (380, 400),
                    instruction="make it a snowy winter evening", steps=20, guidance=3.5, seed=42)
    save = g.node("SaveImage", (1260, 80), "Edited image", (360, 380), filename_prefix="videoprior/byg_image")
    for src, out, dst, name in ((loader, "flux_models", lora, "flux_models"), (lora, "flux_models", editor,
                                "flux_models"), (image, "IMAGE", editor, "image"), (editor, "edited", save, "images")):
        g.link(src, out, dst, name)
    g.note(BYG_IMAGE_NOTE, (460, 660), (620, 420))


BYG_VIDEO_NOTE = """ByG video edit on Wan2.2-T2V-A14B with editing LoRAs

The source video's clean latents are concatenated with the noisy ones under the same positions; the
LoRAs (one per expert) make the T2V model edit as the instruction says. UniPC at Wan's native
resolution (832x480, 81 frames at 16 fps; fewer frames for a quick try); steps/CFG 0 = Wan2.2's
defaults (40 steps, CFG 4 / 3, shift 12).

Models (videoprior-edit models download byg-video --models ComfyUI/models):
- diffusion_models/wan2.2_t2v_high_noise_14B_fp16.safetensors
- diffusion_models/wan2.2_t2v_low_noise_14B_fp16.safetensors (or the _fp8_scaled pair)
- text_encoders/umt5_xxl_fp16.safetensors, vae/wan_2.1_vae.safetensors
- loras/byg_lora_high_noise.safetensors, loras/byg_lora_low_noise.safetensors: train them with
  `videoprior-edit train-byg --expert both`, or pick any Wan2.2-T2V editing LoRA pair.

GPU memory (weights, bf16; estimates from file sizes): all_on_device ~70 GB; one_expert (default: one
expert or the text encoder at a time) ~29 GB; with weight_storage fp8_e4m3fn ~15 GB; block_offload
< 4 GB (slow). The source tokens double the attention sequence: activations at 480p x 81 frames are
large, so start with 33 frames.

Tweak: source_timestep zero gives the source tokens t=0; positions offset moves them after the clip;
LoRA strengths 0.6-1.2; merge off to try strengths without reloading."""


def byg_video(g: Graph) -> None:
    video = g.node("LoadVideo", (40, 80), "Source video", (320, 320), file="example.mp4")
    loader = g.node("VPE_WanModelLoader", (40, 460), "Wan2.2-T2V-A14B", (380, 280),
                    model="wan2.2_t2v_high_noise_14B_fp16.safetensors",
                    model_low_noise="wan2.2_t2v_low_noise_14B_fp16.safetensors",
                    text_encoder="umt5_xxl_fp16.safetensors", vae="wan_2.1_vae.safetensors", clip_vision="none",
                    precision="bf16", placement="one_expert")
    high = g.node("VPE_WanLoraLoader", (460, 460), "ByG LoRA (high noise)", (340, 130),
                  lora="byg_lora_high_noise.safetensors", strength=1.0, expert="high")
    low = g.node("VPE_WanLoraLoader", (460, 620), "ByG LoRA (low noise)", (340, 130),
                 lora="byg_lora_low_noise.safetensors", strength=1.0, expert="low")
    editor = g.node("VPE_ByGVideoEdit", (860, 80), "ByG video edit", (380, 520),
                    instruction="turn the scene into a snowy winter day", scheduler="unipc", seed=42)
    make = g.node("CreateVideo", (1280, 80), "Edited clip", (300, 120), fps=16.0)
    save = g.node("SaveVideo", (1620, 80), "Save video", (380, 380), filename_prefix="videoprior/byg_video")
    for src, out, dst, name in ((loader, "wan_models", high, "wan_models"), (high, "wan_models", low, "wan_models"),
                                (low, "wan_models", editor, "wan_models"), (video, "VIDEO", editor, "video"),
                                (editor, "frames", make, "images"), (editor, "frame_rate", make, "fps"),
                                (make, "VIDEO", save, "video")):
        g.link(src, out, dst, name)
    g.note(BYG_VIDEO_NOTE, (860, 660), (660, 470))


IMVIDEOEDIT_NOTE = """ImVideoEdit spatial-difference video edit on Wan2.1-T2V-1.3B

A trained adapter (Predict-Update attention blocks + a text gate) on the frozen T2V model edits the
source video frame by frame in space while the model keeps the motion. 50 UniPC steps, CFG 5, shift 3.

Models (videoprior-edit models download imvideoedit --models ComfyUI/models):
- diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors
- text_encoders/umt5_xxl_fp16.safetensors, vae/wan_2.1_vae.safetensors
- loras/imvideoedit_adapter.safetensors: train it from image pairs with
  `videoprior-edit train-imvideoedit` (no adapter is published).

GPU memory (weights, bf16; estimates from file sizes): all_on_device ~15 GB; one_expert (default: the
text encoder, then the model) ~4 GB; block_offload < 2 GB. Activations at 480p x 81 frames on top.

Tweak: strength < 1 starts from the noised source (closer to it); fewer frames for a quick try; the
prompt describes the edited video, not the change."""


def imvideoedit(g: Graph) -> None:
    video = g.node("LoadVideo", (40, 80), "Source video", (320, 320), file="example.mp4")
    loader = g.node("VPE_WanModelLoader", (40, 460), "Wan2.1-T2V-1.3B", (380, 280),
                    model="wan2.1_t2v_1.3B_fp16.safetensors", model_low_noise="none",
                    text_encoder="umt5_xxl_fp16.safetensors", vae="wan_2.1_vae.safetensors", clip_vision="none",
                    precision="bf16", placement="one_expert")
    adapter = g.node("VPE_ImVideoEditAdapterLoader", (460, 460), "ImVideoEdit adapter", (340, 130),
                     adapter="imvideoedit_adapter.safetensors")
    editor = g.node("VPE_ImVideoEditVideoEdit", (860, 80), "ImVideoEdit video edit", (380, 520),
                    prompt="a red sports car drives along a snowy mountain road", seed=42)
    make = g.node("CreateVideo", (1280, 80), "Edited clip", (300, 120), fps=16.0)
    save = g.node("SaveVideo", (1620, 80), "Save video", (380, 380), filename_prefix="videoprior/imvideoedit")
    for src, out, dst, name in ((loader, "wan_models", adapter, "wan_models"), (loader, "wan_models", editor,
                                "wan_models"), (adapter, "adapter", editor, "adapter"), (video, "VIDEO", editor, "video"),
                                (editor, "frames", make, "images"), (editor, "fps", make, "fps"),
                                (make, "VIDEO", save, "video")):
        g.link(src, out, dst, name)
    g.note(IMVIDEOEDIT_NOTE, (460, 660), (620, 400))


WORKFLOWS = {"video4edit_chronoedit_tail_frame_edit": chronoedit,
             "byg_image_edit_flux_lora": byg_image,
             "byg_video_edit_wan22_t2v_lora": byg_video,
             "imvideoedit_spatial_difference_video_edit": imvideoedit,
             "if_edit_image_edit_full": lambda g: if_edit(g, "openai"),
             "if_edit_image_edit_no_vlm": lambda g: if_edit(g, "template")}


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


def build(out: Path = HERE) -> list[Path]:
    written, all_schemas = [], schemas()
    (out / "api").mkdir(exist_ok=True)
    for name, make in WORKFLOWS.items():
        graph = Graph(all_schemas)
        make(graph)
        ui = graph.to_ui()
        for path, data in ((out / f"{name}.json", ui), (out / "api" / f"{name}.json", ui_to_api(ui, all_schemas))):
            path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
            written.append(path)
        thumbnail(ui, out / f"{name}.jpg", name.replace("_", " "))
        written.append(out / f"{name}.jpg")
    return written


if __name__ == "__main__":
    for path in build():
        print(path.relative_to(REPO))
