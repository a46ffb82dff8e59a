"""GAP-MLLM tasks: prompt, answer format, parser, answer grammar, token budget and stop rule of each task.

Sections: chat format and the prompt-text rule (`render_chat_prompt`, `refuse_control_tokens`); answer text format
(`Box3D`, `serialize_*`); answer parsers (`parse_*` → `DetectionResult`, ...); answer grammars (`*_grammar`,
`EntryList`) and stop rule (`answer_complete`); prompts and the task registry (`TaskSpec`, `TASKS`, `resolve_task`);
`generate` helpers (`GrammarLogitsProcessor`, `AnswerEndCriteria`). Imports neither torch nor transformers. Boxes
are `[cx, cy, cz, sx, sy, sz, yaw, pitch, roll]` in the first view's OpenCV camera frame (metres, radians).
"""

from __future__ import annotations

import ast
import functools
import json
import math
import numbers
import re
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING

# ---- chat format and the prompt-text rule
# The Qwen2/2.5/3(-VL) control tokens (`<|im_start|>`, `<|vision_end|>`, ...) and the `<think>` / tool markers.
MARKUP_PATTERN = re.compile(r"<\|[A-Za-z0-9_]+\|>|</?(?:think|tool_call|tool_response)>")


class PromptTextError(ValueError):
    """Text that must not become part of a chat prompt: it holds control tokens or is not valid Unicode."""


def added_token_contents(tokenizer) -> dict[int, str]:
    """`{id: text}` of the tokenizer's added tokens."""
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return {int(index): str(getattr(token, "content", token)) for index, token in decoder.items()}


def refuse_invalid_unicode(text: str, what: str) -> None:
    """Raise `PromptTextError` when `text` (named `what` in the message) holds a lone surrogate (non-UTF-8 input)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        code = ord(text[error.start])
        byte = f", the byte 0x{code - 0xDC00:02x} of an input that is not UTF-8" if 0xDC80 <= code <= 0xDCFF else ""
        raise PromptTextError(
            f"{what} is not valid text: character {error.start} is U+{code:04X}, a lone surrogate{byte}. Give the "
            "text as UTF-8."
        ) from None


def control_tokens_in(tokenizer, text: str) -> list[str]:
    """The control tokens in `text` (valid Unicode), in order of first appearance: `MARKUP_PATTERN` matches and,
    when `tokenizer` is given, its added tokens written out or produced by tokenizing `text`."""
    found = list(dict.fromkeys(match.group() for match in MARKUP_PATTERN.finditer(text)))
    if tokenizer is None:
        return found
    added = added_token_contents(tokenizer)
    found += [content for content in added.values() if content and content in text and content not in found]
    found.sort(key=text.find)  # every one so far is written out in the text
    for index in tokenizer(text, add_special_tokens=False)["input_ids"]:
        content = added.get(int(index))
        if content is not None and content not in found:
            found.append(content)
    return found


def refuse_control_tokens(tokenizer, text: str, what: str) -> None:
    """Raise `PromptTextError` (a ValueError) when `text`, user or dataset text named `what` in the message (e.g.
    "sample 0: the query"), is not valid Unicode or holds a control token of `tokenizer` (None: `MARKUP_PATTERN`
    only); TypeError when `text` is not a str."""
    if not isinstance(text, str):
        raise TypeError(f"{what} must be text, got {type(text).__name__} {text!r:.60}")
    refuse_invalid_unicode(text, what)
    found = control_tokens_in(tokenizer, text)
    if found:
        raise PromptTextError(
            f"{what} contains the tokenizer's control token(s) {', '.join(map(repr, found))}: user text must not write "
            "chat or vision markup (it would end the user turn or move the views). Remove them from the text."
        )


SYSTEM_PROMPT = "You are a helpful assistant."
IMAGE_PLACEHOLDER = "<image>"  # one per view in the human turn of the official annotation files
CHAT_MARKER = "<|im_start|>"


def placeholders_from_segments(segments: Sequence[str | None]) -> str:
    """The annotation-file form of a user turn: `IMAGE_PLACEHOLDER` for each view (`None`) of `segments`."""
    return "".join(IMAGE_PLACEHOLDER if segment is None else segment for segment in segments)


def chat_messages(segments: Sequence[str | None], answer: str | None = None) -> list[dict]:
    """Messages for `apply_chat_template`: the system prompt, the user turn, then the answer if given."""
    content = [{"type": "image"} if segment is None else {"type": "text", "text": segment}
               for segment in segments if segment is None or segment]
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def text_runs(segments: Sequence[str | None]) -> list[tuple[list[int], str]]:
    """`(indices, joined text)` of each run of text segments between two views (empty segments ignored)."""
    runs: list[tuple[list[int], str]] = []
    after_text = False
    for index, segment in enumerate(segments):
        if segment is None:
            after_text = False
        elif segment:
            indices, text = runs.pop() if after_text else ([], "")
            runs.append(([*indices, index], text + segment))
            after_text = True
    return runs


def check_chat_text(tokenizer, segments: Sequence[str | None], answer: str | None = None,
                    turn: str = "the user turn") -> None:
    """`refuse_control_tokens` on each text run of `segments` (named as items of `turn`) and on `answer`."""
    for indices, text in text_runs(segments):
        what = (f"text item {indices[0]} of {turn}" if len(indices) == 1 else
                f"text items {indices[0]}-{indices[-1]} of {turn} (joined, as the prompt holds them)")
        refuse_control_tokens(tokenizer, text, what)
    if answer is not None:
        refuse_control_tokens(tokenizer, answer, "the answer")


def render_chat_prompt(tokenizer, segments: Sequence[str | None], answer: str | None = None,
                       chat_template: str | None = None) -> str:
    """The chat text of one sample: `chat_messages` through the tokenizer's (or the given) chat template, ending
    with the answer (training) or with the generation prompt (`answer=None`, inference). Raises `PromptTextError`
    (`check_chat_text`)."""
    check_chat_text(tokenizer, segments, answer)
    return tokenizer.apply_chat_template(chat_messages(segments, answer), chat_template=chat_template,
                                         tokenize=False, add_generation_prompt=answer is None)


# ---- answer text format
DEFAULT_DECIMALS = 2
POINTMAP_LABEL_KEY = "label"  # the official key is not public
# The serialisers and the answer grammars are both built from these pieces.
BOX_KEY = "bbox_3d"  # grounding and detection boxes
LABEL_KEY = "label"  # a detection entry's label
FRAME_KEY = "frame"  # grounding stage 1
POINTMAP_KEY = "pointmap"  # the pre-training answer's point
ITEM_SEPARATOR, KEY_SEPARATOR = ", ", ": "  # json.dumps' own defaults, passed explicitly
DETECTION_OPEN = "```json\n[\n"  # the official detection answer: fence, list, one entry per line
DETECTION_INDENT = "\t"
DETECTION_LINE_END = ",\n"
DETECTION_CLOSE = "]```"


def _finite_floats(values, count: int, what: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be {count} numbers, got {values!r}") from err
    if len(out) != count:
        raise ValueError(f"{what} must have {count} numbers, got {len(out)}")
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{what} must be finite, got {out}")
    return out


@dataclass(frozen=True)
class Box3D:
    """An oriented 3D box in the first view's OpenCV camera frame (metres, radians); TypeError / ValueError for a
    label that is not a str or values that are not 3 finite numbers each.

    Attributes:
        label: object name, or None (grounding answers carry no label).
        center: `(cx, cy, cz)`.
        size: `(sx, sy, sz)` along the box's own x, y, z axes.
        angles: `(yaw, pitch, roll)`; `R = Ry(roll)·Rx(pitch)·Rz(yaw)`.
    """
    label: str | None
    center: tuple[float, float, float]
    size: tuple[float, float, float]
    angles: tuple[float, float, float] = field(default=(0.0, 0.0, 0.0))

    def __post_init__(self):
        if self.label is not None and not isinstance(self.label, str):
            raise TypeError(f"Box3D label must be a string or None, got {self.label!r}")
        object.__setattr__(self, "center", _finite_floats(self.center, 3, "Box3D center"))
        object.__setattr__(self, "size", _finite_floats(self.size, 3, "Box3D size"))
        object.__setattr__(self, "angles", _finite_floats(self.angles, 3, "Box3D angles"))

    def to_list(self) -> list[float]:
        """`[cx, cy, cz, sx, sy, sz, yaw, pitch, roll]` (9 floats)."""
        return [*self.center, *self.size, *self.angles]

    @classmethod
    def from_list(cls, values, label: str | None = None) -> "Box3D":
        """Inverse of `to_list`. Raises ValueError unless `values` holds exactly 9 finite numbers."""
        v = _finite_floats(values, 9, "bbox_3d")
        return cls(label=label, center=v[0:3], size=v[3:6], angles=v[6:9])

    def rounded(self, decimals: int = DEFAULT_DECIMALS) -> "Box3D":
        """The box as its serialised text reads back (every value through Python's `round`)."""
        return Box3D.from_list([round(v, decimals) for v in self.to_list()], label=self.label)


def _numbers(values, decimals: int) -> list[float]:
    return [round(float(v), decimals) for v in values]


def _dumps(obj) -> str:
    # repr() floats (0.44, -0.0, 2.0), as the official targets print them
    return json.dumps(obj, allow_nan=False, separators=(ITEM_SEPARATOR, KEY_SEPARATOR))


def detection_entry(box: Box3D, decimals: int = DEFAULT_DECIMALS) -> str:
    """One detection line without indentation: `{"label": "couch", "bbox_3d": [...]}`; ValueError without a label."""
    if box.label is None:
        raise ValueError("detection boxes need a label")
    return _dumps({LABEL_KEY: box.label, BOX_KEY: _numbers(box.to_list(), decimals)})


def serialize_detection(boxes, decimals: int = DEFAULT_DECIMALS) -> str:
    """The official detection answer: "```json\\n[\\n", one TAB-indented dict per line joined by ",\\n", "\\n]```"
    (no boxes: "```json\\n[\\n]```")."""
    lines = [DETECTION_INDENT + detection_entry(box, decimals) for box in boxes]
    body = DETECTION_LINE_END.join(lines)
    return DETECTION_OPEN + (body + "\n" if body else "") + DETECTION_CLOSE


def serialize_grounding(box: Box3D, decimals: int = DEFAULT_DECIMALS) -> str:
    """`{"bbox_3d": [9 numbers]}` (the label is not part of the grounding answer)."""
    return _dumps({BOX_KEY: _numbers(box.to_list(), decimals)})


def serialize_frame_selection(frame: int) -> str:
    """`{"frame": k}` (ScanRefer stage 1); ValueError unless `frame` is an integer."""
    if isinstance(frame, bool) or int(frame) != frame:
        raise ValueError(f"frame must be an integer, got {frame!r}")
    return _dumps({FRAME_KEY: int(frame)})


def serialize_pointmap(point, label: str | None = None, decimals: int = DEFAULT_DECIMALS) -> str:
    """`{"pointmap": [x, y, z], "label": "..."}` on one line; the point in the first view's camera frame (metres);
    `label=None` omits the key. ValueError unless 3 finite numbers; TypeError for a label that is not a str."""
    values = _finite_floats(point, 3, "pointmap")
    obj = {POINTMAP_KEY: _numbers(values, decimals)}
    if label is not None:
        if not isinstance(label, str):
            raise TypeError(f"pointmap label must be a string, got {label!r}")
        obj[POINTMAP_LABEL_KEY] = label
    return _dumps(obj)


def serialize_caption(caption: str) -> str:
    """The caption, stripped; ValueError when empty."""
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError(f"a caption must be a non-empty string, got {caption!r}")
    return caption.strip()


def serialize_spatial_answer(answer) -> str:
    """A spatial-QA answer: the number (`repr`: 3.5 → "3.5") or the option letter; ValueError when empty."""
    if isinstance(answer, bool) or answer is None:
        raise ValueError(f"a spatial-QA answer must be a number or a string, got {answer!r}")
    if isinstance(answer, (int, float)):
        return _dumps(answer)
    text = str(answer).strip()
    if not text:
        raise ValueError("a spatial-QA answer must not be empty")
    return text


# ---- answer parsers
MAX_TEXT_CHARS = 100_000  # ≈ 25k generated tokens; official generation stops at 1280-4096 tokens
MAX_NESTING_DEPTH = 32  # valid answers nest at most 3 deep
BOX_KEYS = ("bbox_3d", "box_3d")  # the detection prompt says "box_3d" while targets use "bbox_3d"
POINTMAP_LABEL_KEYS = (POINTMAP_LABEL_KEY, "semantic_label", "category", "class", "name")


@dataclass
class DetectionResult:
    """Parsed detection answer.

    Attributes:
        boxes: the valid entries, in output order.
        reason: None when the text parsed cleanly, else what went wrong (entries may still be present).
        skipped: number of entries that looked like boxes but were dropped (wrong count, non-finite, ...).
    """
    boxes: list[Box3D] = field(default_factory=list)
    reason: str | None = None
    skipped: int = 0


@dataclass
class GroundingResult:
    """Parsed grounding answer: one box (label None unless the text had one) or None with a reason."""
    box: Box3D | None = None
    reason: str | None = None


@dataclass
class FrameSelectionResult:
    """Parsed frame-selection answer; `frame` is clamped to `[0, num_frames − 1]` when that was given."""
    frame: int | None = None
    reason: str | None = None


@dataclass
class PointmapResult:
    """Parsed pre-training answer: `point` `(x, y, z)` and the optional semantic `label`."""
    point: tuple[float, float, float] | None = None
    label: str | None = None
    reason: str | None = None


@dataclass
class CaptionResult:
    """Parsed captioning answer: the caption (surrounding whitespace removed), or None with a reason."""
    caption: str | None = None
    reason: str | None = None


@dataclass
class SpatialAnswerResult:
    """Parsed spatial-QA answer.

    Attributes:
        answer: the answer word as VSI-Bench reads it (first space-separated word, trailing dots removed:
            "B. chair" → "B", "3.5 meters" → "3.5"), or None for an empty answer.
        value: `answer` as a number when it is one (numerical questions), else None.
        reason: None, or what went wrong.
    """
    answer: str | None = None
    value: float | None = None
    reason: str | None = None


def drop_negative_token_ids(rows) -> list[list[int]]:
    """Rows of token ids without their negative entries (-100 and other padding, which tokenizers cannot decode)."""
    return [[int(i) for i in row if int(i) >= 0] for row in rows]


def _find_fence(text: str, start: int = 0) -> int:
    """Index of the first ``` at or after `start` outside a double-quoted string, or -1."""
    for i, ch, in_string in _scan(text[start:], quotes='"'):
        if not in_string and ch == "`" and text.startswith("```", start + i):
            return start + i
    return -1


def strip_code_fences(text: str) -> str:
    """Content of the first non-empty ``` fence (language tag dropped; an unclosed fence runs to the end), or the
    stripped text when there is no fence."""
    start = _find_fence(text)
    if start < 0:
        return text.strip()
    while start >= 0:
        body_start = start + 3
        while body_start < len(text) and (text[body_start].isalnum() or text[body_start] == "_"):
            body_start += 1  # language tag ("json", "python", ...)
        end = _find_fence(text, body_start)
        body = text[body_start : end if end >= 0 else len(text)].strip()
        if body:
            return body
        start = end  # an empty fence: the next ``` opens the next candidate
    return ""


def quoted_answer(text: str, limit: int = 120) -> str:
    """`repr(text)`, cut to `limit` characters with the rest counted."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text) - limit} more characters)"


def _scan(text: str, quotes: str = "'\""):
    """Yield `(index, char, in_string)`, tracking string literals opened by any of `quotes` (with escapes)."""
    quote = None
    escaped = False
    for i, ch in enumerate(text):
        if quote is not None:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
            yield i, ch, True
        elif ch in quotes:
            quote = ch
            yield i, ch, True
        else:
            yield i, ch, False


def nesting_depth(text: str) -> int:
    """Maximum bracket depth outside string literals (the larger of: `'` and `"` as quotes, `"` only)."""
    best = 0
    for quotes in ("'\"", '"'):
        depth = 0
        for _, ch, in_string in _scan(text, quotes):
            if in_string:
                continue
            if ch in "[{(":
                depth += 1
                best = max(best, depth)
            elif ch in "]})":
                depth = max(depth - 1, 0)
    return best


_PY_WORDS = {"true": "True", "false": "False", "null": "None"}


def _to_python_literal(text: str) -> str:
    """JSON-isms rewritten for `ast.literal_eval`: trailing commas dropped, true/false/null mapped."""
    out: list[str] = []
    chars = list(_scan(text))
    n = len(chars)
    i = 0
    while i < n:
        _, ch, in_string = chars[i]
        if not in_string and ch == ",":
            j = i + 1
            while j < n and not chars[j][2] and chars[j][1].isspace():
                j += 1
            if j < n and not chars[j][2] and chars[j][1] in "]}":
                i += 1  # trailing comma: drop it
                continue
        if not in_string and ch.isalpha() and (i == 0 or not (chars[i - 1][1].isalnum() or chars[i - 1][1] == "_")):
            j = i
            while j < n and not chars[j][2] and (chars[j][1].isalnum() or chars[j][1] == "_"):
                j += 1
            word = text[i:j]
            out.append(_PY_WORDS.get(word, word))
            i = j
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _first_balanced_block(text: str, quotes: str) -> str | None:
    """The first `{...}` or `[...]` block (whichever opens first), balanced outside strings."""
    opening = None
    depth = 0
    start = -1
    for i, ch, in_string in _scan(text, quotes):
        if in_string:
            continue
        if opening is None:
            if ch in "[{":
                opening, start, depth = ch, i, 1
            continue
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
    return None


def _try_literal(candidate: str):
    """`(value, None)` or `(None, error)`; never raises."""
    if nesting_depth(candidate) > MAX_NESTING_DEPTH:  # checked per candidate: json/ast recurse per level
        return None, f"brackets nested deeper than {MAX_NESTING_DEPTH}"
    try:
        return json.loads(candidate), None
    except Exception as err:  # noqa: BLE001 - any failure moves on to the literal fallback
        json_error = f"{type(err).__name__}: {err}"
    try:
        with warnings.catch_warnings():  # model text may hold invalid escapes ("\\ "): not our warning to raise
            warnings.simplefilter("ignore")
            return ast.literal_eval(_to_python_literal(candidate)), None
    except Exception:  # noqa: BLE001 - SyntaxError, ValueError, MemoryError, RecursionError, ...
        return None, json_error


def parse_literal(text: str, allow_block: bool = True):
    """Parse one JSON / Python literal out of a model answer (code fences stripped).

    Args:
        text: the answer text (at most `MAX_TEXT_CHARS`).
        allow_block: when the whole text is not a literal, try its first balanced `{...}` / `[...]` block.

    Returns:
        `(value, None)` on success, `(None, reason)` otherwise. Never raises, never executes code.
    """
    if not isinstance(text, str):
        return None, f"expected a string, got {type(text).__name__}"
    if len(text) > MAX_TEXT_CHARS:
        return None, f"text is too long ({len(text)} characters > {MAX_TEXT_CHARS})"
    body = strip_code_fences(text)
    if not body:
        return None, "empty answer" if not text.strip() else f"no answer inside the code fences of {quoted_answer(text)}"
    if nesting_depth(body) > MAX_NESTING_DEPTH:
        return None, f"brackets nested deeper than {MAX_NESTING_DEPTH} in {quoted_answer(text)}"
    value, error = _try_literal(body)
    if error is None:
        return (value, None) if value is not None else (None, "answer is null")
    # prose around the answer: an apostrophe in prose would open a fake string, so retry with `"` only
    tried = {body}
    for quotes in ("'\"", '"') if allow_block else ():
        block = _first_balanced_block(body, quotes)
        if block is None or block in tried:
            continue
        tried.add(block)
        value, block_error = _try_literal(block)
        if block_error is None:
            return value, None  # a bracketed block is never None
    return None, f"not a JSON or Python literal ({error}): {quoted_answer(text)}"


def _finite_number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except (OverflowError, ValueError):  # ints too large for a float
        return None
    return number if math.isfinite(number) else None


def _parsed_numbers(values, count: int, what: str):
    if not isinstance(values, (list, tuple)):
        return None, f"{what} is not a list"
    if len(values) != count:
        return None, f"{what} has {len(values)} value(s) instead of {count}"
    numbers = [_finite_number(v) for v in values]
    if any(n is None for n in numbers):
        return None, f"{what} contains a non-numeric or non-finite value"
    return tuple(numbers), None


def box_numbers(values, what: str):
    """`(9 floats, None)` or `(None, problem)`: 9 finite numbers whose sizes (entries 3-5) are >= 0 (a negative size
    is a problem, not read as its absolute value)."""
    values, problem = _parsed_numbers(values, 9, what)
    if problem:
        return None, problem
    if any(v < 0 for v in values[3:6]):
        return None, f"{what} has a negative size {list(values[3:6])}"
    return values, None


def _box_from_entry(entry):
    """`(Box3D, None)` or `(None, problem)` for one `{"label": ..., "bbox_3d": [...]}` dict."""
    if not isinstance(entry, dict):
        return None, f"entry is a {type(entry).__name__}, not a dict"
    key = next((k for k in BOX_KEYS if k in entry), None)
    if key is None:
        return None, 'entry has no "bbox_3d"'
    values, problem = box_numbers(entry[key], key)
    if problem:
        return None, problem
    label = entry.get("label")
    if label is not None and not isinstance(label, str):
        return None, f"label {label!r} is not a string"
    return Box3D.from_list(values, label=label), None


TRAILING_COMMA = "a stray comma after the answer"


def _without_trailing_comma(value):
    """`(value, None)`, or `(X, TRAILING_COMMA)` for the one-element tuple that a literal `X,` reads as."""
    if isinstance(value, tuple) and len(value) == 1:
        return value[0], TRAILING_COMMA
    return value, None


def _joined(*reasons) -> str | None:
    found = [reason for reason in reasons if reason]
    return "; ".join(found) if found else None


def _with_problems(reason: str | None, skipped: int, first_problem: str | None) -> str | None:
    if not skipped:
        return reason
    note = f"skipped {skipped} malformed entr{'y' if skipped == 1 else 'ies'} (first: {first_problem})"
    return note if reason is None else f"{reason}; {note}"


def _line_candidates(line: str):
    """One answer line as is, then without a leading `[` / trailing `]` or fence."""
    yield line
    trimmed = line
    if trimmed.startswith("["):
        trimmed = trimmed[1:].strip()
    for tail in ("```", "]"):
        if trimmed.endswith(tail):
            trimmed = trimmed[: -len(tail)].strip().rstrip(",").strip()
    if trimmed != line:
        yield trimmed


def parse_detection(text: str) -> DetectionResult:
    """Parse a detection answer: the official fenced one-dict-per-line list, a JSON list, a single dict, or a
    truncated answer (its complete lines). Entries without 9 finite numbers (sizes >= 0) are skipped and counted;
    an empty list is a valid answer. Never raises."""
    if not isinstance(text, str):
        return DetectionResult(reason=f"expected a string, got {type(text).__name__}")
    if len(text) > MAX_TEXT_CHARS:
        return DetectionResult(reason=f"text is too long ({len(text)} characters > {MAX_TEXT_CHARS})")
    # 1. the whole answer as one literal
    value, error = parse_literal(text, allow_block=False)
    if value is not None:
        value, comma = _without_trailing_comma(value)
        if isinstance(value, dict):  # "{...}," is an official list line, not a stray comma
            comma = None
        result = _detection_from_value(value)
        if result.reason is not None and not result.boxes and not result.skipped:  # not a list: quote what it was
            result.reason = f"{result.reason}: {quoted_answer(text)}"
        result.reason = _joined(comma, result.reason)
        return result
    # 2. the official line-based reading (keeps the complete lines of a truncated answer)
    boxes, skipped, first_problem = [], 0, None
    for raw_line in strip_code_fences(text).splitlines():
        line = raw_line.strip().rstrip(",").strip()
        if not any(key in line for key in (*BOX_KEYS, "label")):
            continue
        found = None
        problem = None
        for candidate in _line_candidates(line):
            parsed, _ = parse_literal(candidate, allow_block=True)
            if parsed is None:
                continue
            entries = list(parsed) if isinstance(parsed, (list, tuple)) else [parsed]
            results = [_box_from_entry(entry) for entry in entries]
            found = [box for box, _ in results if box is not None]
            bad = [p for box, p in results if box is None]
            skipped += len(bad)
            problem = bad[0] if bad else None
            break
        if found is None:
            skipped += 1
            problem = f"cannot parse line {line[:60]!r}"
        else:
            boxes.extend(found)
        first_problem = first_problem or problem
    if boxes or skipped:
        return DetectionResult(boxes, _with_problems(f"{error}; read it line by line", skipped, first_problem), skipped)
    return DetectionResult(reason=f"no detection entries found: {error}")


def _detection_from_value(value) -> DetectionResult:
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, tuple):  # "{...}, {...}" reads as a Python tuple
        value = list(value)
    if not isinstance(value, list):
        return DetectionResult(reason=f"answer is a {type(value).__name__}, not a list of boxes")
    boxes, skipped, first_problem = [], 0, None
    for entry in value:
        box, problem = _box_from_entry(entry)
        if box is None:
            skipped += 1
            first_problem = first_problem or problem
        else:
            boxes.append(box)
    return DetectionResult(boxes, _with_problems(None, skipped, first_problem), skipped)


def parse_grounding(text: str) -> GroundingResult:
    """Parse `{"bbox_3d": [9 numbers]}` (a list of such dicts gives its first valid box). Never raises."""
    value, error = parse_literal(text)
    if value is None:
        return GroundingResult(reason=error)
    value, comma = _without_trailing_comma(value)
    if isinstance(value, dict):
        box, problem = _box_from_entry(value)
        return GroundingResult(box, _joined(comma, problem))
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, list) and value and all(not isinstance(v, (list, dict)) for v in value):
        values, problem = box_numbers(value, "bbox_3d")
        if problem:
            return GroundingResult(reason=problem)
        return GroundingResult(Box3D.from_list(values), "answer is a bare list, not a dict")
    if isinstance(value, list):
        for i, entry in enumerate(value):
            box, _ = _box_from_entry(entry)
            if box is not None:
                return GroundingResult(box, f"answer is a list of {len(value)} entries; took entry {i}")
        return GroundingResult(reason="no entry of the list holds a valid bbox_3d")
    return GroundingResult(reason=f"answer is a {type(value).__name__}, not a dict: {quoted_answer(text)}")


def _as_frame_index(value):
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit() and len(value) < 20:
        return int(value.strip())
    return None


def parse_frame_selection(text: str, num_frames: int | None = None) -> FrameSelectionResult:
    """Parse `{"frame": k}` (ScanRefer stage 1); with `num_frames`, `k` is clamped to `[0, num_frames − 1]` and
    `reason` says so. ValueError when `num_frames` is not a positive integer (the text never raises)."""
    if num_frames is not None and (isinstance(num_frames, bool) or int(num_frames) < 1):
        raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
    value, error = parse_literal(text)
    if value is None:
        return FrameSelectionResult(reason=error)
    value, reason = _without_trailing_comma(value)
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        value, reason = value[0], _joined(reason, "answer is a one-element list")
    if not isinstance(value, dict):
        return FrameSelectionResult(reason=f"answer is a {type(value).__name__}, not a dict: {quoted_answer(text)}")
    if "frame" not in value:
        return FrameSelectionResult(reason='answer has no "frame" key')
    frame = _as_frame_index(value["frame"])
    if frame is None:
        return FrameSelectionResult(reason=f'"frame" value {value["frame"]!r} is not an integer')
    if num_frames is not None:
        clamped = min(max(frame, 0), int(num_frames) - 1)
        if clamped != frame:
            reason = _joined(reason, f"frame {frame} clamped to {clamped} (valid range 0..{int(num_frames) - 1})")
            frame = clamped
    return FrameSelectionResult(frame, reason)


def _pointmap_from_dict(value: dict):
    point, problem = (
        _parsed_numbers(value.get("pointmap"), 3, "pointmap") if "pointmap" in value else (None, 'no "pointmap" key')
    )
    if problem:
        return None, None, problem
    label = next((value[k] for k in POINTMAP_LABEL_KEYS if isinstance(value.get(k), str)), None)
    if label is None:
        key = next((k for k in POINTMAP_LABEL_KEYS if value.get(k) is not None), None)
        if key is not None:
            found = value[key]
            return point, None, f'"{key}" is a {type(found).__name__} ({found!r:.40}), not a text label'
    return point, label, None


def parse_pointmap(text: str) -> PointmapResult:
    """Parse `{"pointmap": [x, y, z], "label": "..."}` (reconstruction); also the first line mentioning "pointmap".

    The label is read from the first text value of `POINTMAP_LABEL_KEYS`, else None (a non-text label is noted in
    `reason`). Never raises.
    """
    value, error = parse_literal(text)
    value, comma = _without_trailing_comma(value)
    if isinstance(value, dict):
        point, label, problem = _pointmap_from_dict(value)
        return PointmapResult(point, label, _joined(comma, problem))
    if isinstance(text, str) and len(text) <= MAX_TEXT_CHARS:
        for raw_line in strip_code_fences(text).splitlines():
            line = raw_line.strip().rstrip(",").strip()
            if "pointmap" not in line:
                continue
            parsed, _ = parse_literal(line)
            if isinstance(parsed, dict):
                point, label, problem = _pointmap_from_dict(parsed)
                if point is not None:
                    note = "answer is not one literal; read the pointmap line"
                    return PointmapResult(point, label, note if problem is None else f"{note}; {problem}")
    if value is not None:
        return PointmapResult(reason=f"answer is a {type(value).__name__}, not a dict: {quoted_answer(text)}")
    return PointmapResult(reason=error)


def parse_caption(text: str) -> CaptionResult:
    """The stripped text as the caption; an empty answer gives None with a reason."""
    if not isinstance(text, str):
        return CaptionResult(reason=f"expected a string, got {type(text).__name__}")
    caption = text.strip()
    return CaptionResult(caption) if caption else CaptionResult(reason="empty answer")


def parse_spatial_answer(text: str) -> SpatialAnswerResult:
    """Read a spatial-QA answer the way VSI-Bench scores it: the first space-separated word, trailing dots
    removed; `value` is that word as a finite number when it is one."""
    if not isinstance(text, str):
        return SpatialAnswerResult(reason=f"expected a string, got {type(text).__name__}")
    answer = text.strip().split(" ")[0].rstrip(".").strip()
    if not answer:
        return SpatialAnswerResult(reason="empty answer")
    try:
        value = float(answer)
    except ValueError:
        value = None
    return SpatialAnswerResult(answer, value if value is not None and math.isfinite(value) else None)


# ---- answer grammars (GBNF as llguidance reads it) and the stop rule
MAX_LABEL_CHARS = 32
MAX_INTEGER_DIGITS = 2  # |value| < 100 (metres, radians)
MAX_DECIMALS = 2  # DEFAULT_DECIMALS: what the targets print
MAX_FRAME_DIGITS = 3
BOX_VALUES = 9
MAX_WORD_LETTERS = 20  # a caption's word: English words are shorter; a longer run of letters is no word
MAX_CAPTION_NUMBER_DIGITS = 4  # a caption's number ("1.5 meters", "2 chairs"): 1-4 digits, 0-2 decimals
SENTENCE_ENDS = ".!?"
CLAUSE_MARKS = ",;"  # no colon: "word: value" is the structured answers' shape
# the grammar engine (`GrammarLogitsProcessor`, vLLM's `guidance` backend) and its verified version
ENGINE_MODULE = "llguidance"
ENGINE_REQUIREMENT = "llguidance==1.9.1"


def engine_missing(free_switch: str = "constrained=False in processor.generation_kwargs") -> str | None:
    """None when llguidance is installed (looked up, not imported), else one line saying how to install it, or to
    decode freely with `free_switch` (Python's argument by default; the command line gives its own flags)."""
    import importlib.util
    if importlib.util.find_spec(ENGINE_MODULE) is not None:
        return None
    return (f"constrained decoding needs {ENGINE_MODULE}, which is not installed: pip install '{ENGINE_REQUIREMENT}' "
            f"(a plain pip install -e . brings it), or decode freely ({free_switch})")


def literal(text: str) -> str:
    """`text` as an EBNF string literal (quotes, backslashes, tabs and line breaks escaped)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def grammar_characters(grammar: str) -> list[str]:
    """Every character an answer of `grammar` (as this module writes grammars) may write, sorted: those of its
    string literals and character classes (see `unwritable_character`)."""
    found, index, unescape = set(), 0, {"n": "\n", "t": "\t"}
    while index < len(grammar):
        opening = grammar[index]
        if opening in "[\"":
            closing, text = "]" if opening == "[" else '"', []
            index += 1
            while grammar[index] != closing:
                if grammar[index] == "\\":
                    index += 1
                    text.append(unescape.get(grammar[index], grammar[index]))
                else:
                    text.append(grammar[index])
                index += 1
            if opening == "[":  # a '-' between two characters is a range
                spans = [k for k in range(1, len(text) - 1) if text[k] == "-"]
                for k in spans:
                    found.update(chr(code) for code in range(ord(text[k - 1]), ord(text[k + 1]) + 1))
                text = [char for k, char in enumerate(text) if k not in spans]
            found.update(text)
        index += 1
    return sorted(found)


def _key(name: str) -> str:
    """`"bbox_3d": ` as one literal."""
    return literal(f'"{name}"{KEY_SEPARATOR}')


def _name_rules(max_chars: int) -> str:
    """`name`: 1 to `max_chars` characters, words of letters and digits (the first starting with a letter) joined by
    one space, hyphen or apostrophe; `name_k` is what may follow with `k` characters left."""
    rules = [f"name ::= [A-Za-z] name_{max_chars - 1}"]
    for left in range(max_chars - 1, -1, -1):
        options = ['""']
        if left >= 1:
            options.append(f"[A-Za-z0-9] name_{left - 1}")
        if left >= 2:
            options.append(f"[ '-] [A-Za-z0-9] name_{left - 2}")  # a class's last '-' is literal: no escape
        rules.append(f"name_{left} ::= {' | '.join(options)}")
    return "\n".join(rules) + "\n"


_UNSIGNED = f'("0" | [1-9] [0-9]{{0,{MAX_INTEGER_DIGITS - 1}}}) "." [0-9]{{1,{MAX_DECIMALS}}}'
_COMMON_RULES = (
    f'number ::= "-"? unsigned\n'
    f"unsigned ::= {_UNSIGNED}\n"
    f'size ::= unsigned | "-0.0"\n'
    f'label ::= "\\"" name "\\""\n' + _name_rules(MAX_LABEL_CHARS)
)
_SEP = literal(ITEM_SEPARATOR)


def _box_rule() -> str:
    """`[cx, cy, cz, sx, sy, sz, yaw, pitch, roll]`: sizes without a minus."""
    kinds = ["number"] * 3 + ["size"] * 3 + ["number"] * 3
    return f'box ::= "[" {f" {_SEP} ".join(kinds)} "]"\n'


# the longest text of each piece in bytes (all ASCII), which bounds an answer's tokens
_NUMBER_BYTES = 1 + MAX_INTEGER_DIGITS + 1 + MAX_DECIMALS  # -99.99
_BOX_BYTES = 2 + BOX_VALUES * _NUMBER_BYTES + (BOX_VALUES - 1) * len(ITEM_SEPARATOR)
_LABEL_BYTES = MAX_LABEL_CHARS + 2
_DETECTION_ENTRY_BYTES = (len(DETECTION_INDENT) + 2 + len(f'"{LABEL_KEY}"{KEY_SEPARATOR}') + _LABEL_BYTES
                          + len(ITEM_SEPARATOR) + len(f'"{BOX_KEY}"{KEY_SEPARATOR}') + _BOX_BYTES + len(DETECTION_LINE_END))
_DETECTION_LIST_END = "\n" + DETECTION_CLOSE  # after the last entry


def detection_entries(max_tokens: int) -> int:
    """How many entries a detection answer may hold so that the longest one has at most `max_tokens` bytes."""
    return max(0, (int(max_tokens) - len(DETECTION_OPEN) - len(DETECTION_CLOSE)) // _DETECTION_ENTRY_BYTES)


def detection_list_grammar(entries: int | None) -> str:
    """The grammar of `serialize_detection`'s answers with at most `entries` boxes (None: any number)."""
    entry = f'{literal(DETECTION_INDENT + "{")} {_key(LABEL_KEY)} label {_SEP} {_key(BOX_KEY)} box "}}"'
    # no `{0,0}` repetition for a single entry: llguidance refuses an empty range
    more = "*" if entries is None else f"{{0,{int(entries) - 1}}}" if entries > 1 else None
    repeated = f" ({literal(DETECTION_LINE_END)} entry){more}" if more else ""
    listed = f'(entry{repeated} "\\n")? ' if entries is None or entries > 0 else ""
    return (f"root ::= {literal(DETECTION_OPEN)} {listed}{literal(DETECTION_CLOSE)}\n"
            f"entry ::= {entry}\n" + _box_rule() + _COMMON_RULES)


def detection_grammar(max_tokens: int, num_frames: int | None = None, prompt: str | None = None) -> str:
    """The detection grammar with 0 to `detection_entries(max_tokens)` boxes: ends within `max_tokens` tokens on an
    engine that cannot count tokens (vLLM)."""
    return detection_list_grammar(detection_entries(max_tokens))


@dataclass(frozen=True)
class EntryList:
    """A list answer that `GrammarLogitsProcessor` closes at its token budget: decoded inside `grammar(None)` until
    `reserve` tokens are left, then inside `bounded(text so far)` (at most one more entry).

    Attributes:
        grammar: entries (int, or None for no bound) → the grammar (EBNF) of the list.
        opening: the text before the first entry's separator.
        entry_start, entry_end: the texts that begin and end an entry, and occur nowhere else in an answer.
        reserve: the most bytes the rest of a bounded answer can take after an entry (a token is at least a byte).
    """
    grammar: Callable[[int | None], str]
    opening: str
    entry_start: str
    entry_end: str
    reserve: int

    def bounded(self, text: str) -> str:
        """The grammar for the entries `text` has begun, plus one when it is between entries of an open list."""
        begun = text.count(self.entry_start)
        between = text.startswith(self.opening) and begun == text.count(self.entry_end)
        return self.grammar(begun + 1 if between else begun)


# labels are names and numbers digits, so "\t{" begins an entry and "}" ends it, and nothing else does
DETECTION_LIST = EntryList(detection_list_grammar, DETECTION_OPEN.removesuffix("\n"), DETECTION_INDENT + "{",
                           "}", _DETECTION_ENTRY_BYTES + len(_DETECTION_LIST_END))


def grounding_grammar(max_tokens: int, num_frames: int | None = None, prompt: str | None = None) -> str:
    """`{"bbox_3d": [9 numbers]}` (`serialize_grounding`)."""
    return f'root ::= "{{" {_key(BOX_KEY)} box "}}"\n' + _box_rule() + _COMMON_RULES


def frame_selection_grammar(max_tokens: int, num_frames: int | None = None, prompt: str | None = None) -> str:
    """`{"frame": k}`: k one of the `num_frames` views' indices when given, else a whole number."""
    if num_frames is not None and (isinstance(num_frames, bool) or int(num_frames) < 1):
        raise ValueError(f"num_frames must be a positive whole number, got {num_frames!r}")
    frames = (" | ".join(f'"{k}"' for k in range(int(num_frames))) if num_frames is not None
              else f'"0" | [1-9] [0-9]{{0,{MAX_FRAME_DIGITS - 1}}}')
    return f'root ::= "{{" {_key(FRAME_KEY)} ({frames}) "}}"\n'


def pointmap_grammar(max_tokens: int, num_frames: int | None = None, prompt: str | None = None) -> str:
    """`{"pointmap": [x, y, z], "label": "..."}` (`serialize_pointmap`; without a label, no label key)."""
    return (f'root ::= "{{" {_key(POINTMAP_KEY)} "[" number {_SEP} number {_SEP} number "]" '
            f'({_SEP} {_key(POINTMAP_LABEL_KEY)} label)? "}}"\n' + _COMMON_RULES)


def _characters(chars: str) -> str:
    return "(" + " | ".join(literal(c) for c in chars) + ")"


def _letters(letters) -> str:
    return "[" + "".join(sorted(letters)) + "]"


_LOWER = "abcdefghijklmnopqrstuvwxyz"


@functools.lru_cache(maxsize=8)  # ~10 ms to build, the same for every caption request
def _word_rules(max_letters: int, not_words: tuple[str, ...]) -> str:
    """`word`: a letter then lower-case letters (2 to `max_letters` in all), `a`, `A`, `I`, an acronym of 2-3
    capitals, or lower-case parts joined by `-` or `'`; no run of letters holds one of `not_words`. Rule
    `l<state>_<n>`: what may follow `n` letters ending in that state of the `not_words` automaton."""
    states = sorted({w[:k] for w in not_words for k in range(len(w))}, key=lambda t: (len(t), t))

    def step(state: str, letter: str) -> str | None:
        """The state after `letter`, or None where a `not_words` word is complete."""
        text = state + letter
        if any(text.endswith(w) for w in not_words):
            return None
        return next(text[k:] for k in range(len(text) + 1) if text[k:] in states)
    rules, todo, named = [], [], set()

    def name(state: str, n: int, first: bool = False) -> str:
        rule = f"l{states.index(state)}_{n}{'h' if first else ''}"
        if rule not in named:
            named.add(rule)
            todo.append((rule, state, n, first))
        return rule

    def letters_then(state: str, n: int, capitals: bool = False) -> list[str]:
        targets: dict[str, set] = {}
        for letter in _LOWER:
            target = step(state, letter)
            if target is not None:
                targets.setdefault(target, set()).update({letter, letter.upper()} if capitals else {letter})
        return [f"{_letters(letters)} {name(t, n + 1, first=n == 0 and capitals)}" for t, letters in targets.items()]

    joined = "((\"-\" | \"'\") part)"
    rules.append(f"word ::= [A-Z]{{2,3}} | [aAI] | [A-Za-z] {joined}{{1,2}} | head {joined}{{0,2}}")
    rules.append(f"head ::= {' | '.join(letters_then('', 0, capitals=True))}")
    rules.append(f"part ::= {' | '.join(letters_then('', 0))}")
    while todo:
        rule, state, n, first = todo.pop(0)
        options = [] if first else ['""']  # a head has two letters at least, a part one
        if n < max_letters:
            options += letters_then(state, n)
        rules.append(f"{rule} ::= {' | '.join(options)}")
    return "\n".join(rules) + "\n"


# the structured answers' key names that are no English word
CAPTION_NOT_WORDS = ("bbox", "pointmap")


def caption_grammar(max_tokens: int, num_frames: int | None = None, prompt: str | None = None) -> str:
    """A caption: sentences of words (`_word_rules`), joined by one space and ending in `.!?`; words joined by a
    space after an optional `,` or `;`; a number (`1.5`, no minus) only between words; parentheses hold words. No
    brace, bracket, quote, backslash, backtick, colon or line break."""
    number = f'[0-9]{{1,{MAX_CAPTION_NUMBER_DIGITS}}} ("." [0-9]{{1,2}})?'
    return (
        "root ::= sentence (\" \" sentence)*\n"
        f"sentence ::= word phrase* (pause number)? {_characters(SENTENCE_ENDS)}\n"
        "phrase ::= pause (unit | number pause unit)\n"
        "unit ::= word | \"(\" word inner* \")\"\n"
        "inner ::= pause (word | number pause word)\n"
        f"pause ::= {_characters(CLAUSE_MARKS)}? \" \"\n"
        f"number ::= {number}\n" + _word_rules(MAX_WORD_LETTERS, CAPTION_NOT_WORDS)
    )


# an option line: "A. chair", "A) chair", "(A) chair", "A: chair" (or lower case), its layout told apart
_OPTION_LINE = re.compile(r"^[ \t]*(?P<layout>\((?P<paren>[A-Za-z])\)|(?P<letter>[A-Za-z])(?P<mark>[.):]))[ \t]+\S",
                          re.MULTILINE)
_ASKS_FOR_LETTER = re.compile(r"\b(?:option|choice)(?:'s)?\s+letter\b|\bletter\s+of\s+the\s+(?:\w+\s+)?"
                              r"(?:option|choice|answer)\b", re.IGNORECASE)
# a numbered option line ("1. chair", "(3) lamp"): the model was trained on lettered options only
_NUMBERED_LINE = re.compile(r"^[ \t]*(?:\((?P<paren>[0-9]+)\)|(?P<number>[0-9]+)[.):])[ \t]+\S", re.MULTILINE)


def _option_letters(prompt: str | None) -> dict[tuple[str, bool], list[str]]:
    """`(mark, lower case)` → the letters of `prompt`'s option lines in that layout, in order."""
    found: dict[tuple[str, bool], list[str]] = {}
    for line in _OPTION_LINE.finditer(prompt or ""):
        letter = line["paren"] or line["letter"]
        found.setdefault(("()" if line["paren"] else line["mark"], letter.islower()), []).append(letter)
    return found


def offered_options(prompt: str | None) -> tuple[str, ...]:
    """The option letters a question offers, in order: lines starting `A. `, `A) `, `(A) ` or `A: ` (or lower case),
    lettered from A in one layout; `()` for a question without options."""
    for (_, lower), letters in _option_letters(prompt).items():
        first = "a" if lower else "A"
        options = tuple(dict.fromkeys(letters))
        if options == tuple(chr(ord(first) + k) for k in range(len(options))):
            return options
    return ()


def _repeated_letter(prompt: str | None) -> str | None:
    """The first option letter named twice ("A. chair" ... "A. sofa"), or None."""
    options = offered_options(prompt)
    for letters in _option_letters(prompt).values():
        if tuple(dict.fromkeys(letters)) == options:
            return next((letter for k, letter in enumerate(letters) if letter in letters[:k]), None)
    return None


def _numbered_options(prompt: str | None) -> tuple[str, ...]:
    """The numbers of a question's numbered lines when they count from 1, else `()`."""
    numbers = tuple(line["paren"] or line["number"] for line in _NUMBERED_LINE.finditer(prompt or ""))
    return numbers if len(numbers) > 1 and numbers == tuple(str(k) for k in range(1, len(numbers) + 1)) else ()


def options_problem(prompt: str | None) -> str | None:
    """Why a spatial question cannot get an answer grammar, or None: it names an option letter twice, numbers its
    options instead of lettering them, or asks for an option letter but offers none that `offered_options` reads."""
    if prompt is None:
        return None
    repeated = _repeated_letter(prompt)
    if repeated is not None:
        return (f"the question names option {repeated} twice, so an answer '{repeated}' would not say which: letter "
                "each option once, from A")
    if offered_options(prompt):
        return None
    numbered = _numbered_options(prompt)
    if numbered:
        return (f"the question numbers its options ({', '.join(numbered)}), and this model answers options by their "
                "letter: write them as 'A. chair', 'B. table', lettered from A")
    if not _ASKS_FOR_LETTER.search(prompt):
        return None
    return ("the question asks for an option letter but lists no options this model reads: write each option on its "
            "own line as 'A. chair', 'A) chair', '(A) chair' or 'A: chair', lettered from A")


def spatial_answer_grammar(max_tokens: int, num_frames: int | None = None, prompt: str | None = None) -> str:
    """A spatial-QA answer: one of the option letters `prompt` (the question) offers, else a number; either when
    `prompt` is None. ValueError when the question has an `options_problem`."""
    number = '"-"? ("0" | [1-9] [0-9]{0,5}) ("." [0-9]{1,4})?'
    if prompt is None:
        return f"root ::= {number} | [A-Z]\n"
    problem = options_problem(prompt)
    if problem is not None:
        raise ValueError(problem)
    options = offered_options(prompt)
    return f"root ::= {' | '.join(literal(letter) for letter in options)}\n" if options else f"root ::= {number}\n"


ANSWER_ENDS = ("list", "dict", "paragraph", "line")
_RUNAWAY_BLANK_LINES = re.compile(r"\n[ \t]*\n[ \t]*\n")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_QUOTES = re.compile(r'""|"')
_BRACKET = re.compile(r"[\[\]{}]")
FENCE = "```"


def _mask_strings(text: str) -> str:
    """`text` with every double-quoted string emptied, cut before a string that is still open."""
    masked = _JSON_STRING.sub('""', text)
    for quote in _QUOTES.finditer(masked):
        if quote.group() == '"':
            return masked[: quote.start()]
    return masked


def _literal_span(code: str) -> tuple[int, int | None, str] | None:
    """`(start, end or None while open, opener)` of the first top-level bracket block of `code`, or None."""
    start, depth = -1, 0
    for match in _BRACKET.finditer(code):
        bracket = match.group()
        if bracket in "[{":
            start = match.start() if start < 0 else start
            depth += 1
        elif start >= 0:
            depth -= 1
            if depth == 0:
                return start, match.end(), code[start]
    return None if start < 0 else (start, None, code[start])


def answer_complete(text: str, answer_end: str) -> bool:
    """Whether the generated `text` (the new tokens, decoded) holds a whole answer; `answer_end` of `ANSWER_ENDS`
    (ValueError otherwise)."""
    if answer_end not in ANSWER_ENDS:
        raise ValueError(f"unknown answer end {answer_end!r}; expected one of {ANSWER_ENDS}")
    if _RUNAWAY_BLANK_LINES.search(text):
        return True
    body = text.lstrip()
    if answer_end == "line":
        return "\n" in body
    if answer_end == "paragraph":
        return _BLANK_LINE.search(body) is not None
    code = _mask_strings(text)
    span = _literal_span(code)
    if span is None or span[1] is None or (answer_end == "list" and span[2] != "["):
        return False
    start, end, _ = span
    fence = code.find(FENCE)
    if fence < 0 or fence > start:
        return True
    rest = code[end:]
    return FENCE in rest or "\n" in rest


if TYPE_CHECKING:  # the registry imports neither torch nor transformers at run time
    import torch
    from transformers import LogitsProcessorList, StoppingCriteriaList

# ---- prompts (detection and both grounding stages verbatim from the official inference code)
DETECTION_TEMPLATE = (
    "Detect the 3D bounding boxes in the camera coordinate system of the first frame.\n"
    'Output a json list where each entry contains the object name in "label" and its 3D bounding box in "box_3d".\n'
    "The 3D bounding box format should be [x_center, y_center, z_center, x_size, y_size, z_size, yaw, pitch, roll]."
)
GROUNDING_STAGE1_TEMPLATE = (
    "Localize the first clear frame in the video showing the object described in the text.\n"
    "Text: {query}\n"
    'Output a JSON dictionary with the frame index in "frame".\n'
)
GROUNDING_STAGE2_TEMPLATE = (
    "Localize the object described in the text.\n"
    "Text: {query}\n"
    'Output a JSON dictionary with the matched object\'s 3D bounding box in "bbox_3d" in the camera coordinate system of the first frame.\n'
    "The 3D bounding box format should be [x_center, y_center, z_center, x_size, y_size, z_size, yaw, pitch, roll].\n"
)
# ours, as for the two below (the official wording is not public)
CAPTIONING_TEMPLATE = (
    "Describe the object in the 3D bounding box {box} in the camera coordinate system of the first frame.\n"
    "The 3D bounding box format is [x_center, y_center, z_center, x_size, y_size, z_size, yaw, pitch, roll]."
)
RECONSTRUCTION_TEMPLATE = (
    'Estimate the 3D position of the point marked with a red "+" in the camera coordinate system of the first frame, '
    "and name what it lies on.\n"
    'Output a JSON dictionary with the point [x, y, z] in "pointmap" and its semantic label in "label".'
)
SPATIAL_QA_TEMPLATE = "{query}"  # the question with its options (VSI-Bench style)
FRAME_LABEL = "Frame-{index}: "  # grounding stage 1: a text item before each view


def format_box(values) -> str:
    """`[0.44, 0.08, 2.26, ...]`: 9 finite numbers (Python, numpy or 0-d torch), each through `round(v, 2)`;
    ValueError for other values or a size (entries 3-5) negative or 0.0 at 2 decimals."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) != BOX_VALUES:
        raise ValueError(f"box must be {BOX_VALUES} numbers [cx, cy, cz, sx, sy, sz, yaw, pitch, roll], got {values!r}")
    try:
        floats = [float(v) for v in values if not isinstance(v, (bool, str, bytes))]
    except (TypeError, ValueError):
        floats = []
    if len(floats) != BOX_VALUES or not all(math.isfinite(v) for v in floats):
        raise ValueError(f"box must hold {BOX_VALUES} finite numbers, got {values!r}")
    _, problem = box_numbers(floats, "box")
    if problem:
        raise ValueError(f"{problem} (sizes, entries 3-5, must be > 0); got {values!r}")
    written = [round(v, 2) for v in floats]
    flat = [axis for axis, size in zip("xyz", written[3:6]) if size <= 0]
    if flat:
        raise ValueError(f"box {written} has a size of 0 along {', '.join(flat)}: a box with a side of 0 is no "
                         "object's box (sizes, entries 3-5, must be at least 0.01 as the prompt writes them)")
    return "[" + ", ".join(repr(v) for v in written) + "]"


# ---- the task registry


def check_query_text(query: str, what: str = "the query") -> None:
    """ValueError naming `what` when `query` holds `IMAGE_PLACEHOLDER` (the prompt's placeholder of a view)."""
    if IMAGE_PLACEHOLDER in query:
        raise ValueError(f"{what} must not contain {IMAGE_PLACEHOLDER!r} (the placeholder of a view in the prompt); "
                         "remove it from the text")


class DefaultBudget(int):
    """An int token budget the caller did not choose (a task's own); `generate` lowers it to fit the context with an
    INFO log instead of a warning."""
    __slots__ = ()


@dataclass(frozen=True)
class TaskSpec:
    """One task.

    Attributes:
        name: canonical name.
        title: one line for people.
        template: the task text sent after the views; `{query}` / `{box}` are its parameters.
        parameters: the parameters `template` needs: `()`, `("query",)` or `("box",)`.
        official: True when `template` is verbatim from the official inference code.
        parse: answer text → typed result (`result_type`); never raises.
        result_type: the dataclass `parse` returns.
        serialize: typed result → answer text (the training target; numbers rounded to 2 decimals).
        max_new_tokens: a generation budget that fits any answer of the task.
        official_max_new_tokens: the official scripts' budget (evaluation).
        answer_end: stop rule of `answer_complete`: "list", "dict", "paragraph" or "line".
        grammar: `(token budget, num_frames=None, prompt=None)` → the GBNF grammar of the task's answers, bounded to
            end within the budget (stage 1: to the views' indices; spatial QA: to the question's options).
        entry_list: for a list answer (detection), the `EntryList` that `GrammarLogitsProcessor` closes at the budget.
        grammar_reads_prompt: `grammar` depends on the question, so each row's is built from its prompt.
        needs_marker: the prompt refers to a marker painted with `point_prompts=(view, x, y)`.
        frame_labels: a `Frame-i: ` text item precedes each view.
        parse_options: keyword arguments `parse` accepts besides the text (`num_frames` for stage 1).
        stages: for a pipeline, the tasks it runs in order (grounding); one call asks the last stage.
        aliases: deprecated names that still resolve to this task.
    """
    name: str
    title: str
    template: str
    parameters: tuple[str, ...]
    official: bool
    parse: Callable
    result_type: type
    serialize: Callable
    max_new_tokens: int
    official_max_new_tokens: int
    answer_end: str
    grammar: Callable[..., str]
    entry_list: EntryList | None = None
    grammar_reads_prompt: bool = False
    needs_marker: bool = False
    frame_labels: bool = False
    parse_options: tuple[str, ...] = ()
    stages: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()

    def __post_init__(self):
        if self.answer_end not in ANSWER_ENDS:
            raise ValueError(f"task {self.name!r}: unknown answer_end {self.answer_end!r}")

    def task_text(self, query: str | None = None, box=None) -> str:
        """The task text after the views, e.g. for `query="the chair by the desk"`; ValueError when a parameter the
        task needs is missing or malformed, or one it does not take is given."""
        given = {"query": query, "box": box}
        for name, value in given.items():
            if value is not None and name not in self.parameters:
                raise ValueError(f"task {self.name!r} takes no {name} (its parameters: {list(self.parameters) or 'none'})")
            if value is None and name in self.parameters:
                raise ValueError(f"task {self.name!r} needs {name}=: {_PARAMETER_HELP[name]}")
        values = {}
        if query is not None:
            if not isinstance(query, str) or not query.strip():
                raise ValueError(f"task {self.name!r}: query must be a non-empty string, got {query!r}")
            check_query_text(query, f"task {self.name!r}: query")
            values["query"] = query.strip()
        if box is not None:
            values["box"] = format_box(list(box))
        return self.template.format(**values)

    def user_segments(self, num_views: int, query: str | None = None, box=None) -> list[str | None]:
        """The user turn as chat segments (`None` = one view, str = a text item): the views, then the task text
        (with `frame_labels`, `Frame-i: ` before view i). ValueError unless `num_views` >= 1."""
        if isinstance(num_views, bool) or not isinstance(num_views, int) or num_views < 1:
            raise ValueError(f"task {self.name!r} needs at least one view, got {num_views!r}")
        text = self.task_text(query=query, box=box)
        if not self.frame_labels:
            return [None] * num_views + [text]
        segments: list[str | None] = []
        for index in range(num_views):
            segments += [FRAME_LABEL.format(index=index), None]
        return segments + ["\n" + text]

    def annotation_prompt(self, num_views: int, query: str | None = None, box=None) -> str:
        """The human turn as the official annotation files store it: one `<image>` per view."""
        return placeholders_from_segments(self.user_segments(num_views, query=query, box=box))

    @property
    def shortest_answer(self) -> str:
        """The shortest whole answer of the task's grammar: what any token budget must hold at the least."""
        least = {
            DetectionResult: lambda: serialize_detection([]),
            GroundingResult: lambda: serialize_grounding(Box3D.from_list([0.0] * BOX_VALUES)),
            FrameSelectionResult: lambda: serialize_frame_selection(0),
            PointmapResult: lambda: serialize_pointmap((0.0, 0.0, 0.0)),
            CaptionResult: lambda: serialize_caption("I."),  # a one-letter word and the sentence's end
            SpatialAnswerResult: lambda: serialize_spatial_answer("A"),
        }
        return least[self.result_type]()

    def stopping_criteria(self, tokenizer, prompt_length: int) -> StoppingCriteriaList:
        """`stopping_criteria=` for `generate`: stop each row at the end of its answer (`AnswerEndCriteria`)."""
        from transformers import StoppingCriteriaList  # here: the registry imports no torch or transformers
        return StoppingCriteriaList([AnswerEndCriteria(tokenizer, prompt_length, self.answer_end,
                                                       shortest_answer=(self.name, self.shortest_answer))])

    def grammar_for(self, max_new_tokens: int | None = None, num_views: int | None = None,
                    prompt: str | None = None) -> str:
        """The answer grammar for a budget (default: the task's own), bounded in bytes; `num_views` bounds stage 1's
        frame index, `prompt` (the question) spatial QA's options (None: any answer of the task)."""
        budget = self.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        return self.grammar(budget, num_views if "num_frames" in self.parse_options else None,
                            prompt if self.grammar_reads_prompt else None)

    def logits_processor(self, tokenizer, prompt_length: int, max_new_tokens: int | None = None,
                         num_views=None) -> LogitsProcessorList:
        """`logits_processor=` for `generate`: each row's answer stays inside the task's grammar and ends within
        `max_new_tokens` (default: the task's own); `num_views`: one int or one per row (stage 1). ImportError
        naming the install command when llguidance is not installed."""
        from transformers import LogitsProcessorList
        budget = self.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        if self.entry_list is not None:
            grammar = self.entry_list
        elif self.grammar_reads_prompt:
            grammar = partial(self.grammar_for, budget, None)  # called with each row's prompt text
        elif isinstance(num_views, (list, tuple)):
            grammar = [self.grammar_for(budget, int(n)) for n in num_views]
        else:
            grammar = self.grammar_for(budget, None if num_views is None else int(num_views))
        return LogitsProcessorList([GrammarLogitsProcessor(tokenizer, grammar, prompt_length, budget)])

    def generation_kwargs(self, tokenizer, prompt_length: int, max_new_tokens: int | None = None,
                          constrained: bool = False, num_views=None) -> dict:
        """`generate` kwargs: greedy decoding, the task's budget (or `max_new_tokens`) and stop rule; with
        `constrained`, the answer grammar's `logits_processor` too (`num_views` as there).

        Raises:
            ValueError: `max_new_tokens` is not a positive integer (0, -1, 2.5, "8", True), or `constrained` is
                not a bool.
        """
        if not isinstance(constrained, bool):
            raise ValueError(f"constrained must be True or False, got {constrained!r}")
        if max_new_tokens is not None and (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral)
                                           or max_new_tokens < 1):
            raise ValueError(f"max_new_tokens must be a positive integer (tokens to generate), got {max_new_tokens!r}")
        budget = DefaultBudget(self.max_new_tokens) if max_new_tokens is None else int(max_new_tokens)
        kwargs = {"max_new_tokens": budget, "do_sample": False,
                  "stopping_criteria": self.stopping_criteria(tokenizer, prompt_length)}
        if constrained:
            kwargs["logits_processor"] = self.logits_processor(tokenizer, prompt_length, budget, num_views)
        return kwargs


_PARAMETER_HELP = {
    "query": "the text describing the object (grounding) or the question (spatial QA)",
    "box": "the object's 3D box, 9 numbers [cx, cy, cz, sx, sy, sz, yaw, pitch, roll] in the first camera",
}


def _boxes_text(result: DetectionResult) -> str:
    return serialize_detection(result.boxes)


def _frame_text(result: FrameSelectionResult) -> str:
    return serialize_frame_selection(result.frame)


def _box_text(result: GroundingResult) -> str:
    return serialize_grounding(result.box)


def _caption_text(result: CaptionResult) -> str:
    return serialize_caption(result.caption)


def _point_text(result: PointmapResult) -> str:
    return serialize_pointmap(result.point, result.label)


def _spatial_text(result: SpatialAnswerResult) -> str:
    return serialize_spatial_answer(result.answer)


DETECTION = TaskSpec(
    name="detection", title="3D video object detection", template=DETECTION_TEMPLATE, parameters=(),
    official=True, parse=parse_detection, result_type=DetectionResult, serialize=_boxes_text,
    max_new_tokens=1280, official_max_new_tokens=1280, answer_end="list", grammar=detection_grammar,
    entry_list=DETECTION_LIST, aliases=("det",),
)
GROUNDING_STAGE1 = TaskSpec(
    name="grounding_stage1", title="3D visual grounding, stage 1: the first clear frame of the object",
    template=GROUNDING_STAGE1_TEMPLATE, parameters=("query",), official=True, parse=parse_frame_selection,
    result_type=FrameSelectionResult, serialize=_frame_text, max_new_tokens=64, official_max_new_tokens=4096,
    answer_end="dict", grammar=frame_selection_grammar, frame_labels=True, parse_options=("num_frames",), aliases=("frame_selection",),
)
GROUNDING_STAGE2 = TaskSpec(
    name="grounding_stage2", title="3D visual grounding, stage 2: the object's box",
    template=GROUNDING_STAGE2_TEMPLATE, parameters=("query",), official=True, parse=parse_grounding,
    result_type=GroundingResult, serialize=_box_text, max_new_tokens=192, official_max_new_tokens=4096,
    answer_end="dict", grammar=grounding_grammar,
)
# the pipeline: one call asks its last stage, so all but its name, title and stages is stage 2's
GROUNDING = replace(
    GROUNDING_STAGE2, name="grounding", title="3D visual grounding of a text query",
    stages=(GROUNDING_STAGE1.name, GROUNDING_STAGE2.name),
)
CAPTIONING = TaskSpec(
    name="captioning", title="3D dense captioning of the object in a given box", template=CAPTIONING_TEMPLATE,
    parameters=("box",), official=False, parse=parse_caption, result_type=CaptionResult, serialize=_caption_text,
    max_new_tokens=256, official_max_new_tokens=1280, answer_end="paragraph", grammar=caption_grammar,
    aliases=("caption",),
)
RECONSTRUCTION = TaskSpec(
    name="reconstruction", title="3D point and label of a marked pixel (pre-training)",
    template=RECONSTRUCTION_TEMPLATE, parameters=(), official=False, parse=parse_pointmap,
    result_type=PointmapResult, serialize=_point_text, max_new_tokens=96, official_max_new_tokens=1280,
    answer_end="dict", grammar=pointmap_grammar, needs_marker=True, aliases=("recon", "pointmap"),
)
SPATIAL_QA = TaskSpec(
    name="spatial_qa", title="spatial question answering", template=SPATIAL_QA_TEMPLATE, parameters=("query",),
    official=False, parse=parse_spatial_answer, result_type=SpatialAnswerResult, serialize=_spatial_text,
    max_new_tokens=64, official_max_new_tokens=64, answer_end="line", grammar=spatial_answer_grammar,
    grammar_reads_prompt=True, aliases=("qa",),
)

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (DETECTION, GROUNDING, GROUNDING_STAGE1, GROUNDING_STAGE2, CAPTIONING, RECONSTRUCTION, SPATIAL_QA)
}
TASK_NAMES = tuple(TASKS)
DEPRECATED_TASK_NAMES = {alias: spec.name for spec in TASKS.values() for alias in spec.aliases}


def resolve_task(task: str | TaskSpec) -> TaskSpec:
    """The `TaskSpec` of a name (a spec is returned as is); a deprecated name warns with `FutureWarning`, an unknown
    one raises ValueError listing `TASK_NAMES`."""
    if isinstance(task, TaskSpec):
        return task
    if type(task).__name__ == "TaskSpec":  # a spec of another copy of this module (package vs remote code)
        task = task.name
    if isinstance(task, str) and task in TASKS:
        return TASKS[task]
    if isinstance(task, str) and task in DEPRECATED_TASK_NAMES:
        new = DEPRECATED_TASK_NAMES[task]
        warnings.warn(f"task name {task!r} is deprecated; use {new!r}", FutureWarning, stacklevel=2)
        return TASKS[new]
    raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASK_NAMES)}")


# ---- `generate` helpers: the grammar logits processor and the stopping criteria
# `generate(compile_decoding=...)`: compiled decode steps on CUDA only ("auto"), always, or never
COMPILE_DECODING_CHOICES = ("auto", "on", "off")


@functools.cache
def grammar_engine():
    """llguidance with its transformers bridge, imported on first use, or None where it is not installed."""
    try:
        import llguidance
        import llguidance.hf
    except ImportError:  # pragma: no cover - exercised in environments without llguidance
        return None
    return llguidance


CONTROL_TOKENS_THAT_STOP = ("<|im_end|>",)  # the chat turn's end: Qwen3-VL's and the Mini's EOS
# tokenizer -> {vocab width: `_engine`'s tuple}
_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_EXECUTOR = None  # _executor()


def require_grammar_engine():
    """The llguidance module, or an ImportError saying how to install it."""
    engine = grammar_engine()
    if engine is None:
        raise ImportError(engine_missing() or f"constrained decoding needs {ENGINE_REQUIREMENT}, which did not import")
    return engine


def stop_token_ids(tokenizer) -> list[int]:
    """The ids that end an answer: the tokenizer's EOS and `<|im_end|>` (ValueError when it has neither)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    ids |= {vocab[token] for token in CONTROL_TOKENS_THAT_STOP if token in vocab}
    if not ids:
        raise ValueError("constrained decoding needs a stop token: the tokenizer has no EOS and no <|im_end|>")
    return sorted(ids)


def budget_cut_reason(spec, tokenizer, new_ids: list[int], budget=None, constrained=False) -> str | None:
    """Why the token `budget` ended the answer `new_ids` (one row's new tokens), else None: not whole and ended by no
    stop token (`budget` None: read from the tokens alone), or a list the grammar (`constrained`) closed for it."""
    stops = set(stop_token_ids(tokenizer))
    length = next((k + 1 for k, token in enumerate(new_ids) if token in stops), None)  # padding after it: not counted
    if length is None and len(new_ids) >= (budget or 0) and not answer_complete(
            tokenizer.decode(new_ids, skip_special_tokens=True), spec.answer_end):
        return "the answer was cut at its token budget" + (f" of {budget}" if budget else "")
    reserve = spec.entry_list.reserve if constrained and budget and spec.entry_list is not None else None
    return None if reserve is None or (length or len(new_ids)) <= budget - reserve else (
        f"the grammar closed the list for the token budget of {budget} (it keeps the last {reserve} tokens to close "
        "it), so the answer may lack entries")


def _engine(tokenizer, vocab_size: int) -> tuple:
    """`(llguidance tokenizer, {grammar text: compiled matcher}, stop ids, {character: writable})` of `tokenizer` at
    width `vocab_size`, made once (about a second at Qwen's vocabulary)."""
    require_grammar_engine()
    try:
        per_width = _COMPILED.setdefault(tokenizer, {})
    except TypeError:  # not weakly referenceable: converted each time
        per_width = {}
    if vocab_size not in per_width:
        stops = stop_token_ids(tokenizer)
        engine_tokenizer = require_grammar_engine().hf.from_tokenizer(tokenizer, n_vocab=int(vocab_size), eos_token=stops)
        per_width[vocab_size] = (engine_tokenizer, {}, frozenset(stops), {})
    return per_width[vocab_size]


def unwritable_character(tokenizer, vocab_size: int, grammar: str) -> str | None:
    """The first character an answer of `grammar` may write (`grammar_characters`) that `tokenizer` cannot spell
    with its tokens, or None."""
    engine_tokenizer, _, _, writable = _engine(tokenizer, vocab_size)
    for char in grammar_characters(grammar):
        if char not in writable:
            text = char.encode("utf-8")
            writable[char] = engine_tokenizer.decode_bytes(engine_tokenizer.tokenize_bytes(text)) == text
        if not writable[char]:
            return char
    return None


def grammar_matcher(tokenizer, vocab_size: int, grammar: str):
    """A fresh llguidance `LLMatcher` of `grammar` (GBNF) for `tokenizer` and logits of width `vocab_size` (ids past
    the tokenizer's are never allowed); compiled once per tokenizer, width and grammar, then copied.

    Raises:
        ValueError: the tokenizer cannot write a character of the grammar (`unwritable_character`), or the grammar does
            not compile (llguidance's message).
    """
    engine_tokenizer, compiled, _, _ = _engine(tokenizer, vocab_size)
    if grammar not in compiled:
        engine = require_grammar_engine()
        try:
            matcher = engine.LLMatcher(engine_tokenizer, engine.grammar_from("grammar", grammar), log_level=0)
        except ValueError as error:  # GBNF that does not convert to llguidance's Lark
            raise ValueError(f"the answer grammar does not compile in llguidance: {error}") from error
        if matcher.is_error():
            raise ValueError(f"the answer grammar does not compile in llguidance: {matcher.get_error()}")
        missing = unwritable_character(tokenizer, vocab_size, grammar)  # after: it reads a grammar that parses
        if missing is not None:
            raise ValueError(f"the answer grammar cannot be applied with this tokenizer: it has no token for "
                             f"{missing!r}, which the grammar's answers write; constrained decoding needs the model's "
                             "own tokenizer, or decode freely (constrained=False; gap-mllm: --free)")
        compiled[grammar] = matcher
    return compiled[grammar].deep_copy()


def _executor():
    """llguidance's thread pool for a batch's masks, made once."""
    global _EXECUTOR
    if _EXECUTOR is None:
        _EXECUTOR = require_grammar_engine().LLExecutor()
    return _EXECUTOR


def fill_bitmask(matcher, bitmask: torch.Tensor, row: int) -> None:
    """Write the tokens `matcher` allows next into `bitmask[row]` (a contiguous CPU int32 tensor `[B, ceil(V / 32)]`,
    else ValueError): bit `t % 32` of word `t // 32` is token `t`."""
    import torch  # here: the task registry imports no torch
    if bitmask.dtype != torch.int32 or bitmask.device.type != "cpu" or not bitmask.is_contiguous():
        raise ValueError("the bitmask must be a contiguous CPU int32 tensor")
    matcher.unsafe_compute_mask_ptr(bitmask[row].data_ptr(), bitmask.shape[1] * 4)


def apply_bitmask(scores: torch.FloatTensor, bitmask: torch.Tensor, rows: list[int]) -> None:
    """Set `scores[row, token]` (`[B, V]`) to -inf in place, for each of `rows`, where bit `token` of `bitmask[row]`
    (int32 words, least significant bit first) is 0; unpacked on the scores' device. ValueError for a short mask."""
    import torch  # here: the task registry imports no torch
    import numpy as np
    width = scores.shape[1]
    if bitmask.shape[1] * 32 < width:
        raise ValueError(f"a bitmask of {bitmask.shape[1] * 32} token ids for logits of {width}")
    refused_words = ~bitmask[rows]  # a set bit: a refused token
    if scores.device.type == "cpu":
        bits = np.unpackbits(refused_words.numpy().view(np.uint8), axis=1, count=width, bitorder="little")
        refused = torch.from_numpy(bits.view(np.bool_))
    else:
        words = refused_words.to(scores.device, non_blocking=True)
        shifts = torch.arange(32, dtype=torch.int32, device=scores.device)
        refused = ((words.unsqueeze(-1) >> shifts) & 1).flatten(1)[:, :width].bool()
    if len(rows) == scores.shape[0] and list(rows) == list(range(scores.shape[0])):
        scores.masked_fill_(refused, float("-inf"))
    else:
        index = torch.tensor(rows, device=scores.device)
        scores[index] = scores[index].masked_fill(refused, float("-inf"))


class GrammarLogitsProcessor:
    """Masks each row's logits to the tokens its answer grammar allows next (llguidance).

    Args:
        tokenizer: the processor's tokenizer (the grammar is compiled for its vocabulary).
        grammar: the answer grammar of every row, or one per row; each the EBNF text (`TaskSpec.grammar_for`), an
            `EntryList`, or a callable that builds one of those from the row's prompt text.
        prompt_length: length of the rows given to `generate` before the answer (the new tokens start there).
        max_new_tokens: the token budget of the `generate` call; needed by an `EntryList`.

    Raises:
        ImportError: llguidance is not installed.
        ValueError: a negative `prompt_length` or a budget below 1.
    """

    def __init__(self, tokenizer, grammar, prompt_length: int, max_new_tokens: int | None = None):
        require_grammar_engine()
        if isinstance(prompt_length, bool) or int(prompt_length) < 0:
            raise ValueError(f"prompt_length must be a whole number >= 0, got {prompt_length!r}")
        if max_new_tokens is not None and (isinstance(max_new_tokens, bool) or int(max_new_tokens) < 1):
            raise ValueError(f"max_new_tokens must be a whole number >= 1, got {max_new_tokens!r}")
        self.tokenizer = tokenizer
        self.grammar = grammar
        self.prompt_length = int(prompt_length)
        self.max_new_tokens = None if max_new_tokens is None else int(max_new_tokens)
        self._matchers: list | None = None

    def fit_budget(self, max_new_tokens: int) -> None:
        """Set the budget that lists close for: the `generate` call's own, when it differs from the one given."""
        self.max_new_tokens = int(max_new_tokens)

    def _start(self, input_ids: torch.LongTensor, vocab_size: int) -> None:
        import torch  # here: the task registry imports no torch
        batch = input_ids.shape[0]
        grammars = list(self.grammar) if isinstance(self.grammar, (list, tuple)) else [self.grammar] * batch
        if len(grammars) != batch:
            raise ValueError(f"{len(grammars)} grammars for a batch of {batch} rows")
        if any(callable(g) for g in grammars):
            prompts = self.tokenizer.batch_decode(input_ids[:, : self.prompt_length].tolist(), skip_special_tokens=True)
            grammars = [g(prompt) if callable(g) else g for g, prompt in zip(grammars, prompts)]
        if self.max_new_tokens is None and any(isinstance(g, EntryList) for g in grammars):
            raise ValueError("a list answer closed at the token budget (EntryList) needs the budget: max_new_tokens=")
        self._lists = [g if isinstance(g, EntryList) else None for g in grammars]  # None once bounded
        texts = [g.grammar(None) if isinstance(g, EntryList) else g for g in grammars]
        self._matchers = [grammar_matcher(self.tokenizer, vocab_size, g) for g in texts]
        self._stops = _engine(self.tokenizer, vocab_size)[2]
        self._tokens: list[list[int]] = [[] for _ in range(batch)]  # a list row's accepted tokens, to bound it
        self._live = [True] * batch
        self._consumed = 0
        self._vocab_size = vocab_size
        self._bitmask = torch.full((batch, (vocab_size + 31) // 32), -1, dtype=torch.int32)

    def _close_list(self, row: int) -> None:
        """Switch the row to its `EntryList.bounded` grammar: no entry beyond what the tokens left can end."""
        text = self.tokenizer.decode(self._tokens[row])
        matcher = grammar_matcher(self.tokenizer, self._vocab_size, self._lists[row].bounded(text))
        if not matcher.consume_tokens(self._tokens[row]):
            raise RuntimeError(f"the bounded list grammar refuses the answer begun inside the list: {text!r}")
        self._matchers[row], self._lists[row] = matcher, None

    def _consume(self, new_tokens: list[list[int]]) -> None:
        """Each live row's matcher takes its new tokens (one each: in parallel); a refused token ends the row."""
        rows = [row for row, tokens in enumerate(new_tokens) if self._live[row] is not False and tokens]
        if len(rows) > 1 and all(len(new_tokens[row]) == 1 for row in rows):
            accepted = _executor().consume_token_par([(self._matchers[row], new_tokens[row][0]) for row in rows])
        else:
            accepted = [self._matchers[row].consume_tokens(new_tokens[row]) for row in rows]
        for row, ok in zip(rows, accepted):
            if not ok:
                self._live[row] = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """`input_ids` `[B, prompt_length + n]`, `scores` `[B, V]` → `scores` with the refused tokens at -inf."""
        batch, vocab_size = scores.shape
        generated = input_ids.shape[1] - self.prompt_length
        if generated < 0:
            raise ValueError(f"the rows hold {input_ids.shape[1]} tokens, fewer than the prompt length "
                             f"{self.prompt_length} this processor was made for")
        if self._matchers is None or len(self._matchers) != batch or generated < self._consumed:
            self._start(input_ids, vocab_size)
        if generated > self._consumed:
            new_tokens = input_ids[:, self.prompt_length + self._consumed :].tolist()  # one host sync a step
            for row, tokens in enumerate(new_tokens):
                if self._lists[row] is not None and self._live[row]:
                    self._tokens[row].extend(tokens)
                # a stop token ends the row (the matcher, at the grammar's end, allows the stop ids only)
                if self._live[row] and any(token in self._stops for token in tokens):
                    tokens[:] = tokens[: next(i for i, t in enumerate(tokens) if t in self._stops)]
                    self._live[row] = None  # consumes what precedes the stop, then ends
            self._consume(new_tokens)
            self._live = [live is True for live in self._live]
            self._consumed = generated
        live = [row for row in range(batch) if self._live[row]]
        if not live:
            return scores
        for row in live:
            # the tokens left, this one included, are what the rest of the list can take at most
            if self._lists[row] is not None and self.max_new_tokens - generated <= self._lists[row].reserve:
                self._close_list(row)
        if len(live) == 1:
            fill_bitmask(self._matchers[live[0]], self._bitmask, live[0])
        else:  # the rows' masks filled in parallel, off the GIL
            _executor().unsafe_compute_mask_ptr([(self._matchers[row], row) for row in live], self._bitmask.data_ptr(),
                                                self._bitmask.shape[1] * 4, self._bitmask.shape[0])
        apply_bitmask(scores, self._bitmask, live)
        return scores


class AnswerEndCriteria:
    """Stops each row of a `generate` call once its answer is complete (`answer_complete`).

    Args:
        tokenizer: decodes the new tokens (special tokens skipped).
        prompt_length: length of the (left-padded) prompt rows given to `generate`.
        answer_end: one of `ANSWER_ENDS` (ValueError otherwise).
        shortest_answer: `(task name, text)` of `TaskSpec.shortest_answer`, or None; `generate` refuses a context
            that cannot hold it.
    """

    def __init__(self, tokenizer, prompt_length: int, answer_end: str, shortest_answer: tuple[str, str] | None = None):
        if answer_end not in ANSWER_ENDS:
            raise ValueError(f"unknown answer end {answer_end!r}; expected one of {ANSWER_ENDS}")
        self.tokenizer = tokenizer
        self.prompt_length = int(prompt_length)
        self.answer_end = answer_end
        self.shortest_answer = shortest_answer

    def shortest_answer_tokens(self) -> tuple[str, int] | None:
        """`(task name, tokens)` of the task's shortest whole answer, or None when not given."""
        if self.shortest_answer is None:
            return None
        task, text = self.shortest_answer
        return task, len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        """`[B]` bool: whether each row's answer is complete."""
        import torch  # here: the task registry imports no torch
        # one host sync per token, where `generate`'s own stop check already waits for the device
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=True)
        done = [answer_complete(text, self.answer_end) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


__all__ = ["TASKS", "TASK_NAMES", "AnswerEndCriteria", "Box3D", "CaptionResult", "DetectionResult",
           "FrameSelectionResult", "GrammarLogitsProcessor", "GroundingResult", "PointmapResult", "PromptTextError",
           "SpatialAnswerResult", "TaskSpec", "refuse_control_tokens", "register_task", "render_chat_prompt",
           "resolve_task", "unregister_task"]
