"""Where the rewritten prompt comes from: a template (no model), a local Qwen-VL run with transformers, or an
OpenAI-compatible chat server (Ollama, vLLM, LM Studio, llama.cpp server, hosted APIs).

Every backend has `name`, `steps(max_new_tokens)` (progress steps at most) and `generate(request, progress) -> str`
(the raw answer). `progress(n)` is called per generated token or streamed piece and raises to cancel.
"""

from __future__ import annotations

import base64
import functools
import gc
import io
import json
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from ..errors import InputError, ModelFileError, VPEError
from ..models.core import DTYPES
from .prompts import template_prompt

log = logging.getLogger(__name__)

IMAGE_MAX_SIDE = 1024  # the VLM sees the picture at most this large (about 1 M pixels, Qwen-VL's sweet spot)
PRECISIONS = ("auto", *DTYPES)
# config.json model_type -> the transformers processor class of the family
VLM_FAMILIES = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen3_vl": "Qwen3VLProcessor",
                "qwen3_vl_moe": "Qwen3VLProcessor"}
GET_A_VLM = ("Put a Qwen-VL model folder (config.json, *.safetensors, tokenizer and preprocessor files) in "
             "models/LLM, e.g. `hf download Qwen/Qwen3-VL-8B-Instruct --local-dir models/LLM/Qwen3-VL-8B-Instruct` "
             "(or Qwen/Qwen2.5-VL-7B-Instruct; the paper used Qwen/Qwen3-VL-30B-A3B-Instruct, ~62 GB in bf16). Or "
             "use the 'openai' backend with a local server, or 'template' to run without a VLM.")
SERVER_HINT = ("The server must be running and reachable: start it (Ollama: `ollama serve`; vLLM: `vllm serve "
               "<model>`; LM Studio: start its local server; llama.cpp: `llama-server`) and check the host and port "
               "of the base URL (Ollama: http://127.0.0.1:11434/v1, LM Studio: http://127.0.0.1:1234/v1, vLLM: "
               "http://127.0.0.1:8000/v1).")
RETRY_STATUS = (408, 409, 429, 500, 502, 503, 504)


class EndpointError(VPEError):
    """The chat server could not be reached or refused the request."""


@dataclass
class ChatRequest:
    """One rewrite: the system prompt, few-shot turns, the user turn with its image, and generation limits."""

    system: str
    examples: list[tuple[str, str]]
    user: str
    image: object | None  # PIL image, already at most IMAGE_MAX_SIDE
    instruction: str
    mode: str
    max_new_tokens: int
    seed: int = 0


def image_for_vlm(image) -> tuple[object | None, list[str]]:
    """A ComfyUI IMAGE `(B, H, W, C)` in [0, 1] (or a PIL image, or None) as an RGB PIL image the VLM reads; notes."""
    from PIL import Image

    if image is None:
        return None, []
    notes = []
    if not isinstance(image, Image.Image):
        t = torch.as_tensor(image).detach()
        if t.ndim == 4:
            if t.shape[0] > 1:
                notes.append(f"the image input holds {t.shape[0]} images; the VLM saw the first")
            t = t[0]
        if t.ndim != 3 or t.shape[-1] not in (1, 3, 4):
            raise InputError(f"Expected an IMAGE (batch, height, width, 3), got shape {tuple(t.shape)}.",
                             "Connect an IMAGE output (Load Image, a decoded frame) to the image input.")
        t = t[..., :3].expand(*t.shape[:2], 3)
        image = Image.fromarray((t.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy())
    image = image.convert("RGB")
    if max(image.size) > IMAGE_MAX_SIDE:
        scale = IMAGE_MAX_SIDE / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BICUBIC)
    return image, notes


# ------------------------------------------------------------------------------------- template
class TemplateBackend:
    """No model: the instruction becomes a simple evolution prompt (see `prompts.template_prompt`)."""

    name: ClassVar[str] = "template"
    max_new_tokens = None

    def steps(self, max_new_tokens: int) -> int:
        return 1

    def generate(self, request: ChatRequest, progress=None) -> str:
        if progress:
            progress(1)
        return template_prompt(request.instruction, request.mode)


# ------------------------------------------------------------------------------------- text from elsewhere
@dataclass
class GivenTextBackend:
    """The answer was written elsewhere (ComfyUI's own Generate Text node running a Qwen-VL through ComfyUI's memory
    manager, given `request_text` as its prompt): it is only cleaned, budgeted and checked like any VLM answer."""

    text: str = ""
    name: ClassVar[str] = "generated_text"
    max_new_tokens = None

    def steps(self, max_new_tokens: int) -> int:
        return 1

    def generate(self, request: ChatRequest, progress=None) -> str:
        if progress:
            progress(1)
        if not isinstance(self.text, str) or not self.text.strip():
            raise InputError("The generated_text backend got no text.",
                             "Connect the generated_text output of ComfyUI's Generate Text node to vlm_answer "
                             "(its prompt: the Evolution Prompt Request node; its clip: a Qwen3-VL / Qwen2.5-VL).")
        return self.text


def request_text(request: ChatRequest) -> str:
    """The whole request as one message for a chat model that takes a single user turn (ComfyUI's Generate Text
    with its default template): the instructions, the worked examples, then this picture's instruction."""
    parts = [request.system.strip(), ""]
    for i, (user, answer) in enumerate(request.examples, 1):
        parts += [f"Example {i}:", user.strip(), "Answer:", answer.strip(), ""]
    parts += ["Now the picture you see:", request.user.strip(), "Answer:"]
    return "\n".join(parts)


# ------------------------------------------------------------------------------------- OpenAI-compatible server
def _data_url(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _shown(url: str) -> str:
    """The URL as messages show it: no user info, no query."""
    p = urllib.parse.urlsplit(url)
    host = p.hostname or ""
    port = f":{p.port}" if p.port else ""
    return f"{p.scheme}://{host}{port}{p.path}"


def _answer_text(message: dict) -> str:
    """Content of a chat message or stream delta; a separate reasoning field is kept as a <think> block."""
    content = message.get("content") or ""
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    thinking = message.get("reasoning_content") or message.get("reasoning") or ""
    return (f"<think>{thinking}</think>" if thinking else "") + content


class _Retry(Exception):
    """A failure worth another attempt (timeout, connection, 429/5xx); `final` is raised when attempts run out."""

    def __init__(self, final: EndpointError):
        super().__init__(final.message)
        self.final = final


@dataclass
class OpenAIChatBackend:
    """POSTs to `<base_url>/chat/completions` with the image as a base64 data URL.

    The API key is read at request time from the environment variable NAMED `api_key_env` (empty: no key) and only
    ever sent in the Authorization header; messages and logs never contain it."""

    base_url: str = "http://127.0.0.1:11434/v1"
    model: str = "qwen3-vl:8b"
    api_key_env: str = ""
    timeout: float = 120.0
    retries: int = 2
    retry_wait: float = 1.0
    temperature: float = 0.7
    top_p: float = 0.8
    stream: bool = True
    max_new_tokens: int | None = None
    name: ClassVar[str] = "openai"

    def __post_init__(self):
        try:
            parts = urllib.parse.urlsplit(self.base_url.strip())
            parts.port  # noqa: B018 (raises on a malformed port)
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError("The base URL is not an http(s) URL with a host.",
                             "Use the server's OpenAI-compatible address, e.g. http://127.0.0.1:11434/v1 (Ollama).")
        if not self.model.strip():
            raise InputError("No model name for the chat server.", "Type the model name the server knows, e.g. "
                             "qwen3-vl:8b (Ollama) or Qwen/Qwen3-VL-8B-Instruct (vLLM).")
        if self.api_key_env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env):
            raise InputError("api_key_env must be the NAME of an environment variable, not a key.",
                             "Remove the key from the workflow, set it as an environment variable (e.g. "
                             "OPENAI_API_KEY) before starting ComfyUI, and type that variable's name here.")
        if self.timeout <= 0 or self.retries < 0:
            raise InputError("timeout must be above 0 and retries at least 0.", "Use e.g. timeout 120, retries 2.")

    @property
    def url(self) -> str:
        base = self.base_url.strip().rstrip("/")
        return base if base.endswith("/chat/completions") else base + "/chat/completions"

    def steps(self, max_new_tokens: int) -> int:
        return max_new_tokens if self.stream else 1

    def body(self, request: ChatRequest) -> dict:
        messages = [{"role": "system", "content": request.system}]
        for user, answer in request.examples:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        content = [{"type": "text", "text": request.user}]
        if request.image is not None:
            content.insert(0, {"type": "image_url", "image_url": {"url": _data_url(request.image)}})
        messages.append({"role": "user", "content": content})
        return {"model": self.model.strip(), "messages": messages, "max_tokens": request.max_new_tokens,
                "temperature": self.temperature, "top_p": self.top_p, "seed": request.seed % 2**31,
                "stream": self.stream}

    def generate(self, request: ChatRequest, progress=None) -> str:
        data = json.dumps(self.body(request)).encode()
        log.info("Prompt rewriter: asking %s (model %s)", _shown(self.url), self.model)
        for attempt in range(self.retries + 1):
            try:
                return self._post(data, progress)
            except _Retry as e:
                if attempt == self.retries:
                    raise e.final from None
                log.warning("Prompt rewriter: %s; retrying (%d of %d)", e, attempt + 1, self.retries)
                _wait(self.retry_wait * 2**attempt, progress)
        raise AssertionError("unreachable")

    def _key(self) -> str | None:
        """The API key, read from the environment at request time (never stored on the backend)."""
        if not self.api_key_env:
            return None
        return os.environ.get(self.api_key_env) or None

    def _redact(self, text: str) -> str:
        key = self._key()
        text = text.replace(key, "[redacted]") if key else text
        return re.sub(r"\b(sk|pk|rk)-[A-Za-z0-9_\-*.]{6,}", r"\1-[redacted]", text)

    def _post(self, data: bytes, progress) -> str:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream, application/json",
                   "User-Agent": "videoprior-edit"}
        if self._key():
            headers["Authorization"] = f"Bearer {self._key()}"
        req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return self._read(resp, progress)
        except urllib.error.HTTPError as e:
            raise self._http_error(e) from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, (TimeoutError, socket.timeout)):
                raise _Retry(self._timeout_error()) from None
            raise _Retry(self._connect_error(e.reason)) from None
        except TimeoutError:
            raise _Retry(self._timeout_error()) from None
        except (ConnectionError, OSError) as e:
            raise _Retry(self._connect_error(e)) from None

    def _read(self, resp, progress) -> str:
        if "text/event-stream" in resp.headers.get("Content-Type", ""):
            return self._read_stream(resp, progress)
        try:
            data = json.loads(resp.read().decode("utf-8", "replace"))
        except ValueError:
            raise self._error("answered with something that is not JSON") from None
        if progress:
            progress(1)
        return _answer_text(self._choice(data).get("message") or {})

    def _read_stream(self, resp, progress) -> str:
        """Server-sent events: `data: {chunk}` lines until `data: [DONE]`; one progress step per chunk."""
        thinking, content = [], []
        for line in resp:
            line = line.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            try:
                delta = self._choice(json.loads(payload)).get("delta") or {}
            except ValueError:
                raise self._error("sent a stream piece that is not JSON") from None
            thinking.append(delta.get("reasoning_content") or delta.get("reasoning") or "")
            content.append(_answer_text({"content": delta.get("content")}))
            if progress:
                progress(1)
        think = "".join(thinking)
        return (f"<think>{think}</think>" if think else "") + "".join(content)

    def _choice(self, data) -> dict:
        if isinstance(data, dict) and data.get("error"):
            err = data["error"]
            raise self._error(f"returned an error: {err.get('message') if isinstance(err, dict) else err}")
        choices = data.get("choices") if isinstance(data, dict) else None
        if choices is None:
            raise self._error("answered without 'choices' (not an OpenAI chat-completions answer)")
        return choices[0] if choices else {}

    def _error(self, what: str) -> EndpointError:
        return EndpointError(self._redact(f"The chat server at {_shown(self.url)} {what}."),
                             "Check that the base URL points to an OpenAI-compatible /v1 endpoint.")

    def _server_message(self, e: urllib.error.HTTPError) -> str:
        try:
            body = e.read(4000).decode("utf-8", "replace")
        except OSError:
            return ""
        try:
            data = json.loads(body)
            err = data.get("error", data) if isinstance(data, dict) else data
            body = err.get("message") or err.get("detail") or body if isinstance(err, dict) else str(err)
        except ValueError:
            pass
        return self._redact(" ".join(str(body).split())[:300])

    def _http_error(self, e: urllib.error.HTTPError) -> Exception:
        msg = self._server_message(e)
        said = f"HTTP {e.code}" + (f": {msg}" if msg else "")
        url = _shown(self.url)
        if e.code in (401, 403):
            return EndpointError(f"The chat server at {url} refused the request ({said}).", self._key_hint())
        if e.code == 404:
            return EndpointError(
                f"No chat-completions endpoint or no model '{self.model}' at {url} ({said}).",
                "The base URL usually ends in /v1 (Ollama: http://127.0.0.1:11434/v1); check the model name "
                "(Ollama: `ollama list`, then `ollama pull <model>`).")
        if e.code in RETRY_STATUS:
            return _Retry(EndpointError(f"The chat server at {url} kept failing ({said}) after "
                                        f"{self.retries + 1} attempts.",
                                        "The server is busy or failing: try again later, raise retries, or read "
                                        "the server's log."))
        return EndpointError(f"The chat server at {url} rejected the request ({said}).",
                             f"Check that '{self.model}' is a vision model that accepts images, and that it allows "
                             "the settings sent (max_tokens, temperature, top_p, seed).")

    def _key_hint(self) -> str:
        name = self.api_key_env
        if not name:
            return ("This server needs an API key: put it in an environment variable (e.g. OPENAI_API_KEY) before "
                    "starting ComfyUI and type that variable's NAME in api_key_env.")
        if not os.environ.get(name):
            return f"The environment variable {name} is not set: set it to your API key before starting ComfyUI."
        return f"The key in the environment variable {name} is not valid for this server: check it."

    def _timeout_error(self) -> EndpointError:
        return EndpointError(
            f"The chat server at {_shown(self.url)} did not answer within {self.timeout:g} s "
            f"({self.retries + 1} attempts).",
            "Raise the timeout (the first request may wait while the server loads the model), or check that the "
            "server is not stuck.")

    def _connect_error(self, reason) -> EndpointError:
        why = self._redact(str(getattr(reason, "strerror", None) or reason))
        return EndpointError(f"Could not connect to the chat server at {_shown(self.url)} ({why}).", SERVER_HINT)


def _wait(seconds: float, progress=None) -> None:
    """Sleep in short slices, checking for Cancel (progress(0)) between them."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if progress:
            progress(0)
        time.sleep(min(left, 0.1))


# ------------------------------------------------------------------------------------- local transformers VLM
@dataclass
class _VLM:
    model: object
    processor: object
    family: str


_RESIDENT: dict[tuple[str, str], _VLM] = {}  # VLMs kept in RAM between runs (keep_loaded)


def _free(collect: bool = True) -> None:
    if collect:
        gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def unload_models() -> None:
    """Drop every VLM kept loaded (call before loading a big video model)."""
    if _RESIDENT:
        _RESIDENT.clear()
        _free()


def check_vlm_folder(path: str | Path) -> str:
    """The family (config model_type) of a Qwen-VL folder; a clear error for anything that is not one."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelFileError(f"VLM folder not found: {folder}", GET_A_VLM)
    if not (folder / "config.json").is_file():
        raise ModelFileError(f"'{folder.name}' is not a Hugging Face model folder (no config.json).", GET_A_VLM)
    family = json.loads((folder / "config.json").read_text()).get("model_type", "?")
    if family not in VLM_FAMILIES:
        raise ModelFileError(f"'{folder.name}' is a '{family}' model; the prompt rewriter runs Qwen2.5-VL, Qwen3-VL "
                             "and Qwen3-VL-MoE vision-language models.", GET_A_VLM)
    if not any(folder.glob("*.safetensors")):
        raise ModelFileError(f"'{folder.name}' holds no .safetensors weights (pickle .bin/.pt weights are refused).",
                             "Download the safetensors release of the model. " + GET_A_VLM)
    missing = [f for f in ("tokenizer_config.json", "preprocessor_config.json") if not (folder / f).is_file()]
    if missing or not any((folder / f).is_file() for f in ("tokenizer.json", "vocab.json")):
        raise ModelFileError(f"'{folder.name}' lacks {', '.join(missing) or 'tokenizer.json'}: the tokenizer and "
                             "image preprocessor files come with the model.", "Download the whole repository "
                             "folder, not only the weights. " + GET_A_VLM)
    return family


@functools.cache
def _image_only(processor_cls):
    """The family's processor without its video processor (which needs torchvision): image and text only."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        processor_cls.__init__(self, image_processor, tokenizer, None, chat_template=chat_template)

    return type(f"{processor_cls.__name__}ImageOnly", (processor_cls,), {"__init__": __init__})


def _chat_template(folder: Path, tokenizer) -> str:
    """chat_template.jinja, then chat_template.json (the processor's), then the tokenizer's own."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    if (folder / "chat_template.json").is_file():
        return json.loads((folder / "chat_template.json").read_text())["chat_template"]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template
    raise ModelFileError(f"'{folder.name}' has no chat template (chat_template.json or in tokenizer_config.json).",
                         "Download the whole repository folder. " + GET_A_VLM)


def load_processor(path: str | Path, family: str):
    """Tokenizer + PIL image processor (no torchvision) + chat template, combined as the family's processor."""
    import transformers
    from transformers import AutoTokenizer, Qwen2VLImageProcessorPil

    folder = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    images = Qwen2VLImageProcessorPil.from_pretrained(str(folder), local_files_only=True)
    cls = _image_only(getattr(transformers, VLM_FAMILIES[family]))
    return cls(image_processor=images, tokenizer=tokenizer, chat_template=_chat_template(folder, tokenizer))


def load_vlm(path: str | Path, dtype: torch.dtype, device: torch.device) -> _VLM:
    """Load a Qwen-VL folder offline (safetensors only, no remote code) onto `device`."""
    from transformers import AutoModelForImageTextToText

    family = check_vlm_folder(path)
    log.info("Prompt rewriter: loading %s (%s, %s) on %s", Path(path).name, family, dtype, device)
    processor = load_processor(path, family)
    model = AutoModelForImageTextToText.from_pretrained(
        str(path), local_files_only=True, use_safetensors=True, trust_remote_code=False, dtype=dtype,
        device_map={"": str(device)})
    return _VLM(model.eval(), processor, family)


def resolve_device(device=None) -> torch.device:
    """The device to run on ('auto'/None: CUDA, MPS, else CPU); CUDA always with its index."""
    if device not in (None, "auto"):
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            return torch.device("cuda", torch.cuda.current_device())
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """'auto': bf16, or fp16 on GPUs without bf16."""
    if precision not in PRECISIONS:
        raise InputError(f"Unknown precision '{precision}'.", f"Use one of {', '.join(PRECISIONS)}.")
    if precision != "auto":
        return DTYPES[precision]
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


class _EachToken:
    """A stopping criterion that never stops: it reports one progress step per generated token (and so cancels)."""

    def __init__(self, progress):
        self.progress = progress

    def __call__(self, input_ids, scores, **kwargs):
        self.progress(1)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@dataclass
class LocalVLMBackend:
    """A Qwen2.5-VL / Qwen3-VL / Qwen3-VL-MoE folder run with transformers.

    keep_loaded=False frees the model right after generating, so the video model gets the memory; True keeps it in
    RAM (moved off the GPU after each use) for the next run. `unload_models()` drops it."""

    model_path: str | Path
    precision: str = "auto"
    device: str | torch.device | None = None
    keep_loaded: bool = False
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20
    repetition_penalty: float = 1.05
    max_new_tokens: int | None = None
    name: ClassVar[str] = "local"
    _family: str = field(default="", init=False, repr=False)

    def __post_init__(self):
        if self.model_path in (None, "", "none"):
            raise ModelFileError("No local VLM selected.", GET_A_VLM)
        self._family = check_vlm_folder(self.model_path)

    def steps(self, max_new_tokens: int) -> int:
        return max_new_tokens

    def generate(self, request: ChatRequest, progress=None) -> str:
        device = resolve_device(self.device)
        dtype = resolve_dtype(self.precision, device)
        if progress:
            progress(0)
        key, vlm = self._acquire(device, dtype)
        try:
            return self._run(vlm, request, device, progress)
        finally:
            self._release(key, vlm)
            del vlm
            _free(collect=not self.keep_loaded)

    @staticmethod
    def chat_text(vlm: _VLM, request: ChatRequest) -> str:
        """The family's chat template over the system, few-shot and user turns (the image as its placeholder)."""
        messages = [{"role": "system", "content": [{"type": "text", "text": request.system}]}]
        for user, answer in request.examples:
            messages += [{"role": "user", "content": [{"type": "text", "text": user}]},
                         {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        content = [{"type": "text", "text": request.user}]
        if request.image is not None:
            content.insert(0, {"type": "image"})
        messages.append({"role": "user", "content": content})
        return vlm.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _run(self, vlm: _VLM, request: ChatRequest, device: torch.device, progress) -> str:
        from transformers import StoppingCriteriaList

        text = self.chat_text(vlm, request)
        images = [request.image] if request.image is not None else None
        inputs = vlm.processor(text=[text], images=images, return_tensors="pt").to(device)
        sample = self.temperature > 0
        options = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k} if sample else {}
        criteria = StoppingCriteriaList([_EachToken(progress)] if progress else [])
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            torch.manual_seed(request.seed)
            out = vlm.model.generate(**inputs, max_new_tokens=request.max_new_tokens, do_sample=sample,
                                     repetition_penalty=self.repetition_penalty, stopping_criteria=criteria,
                                     **options)
        opened = "<think>" if text.rstrip().endswith("<think>") else ""  # a Thinking model's template opens it
        return opened + vlm.processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    def _acquire(self, device: torch.device, dtype: torch.dtype) -> tuple[tuple[str, str], _VLM]:
        key = (str(Path(self.model_path).resolve()), str(dtype))
        vlm = _RESIDENT.pop(key, None)
        unload_models()  # one VLM at a time
        if vlm is None:
            return key, load_vlm(self.model_path, dtype, device)
        return key, _VLM(vlm.model.to(device), vlm.processor, vlm.family)

    def _release(self, key: tuple[str, str], vlm: _VLM) -> None:
        if self.keep_loaded:
            vlm.model.to("cpu")
            _RESIDENT[key] = vlm
