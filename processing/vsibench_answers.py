"""How lmms-eval 0.7.3's VSI-Bench task reads a numerical answer: the first number in the text.

`lmms_eval/tasks/vsibench/utils.py::extract_number` (re-implemented: the package scores without lmms-eval installed;
tests/test_vsibench_scoring.py checks it against lmms-eval's own on many texts). A number is either digits
(`-?\\d+(\\.\\d+)?`: "3", "-2.5", "1e3" reads 1) or a run of English number words ("three", "twenty-one", "three hundred
and twenty-one"; "and" inside the run is skipped); whichever starts first in the (lower-cased, stripped) text wins, so
"one apple, room 2" reads 1. No number: None (the answer scores 0).
"""

from __future__ import annotations

import re

NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
    "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "thousand": 1000,
}  # fmt: skip
DIGITS = re.compile(r"-?\d+(?:\.\d+)?")
WORD = re.compile(r"[a-z]+")


def _word_run(text: str) -> tuple[int | None, list[str]]:
    """Start of the first number word and the number words that follow it ("and" skipped), up to another word."""
    start, run = None, []
    for match in WORD.finditer(text):
        word = match.group(0)
        if start is None:
            if word in NUMBER_WORDS:
                start, run = match.start(), [word]
        elif word == "and":
            continue
        elif word in NUMBER_WORDS:
            run.append(word)
        else:
            break
    return start, run


def _words_value(run: list[str]) -> float:
    total, current = 0, 0
    for word in run:
        value = NUMBER_WORDS[word]
        if value == 100:
            current = max(current, 1) * 100
        elif value == 1000:
            total += max(current, 1) * 1000
            current = 0
        else:
            current += value
    return float(total + current)


def extract_number(text) -> float | None:
    """The first number of `text` as lmms-eval 0.7.3's VSI-Bench reads it (module docstring); None if there is none."""
    if text is None:
        return None
    text = str(text).strip().lower()
    if not text:
        return None
    digits = DIGITS.search(text)
    start, run = _word_run(text)
    if digits is not None and (start is None or digits.start() < start):
        return float(digits.group(0))
    return None if start is None else _words_value(run)
