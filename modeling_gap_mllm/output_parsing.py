"""Parsers for GAP-MLLM's generated answers. Never `eval`: `json.loads`, then a tolerant literal fallback.

The official code `eval`s model outputs (docs/deviations.md §3). Here every answer goes through
`parse_literal`: strip a ```json fence, `json.loads`; on failure `ast.literal_eval` (literals only:
no names, calls or attribute access can run) of a normalised copy that accepts trailing commas,
single quotes, `-0.0` and Python/JSON `True`/`true`/`None`/`null`; on failure the first balanced
`{...}` / `[...]` block of the text is tried the same way. Detection additionally falls back to the
official line-based reading (one dict per line), which also recovers truncated outputs.

Every parser returns a typed result and never raises on any text: malformed input gives an empty /
None result with a human-readable `reason`. Inputs longer than `MAX_TEXT_CHARS` or nested deeper than
`MAX_NESTING_DEPTH` are rejected up front so a pathological string cannot hang the parser or blow the
recursion limit.

Conventions of the returned boxes and points: see `target_format.py` (first view's OpenCV camera
frame, metres, `R = Ry(roll)·Rx(pitch)·Rz(yaw)`).
"""

from __future__ import annotations

import ast
import json
import math
import re
import warnings
from dataclasses import dataclass, field

from .target_format import POINTMAP_LABEL_KEY, Box3D

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
# ------------------------------------------------------------------------------------- token ids


def drop_negative_token_ids(rows) -> list[list[int]]:
    """Rows of token ids without their negative entries.

    Negative ids are never tokens: -100 is the ignore index of labels (and what people pad generated
    ids with), other negative values are padding conventions. Tokenizers cannot decode them (Rust
    `OverflowError`), so they are dropped before decoding.
    """
    return [[int(i) for i in row if int(i) >= 0] for row in rows]


# ------------------------------------------------------------------------------------ literal parsing


def _find_fence(text: str, start: int = 0) -> int:
    """Index of the first ``` at or after `start` that is not inside a double-quoted string, or -1
    (a JSON label such as "```" must not end the fence)."""
    for i, ch, in_string in _scan(text[start:], quotes='"'):
        if not in_string and ch == "`" and text.startswith("```", start + i):
            return start + i
    return -1


def strip_code_fences(text: str) -> str:
    """Content of the first ``` fence that holds something (language tag such as `json` dropped; unclosed fence
    runs to the end), or the stripped text when there is no fence. Fences with nothing inside are skipped, so an
    answer that opens its fence several times ("```json\\n```json\\n{...}") gives the literal after the last
    opening, not an empty body. Backticks inside double-quoted strings do not count as fences."""
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
    """The raw answer as a parse problem quotes it: `repr`, cut to `limit` characters with the rest counted."""
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
    """Maximum bracket depth outside string literals.

    Computed twice, with and without single quotes as string delimiters, and the larger one returned:
    an apostrophe in prose ("Here's ...") must not hide deep brackets from the guard.
    """
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
    """Rewrite JSON-isms for `ast.literal_eval`: drop trailing commas, map true/false/null (outside strings)."""
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
    """`(value, None)` on success, `(None, error)` otherwise. Never raises."""
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
    """Parse one JSON / Python literal out of a model answer.

    Args:
        allow_block: when the whole (fence-stripped) text is not a literal, try its first balanced
            `{...}` / `[...]` block (prose around the answer).
    Returns:
        `(value, None)` on success, `(None, reason)` otherwise. Never raises, never executes code.
    """
    if not isinstance(text, str):
        return None, f"expected a string, got {type(text).__name__}"
    if len(text) > MAX_TEXT_CHARS:
        return None, f"text is too long ({len(text)} characters > {MAX_TEXT_CHARS})"
    body = strip_code_fences(text)
    if not body:  # "empty answer" only for an answer of whitespace: fences with nothing inside are quoted
        return None, "empty answer" if not text.strip() else f"no answer inside the code fences of {quoted_answer(text)}"
    if nesting_depth(body) > MAX_NESTING_DEPTH:
        return None, f"brackets nested deeper than {MAX_NESTING_DEPTH} in {quoted_answer(text)}"
    value, error = _try_literal(body)
    if error is None:
        # A literal `null` / `None` is no answer; keep the (value, reason) contract unambiguous.
        return (value, None) if value is not None else (None, "answer is null")
    # Prose around the answer ("Sure! {...}"): try the first balanced block, first treating both quote
    # styles as strings, then only double quotes (an apostrophe in prose would open a fake string).
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


# ------------------------------------------------------------------------------------- validation


def _finite_number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except (OverflowError, ValueError):  # ints too large for a float
        return None
    return number if math.isfinite(number) else None


def _numbers(values, count: int, what: str):
    """`(tuple_of_floats, None)` or `(None, problem)`."""
    if not isinstance(values, (list, tuple)):
        return None, f"{what} is not a list"
    if len(values) != count:
        return None, f"{what} has {len(values)} value(s) instead of {count}"
    numbers = [_finite_number(v) for v in values]
    if any(n is None for n in numbers):
        return None, f"{what} contains a non-numeric or non-finite value"
    return tuple(numbers), None


def box_numbers(values, what: str):
    """`(9 floats, None)` or `(None, problem)`: 9 finite numbers whose sizes (entries 3-5) are >= 0. A negative
    size is refused, not read as its absolute value: the box is malformed, and scoring it as the box of the
    absolute sizes would give a perfect IoU to an answer that is not the format."""
    values, problem = _numbers(values, 9, what)
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
    """`(value, None)`, or `(X, TRAILING_COMMA)` for a one-element tuple: how a literal `X,` reads, the answer followed
    by a comma (not "a list of 1 entries", nor a tuple the parser cannot use)."""
    if isinstance(value, tuple) and len(value) == 1:
        return value[0], TRAILING_COMMA
    return value, None


def _joined(*reasons) -> str | None:
    """The reasons that are not None, joined by "; "; None when there are none."""
    found = [reason for reason in reasons if reason]
    return "; ".join(found) if found else None


def _with_problems(reason: str | None, skipped: int, first_problem: str | None) -> str | None:
    if not skipped:
        return reason
    note = f"skipped {skipped} malformed entr{'y' if skipped == 1 else 'ies'} (first: {first_problem})"
    return note if reason is None else f"{reason}; {note}"


# ------------------------------------------------------------------------------------------ tasks


def _line_candidates(line: str):
    """Variants of one answer line to try: as is, then without a leading `[` / trailing `]` or fence."""
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
    """Parse a detection answer (docs/method.md §3.3, §4.1) into boxes.

    Accepts the official fenced one-dict-per-line list, a normal (multi-line) JSON list, a single
    dict, and truncated output (complete lines are kept). Entries whose `bbox_3d` does not hold exactly
    9 finite numbers with sizes >= 0 are skipped and counted. An empty list is a valid answer (no boxes,
    reason None).
    """
    if not isinstance(text, str):
        return DetectionResult(reason=f"expected a string, got {type(text).__name__}")
    if len(text) > MAX_TEXT_CHARS:
        return DetectionResult(reason=f"text is too long ({len(text)} characters > {MAX_TEXT_CHARS})")

    # 1. The whole answer as one literal (official fenced list, a normal JSON list, a single dict).
    value, error = parse_literal(text, allow_block=False)
    if value is not None:
        value, comma = _without_trailing_comma(value)
        if isinstance(value, dict):  # "{...}," is a line of the official one-dict-per-line list: no stray comma
            comma = None
        result = _detection_from_value(value)
        if result.reason is not None and not result.boxes and not result.skipped:  # not a list: quote what it was
            result.reason = f"{result.reason}: {quoted_answer(text)}"
        result.reason = _joined(comma, result.reason)
        return result

    # 2. Official line-based reading: every line that mentions a box or a label is one dict. This
    #    also keeps the complete lines of a truncated answer.
    boxes, skipped, first_problem = [], 0, None
    for raw_line in strip_code_fences(text).splitlines():
        line = raw_line.strip().rstrip(",").strip()
        if not any(key in line for key in (*BOX_KEYS, "label")):
            continue
        found = None
        problem = None
        for candidate in _line_candidates(line):
            # allow_block: prose before a one-line list ("Boxes: [{...}]") still yields the list.
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
    """Parse `{"bbox_3d": [9 numbers]}` (ScanRefer stage 2). A list of such dicts gives its first valid box.
    A box with a negative size gives no box, with the reason saying so."""
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
    """Parse `{"frame": k}` (ScanRefer stage 1).

    Args:
        num_frames: if given, `k` is clamped to `[0, num_frames − 1]` and `reason` says so. (The official
            code maps a failed parse to frame 0 and never range-checks; callers that want that map a
            None frame to 0 themselves.)
    """
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
        _numbers(value.get("pointmap"), 3, "pointmap") if "pointmap" in value else (None, 'no "pointmap" key')
    )
    if problem:
        return None, None, problem
    label = next((value[k] for k in POINTMAP_LABEL_KEYS if isinstance(value.get(k), str)), None)
    if label is None:
        # a label key holding a number, list, ... is no label: say so rather than read "no label given"
        key = next((k for k in POINTMAP_LABEL_KEYS if value.get(k) is not None), None)
        if key is not None:
            found = value[key]
            return point, None, f'"{key}" is a {type(found).__name__} ({found!r:.40}), not a text label'
    return point, label, None


def parse_pointmap(text: str) -> PointmapResult:
    """Parse `{"pointmap": [x, y, z], "label": "..."}` (pre-training / reconstruction answers).

    The label is read from `"label"` (our serialiser's key) or, failing that, from one of
    `semantic_label`, `category`, `class`, `name`; it is None when absent. A label that is not text
    (`"label": 5`) is no label: the point is kept, the label is None and `reason` says what the key held.
    Falls back to the official line-based reading (the first line mentioning "pointmap").
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
                if point is not None:  # (a problem with a point is about its label)
                    note = "answer is not one literal; read the pointmap line"
                    return PointmapResult(point, label, note if problem is None else f"{note}; {problem}")
    if value is not None:
        return PointmapResult(reason=f"answer is a {type(value).__name__}, not a dict: {quoted_answer(text)}")
    return PointmapResult(reason=error)


def parse_caption(text: str) -> CaptionResult:
    """A captioning answer is free text: the caption is the stripped text; an empty answer gives None."""
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


# ------------------------------------------------------------------------------- answer formats

# The structured answer formats, named by the task that answers in each (captioning and spatial QA answer in plain
# text). A front end (cli/tasks.py) refuses an answer written in another task's format: the Mini often answers a
# detection or captioning prompt with grounding's dict, which the tolerant parsers would read as one unlabelled box or
# as a caption. Scoring (`gap-mllm evaluate`) keeps the parsers' own reading.
ANSWER_FORMATS = {
    "detection": '[{"label": ..., "bbox_3d": [...]}, ...]',
    "grounding": '{"bbox_3d": [...]}',
    "grounding_stage1": '{"frame": k}',
    "reconstruction": '{"pointmap": [x, y, z], "label": ...}',
}
_FORMAT_OF_TASK = {"grounding_stage2": "grounding"}  # the pipeline's last stage answers as the pipeline does
_KEY_PATTERN = re.compile(r"""["']([A-Za-z_]\w*)["']\s*:""")  # a quoted dict key


def _answer_keys(body: str) -> set[str]:
    """The dict keys of a structured answer: read from its literal, or, for one that does not parse (a truncated
    answer, `{"pointmap": "couch`), the quoted words followed by a colon."""
    value, _ = parse_literal(body, allow_block=False)
    entries = value if isinstance(value, (list, tuple)) else [value]
    if value is not None:
        return {key for entry in entries if isinstance(entry, dict) for key in entry if isinstance(key, str)}
    return set(_KEY_PATTERN.findall(body))


def answer_format(text) -> str | None:
    """The task whose structured format `text` is written in (an `ANSWER_FORMATS` name), or None for plain text (or
    a structure of no task's format). Decided by the keys: "pointmap" is reconstruction's, "frame" grounding stage 1's,
    a box is detection's in a list or with a label, else grounding's."""
    if not isinstance(text, str) or len(text) > MAX_TEXT_CHARS:
        return None
    body = strip_code_fences(text)
    if not body.startswith(("{", "[")):
        return None
    keys = _answer_keys(body)
    if "pointmap" in keys:
        return "reconstruction"
    if "frame" in keys:
        return "grounding_stage1"
    if keys & set(BOX_KEYS):
        return "detection" if body.startswith("[") or "label" in keys else "grounding"
    return None


# A caption is prose (its grammar's words and marks): a code fence, a brace or bracket, or a quote before a colon is a
# piece of a structured answer, which a freely decoded caption writes when the model mixes the tasks up
# (```` ```json1.19, 3d": "refrigerator", ````).
_STRUCTURE_MARK = re.compile(r'```|[{}\[\]]|"\s*:')


def other_task_format(text, task: str) -> str | None:
    """None when `text` is not written in another task's answer format than `task`'s (a task name), else the reason to
    show: `answer in grounding's format {"bbox_3d": [...]}, not detection's`; for a caption, also a piece of a
    structured answer in it (`_STRUCTURE_MARK`)."""
    found = answer_format(text)
    own = _FORMAT_OF_TASK.get(task, task)
    if found is None and own == "captioning" and isinstance(text, str):
        mark = _STRUCTURE_MARK.search(text[:MAX_TEXT_CHARS])
        if mark is not None:
            return f"answer holds {mark.group()!r}, a piece of a structured answer (JSON), not a caption's prose"
    if found is None or found == own:
        return None
    return f"answer in {found}'s format {ANSWER_FORMATS[found]}, not {task}'s"
