"""What makes a parsed answer no success for a front end, beyond its parser's own reason (cli/tasks.py `task_answer`,
`run_task`): the parsers are tolerant for scoring, and a front end reports an answer as the task's (exit status 0 of
`gap-mllm predict`) only when it is whole and describes something.

- `zero_size_box`: a box of size 0x0x0 is no object's box. The grammar admits it (sizes are numbers >= 0), and a
  model whose prompt nearly filled its context writes one (`-0.0, -0.0, -0.0`).
- `budget_cut`: an answer that its token budget ended. Cut mid-way, it used the whole budget without reaching its
  end (the task's stop rule or a stop token); a constrained list answer (detection) that came within its list's
  `reserve` of the budget was closed by the grammar for the budget, and may lack entries the model would have
  written.
"""

from __future__ import annotations

from gap_mllm.tasks_gap_mllm import answer_complete, stop_token_ids

BUDGET_ADVICE = "give it a larger token budget (--max-new-tokens)"


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


__all__ = ["budget_cut", "zero_size_box"]
