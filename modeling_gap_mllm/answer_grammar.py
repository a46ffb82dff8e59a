"""The grammar of each task's answer: what constrained decoding lets the model write, in xgrammar's EBNF.

Each grammar is the language of the task's serialiser (target_format.py), built from the same named pieces
(keys, separators, the detection fence), and bounded so that an answer always ends within its token budget:

    detection         ```json\\n[\\n\\t{"label": "couch", "bbox_3d": [9 numbers]},\\n ... \\n]```   (0 to N entries)
    grounding         {"bbox_3d": [9 numbers]}                 (stages 2 and the one-call pipeline)
    grounding_stage1  {"frame": k}                             (k: one of the views' indices when their number is known)
    reconstruction    {"pointmap": [x, y, z], "label": "..."}  (the label may be left out, as the serialiser does)
    captioning        one line of prose: no leading space or bracket, no backtick (never another task's format)
    spatial_qa        a number or one option letter (A-Z)

A number is what `json.dumps(round(v, 2))` writes: an optional minus, 1-2 integer digits without a leading zero,
a point, 1-2 decimals (`0.44`, `-0.0`, `12.5`; up to ±99.99 metres or radians: a room); a box's sizes (entries 3-5)
have no minus (`output_parsing.box_numbers` refuses a negative size) except `-0.0`, which the serialiser writes for a
size of -0.0. Labels are 1-32 printable ASCII characters without `"` or `\\`, so a label needs no escape.

Every grammar is built for a token budget (`max_tokens`: the task's `max_new_tokens`, or the caller's). A token is at
least one byte of text, so an answer of at most `max_tokens` bytes always ends within the budget, whatever the
tokenizer: a detection answer holds at most `detection_entries(max_tokens)` entries (9 for detection's 1,280
tokens; a larger budget allows more), and the fixed-size answers fit their tasks' budgets (`answer_bytes`).
Captions are free text: one cut by its budget is still a caption.

The grammars are plain text (no torch, no xgrammar): the registry (`TaskSpec.answer_grammar`) holds them, the
`generate` logits processor compiles them (answer_grammar_processor.py), and a vLLM request carries them as
`structured_outputs.grammar` (serving/): one grammar per task on every path.
"""

from __future__ import annotations

from .target_format import (
    BOX_KEY,
    DETECTION_CLOSE,
    DETECTION_INDENT,
    DETECTION_LINE_END,
    DETECTION_OPEN,
    FRAME_KEY,
    ITEM_SEPARATOR,
    KEY_SEPARATOR,
    LABEL_KEY,
    POINTMAP_KEY,
    POINTMAP_LABEL_KEY,
)

MAX_LABEL_CHARS = 32
MAX_INTEGER_DIGITS = 2  # |value| < 100 (metres, radians)
MAX_DECIMALS = 2  # target_format.DEFAULT_DECIMALS: what the targets print
MAX_FRAME_DIGITS = 3
BOX_VALUES = 9


def literal(text: str) -> str:
    """`text` as an EBNF string literal (quotes, backslashes, tabs and line breaks escaped)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def _key(name: str) -> str:
    """A quoted dict key and the key separator: `"bbox_3d": ` as one literal."""
    return literal(f'"{name}"{KEY_SEPARATOR}')


# Shared rules: the number forms of every answer and the label string.
_UNSIGNED = f'("0" | [1-9] [0-9]{{0,{MAX_INTEGER_DIGITS - 1}}}) "." [0-9]{{1,{MAX_DECIMALS}}}'
_COMMON_RULES = (
    f'number ::= "-"? unsigned\n'
    f"unsigned ::= {_UNSIGNED}\n"
    f'size ::= unsigned | "-0.0"\n'
    f'label ::= "\\"" [ !#-\\[\\]-~]{{1,{MAX_LABEL_CHARS}}} "\\""\n'
)
_SEP = literal(ITEM_SEPARATOR)


def _box_rule() -> str:
    """`[cx, cy, cz, sx, sy, sz, yaw, pitch, roll]`: sizes without a minus."""
    kinds = ["number"] * 3 + ["size"] * 3 + ["number"] * 3
    return f'box ::= "[" {f" {_SEP} ".join(kinds)} "]"\n'


# the longest text of each piece, in bytes (all ASCII): what bounds an answer's length in tokens
_NUMBER_BYTES = 1 + MAX_INTEGER_DIGITS + 1 + MAX_DECIMALS  # -99.99
_BOX_BYTES = 2 + BOX_VALUES * _NUMBER_BYTES + (BOX_VALUES - 1) * len(ITEM_SEPARATOR)
_LABEL_BYTES = MAX_LABEL_CHARS + 2
_DETECTION_ENTRY_BYTES = (len(DETECTION_INDENT) + 2 + len(f'"{LABEL_KEY}"{KEY_SEPARATOR}') + _LABEL_BYTES
                          + len(ITEM_SEPARATOR) + len(f'"{BOX_KEY}"{KEY_SEPARATOR}') + _BOX_BYTES + len(DETECTION_LINE_END))


def detection_entries(max_tokens: int) -> int:
    """How many entries a detection answer may hold so that the longest one ends within `max_tokens` tokens."""
    return max(0, (int(max_tokens) - len(DETECTION_OPEN) - len(DETECTION_CLOSE)) // _DETECTION_ENTRY_BYTES)


def answer_bytes(task_grammar) -> int | None:
    """The longest answer of a fixed-size grammar in bytes (None for detection's, bounded by `detection_entries`, and
    free text's): grounding, frame selection, reconstruction, spatial QA."""
    return {
        grounding_grammar: 2 + len(f'"{BOX_KEY}"{KEY_SEPARATOR}') + _BOX_BYTES,
        frame_selection_grammar: 2 + len(f'"{FRAME_KEY}"{KEY_SEPARATOR}') + MAX_FRAME_DIGITS,
        pointmap_grammar: (2 + len(f'"{POINTMAP_KEY}"{KEY_SEPARATOR}') + 2 + 3 * _NUMBER_BYTES + 2 * len(ITEM_SEPARATOR)
                           + len(ITEM_SEPARATOR) + len(f'"{POINTMAP_LABEL_KEY}"{KEY_SEPARATOR}') + _LABEL_BYTES),
        spatial_answer_grammar: 1 + 6 + 1 + 4,
    }.get(task_grammar)


def detection_grammar(max_tokens: int, num_frames: int | None = None) -> str:
    """The official detection answer (`serialize_detection`): 0 to `detection_entries(max_tokens)` labelled boxes."""
    entries = detection_entries(max_tokens)
    entry = f'{literal(DETECTION_INDENT + "{")} {_key(LABEL_KEY)} label {_SEP} {_key(BOX_KEY)} box "}}"'
    listed = f'(entry ({literal(DETECTION_LINE_END)} entry){{0,{entries - 1}}} "\\n")? ' if entries else ""
    return (f"root ::= {literal(DETECTION_OPEN)} {listed}{literal(DETECTION_CLOSE)}\n"
            f"entry ::= {entry}\n" + _box_rule() + _COMMON_RULES)


def grounding_grammar(max_tokens: int, num_frames: int | None = None) -> str:
    """`{"bbox_3d": [9 numbers]}` (`serialize_grounding`)."""
    return f'root ::= "{{" {_key(BOX_KEY)} box "}}"\n' + _box_rule() + _COMMON_RULES


def frame_selection_grammar(max_tokens: int, num_frames: int | None = None) -> str:
    """`{"frame": k}` (`serialize_frame_selection`): k one of the `num_frames` views' indices when given (the parser
    would clamp any other), else a whole number without a leading zero."""
    if num_frames is not None and (isinstance(num_frames, bool) or int(num_frames) < 1):
        raise ValueError(f"num_frames must be a positive whole number, got {num_frames!r}")
    frames = (" | ".join(f'"{k}"' for k in range(int(num_frames))) if num_frames is not None
              else f'"0" | [1-9] [0-9]{{0,{MAX_FRAME_DIGITS - 1}}}')
    return f'root ::= "{{" {_key(FRAME_KEY)} ({frames}) "}}"\n'


def pointmap_grammar(max_tokens: int, num_frames: int | None = None) -> str:
    """`{"pointmap": [x, y, z], "label": "..."}` (`serialize_pointmap`; without a label, no label key)."""
    return (f'root ::= "{{" {_key(POINTMAP_KEY)} "[" number {_SEP} number {_SEP} number "]" '
            f'({_SEP} {_key(POINTMAP_LABEL_KEY)} label)? "}}"\n' + _COMMON_RULES)


def caption_grammar(max_tokens: int, num_frames: int | None = None) -> str:
    """A caption (`serialize_caption`: stripped, not empty): one line of prose, which starts with neither a space nor
    a bracket and holds no backtick, so that it is never written in another task's structured format (a front end
    refuses a caption that is grounding's dict: `output_parsing.other_task_format`)."""
    return "root ::= [^ \\t\\r\\n{\\[`] [^\\r\\n`]*\n"


def spatial_answer_grammar(max_tokens: int, num_frames: int | None = None) -> str:
    """A spatial-QA answer (`serialize_spatial_answer`): a number (whole or with decimals) or an option letter."""
    return 'root ::= "-"? ("0" | [1-9] [0-9]{0,5}) ("." [0-9]{1,4})? | [A-Z]\n'


__all__ = [
    "answer_bytes",
    "caption_grammar",
    "detection_entries",
    "detection_grammar",
    "frame_selection_grammar",
    "grounding_grammar",
    "literal",
    "pointmap_grammar",
    "spatial_answer_grammar",
]
