"""UMT5 tokenizer read from the ComfyUI file, and prompt embeddings equal to diffusers' Wan pipeline."""

from __future__ import annotations

import pytest
import sentencepiece as spm
import torch
from transformers import AutoTokenizer

from videoprior_edit.errors import ModelFileError
from videoprior_edit.models.wan import load_umt5
from videoprior_edit.text import PromptEncoder
from videoprior_edit.tokenizer import load_umt5_tokenizer
from videoprior_edit.weights import WeightFile, save_file

SENTENCES = ["take the paper out of her hand", "She releases her grip → the card floats out of frame",
             "Lighting  unchanged,  café ü ① ＡＢ", "", "  a red cat\tsits\n"]


def test_tokenizer_from_comfyui_file_tokenizes_like_its_sentencepiece_model(zoo):
    _, tok = load_umt5(zoo.file("umt5"), "fp32")
    proto = (zoo.wan22_i2v_diffusers / "tokenizer" / "spiece.model").read_bytes()
    sp = spm.SentencePieceProcessor(model_proto=proto)
    folder_tok = AutoTokenizer.from_pretrained(zoo.wan22_i2v_diffusers / "tokenizer", local_files_only=True)
    for s in SENTENCES:
        ids = tok(s).input_ids
        assert ids == sp.encode(s) + [sp.eos_id()]
        assert ids == folder_tok(s).input_ids
    assert any(i == sp.unk_id() for i in tok("① ＡＢ").input_ids)  # unknown pieces map like sentencepiece


def test_missing_tokenizer_says_where_to_get_it(zoo, tmp_path):
    sd = WeightFile(zoo.file("umt5")).state_dict()
    sd.pop("spiece_model")
    path = tmp_path / "umt5_no_tokenizer.safetensors"
    save_file(sd, path)
    with pytest.raises(ModelFileError, match="No tokenizer found") as e:
        load_umt5_tokenizer(WeightFile(path))
    assert "umt5_xxl_fp16.safetensors" in str(e.value)
    assert "umt5_tokenizer" in str(e.value) and "google/umt5-xxl" in str(e.value)
    tok = load_umt5_tokenizer(WeightFile(path), zoo.wan22_i2v_diffusers / "tokenizer")
    assert tok("a red cat").input_ids[-1] == 1
    (tmp_path / "umt5_tokenizer").mkdir()  # the folder the message names, with spiece.model only
    (tmp_path / "umt5_tokenizer" / "spiece.model").write_bytes(
        (zoo.wan22_i2v_diffusers / "tokenizer" / "spiece.model").read_bytes())
    assert load_umt5_tokenizer(WeightFile(path))("a red cat").input_ids == tok("a red cat").input_ids


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prompt_embeddings_equal_diffusers_encode_prompt(zoo, dtype):
    from diffusers import WanImageToVideoPipeline

    pipe = WanImageToVideoPipeline.from_pretrained(zoo.wan22_i2v_diffusers)
    te, tok = load_umt5(zoo.file("umt5"), "fp32")
    encoder = PromptEncoder(te, tok)
    prompts = ["a woman holds a paper card", "She releases her grip &amp; the card floats away"]
    ours = encoder(prompts, dtype=dtype)
    with torch.no_grad():  # as inside the pipeline's __call__ (grad mode picks another SDPA kernel)
        ref, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, max_sequence_length=512,
                                    dtype=dtype, device="cpu")
    assert ours.shape == (2, 512, te.config.d_model) and ours.dtype == dtype
    assert torch.equal(ours, ref)
    n = encoder.token_count(prompts[0])
    assert ours[0, n:].abs().sum() == 0 and ours[0, n - 1].abs().sum() > 0
    assert torch.equal(encoder(prompts[1], dtype=dtype)[0], ours[1])  # from the cache
