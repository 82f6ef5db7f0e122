"""What the rewriter asks a VLM (system prompts and few-shot examples per mode), and the no-model template prompts.

Two modes:
  edit   the static instruction becomes a temporal evolution prompt: how the picture changes over a short clip until
         its last frame shows the edit (IF-Edit's CoT prompt augmentation);
  still  a prompt for the still-video refiner: the image as a perfectly still, sharper clip (IF-Edit's SCPR).
"""

from __future__ import annotations

import re

MODES = ("edit", "still")
TOKENS_PER_WORD = 1.6  # UMT5 tokens per English word, rounded up: turns a token budget into a word limit for the VLM

# The still-video refiner's prompt (equal to `if_edit.refine.STILL_PROMPT`; a test keeps them in sync).
STILL_PROMPT = ("A perfectly still video with enhanced clarity. The camera does not move and nothing in the scene "
                "moves; the same picture holds in sharp focus with fine detail and crisp textures, no motion blur, "
                "no change in lighting, colour or composition.")
KEEP_REST = ("Everything else stays the same: identity, pose, clothing, lighting, background and style are unchanged, "
             "and the camera does not move.")

EDIT_SYSTEM = """\
You turn an image-editing instruction into a prompt for an image-to-video model. The video starts exactly at the \
given image and plays for a few seconds; its last frame must show the edited picture.

Look at the image and the instruction, then describe in the present tense how the scene evolves over time from the \
image to the edited state:
- Describe, in the order it happens, how each element the instruction concerns moves, appears, disappears or \
changes, as one short continuous physical process, and end with the finished state stated plainly.
- If the instruction asks for a consequence (time passing, a cause, a reaction, a result of an action), first work \
out the physically plausible outcome, then describe the process that leads to it.
- Keep everything the instruction does not touch exactly as it is: identity, face, body, pose, clothing, colours, \
lighting, background, framing and style. Say so in one short clause.
- Name things by how they look in the image (colour, material, position), not by vague pronouns.
- Only visible changes: no sounds, no thoughts, no scene cuts. The camera stays still unless the instruction asks \
for a camera move.
- One paragraph in English, at most {words} words.
Return only the prompt: no title, no preamble, no quotes, no list, no markdown, no explanation."""

STILL_SYSTEM = """\
You write the prompt for a video model that must reproduce the given image as a perfectly still, sharper video.

- Begin with exactly: "A perfectly still video with enhanced clarity."
- Then describe what the image shows as it is now: the subjects with their appearance, pose and expression, the \
objects, the setting, the lighting, the colours and the style.
- If an edit is mentioned, the image already shows its result: describe the result, never the process.
- Nothing moves and nothing changes: end by saying that the camera is locked off and the picture holds in sharp \
focus with fine detail and crisp textures, with no motion blur.
- One paragraph in English, at most {words} words.
Return only the prompt: no title, no preamble, no quotes, no list, no markdown, no explanation."""

# Few-shot examples written for this project: (what the image shows, instruction, answer).
EDIT_EXAMPLES = (
    (("A young woman in a grey knit sweater holds a white paper card in her raised right hand, in a softly lit "
      "living room."),
     "take the paper out of her hand",
     ("The young woman in the grey knit sweater slowly loosens her grip on the white paper card. The card slips from "
      "her fingers, drifts down and floats out of the bottom of the frame. Her raised right hand is left empty, "
      "fingers open. Her face, hair, sweater and pose, the living room and the soft lighting stay exactly the same, "
      "and the camera does not move.")),
    ("A snowman with a carrot nose and a red scarf stands on the lawn of a sunny garden.",
     "show it after a warm afternoon",
     ("The sun warms the garden and the snowman begins to melt. Water drips down its sides, its round body sags and "
      "shrinks, and the carrot nose tilts and drops onto the grass. In the end only a small mound of wet snow is "
      "left on the lawn, with the red scarf and the carrot lying on it. The garden, the sunlight and the camera "
      "position stay the same.")),
    ("A red vintage car is parked on a cobblestone street in front of a bakery, under overcast light.",
     "make the car blue",
     ("The red paint of the vintage car slowly shifts in colour, spreading evenly over the body from the front to the "
      "back, until the whole car is a deep glossy blue. The chrome, windows, tyres and the car's position stay as they "
      "are, as do the cobblestone street, the bakery front and the overcast light; the camera does not move.")),
    ("A bearded man in a denim jacket stands in a park with both arms at his sides, looking at the camera.",
     "make him raise both arms",
     ("The bearded man in the denim jacket slowly lifts both arms from his sides, raising them in one smooth motion "
      "until they are stretched straight above his head, palms forward. His face, beard, jacket and stance, the park "
      "behind him and the daylight stay unchanged, and the camera does not move.")),
)

STILL_EXAMPLES = (
    ("A young woman in a grey knit sweater with her raised right hand empty, in a softly lit living room.",
     "take the paper out of her hand",
     ("A perfectly still video with enhanced clarity. A young woman with shoulder-length brown hair in a grey knit "
      "sweater stands in a softly lit living room, her right hand raised and empty with open fingers, looking calmly "
      "at the camera; a beige sofa and a floor lamp stand behind her. The camera is locked off and nothing moves: the "
      "picture holds in sharp focus with fine detail in her hair and the knit texture, crisp textures and no motion "
      "blur.")),
    ("A deep blue vintage car parked on a cobblestone street in front of a bakery, overcast light.",
     "",
     ("A perfectly still video with enhanced clarity. A deep glossy blue vintage car with chrome bumpers is parked on "
      "a grey cobblestone street in front of a bakery with a striped awning, under soft overcast light. The camera is "
      "locked off and nothing moves: the picture holds in sharp focus with fine detail on the paint, the chrome and "
      "the stones, crisp textures and no motion blur.")),
)


def word_limit(max_tokens: int) -> int:
    """The word limit given to the VLM for a budget of `max_tokens` UMT5 tokens (rounded down to tens)."""
    return max(10, int(max_tokens / TOKENS_PER_WORD) // 10 * 10)


def system_prompt(mode: str, max_tokens: int) -> str:
    return (EDIT_SYSTEM if mode == "edit" else STILL_SYSTEM).format(words=word_limit(max_tokens))


def user_text(mode: str, instruction: str, image: str | None) -> str:
    """The user turn: `image` describes the picture (few-shot) or is None when a real image is attached."""
    seen = f"Image: {image}" if image else "Image: (attached)"
    if mode == "edit":
        return f"{seen}\nInstruction: {instruction}"
    if instruction:
        return f"{seen}\nEdit that produced this image (describe its result): {instruction}"
    return seen


def examples(mode: str) -> list[tuple[str, str]]:
    """Few-shot turns as (user text, assistant answer)."""
    rows = EDIT_EXAMPLES if mode == "edit" else STILL_EXAMPLES
    return [(user_text(mode, instruction, image), answer) for image, instruction, answer in rows]


# ------------------------------------------------------------------------------------- no-model template
_PRONOUNS = {"her": "she", "him": "he", "them": "they", "it": "it"}
_ADJECTIVES = frozenset(("red", "orange", "yellow", "green", "blue", "purple", "violet", "pink", "brown", "black",
    "white", "grey", "gray", "golden", "silver", "dark", "bright", "colourful", "colorful", "happy", "sad", "angry",
    "surprised", "older", "younger", "old", "young", "bigger", "smaller", "larger", "taller", "shorter", "longer",
    "wider", "thinner", "fatter", "wet", "dry", "clean", "dirty", "broken", "whole", "empty", "full", "open",
    "closed", "shiny", "matte", "transparent", "visible", "invisible", "bald", "smiling", "frowning", "sunny",
    "rainy", "snowy", "cloudy", "foggy", "night", "daytime"))
_PREPOSITIONS = r"(?:on top of|in front of|next to|on|onto|in|into|inside|beside|behind|under|above|over|to|at)"
_LEAD_IN = re.compile(r"^(?:please\s+|can you\s+|could you\s+|now\s+)+", re.IGNORECASE)


def _clean_instruction(text: str) -> str:
    text = _LEAD_IN.sub("", " ".join(text.split())).rstrip(" .!?;,")
    return text[:1].lower() + text[1:] if text[:2] != "I " else text


def _subject(phrase: str) -> str:
    return _PRONOUNS.get(phrase.lower(), phrase)


def _plural(phrase: str) -> bool:
    last = phrase.split()[-1].lower() if phrase.split() else ""
    return last in ("they", "we") or (last.endswith("s") and not last.endswith(("ss", "us", "is")))


def _v(subject: str, singular: str, plural: str) -> str:
    """The verb form that agrees with `subject` (a guess from its last word: 'glasses' are, 'the dress' is)."""
    return plural if _plural(subject) else singular


def _take(m) -> str:
    x, prep, y = m["x"], m["prep"].lower(), m["y"]
    return (f"Slowly, {x} {_v(x, 'is', 'are')} taken {prep} {y} and {_v(x, 'moves', 'move')} out of the frame. "
            f"In the end {x} {_v(x, 'is', 'are')} gone from {y}.")


def _remove(m) -> str:
    x, where = m["x"], f" from {m['y']}" if m["y"] else ""
    return (f"Slowly, {x} {_v(x, 'fades', 'fade')} away{where} and {_v(x, 'disappears', 'disappear')}, revealing "
            f"what was behind. In the end {x} {_v(x, 'is', 'are')} gone.")


def _add(m) -> str:
    x, where = m["x"], f" {m['prep'].lower()} {m['y']}" if m["y"] else ""
    return (f"Slowly, {x} {_v(x, 'appears', 'appear')}{where} and {_v(x, 'settles', 'settle')} in place. "
            f"In the end {x} {_v(x, 'is', 'are')} clearly visible{where}.")


def _replace(m) -> str:
    x, y = m["x"], m["y"]
    return (f"Slowly, {x} {_v(x, 'transforms', 'transform')} into {y}. "
            f"In the end {y} {_v(y, 'stands', 'stand')} where {x} {_v(x, 'was', 'were')}.")


def _change(m) -> str:
    x, y = m["x"], m["y"]
    return f"Slowly, {x} {_v(x, 'changes', 'change')} into {y}. In the end {x} {_v(x, 'has', 'have')} become {y}."


def _make(m) -> str:
    """'make X blue' becomes a change of state, 'make X smile' an action of X."""
    words = m["rest"].split()
    if len(words) > 1 and words[-1].lower() in _ADJECTIVES:
        x, what = _subject(" ".join(words[:-1])), words[-1]
        return (f"Slowly, {x} {_v(x, 'becomes', 'become')} {what}. "
                f"In the end {x} {_v(x, 'is', 'are')} clearly {what}.")
    cut = 2 if words[0].lower() in ("the", "a", "an", "his", "her", "their", "its") and len(words) > 2 else 1
    x, what = _subject(" ".join(words[:cut])), " ".join(words[cut:])
    return f"Slowly, {x} {_v(x, 'begins', 'begin')} to {what}, and the motion continues smoothly until it is complete."


_RULES = (
    (r"^(?:take|pull|lift)\s+(?P<x>.+?)\s+(?P<prep>out of|off|away from|from)\s+(?P<y>.+)$", _take),
    (r"^(?:take|pull)\s+off\s+(?P<x>.+?)(?P<y>)$", _remove),
    (r"^(?:remove|delete|erase|get rid of)\s+(?P<x>.+?)(?:\s+from\s+(?P<y>.+))?$", _remove),
    (r"^replace\s+(?P<x>.+?)\s+(?:with|by)\s+(?P<y>.+)$", _replace),
    (r"^(?:change|turn|transform|convert)\s+(?P<x>.+?)\s+(?:into|to)\s+(?P<y>.+)$", _change),
    (rf"^(?:add|put|place|insert)\s+(?P<x>.+?)(?:\s+(?P<prep>{_PREPOSITIONS})\s+(?P<y>.+))?$", _add),
    (r"^make\s+(?P<rest>\S+\s+.+)$", _make),
)


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def template_prompt(instruction: str, mode: str = "edit") -> str:
    """A simple evolution prompt from the instruction alone (no model): a gradual change, then the finished state,
    then "everything else unchanged". Still mode returns the still-video prompt."""
    if mode == "still":
        return STILL_PROMPT
    text = _clean_instruction(instruction)
    for pattern, build in _RULES:
        m = re.match(pattern, text, re.IGNORECASE)
        if m:
            return f"{_capitalise(build(m))} {KEEP_REST}"
    return (f"Slowly and continuously, the following happens: {text}. The change unfolds over the video until it is "
            f"complete. {KEEP_REST}")
