"""What `generate` (full or from a scene) checks before it runs: token ids outside the vocabulary and
answers that would run past the model's context.

Context: the decoder's rotary embedding has `text_config.max_position_embeddings` positions (0 … N-1).
Positions are not token counts: with M-RoPE the visual tokens of a view share compressed positions
(Qwen3-VL `get_rope_index`), so a prompt of 5,000 tokens can end at position 1,200. What must fit is the
highest position of the prompt plus the new tokens: the k-th new token sits at `highest prompt position + k`.
Past N-1 the rotary embedding extrapolates to positions the model never saw, and its answer is silently
worse. So:

- a prompt that itself ends past N-1 (or at N-1, leaving no position for an answer) is refused;
- `min_new_tokens` that cannot fit is refused (it demands tokens past the context), and so is a context that leaves
  fewer new tokens than the task's shortest whole answer (`TaskSpec.shortest_answer`: for a list, its grammar's
  close) needs: lowered that far, the budget could only cut the answer;
- a `max_new_tokens` that does not fit is lowered to the positions left, with a warning naming the numbers
  (once per budget and context). `max_new_tokens` is an upper bound, not a length: answers end at their stop
  rule, and budgets larger than a small model's context are common (the official grounding budget of 4,096
  tokens on a 4,096-position model), so refusing them would break calls that never reach the context, while
  generating past it is what must not happen. An answer cut at the context's end reads like one cut by its
  budget, and the warning says why; a constrained list answer closes for the lowered budget (`fit_budget` of
  answer_grammar_processor.py), so it still ends well-formed. Whether lowered or not, the grammar closes its list
  for the budget the call uses, which may be the caller's own rather than the one it was built for
  (`budget_to_grammars`). When the budget is the task's own
  (`tasks_gap_mllm.DefaultBudget`: the caller set none) or the generation config's, lowering it is the documented
  behaviour, not the caller's mistake: one INFO line says so instead of a warning.
"""

from __future__ import annotations

import torch
from transformers.utils import logging

from .tasks_gap_mllm import DefaultBudget

logger = logging.get_logger(__name__)


def check_token_id_dtype(input_ids: torch.Tensor, name: str = "input_ids") -> None:
    """ValueError naming `name` when `input_ids` do not hold integers (the embedding lookup needs them)."""
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer token ids, got a {input_ids.dtype} tensor")


def token_id_range(input_ids: torch.Tensor) -> torch.Tensor:
    """`[2]` tensor (lowest id, highest id) of a non-empty integer tensor, left on its device so that callers
    can read it together with other reductions in one host synchronisation."""
    return torch.stack(torch.aminmax(input_ids.reshape(-1)))


def vocabulary_error(low: int, high: int, vocabulary_size: int, name: str = "input_ids") -> ValueError | None:
    """The error for token ids spanning `[low, high]`, or None when they all lie in `[0, vocabulary_size)`."""
    if low >= 0 and high < vocabulary_size:
        return None
    bad = low if low < 0 else high
    return ValueError(
        f"{name} holds token id {bad}, outside the model's vocabulary of {vocabulary_size} ids (0 … "
        f"{vocabulary_size - 1}); were these ids made with another tokenizer?"
    )


def check_token_ids(input_ids: torch.Tensor, vocabulary_size: int, name: str = "input_ids") -> None:
    """ValueError naming `name` when `input_ids` are not integers or hold an id outside `[0, vocabulary_size)`
    (the embedding lookup would end in a bare IndexError). One host synchronisation."""
    check_token_id_dtype(input_ids, name)
    if input_ids.numel() == 0:
        return
    low, high = token_id_range(input_ids).tolist()
    error = vocabulary_error(low, high, vocabulary_size, name)
    if error is not None:
        raise error


def new_token_budget(model, kwargs: dict, input_length: int) -> int | None:
    """The number of new tokens a generate call with `kwargs` may produce after `input_length` tokens:
    `max_new_tokens` (argument, then the call's or the model's generation config), else `max_length` −
    `input_length`; None when neither is set."""
    config = kwargs.get("generation_config") or model.generation_config
    budget = kwargs.get("max_new_tokens", getattr(config, "max_new_tokens", None))
    if budget is not None:
        return int(budget)
    max_length = kwargs.get("max_length", getattr(config, "max_length", None))
    return None if max_length is None else int(max_length) - input_length


_WARNED_BUDGETS: set[tuple[int, int, bool]] = set()  # (budget, context, chosen by the caller) already logged


def context_limit(config) -> int | None:
    """The decoder's number of rotary positions (`text_config.max_position_embeddings` of a model's `config`),
    None when the config states none."""
    return getattr(config.get_text_config(), "max_position_embeddings", None)


def positions_after(limit: int, highest_prompt_position: int) -> int:
    """How many new tokens still get a trained position (0 … `limit` − 1) after a prompt ending at M-RoPE position
    `highest_prompt_position`: the k-th new token sits at `highest_prompt_position + k`."""
    return limit - 1 - highest_prompt_position


def _context_limit(model) -> int | None:
    return context_limit(model.config)


def check_prompt_fits(model, highest_prompt_position: int, input_length: int, what: str = "the prompt") -> int | None:
    """The number of new tokens that still get a trained position after `what` (ending at M-RoPE position
    `highest_prompt_position`, `input_length` tokens), or ValueError naming the numbers when none does;
    None when the model states no context."""
    limit = _context_limit(model)
    if limit is None:
        return None
    room = positions_after(limit, highest_prompt_position)
    if room < 1:
        raise ValueError(
            f"{what} ends at position {highest_prompt_position} ({input_length} tokens; visual tokens share "
            f"positions), leaving no room in the model's context of {limit} positions "
            "(text_config.max_position_embeddings); use fewer or smaller views or a shorter text."
        )
    return room


def budget_chosen_by_caller(kwargs: dict) -> bool:
    """Whether a generate call's budget is the caller's own: a `max_new_tokens` that is not a task's default
    (`DefaultBudget`), or a `max_length` without one; not a budget from the generation config."""
    if "max_new_tokens" in kwargs:
        return not isinstance(kwargs["max_new_tokens"], DefaultBudget)
    return "max_length" in kwargs


def shortest_answer(kwargs: dict) -> tuple[str, int] | None:
    """`(task name, tokens)` of the shortest whole answer of a generate call's task, as its stopping criteria carry it
    (`TaskSpec.stopping_criteria`); None for a call without them."""
    for criterion in kwargs.get("stopping_criteria") or ():
        if getattr(criterion, "shortest_answer", None) is not None:
            return criterion.shortest_answer_tokens()
    return None


def budget_to_grammars(model, kwargs: dict, input_length: int | None) -> None:
    """Tell each logits processor of a generate call's `kwargs` that plans for its token budget (a grammar that
    closes a list at the budget: answer_grammar_processor.py `fit_budget`) the budget the call uses, as
    `new_token_budget` reads it: the call's own `max_new_tokens` may differ from the one `generation_kwargs` built the
    grammar for (`generate(**inputs, **{**kwargs, "max_new_tokens": 40})`), and `fit_budget_to_context` lowers it to
    the context. `input_length` None (the prompt's length is not known): a budget set by `max_length` is not read."""
    processors = [processor for processor in kwargs.get("logits_processor") or () if hasattr(processor, "fit_budget")]
    if not processors:
        return
    if input_length is None:
        config = kwargs.get("generation_config") or model.generation_config
        budget = kwargs.get("max_new_tokens", getattr(config, "max_new_tokens", None))
    else:
        budget = new_token_budget(model, kwargs, input_length)
    if budget is not None:
        for processor in processors:
            processor.fit_budget(int(budget))


def fit_budget_to_context(model, kwargs: dict, highest_prompt_position: int, input_length: int,
                          what: str = "the prompt") -> None:
    """Apply the context rules of the module docstring to a generate call's `kwargs`, in place: ValueError
    naming the numbers when `what` (ending at M-RoPE position `highest_prompt_position`, `input_length` tokens)
    or `min_new_tokens` cannot fit, or when fewer new tokens fit than the task's shortest whole answer needs
    (`shortest_answer`: lowered that far, the budget could only cut the answer, or close its list empty);
    `max_new_tokens` lowered when it does not fit (a warning when the caller chose
    the budget, else an INFO line: `budget_chosen_by_caller`). Then the call's grammars learn the budget it uses
    (`budget_to_grammars`)."""
    _fit_to_context(model, kwargs, highest_prompt_position, input_length, what)
    budget_to_grammars(model, kwargs, input_length)


def _fit_to_context(model, kwargs: dict, highest_prompt_position: int, input_length: int, what: str) -> None:
    room = check_prompt_fits(model, highest_prompt_position, input_length, what)
    if room is None:
        return
    limit = _context_limit(model)
    shortest = shortest_answer(kwargs)
    if shortest is not None and room < shortest[1]:
        raise ValueError(
            f"{what} ends at position {highest_prompt_position}, so at most {room} new tokens fit in the model's "
            f"context of {limit} positions, fewer than the {shortest[1]} that the shortest whole {shortest[0]} answer "
            "needs; use fewer or smaller views or a shorter text."
        )
    config = kwargs.get("generation_config") or model.generation_config
    minimum = kwargs.get("min_new_tokens", getattr(config, "min_new_tokens", None))
    if minimum is not None and minimum > room:
        raise ValueError(
            f"{what} ends at position {highest_prompt_position}, so at most {room} new tokens fit in the model's "
            f"context of {limit} positions, but min_new_tokens={minimum} demands more; lower it or shorten the prompt."
        )
    budget = new_token_budget(model, kwargs, input_length)
    if budget is not None and budget > room:
        chosen = budget_chosen_by_caller(kwargs)
        if (budget, limit, chosen) not in _WARNED_BUDGETS:
            _WARNED_BUDGETS.add((budget, limit, chosen))
            fits = (f"{what} ends at position {highest_prompt_position}, so at most {room} new tokens are generated "
                    "(answers longer than that stop at the context's end)")
            if chosen:
                logger.warning(f"max_new_tokens={budget} would pass the model's context of {limit} positions: {fits}. "
                               "Lower max_new_tokens to silence this.")
            else:
                logger.info(f"the task's token budget of {budget} is lowered to the model's context of {limit} positions: "
                            f"{fits}.")
        kwargs["max_new_tokens"] = room
        kwargs.pop("max_length", None)


def highest_prompt_position(model, input_ids, attention_mask=None, mm_token_type_ids=None, image_grid_thw=None) -> int:
    """The highest M-RoPE position of a `[B, L]` prompt batch, as `generate` lays it out (visual tokens on
    their compressed grid positions when the views are given, else one position per real token)."""
    if mm_token_type_ids is not None and image_grid_thw is not None:
        positions, _ = model.vlm.model.get_rope_index(
            input_ids, mm_token_type_ids=mm_token_type_ids, image_grid_thw=image_grid_thw, attention_mask=attention_mask
        )
        if attention_mask is not None:
            positions = positions.masked_fill(attention_mask[None].to(positions.device) == 0, 0)
        return int(positions.max())
    if attention_mask is not None:
        return int(attention_mask.long().sum(dim=-1).max()) - 1
    return input_ids.shape[-1] - 1


__all__ = [
    "budget_chosen_by_caller", "budget_to_grammars", "check_prompt_fits", "check_token_id_dtype", "check_token_ids", "context_limit",
    "fit_budget_to_context", "highest_prompt_position", "new_token_budget", "positions_after", "shortest_answer",
    "token_id_range",
    "vocabulary_error",
]
