"""How the `gap_mllm` model asks and stops for an upstream lmms-eval task (`generate_until`, any task's documents).

    prompt    the views, then the task's text (`doc_to_text`, lmms-eval's context): the one chat layout of every
              GAP-MLLM prompt (docs/method.md §3.1), written as one `<image>` per view followed by the text
    decoding  greedy (a task asking for sampling or beam search is refused: the numbers would not be GAP-MLLM's
              evaluation), the task's `max_new_tokens`, or 128 when it names none (lmms-eval's Qwen3-VL model's
              default), capped by the model argument `max_new_tokens`
    stopping  at EOS or the budget; the text is then cut before the first of the task's `until` strings (lmms-eval's
              convention). "\\n\\n" is not one of them: it is the few-shot delimiter lmms-eval adds to every task that
              names no stop string, which lmms-eval's own Qwen3-VL model drops as well.

A GAP-MLLM task (the plugin's own documents) stops at the end of its registry answer instead (documents.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from gap_mllm.tasks_gap_mllm import IMAGE_PLACEHOLDER, placeholders_from_segments

from ..generation import Request

DEFAULT_MAX_NEW_TOKENS = 128  # lmms-eval's Qwen3-VL model's budget for a task that names none
FEWSHOT_DELIMITER = "\n\n"  # lmms-eval's default `until`, added to every task without one (api/task.py)
GREEDY_KEYS = ("temperature", "top_p", "top_k", "num_beams", "do_sample")


@dataclass(frozen=True)
class UpstreamGeneration:
    """A task's generation settings as GAP-MLLM applies them (module docstring)."""

    max_new_tokens: int
    until: tuple[str, ...]


def generation_of(gen_kwargs: dict | None, task: str, cap: int | None) -> UpstreamGeneration:
    """The settings of a request's `gen_kwargs` (lmms-eval's `generation_kwargs` of the task).

    Raises:
        ValueError: naming the task, for sampling, beam search, or a budget or stop string that is not one.
    """
    kwargs = dict(gen_kwargs or {})
    if str(kwargs.get("do_sample", False)).lower() in ("true", "1") or float(kwargs.get("temperature") or 0) > 0:
        raise ValueError(f"gap_mllm: task {task!r} asks for sampling; GAP-MLLM is evaluated greedily")
    if int(kwargs.get("num_beams") or 1) != 1:
        raise ValueError(f"gap_mllm: task {task!r} asks for beam search (num_beams={kwargs['num_beams']}); GAP-MLLM is "
                         "evaluated greedily")
    budget = kwargs.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"gap_mllm: task {task!r} asks for max_new_tokens={budget!r}; expected a positive whole number")
    until = kwargs.get("until") or []
    until = [until] if isinstance(until, str) else list(until)
    if not all(isinstance(text, str) and text for text in until):
        raise ValueError(f"gap_mllm: task {task!r} has stop strings {until!r}; expected non-empty texts")
    return UpstreamGeneration(min(budget, cap) if cap is not None else budget,
                              tuple(text for text in until if text != FEWSHOT_DELIMITER))


def upstream_request(context: str, frames: list, scene: str, generation: UpstreamGeneration, sample: str) -> Request:
    """The model call of one document: its frames (one scene named `scene`), then `context`.

    Raises:
        ValueError: the context holds `<image>`, this package's view placeholder (its views would shift).
    """
    if IMAGE_PLACEHOLDER in context:
        raise ValueError(f"gap_mllm: {sample}: the prompt holds {IMAGE_PLACEHOLDER!r}; gap_mllm puts the document's "
                         "views before its text and reads no placeholders in a task's text")
    prompt = placeholders_from_segments([None] * len(frames) + [context])
    return Request(images=list(frames), prompt=prompt, max_new_tokens=generation.max_new_tokens, task=None,
                   stop_at_answer_end=False, sample=sample, scene=scene)


def cut_at_stop_strings(text: str, until: tuple[str, ...]) -> str:
    """`text` up to the first occurrence of any stop string (all of it when none occurs)."""
    cut = min((text.find(stop) for stop in until if stop in text), default=len(text))
    return text[:cut]
