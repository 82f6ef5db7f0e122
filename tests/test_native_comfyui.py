"""The native nodes in a real ComfyUI (the session's `comfy` fixture), on ComfyUI's own MODEL / CONDITIONING / LATENT.

Graphs load the tiny zoo with ComfyUI's loaders (UNETLoader, VAELoader; the UMT5 through the test stand-in loader,
see tests/comfy_nodes) and save their latents with SaveLatent and their patched weights with ModelSave; the files
are compared here, against core's own graphs and against the library.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

PROMPT, NEGATIVE = "the cat slowly walks out of the frame", "blurry, static"
SEED, STEPS, FRAMES = 7, 8, 33


def _base(zoo, lora: bool = True) -> dict:
    """Loaders, shift 5, prompts and WanImageToVideo (64x48, 33 frames): the front of a Wan2.2-I2V-A14B graph."""
    g = {
        "high": {"class_type": "UNETLoader", "inputs": {"unet_name": zoo.file("wan22_i2v_high").name,
                                                        "weight_dtype": "default"}},
        "low": {"class_type": "UNETLoader", "inputs": {"unet_name": zoo.file("wan22_i2v_low").name,
                                                       "weight_dtype": "default"}},
        "clip": {"class_type": "VPETest_TinyTextEncoderLoader", "inputs": {"clip_name": zoo.file("umt5").name,
                                                                            "type": "wan"}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": zoo.file("vae").name}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": PROMPT}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": NEGATIVE}},
        "image": {"class_type": "LoadImage", "inputs": {"image": "vpe_64x48.png"}},
        "i2v": {"class_type": "WanImageToVideo", "inputs": {
            "positive": ["pos", 0], "negative": ["neg", 0], "vae": ["vae", 0], "width": 64, "height": 48,
            "length": FRAMES, "batch_size": 1, "start_image": ["image", 0]}},
    }
    for expert in ("high", "low"):
        source = [expert, 0]
        if lora:
            g[f"lora_{expert}"] = {"class_type": "VPE_LoraLoaderModelOnly", "inputs": {
                "model": source, "lora_name": zoo.file(f"lightning_{expert}").name, "strength_model": 1.0}}
            source = [f"lora_{expert}", 0]
        g[f"shift_{expert}"] = {"class_type": "ModelSamplingSD3", "inputs": {"model": source, "shift": 5.0}}
    return g


def _ksampler(model, positive, negative, latent, first: bool) -> dict:
    return {"class_type": "KSamplerAdvanced", "inputs": {
        "model": model, "add_noise": "enable" if first else "disable", "noise_seed": SEED, "steps": STEPS, "cfg": 1.0,
        "sampler_name": "euler", "scheduler": "simple", "positive": positive, "negative": negative,
        "latent_image": latent, "start_at_step": 0 if first else 3, "end_at_step": 3 if first else 10000,
        "return_with_leftover_noise": "enable" if first else "disable"}}


def _two_pass(zoo, tld: dict | None = None, lora: bool = True) -> dict:
    """Core's Wan2.2 two-pass graph (high-noise steps 0-2, low-noise 3-7), with our TLD node between if `tld`."""
    g = _base(zoo, lora)
    g["first"] = _ksampler(["shift_high", 0], ["i2v", 0], ["i2v", 1], ["i2v", 2], first=True)
    model, pos, neg, latent = ["shift_low", 0], ["i2v", 0], ["i2v", 1], ["first", 0]
    if tld is not None:
        g["tld"] = {"class_type": "VPE_TemporalLatentDropout", "inputs": {
            "model": model, "positive": pos, "negative": neg, "latent": latent, **tld}}
        model, pos, neg, latent = ["tld", 0], ["tld", 1], ["tld", 2], ["tld", 3]
    g["second"] = _ksampler(model, pos, neg, latent, first=False)
    return g


def _sampler_box(zoo, k: int, **options) -> dict:
    g = _base(zoo)
    g["second"] = {"class_type": "VPE_IFEditSampler", "inputs": {
        "model_high_noise": ["shift_high", 0], "model_low_noise": ["shift_low", 0], "positive": ["i2v", 0],
        "negative": ["i2v", 1], "latent": ["i2v", 2], "seed": SEED, "steps": STEPS, "cfg_high_noise": 1.0,
        "cfg_low_noise": 1.0, "sampler_name": "euler", "scheduler": "simple", "boundary": 0.9, "tld_k": k,
        "tld_keep_last": options.get("keep_last", False), "tld_rope": options.get("rope", "original")}}
    return g


def _latent(comfy, graph: dict, name: str) -> tuple[torch.Tensor, dict]:
    """Run `graph` with a SaveLatent after its node "second": the saved latent (raw VAE scale) and the history."""
    graph["save"] = {"class_type": "SaveLatent", "inputs": {"samples": ["second", 0], "filename_prefix": f"vpe/{name}"}}
    history = comfy.run(graph)
    saved = history["outputs"]["save"]["latents"][0]
    path = comfy.base / "output" / saved["subfolder"] / saved["filename"]
    return load_file(str(path))["latent_tensor"], history


@pytest.fixture(scope="module")
def picture(comfy):
    from comfy_host import source_image

    source_image().resize((64, 48)).save(comfy.base / "input" / "vpe_64x48.png")  # no resizing inside the graphs
    return comfy.base / "input" / "vpe_64x48.png"


@pytest.fixture(scope="module")
def core_two_pass(comfy, zoo, picture):
    return _latent(comfy, _two_pass(zoo), "core_two_pass")[0]


def test_tld_k1_gives_exactly_core_two_pass_graph(comfy, zoo, core_two_pass):
    ours, history = _latent(comfy, _two_pass(zoo, {"k": 1, "keep_last": False, "rope": "original"}), "tld_k1")
    assert core_two_pass.shape == (1, 16, 9, 6, 8)
    assert torch.equal(ours, core_two_pass)  # max abs diff 0
    assert history["outputs"]["tld"]["text"] == ["K=1: nothing dropped"]
    box, _ = _latent(comfy, _sampler_box(zoo, k=1), "box_k1")
    assert torch.equal(box, core_two_pass)  # the one-box sampler is the same two passes


@pytest.fixture(scope="module")
def tld_k3(comfy, zoo, picture):
    return _latent(comfy, _two_pass(zoo, {"k": 3, "keep_last": False, "rope": "original"}), "tld_k3")


def test_tld_k3_keeps_the_library_frames_at_their_positions(comfy, zoo, tld_k3, core_two_pass):
    from videoprior_edit.sampling.frames import tld_plan

    latent, history = tld_k3
    plan = tld_plan(9, 3)
    assert plan.kept == plan.positions == [0, 3, 6]
    assert latent.shape == (1, 16, 3, 6, 8)
    report = history["outputs"]["tld"]["text"][0]
    assert f"kept latent frames {plan.kept} of 9 at temporal positions {plan.positions}" in report
    assert "decodes to 9 frames (was 33)" in report
    box, box_history = _latent(comfy, _sampler_box(zoo, k=3), "box_k3")
    assert torch.equal(box, latent)  # one box = KSamplerAdvanced, TLD, KSamplerAdvanced
    assert "TLD at step 3" in box_history["outputs"]["second"]["text"][0]
    # the positions matter: compact positions (0, 1, 2) give another result; keep_last's [0, 3, 6, 8] goes through
    # the rope_encode object patch (not evenly spaced) and its first three frames differ from [0, 3, 6]'s only
    # through the fourth frame's attention
    compact, _ = _latent(comfy, _two_pass(zoo, {"k": 3, "keep_last": False, "rope": "compact"}), "tld_compact")
    last, last_history = _latent(comfy, _two_pass(zoo, {"k": 3, "keep_last": True, "rope": "original"}), "tld_last")
    assert (compact - latent).abs().max() > 1e-3
    assert last.shape[2] == 4 and "[0, 3, 6, 8]" in last_history["outputs"]["tld"]["text"][0]


def _library_edit(zoo, picture, k: int, keep_last: bool = False, rope: str = "original"):
    """The library's IF-Edit sampling on the same zoo files: final latents (normalised) and their positions."""
    import numpy as np
    from PIL import Image

    from videoprior_edit.lora import add_lora
    from videoprior_edit.models.sets import load_wan_models
    from videoprior_edit.sampling import Guidance, TemporalLatentDropout, sample_i2v
    from videoprior_edit.sampling.condition import image_from_uint8

    models = load_wan_models(zoo.file("wan22_i2v_high"), zoo.file("wan22_i2v_low"), zoo.file("umt5"), zoo.file("vae"),
                             dtype="fp32")
    for expert in ("high", "low"):
        add_lora(models, zoo.file(f"lightning_{expert}"), 1.0, expert)
    image = image_from_uint8(np.asarray(Image.open(picture).convert("RGB")))
    hooks = [TemporalLatentDropout(k, keep_last=keep_last, rope=rope)] if k > 1 else []
    result = sample_i2v(models, image, PROMPT, NEGATIVE, FRAMES, STEPS, "lightning", 5.0, Guidance(1.0, 1.0), SEED,
                        hooks=hooks, decode_video=False)
    return result.latents, result.positions, models


def _normalised(raw: torch.Tensor, models) -> torch.Tensor:
    config = models.vae.config
    mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(config.latents_std).view(1, -1, 1, 1, 1)
    return (raw.float() - mean) / std


def test_native_and_library_tld_agree(zoo, picture, tld_k3, core_two_pass):
    """Two implementations of Wan (ComfyUI's and diffusers'), of UMT5 and of the VAE, on the same zoo weights."""
    ours, positions, models = _library_edit(zoo, picture, k=3)
    native = _normalised(tld_k3[0], models)
    assert positions == [0, 3, 6] and ours.shape == native.shape
    gap = (ours - native).abs().max().item()
    full, _, _ = _library_edit(zoo, picture, k=1)
    gap_k1 = (full - _normalised(core_two_pass, models)).abs().max().item()
    scale = ours.abs().max().item()
    print(f"native vs library: TLD K=3 max abs diff {gap:.2e}, K=1 {gap_k1:.2e} (latents up to {scale:.2f})")
    assert gap < 2e-3 and gap_k1 < 2e-3  # the bound stated in the README (measured: ~1e-5)
    compact, _, _ = _library_edit(zoo, picture, k=3, rope="compact")
    assert (compact - native).abs().max() > 50 * gap  # wrong positions are far outside the bound


# ----------------------------------------------------------------------------------------------------- LoRA
def _pairs(zoo) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """The zoo's Lightning LoRA (high expert) as {original module: (down, up, alpha)}."""
    sd = load_file(str(zoo.file("lightning_high")))
    out = {}
    for key in sd:
        if key.endswith(".lora_down.weight"):
            module = key[len("diffusion_model."):-len(".lora_down.weight")]
            out[module] = (sd[key], sd[key.replace("lora_down", "lora_up")],
                           float(sd[key.replace(".lora_down.weight", ".alpha")]))
    return out


def _layouts(zoo) -> dict[str, tuple[dict, dict, bool]]:
    """The same deltas in every layout: name -> (tensors, metadata, whether core's LoraLoaderModelOnly reads it)."""
    from videoprior_edit.models.wan_keys import wan_key_to_diffusers

    pairs = _pairs(zoo)
    diffusers = {m: wan_key_to_diffusers(m + ".weight")[:-len(".weight")] for m in pairs}
    out = {}
    out["lightx2v"] = ({f"diffusion_model.{m}.{n}": t for m, (d, u, a) in pairs.items()
                        for n, t in (("lora_down.weight", d), ("lora_up.weight", u), ("alpha", torch.tensor(a)))},
                       {}, True)
    out["musubi"] = ({f"lora_unet_{m.replace('.', '_')}.{n}": t for m, (d, u, a) in pairs.items()
                      for n, t in (("lora_down.weight", d), ("lora_up.weight", u), ("alpha", torch.tensor(a)))}, {}, True)
    partial = {m: v for m, v in pairs.items() if m.startswith("blocks.1.") and "self_attn" in m}
    out["musubi_partial"] = ({f"lora_unet_{m.replace('.', '_')}.{n}": t for m, (d, u, a) in partial.items()
                              for n, t in (("lora_down.weight", d), ("lora_up.weight", u), ("alpha", torch.tensor(a)))},
                             {}, True)
    out["ai_toolkit"] = ({f"diffusion_model.{m}.{n}": t for m, (d, u, a) in pairs.items()
                          for n, t in (("lora_A.weight", d), ("lora_B.weight", u * a / d.shape[0]))}, {}, True)
    alpha = next(iter(pairs.values()))[2]
    meta = {"lora_adapter_metadata": json.dumps({"r": 4, "lora_alpha": alpha})}
    out["diffusers_peft"] = ({f"transformer.{diffusers[m]}.{n}": t for m, (d, u, a) in pairs.items()
                              for n, t in (("lora_A.weight", d), ("lora_B.weight", u))}, meta, False)
    out["diffsynth_default"] = ({f"{m}.{n}": t for m, (d, u, a) in pairs.items()
                                 for n, t in (("lora_A.default.weight", d), ("lora_B.default.weight", u * a / d.shape[0]))},
                                {}, False)
    out["onetrainer"] = ({f"lora_transformer_{diffusers[m].replace('.', '_')}.{n}": t for m, (d, u, a) in pairs.items()
                          for n, t in (("lora_down.weight", d), ("lora_up.weight", u), ("alpha", torch.tensor(a)))},
                         {}, False)
    out["lycoris"] = ({f"lycoris_{m.replace('.', '_')}.{n}": t for m, (d, u, a) in pairs.items()
                       for n, t in (("lora_down.weight", d), ("lora_up.weight", u), ("alpha", torch.tensor(a)))},
                      {}, False)
    return out


def _save_model(comfy, zoo, name: str, loader: str | None, lora_file: str | None = None, strength: float = 0.8):
    """The high-noise expert with a LoRA applied by `loader` (core's or ours), saved by ModelSave: its tensors."""
    g = {"unet": {"class_type": "UNETLoader", "inputs": {"unet_name": zoo.file("wan22_i2v_high").name,
                                                         "weight_dtype": "default"}}}
    model = ["unet", 0]
    if loader:
        g["lora"] = {"class_type": loader, "inputs": {"model": model, "lora_name": lora_file,
                                                      "strength_model": strength}}
        model = ["lora", 0]
    g["save"] = {"class_type": "ModelSave", "inputs": {"model": model, "filename_prefix": f"vpe_models/{name}"}}
    history = comfy.run(g)
    found = sorted((comfy.base / "output" / "vpe_models").glob(f"{name}_*.safetensors"))
    sd = load_file(str(found[-1]))
    prefix = next(k for k in sd if k.endswith("patch_embedding.weight"))[:-len("patch_embedding.weight")]
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}, history


@pytest.fixture(scope="module")
def base_weights(comfy, zoo):
    return _save_model(comfy, zoo, "base", None)[0]


@pytest.mark.parametrize("layout", ["lightx2v", "musubi", "musubi_partial", "ai_toolkit", "diffusers_peft",
                                    "diffsynth_default", "onetrainer", "lycoris"])
def test_native_lora_equals_core_or_loads_what_core_drops(comfy, zoo, base_weights, layout):
    tensors, metadata, core_reads = _layouts(zoo)[layout]
    name = f"vpe_layout_{layout}.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, comfy.base / "models" / "loras" / name,
              metadata=metadata or None)
    ours, history = _save_model(comfy, zoo, f"ours_{layout}", "VPE_LoraLoaderModelOnly", name)
    core, _ = _save_model(comfy, zoo, f"core_{layout}", "LoraLoaderModelOnly", name)
    pairs = _pairs(zoo)
    if layout == "musubi_partial":
        pairs = {m: v for m, v in pairs.items() if m.startswith("blocks.1.") and "self_attn" in m}
    changed = {m + ".weight" for m in pairs}
    for key, value in ours.items():
        if key in changed:
            down, up, alpha = pairs[key[:-len(".weight")]]
            want = base_weights[key] + 0.8 * (alpha / down.shape[0]) * (up @ down)
            assert (value - want).abs().max() < 1e-5, key  # the hand merge
        else:
            assert torch.equal(value, base_weights[key]), key
    if core_reads:  # the same weights as core's own loader, bit for bit
        assert all(torch.equal(ours[k], core[k]) for k in ours)
    else:  # core's loader drops every key of this layout
        assert all(torch.equal(core[k], base_weights[k]) for k in core)
    report = history["outputs"]["lora"]["text"][0]
    assert f"{len(pairs)} of its {len(pairs)} modules" in report
    assert ("ComfyUI's own LoRA loader reads 0" in report) == (not core_reads)


def test_native_lora_loads_diff_keys_core_drops(comfy, zoo, base_weights):
    """lightx2v / Kijai full deltas: diff and diff_b (core reads them) and diff_m of the modulation (core drops it)."""
    gen = torch.Generator().manual_seed(3)
    dim = base_weights["blocks.0.self_attn.q.weight"].shape[0]
    extra = {"blocks.0.self_attn.q.diff_b": torch.randn(dim, generator=gen),
             "blocks.0.norm3.diff": torch.randn(dim, generator=gen),
             "blocks.1.diff_m": torch.randn(1, 6, dim, generator=gen)}
    tensors = {"diffusion_model." + k: v for k, v in extra.items()}
    save_file(tensors, comfy.base / "models" / "loras" / "vpe_diffs.safetensors")
    ours, _ = _save_model(comfy, zoo, "ours_diffs", "VPE_LoraLoaderModelOnly", "vpe_diffs.safetensors", 0.5)
    core, _ = _save_model(comfy, zoo, "core_diffs", "LoraLoaderModelOnly", "vpe_diffs.safetensors", 0.5)
    for key, target in (("blocks.0.self_attn.q.diff_b", "blocks.0.self_attn.q.bias"),
                        ("blocks.0.norm3.diff", "blocks.0.norm3.weight"), ("blocks.1.diff_m", "blocks.1.modulation")):
        want = base_weights[target] + 0.5 * extra[key].reshape(base_weights[target].shape)
        assert torch.allclose(ours[target], want, atol=1e-6), key
        if key != "blocks.1.diff_m":
            assert torch.equal(ours[target], core[target]), key
    assert torch.equal(core["blocks.1.modulation"], base_weights["blocks.1.modulation"])  # core dropped diff_m


def test_native_lora_for_another_base_is_refused_by_name(comfy, zoo):
    gen = torch.Generator().manual_seed(0)
    flux = {f"lora_unet_double_blocks_{i}_img_attn_qkv.{s}": torch.randn(4, 32, generator=gen)
            for i in range(2) for s in ("lora_down.weight", "lora_up.weight")}
    save_file(flux, comfy.base / "models" / "loras" / "vpe_flux_lora.safetensors")
    g = {"unet": {"class_type": "UNETLoader", "inputs": {"unet_name": zoo.file("wan22_i2v_high").name,
                                                         "weight_dtype": "default"}},
         "lora": {"class_type": "VPE_LoraLoaderModelOnly", "inputs": {
             "model": ["unet", 0], "lora_name": "vpe_flux_lora.safetensors", "strength_model": 1.0}},
         "save": {"class_type": "ModelSave", "inputs": {"model": ["lora", 0], "filename_prefix": "vpe_models/x"}}}
    history = comfy.run(g, expect_error=True)
    error = next(m[1] for m in history["status"]["messages"] if m[0] == "execution_error")
    assert "FLUX.1" in error["exception_message"] and "hidden size 256" in error["exception_message"]


def test_rewriter_takes_the_answer_of_comfyuis_own_generate_text(comfy):
    """The VLM can run as ComfyUI's Generate Text (its memory managed by ComfyUI): our request node writes its
    prompt, and the rewriter cleans and checks its answer (here a typical chatty answer given as a string)."""
    assert "TextGenerate" in comfy.get("/object_info")  # the core node the request and the answer are wired to
    answer = '<think>She holds a card.</think>\nPrompt: "She loosens her grip; the card slips out of frame."'
    g = {"request": {"class_type": "VPE_RewriterRequest", "inputs": {"instruction": "take the card out of her hand",
                                                                     "mode": "edit"}},
         "answer": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": answer}},
         "rewrite": {"class_type": "VPE_PromptRewriter", "inputs": {
             "instruction": "take the card out of her hand", "mode": "edit", "backend": "generated_text",
             "local_model": "none", "seed": 0, "vlm_answer": ["answer", 0]}},
         "show": {"class_type": "PreviewAny", "inputs": {"source": ["request", 0]}},
         "shown": {"class_type": "PreviewAny", "inputs": {"source": ["rewrite", 0]}}}
    history = comfy.run(g)
    assert history["outputs"]["rewrite"]["text"] == ["She loosens her grip; the card slips out of frame."]
    request = history["outputs"]["show"]["text"][0]
    assert "Instruction: take the card out of her hand" in request and request.rstrip().endswith("Answer:")
    g["answer"]["inputs"]["value"] = "<think>The user wants"  # cut off while thinking: the template takes over
    text = comfy.run(g)["outputs"]["rewrite"]["text"][0]
    assert text.startswith("Warning: The VLM's answer was not a usable prompt") and "card" in text


def _blueprint_graph(comfy, blueprint: dict, outer: dict) -> tuple[dict, str]:
    """The blueprint's inner graph as API nodes (what the frontend queues when the subgraph node runs), its inputs
    wired to `outer` {input name: [node id, slot]}; returns (nodes, id of the node its output comes from)."""
    from videoprior_edit.workflow import ui_to_api

    definition = blueprint["definitions"]["subgraphs"][0]
    inner = {"nodes": definition["nodes"],
             "links": [[l["id"], l["origin_id"], l["origin_slot"], l["target_id"], l["target_slot"], l["type"]]
                       for l in definition["links"]]}  # the input links are re-wired below
    api = {f"bp{k}": v for k, v in ui_to_api(inner, comfy.get("/object_info")).items()}
    for node in api.values():  # inner links point at inner ids: prefix them
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                node["inputs"][name] = [f"bp{value[0]}", value[1]]
    for link in definition["links"]:
        if link["origin_id"] == -10:
            name = definition["inputs"][link["origin_slot"]]["name"]
            target = next(n for n in definition["nodes"] if n["id"] == link["target_id"])
            api[f"bp{link['target_id']}"]["inputs"][target["inputs"][link["target_slot"]]["name"]] = outer[name]
    result = next(l for l in definition["links"] if l["target_id"] == -20)
    return api, f"bp{result['origin_id']}"


def _chronoedit_front(zoo) -> dict:
    return {"unet": {"class_type": "UNETLoader", "inputs": {"unet_name": zoo.file("wan21_i2v").name,
                                                            "weight_dtype": "default"}},
            "clip": {"class_type": "VPETest_TinyTextEncoderLoader", "inputs": {"clip_name": zoo.file("umt5").name,
                                                                                "type": "wan"}},
            "vision": {"class_type": "VPETest_TinyClipVisionLoader", "inputs": {
                "clip_name": zoo.file("clip_vision").name}},
            "vae": {"class_type": "VAELoader", "inputs": {"vae_name": zoo.file("vae").name}},
            "image": {"class_type": "LoadImage", "inputs": {"image": "vpe_64x48.png"}},
            "chrono": {"class_type": "VPE_ChronoEditPositions", "inputs": {"model": ["unet", 0]}}}


@pytest.mark.parametrize("name", ["Still-Video Refinement (IF-Edit)", "IF-Edit Image Edit",
                                  "ChronoEdit Reasoning Edit"])
def test_blueprints_are_served_and_run(comfy, zoo, picture, name):
    from pathlib import Path

    from PIL import Image

    listed = comfy.get("/global_subgraphs")
    ours = {v["name"]: k for k, v in listed.items() if v["info"]["node_pack"] == "custom_nodes.comfyui-videoprior-edit"}
    folder = Path(__file__).resolve().parent.parent / "subgraphs"
    assert sorted(ours) == sorted(p.stem for p in folder.glob("*.json"))
    served = json.loads(comfy.get(f"/global_subgraphs/{ours[name]}")["data"])
    assert served == json.loads((folder / f"{name}.json").read_text())
    if name == "ChronoEdit Reasoning Edit":
        g = _chronoedit_front(zoo)
        outer = {"image": ["image", 0], "model": ["chrono", 0], "clip": ["clip", 0], "clip_vision": ["vision", 0],
                 "vae": ["vae", 0]}
    else:
        g = _base(zoo)  # the edit's models, text encoder, VAE and negative prompt, as in the IF-Edit workflow
        outer = {"image": ["image", 0], "model_high_noise": ["shift_high", 0], "model_low_noise": ["shift_low", 0],
                 "clip": ["clip", 0], "negative": ["neg", 0], "vae": ["vae", 0]}
    api, result = _blueprint_graph(comfy, served, outer)
    g.update(api)
    g["save"] = {"class_type": "SaveImage", "inputs": {"images": [result, 0], "filename_prefix": "vpe/blueprint"}}
    saved = comfy.run(g)["outputs"]["save"]["images"]
    assert len(saved) == 1  # one edited / refined picture, at the picture's size
    with Image.open(comfy.base / "output" / saved[0]["subfolder"] / saved[0]["filename"]) as picture_out:
        assert picture_out.size == (64, 48)
