"""What makes a parsed answer no success for a front end, beyond its parser's own reason (cli/tasks.py `task_answer`,
`run_task`): the parsers are tolerant for scoring, and a front end reports an answer as the task's (exit status 0 of
`gap-mllm predict`) only when it is whole and describes something.

- `other_task_format`: an answer written in another task's format (grounding's dict for a detection, JSON for a
  caption). The parsers would read grounding's dict as one unlabelled detection box, or any text as a caption.
- `zero_size_box`: a box of size 0x0x0 is no object's box. The grammar admits it (sizes are numbers >= 0), and a
  model whose prompt nearly filled its context writes one (`-0.0, -0.0, -0.0`).
- `budget_cut`: an answer that its token budget ended. Cut mid-way, it used the whole budget without reaching its
  end (the task's stop rule or a stop token); a constrained list answer (detection) that came within its list's
  `reserve` of the budget was closed by the grammar for the budget, and may lack entries the model would have
  written.
"""

from __future__ import annotations

import re

from gap_mllm.tasks_gap_mllm import (
    BOX_KEYS,
    MAX_TEXT_CHARS,
    answer_complete,
    parse_literal,
    stop_token_ids,
    strip_code_fences,
)

BUDGET_ADVICE = "give it a larger token budget (--max-new-tokens)"


# the structured answer formats, by the task that writes them
ANSWER_FORMATS = {
    "detection": '[{"label": ..., "bbox_3d": [...]}, ...]',
    "grounding": '{"bbox_3d": [...]}',
    "grounding_stage1": '{"frame": k}',
    "reconstruction": '{"pointmap": [x, y, z], "label": ...}',
}
_FORMAT_OF_TASK = {"grounding_stage2": "grounding"}
_KEY_PATTERN = re.compile(r"""["']([A-Za-z_]\w*)["']\s*:""")  # a quoted dict key


def _answer_keys(body: str) -> set[str]:
    """The dict keys of a structured answer (for one that does not parse, the quoted words before a colon)."""
    value, _ = parse_literal(body, allow_block=False)
    entries = value if isinstance(value, (list, tuple)) else [value]
    if value is not None:
        return {key for entry in entries if isinstance(entry, dict) for key in entry if isinstance(key, str)}
    return set(_KEY_PATTERN.findall(body))


def answer_format(text) -> str | None:
    """The `ANSWER_FORMATS` task whose format `text` is written in (by its keys), or None for plain text."""
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


# a piece of a structured answer in a caption: a code fence, a brace or bracket, or a quote before a colon
_STRUCTURE_MARK = re.compile(r'```|[{}\[\]]|"\s*:')


def other_task_format(text, task: str) -> str | None:
    """None, or the reason when `text` is written in another task's format than `task`'s (for a caption: holds a
    piece of a structured answer), e.g. `answer in grounding's format {"bbox_3d": [...]}, not detection's`."""
    found = answer_format(text)
    own = _FORMAT_OF_TASK.get(task, task)
    if found is None and own == "captioning" and isinstance(text, str):
        mark = _STRUCTURE_MARK.search(text[:MAX_TEXT_CHARS])
        if mark is not None:
            return f"answer holds {mark.group()!r}, a piece of a structured answer (JSON), not a caption's prose"
    if found is None or found == own:
        return None
    return f"answer in {found}'s format {ANSWER_FORMATS[found]}, not {task}'s"


def zero_size_box(parsed) -> str | None:
    """The reason when a parsed detection or grounding answer holds a box whose three sizes are 0, else None."""
    boxes = list(getattr(parsed, "boxes", None) or []) + [box for box in [getattr(parsed, "box", None)] if box]
    for box in boxes:
        if all(size == 0 for size in box.to_list()[3:6]):
            return f"a box of size 0x0x0 is no object's box: {box.to_list()}"
    return None


def budget_cut(spec, tokenizer, new_ids: list[int], budget: int, constrained: bool) -> str | None:
    """The reason when the answer of `new_ids` (the generated tokens) was ended by the token `budget`, else None
    (module docstring). `spec`: the task's `TaskSpec`."""
    ended = bool(new_ids) and new_ids[-1] in set(stop_token_ids(tokenizer))
    text = tokenizer.decode(new_ids, skip_special_tokens=True)
    if len(new_ids) >= budget and not ended and not answer_complete(text, spec.answer_end):
        return f"the answer was cut at its token budget of {budget}; {BUDGET_ADVICE}"
    reserve = spec.entry_list.reserve if constrained and spec.entry_list is not None else None
    if reserve is not None and len(new_ids) > budget - reserve:
        return (f"the grammar closed the list for the token budget of {budget} (it keeps the last {reserve} tokens "
                f"to close it), so the answer may lack entries; {BUDGET_ADVICE}")
    return None


__all__ = ["ANSWER_FORMATS", "answer_format", "budget_cut", "other_task_format", "zero_size_box"]
