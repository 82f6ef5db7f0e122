"""The tiny Qwen-VL zoo: random-weight Qwen2.5-VL, Qwen3-VL and Qwen3-VL-MoE folders in the Hugging Face layout
the real repos have, under `<root>/models/LLM/<name>/`:

  config.json, generation_config.json, model-0000N-of-0000M.safetensors + model.safetensors.index.json,
  tokenizer.json, tokenizer_config.json, vocab.json, merges.txt (a byte-level BPE learnt offline, Qwen's special
  tokens in Qwen's order), chat_template.json, preprocessor_config.json (+ video_preprocessor_config.json for Qwen3).

The prompt rewriter loads them through the same code as real weights (offline, safetensors, no remote code).
"""

from __future__ import annotations

import json
from pathlib import Path

from .zoo import CORPUS, random_model

QWEN_FOLDERS = {"qwen2_5_vl": "tiny-Qwen2.5-VL-Instruct", "qwen3_vl": "tiny-Qwen3-VL-Instruct",
                "qwen3_vl_moe": "tiny-Qwen3-VL-MoE-Instruct"}
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
            "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
            "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
PLAIN_ADDED = ("<think>", "</think>")  # added tokens that are not special (decoding keeps them), as in Qwen3

# Chat templates in the Qwen-VL format (written for the zoo): text or content lists, images as
# <|vision_start|><|image_pad|><|vision_end|>; Qwen2.5-VL adds a default system turn, Qwen3-VL does not.
_TURNS = (
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' or 'image' in part %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif part['type'] == 'video' %}"
    "<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in part %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n")
QWEN25_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}" + _TURNS + "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
QWEN3_TEMPLATE = ("{% for message in messages %}" + _TURNS + "{% endfor %}"
                  "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

_CLIP_MEAN, _CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
PREPROCESSORS = {
    "qwen2_5_vl": {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2,
                   "merge_size": 2, "image_mean": _CLIP_MEAN, "image_std": _CLIP_STD,
                   "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor"},
    "qwen3_vl": {"size": {"longest_edge": 16777216, "shortest_edge": 65536}, "patch_size": 16,
                 "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
                 "image_processor_type": "Qwen2VLImageProcessorFast", "processor_class": "Qwen3VLProcessor"},
}
_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 8192}
_VISION = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 32}


def qwen_zoo_paths(root: str | Path) -> dict[str, Path]:
    """Where `write_qwen_zoo(root)` puts each family's folder."""
    return {family: Path(root) / "models" / "LLM" / name for family, name in QWEN_FOLDERS.items()}


def _corpus() -> list[str]:
    """Text the tiny BPE learns from: the zoo corpus and the rewriter's own prompts (so chats stay short)."""
    from .rewrite import prompts

    texts = [*CORPUS, prompts.EDIT_SYSTEM, prompts.STILL_SYSTEM, prompts.STILL_PROMPT, prompts.KEEP_REST]
    return texts + [t for rows in (prompts.EDIT_EXAMPLES, prompts.STILL_EXAMPLES) for row in rows for t in row]


def tiny_qwen_tokenizer(vocab_size: int = 1200):
    """A Qwen2 tokenizer (byte-level BPE with Qwen's pre-tokenizer) trained offline on `_corpus()`."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(_corpus() * 4, trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    model = json.loads(bpe.to_str())["model"]
    vocab = dict(model["vocab"])
    vocab.update({t: len(vocab) + i for i, t in enumerate(SPECIALS + PLAIN_ADDED)})
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token="<|im_end|>",
                         pad_token="<|endoftext|>", errors="replace", model_max_length=32768)
    tok.add_special_tokens({"additional_special_tokens": list(SPECIALS)})
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in PLAIN_ADDED])
    return tok, vocab, merges


def _config(family: str, tok):
    from transformers import Qwen2_5_VLConfig, Qwen3VLConfig, Qwen3VLMoeConfig

    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIALS}
    special = {"bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
               "pad_token_id": ids["<|endoftext|>"]}
    tokens = {"image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
              "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"]}
    text = {**_TEXT, **special, "vocab_size": (len(tok) + 63) // 64 * 64}  # padded, as the real vocabularies are
    if family == "qwen2_5_vl":
        text["rope_scaling"] = {"type": "mrope", "mrope_section": [1, 1, 2]}
        vision = {**_VISION, "patch_size": 14, "window_size": 56, "fullatt_block_indexes": [1]}
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)
    text.update(head_dim=8,
                rope_scaling={"rope_type": "default", "mrope_section": [2, 1, 1], "mrope_interleaved": True})
    vision = {**_VISION, "patch_size": 16, "num_position_embeddings": 64, "deepstack_visual_indexes": [0]}
    if family == "qwen3_vl":
        return Qwen3VLConfig(text_config=text, vision_config=vision, **tokens)
    moe = {"moe_intermediate_size": 16, "num_experts": 4, "num_experts_per_tok": 2, "decoder_sparse_step": 1}
    return Qwen3VLMoeConfig(text_config={**text, **moe}, vision_config=vision, **tokens)


def _model(family: str, config, seed: int):
    from transformers import (
        GenerationConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen3VLForConditionalGeneration,
        Qwen3VLMoeForConditionalGeneration,
    )

    cls = {"qwen2_5_vl": Qwen2_5_VLForConditionalGeneration, "qwen3_vl": Qwen3VLForConditionalGeneration,
           "qwen3_vl_moe": Qwen3VLMoeForConditionalGeneration}[family]
    model = random_model(lambda: cls(config), seed)
    text = config.text_config
    model.generation_config = GenerationConfig(  # Qwen3-VL's published sampling settings
        bos_token_id=text.bos_token_id, pad_token_id=text.pad_token_id, eos_token_id=[text.eos_token_id,
                                                                                       text.bos_token_id],
        do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.0)
    return model


def _write_tokenizer(tok, vocab: dict, merges: list, folder: Path) -> None:
    tok.save_pretrained(str(folder))
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))


def write_qwen_zoo(root: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write the tiny Qwen-VL folders under `root/models/LLM` (about 1.5 MB, well under a second) and return them."""
    paths = qwen_zoo_paths(root)
    tok, vocab, merges = tiny_qwen_tokenizer()
    for i, (family, folder) in enumerate(paths.items()):
        model = _model(family, _config(family, tok), seed + 20 + i)
        model.save_pretrained(str(folder), max_shard_size="200KB")
        _write_tokenizer(tok, vocab, merges, folder)
        qwen3 = family != "qwen2_5_vl"
        template = QWEN3_TEMPLATE if qwen3 else QWEN25_TEMPLATE
        (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}, indent=2))
        (folder / "preprocessor_config.json").write_text(
            json.dumps(PREPROCESSORS["qwen3_vl" if qwen3 else "qwen2_5_vl"], indent=2))
        if qwen3:  # present in the real Qwen3-VL repos; the rewriter never loads it (it needs torchvision)
            (folder / "video_preprocessor_config.json").write_text(json.dumps(
                {**PREPROCESSORS["qwen3_vl"], "fps": 2, "video_processor_type": "Qwen3VLVideoProcessor"}, indent=2))
    return paths
