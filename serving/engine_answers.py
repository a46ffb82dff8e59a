"""An engine's chat completion read as GAP-MLLM's own `generate` would have answered: same tokens, same text.

The package's `generate` stops each row at the end of its task's answer (`TaskSpec.stopping_criteria`, a transformers
`StoppingCriteria`: tasks_gap_mllm.py), at the generation config's EOS ids, or at the token budget. vLLM knows
nothing of the answer-end rules: it stops at `<|im_end|>` (its EOS and the folder's generation-config EOS ids) or at
`max_tokens`, so a model that writes on after its answer (a rambling one, or an answer whose end the rule sees before
the model ends its turn: spatial QA's line break) returns more text than `generate` would. So the client asks for the
generated token ids (`"return_token_ids": true`, vLLM's field) and cuts them where `generate` would have stopped:

    after the first token at which `answer_complete(decode(tokens so far), task.answer_end)` holds
    (the check `AnswerEndCriteria` runs after every token), or at the first EOS id, whichever comes first;

then decodes them as `processor.decode_generated` does (special tokens skipped). For the same generated tokens the
text is therefore the one `generate` returns, and so are the parsed answers and scores. What can still differ is the
tokens themselves (another kernel, dtype or batch shape can flip a near-tie in greedy decoding), and the budget at the
very end of the model's context (the package counts the room left in M-RoPE positions, vLLM in tokens).

The budget an engine is given for a task is the registry's (`task_budget`: `TaskSpec.max_new_tokens`, what `generate`
uses by default), so an answer is cut by the same rule and budget on every path: `gap-mllm predict`, the lmms-eval
`backend=vllm`, the OpenAI-compatible client and the offline batch (examples/serving/).

`check_prompt_token_ids` compares the prompt the server tokenized (`prompt_token_ids`, also returned with
`return_token_ids`) with the ids the encoder built, so a server whose chat template or tokenizer differs (or that runs
without `--chat-template-content-format openai`) is refused instead of answering another prompt.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from gap_mllm.tasks_gap_mllm import answer_complete, resolve_task

from .encoder import EncodedRequest
from .values import response_field, token_id_list, whole_number

RETURN_TOKEN_IDS = {"return_token_ids": True}  # the request field that makes vLLM return both id lists
STRUCTURED_OUTPUTS = "structured_outputs"  # vLLM's structured-output request field (>= 0.12; `guided_grammar` before)


def structured_output(task: str | None, max_tokens: int | None = None, num_views: int | None = None,
                      prompt: str | None = None) -> dict:
    """The request field that makes vLLM decode inside `task`'s answer grammar for the request's budget, the grammar
    `generate` uses with `constrained=True` (`TaskSpec.grammar`, GBNF, which vLLM's `guidance` backend
    reads): `{"structured_outputs": {"grammar": ...}}`; `num_views` bounds stage 1's frame index, `prompt` (the
    request's chat text) spatial QA's answer to the options its question offers. vLLM cannot close a list at its
    token budget as `generate` does, so a detection answer is bounded in bytes (`answer_grammar.detection_entries`:
    9 entries in 1,280 tokens, where `generate` holds as many as the tokens allow). A free prompt (`task` None) has
    no grammar: ValueError."""
    if task is None:
        raise ValueError("a free prompt has no answer grammar: constrained decoding needs the request's task")
    grammar = resolve_task(task).grammar_for(task_budget(task, max_tokens), num_views, prompt)
    return {STRUCTURED_OUTPUTS: {"grammar": grammar}}


def task_budget(task: str | None, max_tokens: int | None = None) -> int:
    """The token budget of one engine request: `max_tokens` (a whole number >= 1) when given, else the task's own
    (`TaskSpec.max_new_tokens`: fits any answer of the task; detection 1280); a free prompt (`task` None) has none."""
    if max_tokens is not None:
        return whole_number(max_tokens, "max_tokens")
    if task is None:
        raise ValueError("a free prompt has no task budget: pass max_tokens")
    return resolve_task(task).max_new_tokens


def eos_token_ids(model) -> tuple[int, ...]:
    """The ids the package's `generate` stops at: `model.generation_config.eos_token_id` (one id, a list, or None)."""
    eos = model.generation_config.eos_token_id
    return () if eos is None else ((eos,) if isinstance(eos, int) else tuple(eos))


def parsed_answer_json(parsed) -> dict:
    """A task parser's result (`DetectionResult`, `GroundingResult`, ...) as JSON-ready data: `{"type": class name,
    **fields}` (boxes as their label, center, size and angles; `reason` None when the answer parsed cleanly)."""
    return {"type": type(parsed).__name__, **dataclasses.asdict(parsed)}


def generated_token_ids(response: dict, where: str = "the server") -> list[int]:
    """The generated ids of a `/v1/chat/completions` response (`choices[0].token_ids`): whole numbers >= 0; a
    ValueError naming the field when they are absent or malformed."""
    choice = response_field(response, ("choices", 0), where)
    if not isinstance(choice, dict):
        raise ValueError(f"{where}: not a chat completion response: choices[0] is {type(choice).__name__} {choice!r:.80}")
    ids = choice.get("token_ids")
    if ids is None:
        raise ValueError(f"{where} did not return the generated token ids; the request asks for them with "
                         '"return_token_ids": true (vLLM\'s field), which this server ignores')
    return token_id_list(ids, f"{where}'s choices[0].token_ids")


def answer_from_token_ids(token_ids: Sequence[int], tokenizer, task: str | None, stop_at_answer_end: bool = True,
                eos_token_ids: Iterable[int] = ()) -> str:
    """The text `generate` returns for these generated tokens (see the module docstring).

    Args:
        token_ids: the new tokens, in order (the engine's, up to its stop).
        tokenizer: the GAP processor's tokenizer.
        task: the registry task the prompt asks (its `answer_end` rule); None: EOS / budget only.
        stop_at_answer_end: False for the official behaviour (EOS or budget only; `Request.stop_at_answer_end`).
        eos_token_ids: the ids `generate` stops at (the model's generation config).

    Raises:
        ValueError: an id that is not a whole number >= 0 or that the tokenizer does not have (either list).
    """
    ids = token_id_list(token_ids, "token_ids", len(tokenizer))
    eos = set(token_id_list(list(eos_token_ids), "eos_token_ids"))
    end = next((k + 1 for k, token in enumerate(ids) if token in eos), len(ids))
    if task is not None and stop_at_answer_end:
        rule = resolve_task(task).answer_end
        # the criterion runs after every new token, on the text of all new tokens so far; the row stops after the
        # first token for which it holds (an EOS token decodes to nothing, so checking it changes nothing)
        end = next((k for k in range(1, end + 1)
                    if answer_complete(tokenizer.decode(ids[:k], skip_special_tokens=True), rule)), end)
    return tokenizer.decode(ids[:end], skip_special_tokens=True)


def check_prompt_token_ids(response: dict, request: EncodedRequest, tokenizer, where: str = "the server") -> None:
    """ValueError when the server's prompt (`prompt_token_ids`) is not the encoder's `input_ids`: the first position
    where they differ, with both tokens."""
    if not isinstance(response, dict):
        raise ValueError(f"{where}: not a chat completion response: {str(response)[:300]}")
    served = response.get("prompt_token_ids")
    if served is None:
        raise ValueError(f"{where} did not return the prompt token ids (vLLM returns them with \"return_token_ids\": true)")
    expected = list(request.input_ids)
    served = token_id_list(served, f"{where}'s prompt_token_ids")
    if served == expected:
        return
    at = next((k for k, (a, b) in enumerate(zip(served, expected)) if a != b), min(len(served), len(expected)))

    def token(ids, k):
        return repr(tokenizer.convert_ids_to_tokens(ids[k])) if k < len(ids) else "(end)"

    raise ValueError(f"{where} tokenized another prompt than the encoder built ({len(served)} vs {len(expected)} tokens; first "
                     f"difference at token {at}: served {token(served, at)}, expected {token(expected, at)}). Serve the folder "
                     "`gap-mllm export-llm` wrote, unchanged, with --chat-template-content-format openai")


__all__ = ["RETURN_TOKEN_IDS", "STRUCTURED_OUTPUTS", "answer_from_token_ids", "check_prompt_token_ids", "eos_token_ids", "generated_token_ids",
           "parsed_answer_json", "structured_output", "task_budget"]
