"""IF-Edit's prompt rewriter: sanitiser, template backend, the tiny Qwen-VL zoo through the real transformers path,
an OpenAI-compatible chat server on loopback, and the node."""

from __future__ import annotations

import base64
import io
import json
import logging
import shutil
import socket
import threading
import time
import types

import pytest
import torch

from videoprior_edit.errors import InputError, ModelFileError, VPEError
from videoprior_edit.rewrite import (
    EndpointError,
    backends,
    generation_tokens,
    make_backend,
    rewrite_prompt,
    template_prompt,
    unload_models,
)
from videoprior_edit.rewrite.prompts import KEEP_REST, STILL_PROMPT, system_prompt
from videoprior_edit.rewrite.sanitize import (
    estimate_tokens,
    fit_budget,
    problem,
    sanitize,
    thinking_cut_off,
    token_counter,
)

KEY = "sk-test-0123456789abcdefSECRET"
KEY_ENV = "VPE_TEST_REWRITER_KEY"
FAMILIES = ("qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")


def _image(h=40, w=56, seed=0):
    return torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(seed))


class Cancelled(Exception):
    """What ComfyUI's progress hook raises when the user presses Cancel."""


def _cancel_after(calls: int):
    seen = []

    def progress(n=1):
        seen.append(n)
        if len(seen) > calls:
            raise Cancelled

    return progress


def _clean(prompt: str) -> bool:
    """One paragraph of printable text without chat markup."""
    return (prompt == " ".join(prompt.split()) and "<|" not in prompt and "think>" not in prompt
            and "```" not in prompt and all(ch.isprintable() for ch in prompt) and "\ufffd" not in prompt)


# ------------------------------------------------------------------------------------- sanitiser
SANITIZE_CASES = [
    (("<think>\nThe user wants the card gone. She holds it in her right hand, so...\n</think>\n\nShe releases her grip "
      "→ the card floats out of frame → hands become empty, lighting and pose unchanged."),
     "She releases her grip → the card floats out of frame → hands become empty, lighting and pose unchanged."),
    (("Okay, the card is in her right hand. I should describe the release.\n</think>\n\nThe woman slowly opens her "
      "hand and the card drifts away."), "The woman slowly opens her hand and the card drifts away."),
    (("Sure! Here is the rewritten prompt:\n\n```text\nThe woman slowly opens her hand; the card drifts out of frame."
      "\n```\n\nThis prompt describes the change as a continuous process."),
     "The woman slowly opens her hand; the card drifts out of frame."),
    (('```json\n{\n  "evolution_prompt": "The red car slowly turns blue from front to back.",\n  "reasoning": '
      '"a gradual colour change reads as a process"\n}\n```'), "The red car slowly turns blue from front to back."),
    ('{"prompt": "The snowman melts into a puddle on the lawn."}', "The snowman melts into a puddle on the lawn."),
    ('**Prompt:** "The bearded man raises both arms above his head."',
     "The bearded man raises both arms above his head."),
    ("Evolution prompt: “The cat jumps onto the wooden table.”<|im_end|>", "The cat jumps onto the wooden table."),
    ("The woman loosens her grip.\n\nThe card floats away out of frame.\n\nHer hand is empty; lighting unchanged.",
     "The woman loosens her grip. The card floats away out of frame. Her hand is empty; lighting unchanged."),
    ("### Evolution Prompt\n1. She loosens her grip\n2. The card floats out of frame\n3. Her hand is empty",
     "She loosens her grip. The card floats out of frame. Her hand is empty."),
    (("The sky slowly darkens and stars appear over the hills.\n\nNote: I kept the framing and the colours unchanged "
      "as requested."), "The sky slowly darkens and stars appear over the hills."),
    ("Sure! Here is the evolution prompt: The lamp slowly fades away.", "The lamp slowly fades away."),
    ("Prompt:\n\nThe lamp slowly fades away.", "The lamp slowly fades away."),
    ("A perfectly still video with enhanced clarity.\r\nA red\tcar\u200b parked\x07 by the sea.\ufffd",
     "A perfectly still video with enhanced clarity. A red car parked by the sea."),
]


@pytest.mark.parametrize("raw, expected", SANITIZE_CASES)
def test_sanitizer_cleans_realistic_vlm_outputs(raw, expected):
    out = sanitize(raw)
    assert out == expected and _clean(out) and problem(out) is None


def test_sanitizer_flags_what_is_not_a_prompt():
    assert thinking_cut_off("<think>The user wants the card removed, so first I") and sanitize(
        "<think>The user wants the card removed, so first I") == ""
    assert not thinking_cut_off("<think>plan</think>The card floats away.")
    assert problem("") and problem("ok!") and "refused" in problem("I'm sorry, but I can't help with that request.")
    assert problem(sanitize("```\n\n```")) and problem(sanitize('{"prompt": ""}'))


def test_token_budget_cuts_whole_sentences_first(zoo):
    from videoprior_edit.models.wan import load_umt5

    _, tok = load_umt5(zoo.file("umt5"), "fp32")
    count = token_counter(tok)
    text = ("The woman loosens her grip. The card floats out of frame. Her hand is empty. The lighting and pose stay "
            "unchanged, and the camera does not move.")
    assert count(text) == len(tok(text).input_ids) > 40
    short, note = fit_budget(text, 40, count)
    assert count(short) <= 40 and text.startswith(short) and short.endswith(".") and "shortened" in note
    assert fit_budget(text, 500, count) == (text, None)
    words, _ = fit_budget("one two three four five six seven eight nine ten eleven twelve", 8)
    assert estimate_tokens(words) <= 8 and words.endswith(".") and words.startswith("one two")
    assert estimate_tokens("a b c") == 4 and estimate_tokens("unchanged,") == 4  # word 1 + 9//6, comma, end


# ------------------------------------------------------------------------------------- template backend
TEMPLATE_CASES = [
    ("take the paper out of her hand",
     ("Slowly, the paper is taken out of her hand and moves out of the frame. In the end the paper is gone from her "
      "hand.")),
    ("Please remove the lamp from the table.",
     ("Slowly, the lamp fades away from the table and disappears, revealing what was behind. In the end the lamp is "
      "gone.")),
    ("take off his glasses",
     "Slowly, his glasses fade away and disappear, revealing what was behind. In the end his glasses are gone."),
    ("add a red hat on his head",
     ("Slowly, a red hat appears on his head and settles in place. In the end a red hat is clearly visible on his "
      "head.")),
    ("replace the apple with a pear", ("Slowly, the apple transforms into a pear. In the end a pear stands where the "
                                      "apple was.")),
    ("turn the sky into a sunset", "Slowly, the sky changes into a sunset. In the end the sky has become a sunset."),
    ("make the red car blue", "Slowly, the red car becomes blue. In the end the red car is clearly blue."),
    ("make her smile", "Slowly, she begins to smile, and the motion continues smoothly until it is complete."),
    ("open the door", ("Slowly and continuously, the following happens: open the door. The change unfolds over the "
                      "video until it is complete.")),
]


@pytest.mark.parametrize("instruction, evolution", TEMPLATE_CASES)
def test_template_backend_writes_an_evolution_prompt(instruction, evolution):
    result = rewrite_prompt(None, instruction, make_backend("template"))
    assert result.prompt == f"{evolution} {KEEP_REST}" and result.raw == result.prompt
    assert result.backend == "template" and result.warnings == []


def test_template_still_mode_and_inputs():
    from videoprior_edit.if_edit.refine import STILL_PROMPT as REFINER_PROMPT

    assert STILL_PROMPT == REFINER_PROMPT  # the rewriter's fallback is the refiner's own prompt
    assert rewrite_prompt(_image(), "", "template", mode="still").prompt == STILL_PROMPT
    with pytest.raises(InputError, match="instruction is empty"):
        rewrite_prompt(None, "  ", "template")
    with pytest.raises(InputError, match="Unknown mode"):
        rewrite_prompt(None, "x", "template", mode="video")
    with pytest.raises(InputError, match="Unknown rewriter backend"):
        make_backend("gpt")
    with pytest.raises(InputError, match="outside 16..512"):
        rewrite_prompt(None, "x", "template", max_tokens=600)
    assert "at most 130 words" in system_prompt("edit", 220) and "at most 60 words" in system_prompt("still", 100)


def test_images_reach_the_vlm_as_rgb_at_most_1024_pixels():
    pil, notes = backends.image_for_vlm(torch.rand(2, 8, 6, 3))
    assert pil.size == (6, 8) and pil.mode == "RGB" and "holds 2 images" in notes[0]
    pil, notes = backends.image_for_vlm(torch.rand(1, 2000, 1000, 4))
    assert pil.size == (512, 1024) and notes == []
    grey = torch.full((1, 4, 4, 1), 0.5)
    assert backends.image_for_vlm(grey)[0].getpixel((0, 0)) == (128, 128, 128)
    with pytest.raises(InputError, match="Expected an IMAGE"):
        backends.image_for_vlm(torch.rand(4, 4))


# ------------------------------------------------------------------------------------- local Qwen-VL (tiny zoo)
def _local(zoo, family, **settings):
    return make_backend("local", model_path=zoo.qwen_vl[family], precision="fp32", device="cpu", **settings)


@pytest.mark.parametrize("family", FAMILIES)
def test_local_vlm_loads_chats_generates_and_decodes(zoo, family):
    backend = _local(zoo, family)
    vlm = backends.load_vlm(zoo.qwen_vl[family], torch.float32, torch.device("cpu"))
    assert type(vlm.model).__name__.lower().replace("_", "").startswith(family.replace("_", ""))
    request = types.SimpleNamespace(system="SYSTEM-TEXT", examples=[("Image: a cat\nInstruction: x", "ANSWER-TEXT")],
                                    user="Image: (attached)\nInstruction: take the card", image=_image_pil())
    text = backend.chat_text(vlm, request)
    assert text.index("SYSTEM-TEXT") < text.index("ANSWER-TEXT") < text.index("<|vision_start|><|image_pad|>")
    assert text.endswith("<|im_start|>assistant\n")
    inputs = vlm.processor(text=[text], images=[request.image], return_tensors="pt")
    merge = vlm.processor.image_processor.merge_size
    assert (inputs["input_ids"] == vlm.processor.image_token_id).sum() == inputs["image_grid_thw"].prod() // merge**2
    del vlm

    steps = []
    result = rewrite_prompt(_image(), "take the paper out of her hand", backend, seed=5, max_tokens=16,
                            progress=steps.append)
    assert result.raw and _clean(result.prompt) and estimate_tokens(result.prompt) <= 16
    assert result.backend == "local" or any("template" in w for w in result.warnings)
    assert 1 <= sum(steps) <= generation_tokens(16)
    again = rewrite_prompt(_image(), "take the paper out of her hand", backend, seed=5, max_tokens=16)
    other = rewrite_prompt(_image(), "take the paper out of her hand", backend, seed=6, max_tokens=16)
    assert again.raw == result.raw and other.raw != result.raw  # seeded sampling
    assert backends._RESIDENT == {}  # keep_loaded off: freed after each run


def _image_pil():
    pil, _ = backends.image_for_vlm(_image())
    return pil


def test_local_vlm_keep_loaded_text_only_and_cancel(zoo):
    path = zoo.qwen_vl["qwen3_vl"]
    kept = make_backend("local", model_path=path, precision="bf16", device="cpu", keep_loaded=True)
    first = rewrite_prompt(None, "make the car blue", kept, seed=1, max_tokens=16)
    assert any("No image connected" in w for w in first.warnings) and _clean(first.prompt)
    (model_before,) = [v.model for v in backends._RESIDENT.values()]
    assert next(model_before.parameters()).dtype == torch.bfloat16
    second = rewrite_prompt(None, "make the car blue", kept, seed=1, max_tokens=16)
    (model_after,) = [v.model for v in backends._RESIDENT.values()]
    assert model_after is model_before and second.raw == first.raw  # reused, same answer
    unload_models()
    assert backends._RESIDENT == {}

    with pytest.raises(Cancelled):
        rewrite_prompt(_image(), "make the car blue", _local(zoo, "qwen2_5_vl"), max_tokens=64,
                       progress=_cancel_after(3))
    assert backends._RESIDENT == {}


def test_local_vlm_folder_errors_say_what_to_get(zoo, tmp_path):
    for bad in ("none", tmp_path / "missing"):
        with pytest.raises(ModelFileError) as e:
            make_backend("local", model_path=bad)
        for repo in ("Qwen/Qwen3-VL-8B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen3-VL-30B-A3B-Instruct"):
            assert repo in str(e.value)
    with pytest.raises(ModelFileError, match="is a 'umt5' model"):
        make_backend("local", model_path=zoo.wan22_i2v_diffusers / "text_encoder")
    pickled = tmp_path / "pickled"
    shutil.copytree(zoo.qwen_vl["qwen2_5_vl"], pickled)
    for f in pickled.glob("*.safetensors"):
        f.unlink()
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(ModelFileError, match="no .safetensors weights"):
        make_backend("local", model_path=pickled)
    partial = tmp_path / "partial"
    shutil.copytree(zoo.qwen_vl["qwen3_vl"], partial)
    (partial / "preprocessor_config.json").unlink()
    with pytest.raises(ModelFileError, match="lacks preprocessor_config.json"):
        make_backend("local", model_path=partial)


def test_chat_template_jinja_is_preferred(zoo, tmp_path):
    folder = tmp_path / "vlm"
    shutil.copytree(zoo.qwen_vl["qwen3_vl"], folder)
    (folder / "chat_template.jinja").write_text(
        "TEMPLATE-FROM-JINJA{% for m in messages %}<|im_start|>{{ m['role'] }}\n<|im_end|>\n{% endfor %}")
    processor = backends.load_processor(folder, "qwen3_vl")
    assert processor.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False).startswith(
        "TEMPLATE-FROM-JINJA")


# ------------------------------------------------------------------------------------- OpenAI-compatible server
def _sse(*pieces, reasoning=""):
    def reply(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.end_headers()
        chunks = ([{"reasoning_content": reasoning}] if reasoning else []) + [{"content": p} for p in pieces]
        for delta in [{"role": "assistant"}, *chunks]:
            data = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}
            handler.wfile.write(f"data: {json.dumps(data)}\n\n".encode())
            handler.wfile.flush()
        handler.wfile.write(b"data: [DONE]\n\n")
    return reply


def _json_reply(content, reasoning=""):
    def reply(handler):
        message = {"role": "assistant", "content": content, **({"reasoning_content": reasoning} if reasoning else {})}
        _send(handler, 200, {"object": "chat.completion", "choices": [{"index": 0, "message": message}]})
    return reply


def _status(code, body):
    return lambda handler: _send(handler, code, body)


def _slow(seconds):
    def reply(handler):
        time.sleep(seconds)
        _send(handler, 200, {"choices": [{"message": {"content": "late"}}]})
    return reply


def _send(handler, code, body):
    data = json.dumps(body).encode()
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class _ChatServer:
    """A loopback server speaking OpenAI chat completions: answers the n-th request with script[n] (the last one
    again once the script runs out) and records every request's path, headers and JSON body."""

    def __init__(self, *script):
        import http.server

        self.script, self.requests = list(script), []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                try:
                    server.script[min(len(server.requests), len(server.script)) - 1](self)
                except OSError:
                    pass  # the client gave up (timeout, cancel)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _openai(url, **settings):
    return make_backend("openai", base_url=url, model="qwen3-vl:8b", **{"retry_wait": 0.0, **settings})


def _no_key_anywhere(result_or_error, caplog, capsys):
    texts = [r.getMessage() for r in caplog.records] + list(capsys.readouterr())
    if isinstance(result_or_error, BaseException):
        texts += [str(result_or_error), repr(result_or_error)]
    else:
        texts += [result_or_error.prompt, result_or_error.raw, *result_or_error.warnings, result_or_error.backend]
    assert texts and not any(KEY in t or KEY[3:] in t for t in texts)


def test_openai_request_shape_key_in_header_only(monkeypatch, caplog, capsys):
    monkeypatch.setenv(KEY_ENV, KEY)
    caplog.set_level(logging.DEBUG)
    pieces = ("```text\n", "The woman slowly opens her hand ", "and the card drifts out of frame.", "\n```")
    with _ChatServer(_sse(*pieces)) as server:
        backend = _openai(server.url, api_key_env=KEY_ENV, temperature=0.3)
        steps = []
        result = rewrite_prompt(_image(40, 56), "take the paper out of her hand", backend, seed=7, max_tokens=100,
                                progress=steps.append)
    assert result.prompt == "The woman slowly opens her hand and the card drifts out of frame."
    assert result.raw == "".join(pieces) and result.backend == "openai" and sum(steps) == len(pieces) + 1
    (req,) = server.requests
    assert req["path"] == "/v1/chat/completions" and req["headers"]["Authorization"] == f"Bearer {KEY}"
    body = req["body"]
    assert (body["model"], body["max_tokens"], body["temperature"], body["seed"], body["stream"]) == (
        "qwen3-vl:8b", generation_tokens(100), 0.3, 7, True)
    assert body["messages"][0] == {"role": "system", "content": system_prompt("edit", 100)}
    assert [m["role"] for m in body["messages"][1:-1]] == ["user", "assistant"] * 4
    image_part, text_part = body["messages"][-1]["content"]
    assert text_part == {"type": "text", "text": "Image: (attached)\nInstruction: take the paper out of her hand"}
    url = image_part["image_url"]["url"]
    assert image_part["type"] == "image_url" and url.startswith("data:image/jpeg;base64,")
    from PIL import Image

    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.size == (56, 40) and sent.format == "JPEG"
    expect = (_image(40, 56)[0] * 255).mean(dim=(0, 1))
    got = torch.tensor(list(sent.convert("RGB").getdata()), dtype=torch.float32).mean(dim=0)
    assert (got - expect).abs().max() < 3  # the picture itself, not a placeholder
    _no_key_anywhere(result, caplog, capsys)


def test_openai_plain_json_answer_reasoning_and_no_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with _ChatServer(_json_reply("Prompt: The snowman melts.", reasoning="It is warm, so it melts.")) as server:
        result = rewrite_prompt(None, "show it after a warm afternoon", _openai(server.url, stream=False),
                                max_tokens=60)
    assert result.raw == "<think>It is warm, so it melts.</think>Prompt: The snowman melts."
    assert result.prompt == "The snowman melts." and "Authorization" not in server.requests[0]["headers"]
    assert server.requests[0]["body"]["stream"] is False
    assert server.requests[0]["body"]["messages"][-1]["content"] == [
        {"type": "text", "text": "Image: (attached)\nInstruction: show it after a warm afternoon"}]


def _failure(*script, image=None, **settings):
    """The error a rewrite raises through a server answering with `script`, and that server."""
    with _ChatServer(*script) as server, pytest.raises(EndpointError) as e:
        rewrite_prompt(image, "make the car blue", _openai(server.url, **settings))
    return e.value, server


def test_openai_http_errors_are_clear_and_never_show_the_key(monkeypatch, caplog, capsys):
    monkeypatch.setenv(KEY_ENV, KEY)
    caplog.set_level(logging.DEBUG)
    echo = {"error": {"message": f"Incorrect API key provided: {KEY}", "type": "invalid_request_error"}}
    error, server = _failure(_status(401, echo), api_key_env=KEY_ENV)
    assert "HTTP 401" in str(error) and KEY_ENV in str(error) and "not valid" in str(error)
    assert len(server.requests) == 1  # an auth error is not retried
    _no_key_anywhere(error, caplog, capsys)

    monkeypatch.delenv(KEY_ENV)
    error, _ = _failure(_status(403, {"error": "forbidden"}), api_key_env=KEY_ENV)
    assert f"{KEY_ENV} is not set" in error.hint and "HTTP 403: forbidden" in error.message
    error, _ = _failure(_status(404, {"error": {"message": "model 'qwen3-vl:8b' not found"}}))
    assert "not found" in error.message and "/v1" in error.hint and "ollama pull" in error.hint
    error, _ = _failure(_status(400, {"error": {"message": "image input is not supported"}}), image=_image())
    assert "rejected the request (HTTP 400: image input is not supported)" in error.message


def test_openai_retries_busy_servers_then_gives_up():
    busy = _status(503, {"error": {"message": "overloaded"}})
    with _ChatServer(_status(500, {}), busy, _sse("The car turns blue from the front.")) as server:
        result = rewrite_prompt(None, "make the car blue", _openai(server.url, retries=2))
    assert result.prompt == "The car turns blue from the front." and len(server.requests) == 3
    error, server = _failure(busy, retries=1)
    assert "kept failing (HTTP 503: overloaded) after 2 attempts" in error.message and len(server.requests) == 2


def test_openai_timeout_and_unreachable_host():
    start = time.monotonic()
    error, server = _failure(_slow(1.0), timeout=0.2, retries=1)
    assert "did not answer within 0.2 s (2 attempts)" in error.message and "Raise the timeout" in error.hint
    assert time.monotonic() - start < 0.9 and len(server.requests) == 2
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(EndpointError, match="Could not connect") as e:
        rewrite_prompt(None, "make the car blue", _openai(f"http://127.0.0.1:{port}/v1", retries=0))
    assert f"http://127.0.0.1:{port}/v1/chat/completions" in str(e.value) and "must be running" in e.value.hint


def test_openai_settings_are_checked_without_echoing_keys():
    for bad in ("localhost:11434", "http://127.0.0.1:port/v1", "ftp://host/v1"):
        with pytest.raises(InputError, match="not an http"):
            make_backend("openai", base_url=bad)
    with pytest.raises(InputError, match="NAME of an environment variable") as e:
        make_backend("openai", api_key_env=KEY)
    assert KEY not in str(e.value)
    with pytest.raises(InputError, match="No model name"):
        make_backend("openai", model=" ")


def test_unusable_answers_fall_back_or_fail():
    cut_off = _sse("<think>The user wants the car blue. First I need to look at the")
    with _ChatServer(cut_off) as server:
        result = rewrite_prompt(None, "make the car blue", _openai(server.url))
        assert result.backend == "template" and result.prompt == template_prompt("make the car blue")
        assert any("still thinking" in w for w in result.warnings) and result.raw.startswith("<think>")
        with pytest.raises(VPEError, match="not a usable prompt: it stopped while still thinking"):
            rewrite_prompt(None, "make the car blue", _openai(server.url), on_failure="error")
    with _ChatServer(_sse("```", "```")) as server:
        empty = rewrite_prompt(None, "make the car blue", _openai(server.url), mode="still")
    assert empty.prompt == STILL_PROMPT and any("empty after cleaning" in w for w in empty.warnings)


def test_cancel_stops_a_streamed_answer():
    with _ChatServer(_sse("One ", "two ", "three ", "four.")) as server, pytest.raises(Cancelled):
        rewrite_prompt(None, "make the car blue", _openai(server.url), progress=_cancel_after(2))
    assert len(server.requests) == 1  # cancelling is not a failure to retry


# ------------------------------------------------------------------------------------- node
def test_rewriter_node_lists_llm_folders_and_runs_each_backend(pack, zoo, monkeypatch):
    from videoprior_edit.models.wan import load_umt5

    monkeypatch.setenv("VPE_MODELS_DIR", str(zoo.models))
    node = pack.nodes.nodes_by_id()["VPE_PromptRewriter"]
    assert node.GET_SCHEMA().display_name == "Evolution Prompt Rewriter (IF-Edit)"
    inputs = node.GET_NODE_INFO_V1()["input"]
    choices = inputs["required"]["local_model"][1]["options"]
    assert choices[0] == "none" and {p.name for p in zoo.qwen_vl.values()} <= set(choices)
    assert inputs["optional"]["keep_loaded"][1]["default"] is False and node.CATEGORY == "VideoPriorEdit/IF-Edit"

    out = node.execute("take the paper out of her hand", "edit", "local", "tiny-Qwen2.5-VL-Instruct", 3,
                       image=_image(), max_tokens=16, precision="fp32", device="cpu")
    prompt, raw = out.args
    assert _clean(prompt) and raw and out.ui["text"][0].endswith(prompt)
    assert backends._RESIDENT == {}
    named = node.execute("take the paper out of her hand", "edit", "local", "none", 3, image=_image(), max_tokens=16,
                         precision="fp32", device="cpu", local_model_path=str(zoo.qwen_vl["qwen2_5_vl"]))
    assert named.args == (prompt, raw)  # the same folder named by path: the same answer

    _, tok = load_umt5(zoo.file("umt5"), "fp32")
    wan = types.SimpleNamespace(tokenizer=tok)  # a Wan set's tokenizer, for the exact count
    prompt, raw = node.execute("take the paper out of her hand", "edit", "template", "none", 0, wan_models=wan,
                               max_tokens=40).args
    assert len(tok(prompt).input_ids) <= 40 and template_prompt("take the paper out of her hand").startswith(
        prompt[:-1])
    with pytest.raises(Exception, match="No local VLM selected") as e:  # the pack's own copy of ModelFileError
        node.execute("make the car blue", "edit", "local", "none", 0)
    assert type(e.value).__name__ == "ModelFileError" and "Qwen/Qwen3-VL-8B-Instruct" in str(e.value)


def test_rewriter_node_talks_to_a_chat_server(pack, monkeypatch, caplog, capsys):
    monkeypatch.setenv(KEY_ENV, KEY)
    caplog.set_level(logging.DEBUG)
    node = pack.nodes.nodes_by_id()["VPE_PromptRewriter"]
    settings = {"api_model": "qwen2.5vl:7b", "api_key_env": KEY_ENV, "timeout": 5, "retries": 0}
    script = (_sse("A perfectly still video with enhanced clarity. A blue car."), _sse("<think>Hmm, the car"))
    with _ChatServer(*script) as server:
        out = node.execute("make the car blue", "still", "openai", "none", 9, image=_image(), api_base_url=server.url,
                           **settings)
        fallback = node.execute("make the car blue", "edit", "openai", "none", 9, image=_image(),
                                api_base_url=server.url, **settings)
    body = server.requests[0]["body"]
    assert body["model"] == "qwen2.5vl:7b" and body["messages"][0]["content"] == system_prompt("still", 220)
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {KEY}"
    assert out.args[0] == "A perfectly still video with enhanced clarity. A blue car."
    assert out.ui["text"] == [out.args[0]]
    assert fallback.args == (template_prompt("make the car blue"), "<think>Hmm, the car")
    assert fallback.ui["text"][0].startswith("Warning: The VLM's answer was not a usable prompt")
    for text in out.ui["text"] + fallback.ui["text"] + list(out.args) + list(fallback.args):
        assert KEY not in text
    _no_key_anywhere(types.SimpleNamespace(prompt="", raw="", warnings=[], backend=""), caplog, capsys)
