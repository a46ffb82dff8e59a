"""Requests for vLLM's OpenAI-compatible server (`/v1/chat/completions`) carrying GAP-MLLM's image embeddings.

One `image_embeds` content part per view, in the prompt's order (vLLM merges the parts of a request into one
`[Σ tokens, width]` tensor and a `[V, 3]` grid; #29988):

    {"type": "image_embeds",
     "image_embeds": {"image_embeds": "<base64 of torch.save(tensor [tokens_v, width])>",
                      "image_grid_thw": [1, h_v, w_v]}}

The tensor is serialised with `torch.save` and base64-encoded, which vLLM 0.33.0 reads with
`torch.load(..., weights_only=True)` (`ImageEmbeddingMediaIO`); bfloat16 survives, which a `.npy` payload (the other
format vLLM reads) would not. The grid is a plain JSON array, one `[1, h, w]` row per part: a `[[1, h, w]]` row
would be stacked into a `[V, 1, 3]` grid (the failure reported in #32309). The user turn keeps the text items
between the views (`Frame-i: ` of grounding stage 1), so the server must run with
`--chat-template-content-format openai` (vllm_settings.py).
"""

from __future__ import annotations

import base64
import io
import json
import shlex
import urllib.error
import urllib.parse
import urllib.request

import torch

from .encoder import EncodedRequest
from .engine_answers import structured_output, task_budget
from .values import grid_row as checked_grid_row
from .values import response_field
from .vllm_settings import serve_command


def encode_tensor_base64(tensor: torch.Tensor) -> str:
    """`torch.save` bytes of `tensor` (detached, on the CPU, its own storage) as base64 text."""
    buffer = io.BytesIO()
    torch.save(tensor.detach().to("cpu").clone(), buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_tensor_base64(data: str) -> torch.Tensor:
    """The inverse of `encode_tensor_base64`, read the way vLLM reads it (`weights_only=True`)."""
    return torch.load(io.BytesIO(base64.b64decode(data, validate=True)), weights_only=True)


def image_embeds_part(embedding: torch.Tensor, grid_row) -> dict:
    """The `image_embeds` content part of one view: `embedding` `[tokens, width]`, `grid_row` `(1, h, w)` (whole
    numbers: a float grid is refused, not truncated)."""
    grid = checked_grid_row(grid_row)
    if not torch.is_tensor(embedding) or embedding.ndim != 2 or not embedding.is_floating_point():
        shape = tuple(embedding.shape) if torch.is_tensor(embedding) else type(embedding).__name__
        raise ValueError(f"image_embeds must be a floating-point tensor [tokens, width], got {shape}")
    return {"type": "image_embeds", "image_embeds": {"image_embeds": encode_tensor_base64(embedding), "image_grid_thw": grid}}


def chat_messages(request: EncodedRequest) -> list[dict]:
    """The system turn and the user turn with one `image_embeds` part per view, texts in between, in order."""
    content, view = [], 0
    for segment in request.segments:
        if segment is None:
            content.append(image_embeds_part(request.image_embeds[view], request.image_grid_thw[view]))
            view += 1
        elif segment:
            content.append({"type": "text", "text": segment})
    if view != request.num_views:
        raise ValueError(f"the prompt has {view} view placeholders but the request holds {request.num_views} embeddings")
    return [{"role": "system", "content": request.system_prompt}, {"role": "user", "content": content}]


def chat_completion_payload(request: EncodedRequest, model: str = "gap-mllm", max_tokens: int | None = None,
                            constrained: bool = False, **extra) -> dict:
    """The JSON body of `/v1/chat/completions` for one encoded sample: greedy decoding (the official setting) and
    the task's token budget (or `max_tokens`, a whole number >= 1: `task_budget`); with `constrained`, vLLM's
    structured-output field holding the task's answer grammar (`structured_output`); `extra` adds fields (e.g. `"stop"`)."""
    max_tokens = task_budget(request.task, max_tokens)
    grammar = structured_output(request.task, max_tokens, request.num_views, request.prompt) if constrained else {}
    return {"model": model, "messages": chat_messages(request), "max_tokens": max_tokens, "temperature": 0.0, **grammar,
            **extra}


class ServerUnreachableError(ConnectionError):
    """No OpenAI-compatible server answers at a URL; the message (one line) names it and how to start one."""


def unreachable_message(base_url: str, reason, served_model_name: str = "gap-mllm") -> str:
    """`base_url: no OpenAI-compatible server answers there (reason); start one ...`: the `vllm serve` command of
    docs/serving.md (`vllm_settings.serve_command`) on the URL's port and under the name the client asks for."""
    try:
        parts = urllib.parse.urlsplit(base_url)
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme, 8000)
    except ValueError:  # no port number: the command shows vLLM's default
        port = 8000
    command = shlex.join(serve_command("FOLDER", port=port, served_model_name=served_model_name))
    return (f"{base_url}: no OpenAI-compatible server answers there ({getattr(reason, 'reason', reason)}); start one in "
            f"the vLLM environment (make vllm-venv) on the folder `gap-mllm export-llm` wrote: {command} "
            "(docs/serving.md), or pass the URL of a running one")


def post_chat_completion(base_url: str, payload: dict, timeout: float = 600.0) -> dict:
    """POST `payload` to `{base_url}/v1/chat/completions`; the response JSON.

    Raises:
        ServerUnreachableError: nothing answers at `base_url` (a ConnectionError; one line: the URL, how to start a server).
        TimeoutError: no answer within `timeout` seconds.
        RuntimeError: an HTTP error, with the server's message.
    """
    request = urllib.request.Request(base_url.rstrip("/") + "/v1/chat/completions", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"{base_url}: HTTP {error.code}: {error.read().decode(errors='replace')[:2000]}") from error
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        if isinstance(error, TimeoutError) or isinstance(getattr(error, "reason", None), TimeoutError):
            raise TimeoutError(f"{base_url}: no answer within {timeout:g} s (raise the request timeout for long answers)") from error
        raise ServerUnreachableError(unreachable_message(base_url, error, payload.get("model", "gap-mllm"))) from error


def answer_text(response: dict, where: str = "the server") -> str:
    """The generated text of a `/v1/chat/completions` response (`choices[0].message.content`); a ValueError naming
    the field when the response has no such text."""
    content = response_field(response, ("choices", 0, "message", "content"), where)
    if not isinstance(content, str):
        raise ValueError(f"{where}: the response's choices[0].message.content is {type(content).__name__} "
                         f"{content!r:.80}, not the answer's text")
    return content


__all__ = ["ServerUnreachableError", "answer_text", "chat_completion_payload", "chat_messages", "decode_tensor_base64",
           "encode_tensor_base64", "image_embeds_part", "post_chat_completion", "unreachable_message"]
