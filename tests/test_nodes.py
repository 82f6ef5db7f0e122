"""The pack as ComfyUI sees it: import under a folder name, node schema rules, the loader node on the tiny zoo."""

from __future__ import annotations

import ast
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def test_every_node_is_v3_prefixed_categorised_and_tooltipped(pack):
    """V3 nodes (comfy_api.latest): the extension lists them all, each schema valid for ComfyUI and explained."""
    import asyncio

    from comfy_api.latest import ComfyExtension, io

    extension = asyncio.run(pack.comfy_entrypoint())
    assert isinstance(extension, ComfyExtension)
    listed = asyncio.run(extension.get_node_list())
    by_id = pack.nodes.nodes_by_id()
    assert listed == pack.nodes.NODES and len(by_id) == len(listed) == 25
    for node_id, cls in by_id.items():
        assert issubclass(cls, io.ComfyNode) and "INPUT_TYPES" not in vars(cls)  # no V1 leftovers
        cls.VALIDATE_CLASS()
        schema = cls.GET_SCHEMA()  # validates the schema the way ComfyUI does
        assert node_id.startswith("VPE_") and schema.display_name and len(schema.description) > 30, node_id
        assert schema.category.startswith("VideoPriorEdit/")
        info = cls.GET_NODE_INFO_V1()
        for section in info["input"].values():
            for name, spec in section.items():
                assert isinstance(spec[1].get("tooltip"), str) and len(spec[1]["tooltip"]) > 10, (node_id, name)
        assert all(isinstance(t, str) and len(t) > 5 for t in info["output_tooltips"]), node_id


COMFY_MODULES = {"comfy", "folder_paths", "comfy_extras", "comfy_api", "server", "nodes"}


def comfy_imports(path: Path) -> set[str]:
    """ComfyUI modules a file imports (absolute imports only; the pack's own `..nodes` is relative)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.add((node.module or "").split(".")[0])
    return found & COMFY_MODULES


def test_library_never_imports_comfyui():
    for path in (REPO / "videoprior_edit").rglob("*.py"):
        assert not comfy_imports(path), path


def test_only_the_host_bridge_and_the_native_adapters_touch_comfyui():
    """Every node module declares its nodes with ComfyUI's V3 API (`comfy_api`); beyond that, the nodes on the pack's
    own models reach ComfyUI through host.py only, and the native nodes (nodes/native/) import ComfyUI's model code
    only inside the functions that run in it."""
    for path in (REPO / "nodes").rglob("*.py"):
        top = ast.parse(path.read_text()).body
        at_top = set().union(*(comfy_imports_of(n) for n in top if isinstance(n, (ast.Import, ast.ImportFrom))
                               and getattr(n, "level", 0) == 0))
        if path.name == "host.py":
            assert at_top == {"comfy_api"}, at_top  # comfy.model_management / folder_paths in a guarded try
            continue
        assert at_top <= {"comfy_api"}, path
        if path.parent.name != "native":
            assert comfy_imports(path) <= {"comfy_api"}, path


def comfy_imports_of(node) -> set[str]:
    names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
    return {n.split(".")[0] for n in names} & COMFY_MODULES


def test_host_fallbacks_without_comfyui(pack, zoo, monkeypatch):
    host = pack.nodes.host
    assert not host.in_comfyui()
    assert host.device().type in ("cpu", "cuda", "mps")
    monkeypatch.setenv("VPE_MODELS_DIR", str(zoo.models))
    assert "tiny_umt5_xxl_fp32.safetensors" in host.model_choices("text_encoders")
    assert host.model_choices("clip_vision", optional=True)[0] == "none"
    bar = host.Progress(3)
    for _ in range(3):
        bar()
    assert bar._bar.n == 3
    bar.close()


def test_wan_loader_node_loads_the_zoo(pack, zoo, monkeypatch):
    monkeypatch.setenv("VPE_MODELS_DIR", str(zoo.models))
    node = pack.nodes.nodes_by_id()["VPE_WanModelLoader"]
    choices = node.GET_NODE_INFO_V1()["input"]["required"]["model"][1]["options"]
    assert zoo.file("wan22_i2v_high").name in choices
    (models,) = node.execute(zoo.file("wan22_i2v_high").name, zoo.file("wan22_i2v_low").name,
                          zoo.file("umt5").name, zoo.file("vae").name, "none", "fp32", "default")
    assert models.variant == "wan2.2-i2v-a14b" and models.boundary_ratio == 0.9
    assert models.transformer.dtype == torch.float32 and models.vae.dtype == torch.float32
    (small,) = node.execute(zoo.file("wan21_t2v").name, "none", zoo.file("umt5").name, zoo.file("vae").name,
                         "none", "bf16", "fp8_e4m3fn")
    assert small.transformer.blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn


def test_model_folders_are_listed_whole(zoo):
    from videoprior_edit.folders import list_models_in

    assert list_models_in(zoo.root / "official") == ["Wan2.2-I2V-A14B-tiny/high_noise_model",
                                                     "Wan2.2-I2V-A14B-tiny/low_noise_model"]
    assert "Wan2.2-I2V-A14B-tiny" in list_models_in(zoo.root / "diffusers")
    assert not any("/" in n for n in list_models_in(zoo.root / "diffusers"))  # shards are not listed one by one


def _zoo_set(pack, zoo, monkeypatch):
    monkeypatch.setenv("VPE_MODELS_DIR", str(zoo.models))
    loader = pack.nodes.nodes_by_id()["VPE_WanModelLoader"]
    (models,) = loader.execute(zoo.file("wan22_i2v_high").name, zoo.file("wan22_i2v_low").name, zoo.file("umt5").name,
                            zoo.file("vae").name, "none", "fp32", "default")
    return models


def test_editor_node_matches_the_library_and_reports_adjustments(pack, zoo, monkeypatch):
    from videoprior_edit.if_edit import edit_image
    from videoprior_edit.sampling.condition import denormalize_latents

    models = _zoo_set(pack, zoo, monkeypatch)
    node = pack.nodes.nodes_by_id()["VPE_IFEditImageToVideo"]
    required = node.GET_NODE_INFO_V1()["input"]["required"]
    assert (required["frames"][1]["default"], required["steps"][1]["default"], required["tld_k"][1]["default"],
            required["tld_threshold"][1]["default"], required["scheduler"][1]["default"],
            required["tld_keep_last"][1]["default"]) == (33, 8, 3, 0.9, "lightning", False)
    image = torch.rand(1, 50, 70, 3, generator=torch.Generator().manual_seed(0))
    out = node.execute(models, image, "a red cat", "", 32, 8, 1.0, 1.0, 5.0, "lightning", 7, True, 3, 0.9, True,
                    "original", size_mode="pad", max_side=0)
    frames, last, wan_latents, latent, info = out.args
    assert frames.shape == (13, 50, 70, 3) and torch.equal(last, frames[-1:])  # 33 frames, TLD keeps 4 latents
    assert wan_latents["positions"] == [0, 3, 6, 8] and wan_latents["latents"].shape == (1, 16, 4, 8, 10)
    assert torch.equal(latent["samples"], denormalize_latents(models.vae, wan_latents["latents"]))
    assert "32 frames -> 33" in info and "padded to 80x64" in info and "kept latent frames [0, 3, 6, 8]" in info
    assert out.ui["text"] == [info]
    ref = edit_image(models, image, "a red cat", "", 32, 8, "lightning", 5.0, 1.0, 1.0, 7, 3, 0.9, True, "original",
                     "slice", "pad", 0)
    assert torch.equal(ref.frames, frames)
    off = node.execute(models, image, "a red cat", "", 33, 8, 1.0, 1.0, 5.0, "lightning", 7, False, 3, 0.9, True,
                    "original", size_mode="crop", max_side=0).args
    assert off[0].shape == (33, 48, 64, 3) and off[2]["positions"] == list(range(9))


def test_lora_node_returns_a_new_set_and_leaves_the_input_alone(pack, zoo, monkeypatch):
    from videoprior_edit.lora import wanted_loras

    models = _zoo_set(pack, zoo, monkeypatch)
    node = pack.nodes.nodes_by_id()["VPE_WanLoraLoader"]
    assert zoo.file("lightning_high").name in node.GET_NODE_INFO_V1()["input"]["required"]["lora"][1]["options"]
    q = models.transformer.blocks[0].attn1.to_q.weight.clone()
    out = node.execute(models, zoo.file("lightning_high").name, 1.0, "high")
    (lit,) = out.args  # the load summary is shown on the node
    assert out.ui["text"] == [(f"LoRA '{zoo.file('lightning_high').name}' (original names (diffusion_model.*), "
                                 "fp32, rank 4) at strength 1 merged into 20 of its 20 modules (60 of 60 keys) of the "
                                 "high-noise expert.")]
    (lit,) = node.execute(lit, zoo.file("lightning_low").name, 1.0, "low").args
    assert models.loras == [] and len(lit.loras) == 2 and lit.transformer is models.transformer
    assert wanted_loras(lit, "transformer") == ((str(zoo.file("lightning_high")), 1.0),)
    assert not torch.equal(lit.transformer.blocks[0].attn1.to_q.weight, q)  # merged


def test_library_warnings_are_shown_on_the_node(pack):
    import logging
    import threading

    from comfy_api.latest import io

    from videoprior_edit.rewrite import log as rewrite_log

    host = __import__(pack.__name__ + ".nodes.host", fromlist=["reported"])

    def node_function(already: str):
        rewrite_log.warning("the VLM answer was empty")
        rewrite_log.info("not shown: an ordinary info line")
        logging.getLogger("videoprior_edit.lora").info("LoRA 'x' merged into 4 of its 4 modules.")
        elsewhere = threading.Thread(target=lambda: rewrite_log.warning("another node's warning"))
        elsewhere.start()
        elsewhere.join()
        return io.NodeOutput("out", ui={"text": [already]}) if already else ("out",)

    wrapped = host.reported(node_function)
    out = wrapped("")
    assert out.args == ("out",) and out.ui == {"text": ["Warning: the VLM answer was empty",
                                                        "LoRA 'x' merged into 4 of its 4 modules."]}
    shown = wrapped("Warning: the VLM answer was empty\nprompt")  # a line the node already shows is not repeated
    assert shown.ui["text"] == ["LoRA 'x' merged into 4 of its 4 modules.",
                                "Warning: the VLM answer was empty\nprompt"]
    quiet = host.reported(lambda: ("quiet",))()  # nothing said: no ui
    assert quiet.args == ("quiet",) and quiet.ui is None
    assert logging.getLogger("videoprior_edit").handlers == []
    for cls in pack.nodes.nodes_by_id().values():
        assert getattr(cls.execute, "vpe_reported", False)


def test_web_extension_shows_reports_without_saving_them(pack):
    assert pack.WEB_DIRECTORY == "./web"
    script = (REPO / "web" / "js" / "node_report.js").read_text()
    assert 'startsWith("VPE_")' in script and "onExecuted" in script and "message?.text" in script
    assert "widget.serialize = false" in script  # the report box never shifts a saved workflow's widget values


def test_long_nodes_preview_a_few_small_frames_inside_comfyui(pack, tmp_path, monkeypatch):
    from PIL import Image

    host = __import__(pack.__name__ + ".nodes.host", fromlist=["node_output"])
    frames = torch.arange(9.0).div(8).view(9, 1, 1, 1).expand(9, 600, 300, 3)  # frame i is grey i/8
    outside = host.node_output("info", (frames,), preview=frames)
    assert outside.args == (frames,) and outside.ui == {"text": ["info"]}

    class Folders:  # what the host asks ComfyUI's folder_paths for
        @staticmethod
        def get_temp_directory():
            return str(tmp_path / "temp")

    monkeypatch.setattr(host, "_fp", Folders)
    out = host.node_output("info", (frames,), preview=frames)
    shown = out.ui["images"]
    assert len(shown) == 4 and all(s["type"] == "temp" and s["subfolder"] == "" for s in shown)
    pictures = [Image.open(tmp_path / "temp" / s["filename"]) for s in shown]
    assert all(p.size == (128, 256) for p in pictures)  # aspect kept, longest side 256
    assert [p.getpixel((5, 5)) for p in pictures] == [(round(i / 8 * 255),) * 3 for i in (0, 3, 5, 8)]
    assert len(host.preview_images(frames[:1])) == 1
