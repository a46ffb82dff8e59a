"""`generate(answer_task=..., constrained=...)`: a task's decoding settings asked for by name, from inside `generate`.

`processor.generation_kwargs(task, inputs, constrained=...)` builds them from the processor's output, which a caller of
`generate` has in hand. A caller that does not — transformers' `pipeline("image-text-to-text", ...)`, which tokenizes
inside — names the task instead, and `generate` builds the same settings from its own inputs: greedy decoding, the
task's budget (or the call's `max_new_tokens`), its answer-end stop rule and, with `constrained=True`, its answer
grammar (stage 1 bounded by each row's views, `geometry_views_per_sample`). Both stop rule and grammar read the text,
so the call passes the tokenizer too (`tokenizer=`, which `generate` also takes for stop strings):

    pipe = pipeline("image-text-to-text", model=folder, trust_remote_code=True)
    pipe(text=messages, generate_kwargs={"answer_task": "grounding_stage2", "constrained": True, "tokenizer": pipe.tokenizer})
"""

from __future__ import annotations

from .tasks_gap_mllm import resolve_task


def answer_task_kwargs(answer_task, constrained: bool, input_ids, kwargs: dict) -> dict:
    """`kwargs` (the rest of a `generate` call) with `answer_task`'s decoding settings for the prompt `input_ids`
    `[B, L]`; stopping criteria and logits processors the call gave run before the task's own.

    Raises:
        ValueError: `constrained` without a task, no `tokenizer` in `kwargs`, or an unknown task name (naming it).
    """
    if answer_task is None:
        raise ValueError("generate(constrained=True) needs answer_task=NAME: the task whose answer grammar the answer "
                         "keeps (e.g. answer_task='grounding_stage2')")
    tokenizer = kwargs.get("tokenizer")
    if tokenizer is None:
        raise ValueError(f"generate(answer_task={answer_task!r}) needs tokenizer=... (the processor's tokenizer; a "
                         "pipeline's is pipe.tokenizer): the task's stop rule and grammar read the generated text")
    if not hasattr(input_ids, "shape") or len(input_ids.shape) != 2:
        raise ValueError(f"generate(answer_task={answer_task!r}) needs the prompt's input_ids [B, L]")
    views = kwargs.get("geometry_views_per_sample")
    num_views = [int(n) for n in views] if views is not None else None
    settings = resolve_task(answer_task).generation_kwargs(tokenizer, int(input_ids.shape[-1]), kwargs.pop("max_new_tokens", None),
                                                           constrained, num_views)
    for key in ("stopping_criteria", "logits_processor"):
        given = kwargs.pop(key, None)
        if given and key in settings:
            settings[key] = type(settings[key])([*given, *settings[key]])
        elif given:
            settings[key] = given
    return {**kwargs, **settings}
