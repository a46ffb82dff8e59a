"""Where a task's answer ends, so that `generate` stops there instead of running to the token budget.

A model that rambles (an untrained one emits newline after newline) must not fill the budget with
hundreds of blank lines, and a trained one gains nothing from text after its answer. Each task names
one rule (`TaskSpec.answer_end` in tasks_gap_mllm.py); every rule also stops at two blank lines in a
row, which no answer of any task contains. EOS (`<|im_end|>`) stops generation as usual.

    "list"       the first top-level `[...]` is closed (detection). An answer that opens with a `{`
                 (dicts one per line, which the official line parser also reads) runs on to EOS.
    "dict"       the first top-level `{...}` or `[...]` is closed (grounding, frame selection,
                 reconstruction).
    "paragraph"  a blank line after some text (captioning).
    "line"       a line break after some text (spatial QA: a number or an option letter).

For "list" and "dict", brackets inside double-quoted strings do not count, and when a ``` fence was
opened before the literal the answer ends at the closing fence (or the line break after the literal),
so the official "```json\\n[...]```" answer comes out whole.

The rules are plain text and import neither torch nor transformers (the task registry, which `gap-mllm --help`
reads, names them); the `generate` criterion that applies them is `answer_stopping_criteria.AnswerEndCriteria`.
"""

from __future__ import annotations

import re

ANSWER_ENDS = ("list", "dict", "paragraph", "line")
_RUNAWAY_BLANK_LINES = re.compile(r"\n[ \t]*\n[ \t]*\n")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_QUOTES = re.compile(r'""|"')
_BRACKET = re.compile(r"[\[\]{}]")
FENCE = "```"


def _mask_strings(text: str) -> str:
    """`text` with every double-quoted string emptied (`""`), cut before a string that is still open."""
    masked = _JSON_STRING.sub('""', text)
    for quote in _QUOTES.finditer(masked):
        if quote.group() == '"':
            return masked[: quote.start()]
    return masked


def _literal_span(code: str) -> tuple[int, int | None, str] | None:
    """`(start, end, opener)` of the first top-level bracket block of string-masked `code` (`end` is the
    index after its closing bracket, None while open), or None before any bracket."""
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
    """Whether the generated `text` (the new tokens only, decoded) already holds the whole answer."""
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


__all__ = ["ANSWER_ENDS", "answer_complete"]
