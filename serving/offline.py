"""Offline requests for `vllm.LLM.generate` carrying GAP-MLLM's image embeddings.

vLLM's Qwen3-VL takes, per prompt, ONE image dict with all views concatenated (`Qwen2VLMultiModalDataParser`: the
embeddings are sliced per view by `grid.prod() / merge²`):

    {"prompt": "<chat text, one <|vision_start|><|image_pad|><|vision_end|> per view>",
     "multi_modal_data": {"image": {"image_embeds": [Σ tokens, width], "image_grid_thw": [V, 3]}}}

vLLM and gap-mllm need different transformers versions (vllm_settings.py), so the encoder half saves the requests
with `save_offline_requests` (plain `torch.save` of that list: strings, dicts, tensors) and the vLLM process reads
them with `torch.load(path, weights_only=True)` and passes them to `LLM(..., **engine_options()).generate`.

The vLLM process has no task registry, so each request's settings go beside the requests (`offline_settings`:
the task and its budget, `task_budget`) and the vLLM side generates each request with its own `max_tokens`. vLLM
stops only at `<|im_end|>` or the budget, so its generated token ids come back and are cut where the package's
`generate` stops (`offline_answer_text` = `answer_from_token_ids`: the task's stop rule, the EOS ids) before parsing.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from .encoder import EncodedRequest
from .engine_answers import STRUCTURED_OUTPUTS, answer_from_token_ids, structured_output, task_budget
from .values import grid_row


def offline_request(request: EncodedRequest) -> dict:
    """The `vllm.LLM.generate` input of one encoded sample (see the module docstring); checked as `load_offline_requests`
    checks it (a float grid is refused, not truncated to int64)."""
    grid = torch.as_tensor(request.image_grid_thw)
    item = {"prompt": request.prompt,
            "multi_modal_data": {"image": {"image_embeds": torch.cat(list(request.image_embeds), dim=0),
                                           "image_grid_thw": grid if grid.is_floating_point() else grid.to(torch.int64)}}}
    _check(item, 0)
    return item


def offline_settings(request: EncodedRequest, max_tokens: int | None = None, constrained: bool = False) -> dict:
    """What the vLLM process needs to know of one request besides `offline_request` (it has no gap_mllm): `{"task":
    name, "max_tokens": the task's budget or `max_tokens` (`task_budget`), "views": V}`, and with `constrained` the
    task's answer grammar for that budget (`"grammar"`: what `structured_output` sends a server, and what
    `generate(..., constrained=True)` decodes inside), which the vLLM side passes as `StructuredOutputsParams`."""
    budget = task_budget(request.task, max_tokens)
    settings = {"task": request.task, "max_tokens": budget, "views": request.num_views}
    if constrained:
        grammar = structured_output(request.task, budget, request.num_views, request.prompt)
        settings["grammar"] = grammar[STRUCTURED_OUTPUTS]["grammar"]
    return settings


def offline_answer_text(answer, task: str | None, tokenizer, eos_token_ids=(), where: str = "the answer") -> str:
    """The text the package's `generate` returns for one saved `vllm.LLM.generate` output, `{"token_ids": [...],
    ...}` (the generated ids, `outputs[0].token_ids`): the ids cut at the task's answer end or the first EOS id
    (`answer_from_token_ids`) and decoded. A ValueError naming `where` when the ids are missing or malformed."""
    if not isinstance(answer, dict) or "token_ids" not in answer:
        raise ValueError(f"{where}: expected the generated token ids ({{\"token_ids\": [...]}}, written by "
                         f"examples/serving/offline_vllm_generate.py), got {str(answer)[:120]}")
    try:
        return answer_from_token_ids(answer["token_ids"], tokenizer, task, eos_token_ids=eos_token_ids)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def save_offline_requests(requests: list[dict], path) -> Path:
    """Write `offline_request` dicts to `path` (a new file) for the vLLM process."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path}: exists; offline requests are written to a new file")
    for index, item in enumerate(requests):
        _check(item, index)
    torch.save(list(requests), path)
    return path


def load_offline_requests(path) -> list[dict]:
    """Read requests written by `save_offline_requests` (`weights_only=True`, as the vLLM side reads them); a file
    that is not such a list is a ValueError naming it."""
    try:
        requests = torch.load(path, weights_only=True)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
        raise ValueError(f"{path}: not a file of offline requests written by save_offline_requests ({error})") from None
    if not isinstance(requests, list):
        raise ValueError(f"{path}: expected a list of offline requests, got {type(requests).__name__}")
    for index, item in enumerate(requests):
        try:
            _check(item, index)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
    return requests


def _check(item, index: int) -> None:
    """Refuse a request whose fields are not what vLLM reads (a prompt text, an integer `[V, 3]` grid of whole numbers
    >= 1, `[tokens, width]` floating-point embeddings) or whose embeddings and grid disagree (vLLM would slice them
    wrongly or crash in the engine); the ValueError names the request and the field."""
    try:
        image = item["multi_modal_data"]["image"]
        embeds, grid, prompt = image["image_embeds"], image["image_grid_thw"], item["prompt"]
    except (KeyError, TypeError) as error:
        raise ValueError(f"request {index}: not an offline GAP-MLLM request ({error!r})") from None
    if not isinstance(prompt, str):
        raise ValueError(f"request {index}: prompt must be the chat text, got {type(prompt).__name__}")
    if not (torch.is_tensor(grid) and torch.is_tensor(embeds)):
        raise ValueError(f"request {index}: image_grid_thw and image_embeds must be tensors, got "
                         f"{type(grid).__name__} and {type(embeds).__name__}")
    if grid.ndim != 2 or grid.shape[1] != 3 or embeds.ndim != 2:
        raise ValueError(f"request {index}: image_grid_thw {tuple(grid.shape)} / image_embeds {tuple(embeds.shape)}; "
                         "expected [V, 3] and [tokens, width]")
    if not embeds.is_floating_point():
        raise ValueError(f"request {index}: image_embeds must be floating point, got {embeds.dtype}")
    if grid.is_floating_point():
        raise ValueError(f"request {index}: image_grid_thw must hold whole numbers, got a {grid.dtype} tensor")
    for view, row in enumerate(grid):
        grid_row(row, f"request {index}: image_grid_thw row {view}")
    # merge 2: every Qwen3-VL checkpoint so far; tokens per view = t·h·w / 4
    tokens = int(grid.prod(dim=-1).sum()) // 4
    if embeds.shape[0] != tokens:
        raise ValueError(f"request {index}: {embeds.shape[0]} embedding rows for grids adding up to {tokens} tokens")
    if prompt.count("<|image_pad|>") != grid.shape[0]:
        raise ValueError(f"request {index}: the prompt has {prompt.count('<|image_pad|>')} image placeholders for "
                         f"{grid.shape[0]} views")


__all__ = ["load_offline_requests", "offline_answer_text", "offline_request", "offline_settings", "save_offline_requests"]
