"""Output hygiene: a VLM's answer becomes one clean paragraph that fits the video model's prompt length.

`sanitize` strips thinking blocks, chat special tokens, markdown fences, JSON wrappers, preambles ("Sure! Here is
the prompt:"), labels ("Prompt:"), list markers, quotes and trailing notes, and joins the rest into one paragraph.
`fit_budget` shortens it (whole sentences first) to a token budget counted with the UMT5 tokenizer when one is given,
else with a conservative estimate.
"""

from __future__ import annotations

import json
import re
import unicodedata

MIN_LETTERS = 8  # fewer letters than this is not a prompt
JSON_KEYS = ("prompt", "evolution_prompt", "video_prompt", "rewritten_prompt", "final_prompt", "output", "answer",
             "text", "caption", "description")

_SPECIAL = re.compile(r"<\|[^|<>]{1,40}\|>|<｜[^｜<>]{1,40}｜>")
_THINK = re.compile(r"<(think|thinking|reasoning|reflection)>.*?</\1>", re.IGNORECASE | re.DOTALL)
_THINK_CLOSE = re.compile(r"</(?:think|thinking|reasoning|reflection)>", re.IGNORECASE)
_THINK_OPEN = re.compile(r"<(?:think|thinking|reasoning|reflection)>", re.IGNORECASE)
_FENCE = re.compile(r"```[^\n`]*\n(.*?)(?:```|$)", re.DOTALL)
_PREAMBLE = re.compile(r"^(?:sure|certainly|okay|ok|of course|absolutely|here(?:'s| is| are)|below is|the (?:rewritten|"
                       r"final|evolution|video) prompt)\b.{0,120}[:!.]\s*$", re.IGNORECASE)
_PREAMBLE_INLINE = re.compile(r"^(?:sure|certainly|okay|ok|of course|absolutely|here(?:'s| is| are)|below is)\b"
                              r"[^:\n]{0,100}:\s+(?=\S)", re.IGNORECASE)  # "Sure! Here is the prompt: The ..."
_NOTE = re.compile(r"^(?:note|notes|explanation|reasoning|why|this prompt|this description|this version|i (?:have|"
                   r"kept|made|focused|used|described)|feel free|let me know|hope this)\b", re.IGNORECASE)
_LABEL = re.compile(r"^(?:(?:final|rewritten|refined|evolution|temporal|video|english|output|edited|still)\s+)*"
                    r"(?:prompt|answer|output|description|caption)(?:\s+\w+)?\s*[:：]\s*", re.IGNORECASE)
_TITLE = re.compile(r"^(?:#{1,6}\s.*|(\*\*|__)[^*_]{1,60}\1:?)$")  # a markdown heading or a bold line of its own
_BULLET = re.compile(r"^\s*(?:[-*•·]|\d{1,2}[.)]|step\s+\d+\s*[:.)-])\s+", re.IGNORECASE)
_QUOTES = (('"', '"'), ("'", "'"), ("“", "”"), ("‘", "’"), ("«", "»"), ("「", "」"), ("`", "`"))
_REFUSAL = re.compile(r"^(?:i'?m sorry|i am sorry|sorry,|i can(?:no|')t|i cannot|i am unable|i'm unable|as an ai)\b",
                      re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")


def strip_thinking(text: str) -> str:
    """Remove `<think>…</think>` blocks; an answer after a lone `</think>` is kept, an unclosed block is dropped."""
    text = _THINK.sub(" ", text)
    text = text[_last_close(text):]
    opened = _THINK_OPEN.search(text)
    return text[:opened.start()] if opened else text


def _unfence(text: str) -> str:
    """The first fenced block that holds text, else the text without stray fence markers."""
    for block in _FENCE.findall(text):
        if re.search(r"[^\W\d_]", block):
            return block
    return text.replace("```", " ")


def _json_text(value) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        for key in JSON_KEYS:
            for k, v in value.items():
                if k.lower() == key and isinstance(v, str) and v.strip():
                    return v
        texts = [t for t in map(_json_text, value.values()) if t]
        return max(texts, key=len) if texts else None
    if isinstance(value, list):
        texts = [t for t in map(_json_text, value) if t]
        return " ".join(texts) if texts else None
    return None


def _unwrap_json(text: str) -> str:
    s = text.strip()
    if not s.startswith(("{", "[")):
        return text
    try:
        found = _json_text(json.loads(s))
    except ValueError:
        return text
    return found if found is not None else ""


def _wrapped(text: str, a: str, b: str) -> bool:
    """Whether one pair of quotes wraps the whole text (not two quoted words at its ends)."""
    if len(text) < 3 or not (text.startswith(a) and text.endswith(b)):
        return False
    if a == b:
        return a == "'" or text.count(a) == 2
    return text.find(b) == len(text) - len(b)


def _strip_quotes_and_labels(text: str) -> str:
    for _ in range(4):
        before = text
        text = _LABEL.sub("", _PREAMBLE_INLINE.sub("", text.strip())).strip()
        for a, b in _QUOTES:
            if _wrapped(text, a, b):
                text = text[len(a):-len(b)].strip()
        if text == before:
            break
    return text


def _printable(text: str) -> str:
    """Control characters become spaces; replacement and zero-width characters go."""
    out = []
    for ch in unicodedata.normalize("NFC", text):
        cat = unicodedata.category(ch)
        if ch in "\n\t":
            out.append(ch)
        elif cat == "Cc" or ch in "\u2028\u2029":
            out.append(" ")
        elif ch != "\ufffd" and cat not in ("Cf", "Cs", "Co", "Cn"):
            out.append(ch)
    return "".join(out)


def _lines(text: str) -> list[str]:
    """Content lines: markdown markers, preamble and trailing notes removed; list items end as sentences."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    titles = [ln for ln in lines if _TITLE.match(ln)]
    if len(titles) < len(lines):
        lines = [ln for ln in lines if ln not in titles]
    lines = [re.sub(r"^#{1,6}\s*", "", ln).replace("**", "").replace("__", "").strip() for ln in lines]
    if len(lines) > 1 and _PREAMBLE.match(lines[0]):
        lines = lines[1:]
    for i, ln in enumerate(lines):
        if i and _NOTE.match(ln):
            lines = lines[:i]
            break
    out = []
    for ln in lines:
        item = _BULLET.sub("", ln)
        if item != ln and not item.endswith((".", "!", "?", ":", ";", ",")):
            item += "."
        out.append(item)
    return out


def sanitize(raw: str) -> str:
    """One clean paragraph from a VLM answer (empty when nothing usable is left)."""
    text = _printable(_SPECIAL.sub(" ", raw or ""))
    text = _unfence(strip_thinking(text))
    text = _unwrap_json(_strip_quotes_and_labels(text))
    lines = _lines(text)
    if lines:
        lines[0] = _strip_quotes_and_labels(lines[0])  # "Prompt:" on a line of its own goes too
    return _strip_quotes_and_labels(" ".join(" ".join(lines).split()))


def thinking_cut_off(raw: str) -> bool:
    """Whether the answer ended inside an unclosed thinking block (the token limit hit while thinking)."""
    text = _THINK.sub(" ", raw or "")
    return bool(_THINK_OPEN.search(text[_last_close(text):]))


def _last_close(text: str) -> int:
    closes = list(_THINK_CLOSE.finditer(text))
    return closes[-1].end() if closes else 0


def problem(prompt: str) -> str | None:
    """Why a sanitised answer is not a usable prompt, or None."""
    if not prompt:
        return "it was empty after cleaning"
    if len(re.findall(r"[^\W\d_]", prompt)) < MIN_LETTERS:
        return f"it was too short ('{prompt}')"
    if _REFUSAL.match(prompt):
        return "the model refused"
    return None


# ------------------------------------------------------------------------------------- token budget
def estimate_tokens(text: str) -> int:
    """A conservative (high) estimate of UMT5 tokens: each word 1 + len//6, other characters of CJK scripts one each,
    each digit and punctuation mark one, plus the end token."""
    n = 1
    for piece in re.findall(r"[^\W\d_]+|\d|[^\w\s]", text):
        if not piece[0].isalpha():
            n += 1
        elif piece.isascii():
            n += 1 + len(piece) // 6
        else:
            n += len(piece)
    return n


def token_counter(tokenizer=None):
    """`count(text) -> int`: UMT5 tokens as the Wan prompt encoder counts them (cleaned, end token included), or the
    conservative estimate without a tokenizer."""
    if tokenizer is None:
        return estimate_tokens
    from ..text import clean_prompt

    return lambda text: len(tokenizer(clean_prompt(text), add_special_tokens=True).input_ids)


def _longest_prefix(words: list[str], fits) -> int:
    lo, hi = 1, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(" ".join(words[:mid])) else (lo, mid - 1)
    return lo


def fit_budget(text: str, max_tokens: int, count=estimate_tokens) -> tuple[str, str | None]:
    """`text` cut to at most `max_tokens` tokens: whole sentences dropped from the end first, then words. Returns the
    text and a note when it was shortened."""
    before = count(text)
    if before <= max_tokens:
        return text, None
    sentences = _SENTENCE_END.split(text)
    while len(sentences) > 1 and count(" ".join(sentences)) > max_tokens:
        sentences.pop()
    out = " ".join(sentences)
    if count(out) > max_tokens:
        words = out.split()
        out = " ".join(words[:_longest_prefix(words, lambda t: count(t + ".") <= max_tokens)]).rstrip(",;:-–— ")
        out = out if out.endswith((".", "!", "?")) else out + "."
    return out, f"shortened the prompt from {before} to {count(out)} tokens to fit the budget of {max_tokens}"
