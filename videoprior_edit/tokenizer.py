"""Offline tokenizers: UMT5 from the sentencepiece model ComfyUI files carry, or from a tokenizer folder."""

from __future__ import annotations

import tempfile
import types
from pathlib import Path

from .errors import ModelFileError

SPIECE_TENSOR = "spiece_model"
UMT5_TOKENIZER_FOLDER = "umt5_tokenizer"  # beside a single-file text encoder without `spiece_model`


def tokenizer_from_spiece(model_bytes: bytes):
    """A fast UMT5/T5 tokenizer from a sentencepiece model: same ids as sentencepiece, plus the `</s>` end token."""
    import sentencepiece as spm
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SpmConverter

    eos = spm.SentencePieceProcessor(model_proto=model_bytes).eos_id()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spiece.model"
        path.write_bytes(model_bytes)
        backend = SpmConverter(types.SimpleNamespace(vocab_file=str(path))).converted()
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>", pad_token="<pad>")


def load_umt5_tokenizer(weights, tokenizer_path: str | Path | None = None):
    """The UMT5 tokenizer for a text-encoder checkpoint.

    Order: an explicit folder or spiece.model; the `spiece_model` tensor inside the ComfyUI file; the `tokenizer/`
    folder next to a diffusers `text_encoder/`, or `umt5_tokenizer/` next to a single file. Nothing is downloaded.
    """
    from transformers import AutoTokenizer

    if tokenizer_path is None and SPIECE_TENSOR in weights.infos:
        (_, t), = weights.tensors([SPIECE_TENSOR])
        return tokenizer_from_spiece(t.numpy().tobytes())
    where = Path(tokenizer_path) if tokenizer_path else weights.path.parent / (
        "tokenizer" if weights.path.is_dir() else UMT5_TOKENIZER_FOLDER)
    if where.is_file() and where.suffix == ".model":
        return tokenizer_from_spiece(where.read_bytes())
    if (where / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(where), local_files_only=True)
    if (where / "spiece.model").is_file():
        return tokenizer_from_spiece((where / "spiece.model").read_bytes())
    raise ModelFileError(
        f"No tokenizer found for '{weights.path.name}': the file carries no '{SPIECE_TENSOR}' tensor and '{where}' "
        "holds no tokenizer.json or spiece.model.",
        "Use ComfyUI's umt5_xxl_fp16.safetensors (it carries the tokenizer), or put spiece.model of google/umt5-xxl "
        f"in '{where}' (`videoprior-edit models download umt5_tokenizer --models <models folder>`).")
