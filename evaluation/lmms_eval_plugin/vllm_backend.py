"""`backend=vllm` of the `gap_mllm` lmms-eval model: the encoder half here, the language half in a vLLM server.

    --model gap_mllm --model_args pretrained=CKPT,backend=vllm,base_url=http://HOST:8000,served_model_name=gap-mllm

The requests are the HF backend's (documents.request_for = Benchmark.request: prompts, frames, budgets, stop rules).
Each one is encoded here by `gap_mllm.serving.GapMllmEncoder` on `pretrained` (geometry encoder, ViT, fusion; the
questions of one scene share one encoding when `scene_reuse`), posted to `/v1/chat/completions` with one
`image_embeds` part per view, greedy, `max_tokens` = the request's budget (capped like the HF backend's), and read back
from the generated token ids as the package's `generate` would have stopped them (`serving/engine_answers.py`: vLLM
stops only at `<|im_end|>` or the budget, the package also at the end of the task's answer; the ids are cut at the
same token), so for the same tokens both backends give the same texts, parses and scores.

Up to `max_concurrency` requests are in flight at once (a thread pool; the encoder blocks while the server is full),
so the server batches them; answers are kept by request index, so the output order is the request order. The stages of
a multi-stage task (ScanRefer) run one after the other over all the call's documents: stage 2 is built from stage 1's
answer, as in the HF backend.

Before anything is encoded the server is checked (`gap_mllm.serving.check_served_model`): it must answer at
`base_url`, serve `served_model_name`, and serve the `export-llm` folder of the same GAP checkpoint as `pretrained`
(its `gap_export.json`, read where `/v1/models` says the folder is; `verify_export=false` skips that part). Every
answer's prompt ids must be the encoder's (`check_prompt_token_ids`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

import torch

from gap_mllm.serving import (
    RETURN_TOKEN_IDS,
    EncodedRequest,
    GapMllmEncoder,
    answer_from_token_ids,
    chat_completion_payload,
    check_prompt_token_ids,
    check_served_model,
    generated_token_ids,
    post_json,
)

from ..generation import Request
from ..scene_generation import scene_groups

DEFAULT_SERVED_MODEL_NAME = "gap-mllm"  # serving.vllm_settings.serve_command's default
DEFAULT_MAX_CONCURRENCY = 8  # requests in flight; each carries its views' embeddings (float32 or bfloat16, base64)
DEFAULT_TIMEOUT_S = 600.0


class VllmAnswerer:
    """Answers plugin requests through a vLLM server (see the module docstring).

    Args:
        model_source: the GAP-MLLM folder / Hub id whose export the server serves.
        base_url: the server, e.g. "http://localhost:8000".
        served_model_name: the name given to `vllm serve --served-model-name`.
        device, dtype: where and in which dtype the encoder half runs.
        max_new_tokens: a cap on every request's budget (as the HF backend's `max_new_tokens`).
        batch_size: scenes per encoder call.
        max_concurrency: requests in flight at once.
        scene_reuse: the questions of one scene (same views and marker) share one encoding.
        timeout: seconds one request may take.
        verify_export: check that the served folder is the export of `model_source` (needs it readable here).
    """

    def __init__(self, model_source: str, base_url: str, served_model_name: str = DEFAULT_SERVED_MODEL_NAME,
                 device: torch.device | str = "cpu", dtype: torch.dtype | None = None, max_new_tokens: int | None = None,
                 batch_size: int = 1, max_concurrency: int = DEFAULT_MAX_CONCURRENCY, scene_reuse: bool = True,
                 timeout: float = DEFAULT_TIMEOUT_S, verify_export: bool = True):
        if not base_url or not str(base_url).startswith(("http://", "https://")):
            raise ValueError(f"gap_mllm: backend=vllm needs base_url=http://HOST:PORT of the vLLM server, got {base_url!r}")
        self.base_url = str(base_url).rstrip("/")
        self.served_model_name = served_model_name
        self.max_new_tokens = max_new_tokens
        self.batch_size = int(batch_size)
        self.max_concurrency = int(max_concurrency)
        self.scene_reuse = scene_reuse
        self.timeout = float(timeout)
        # the server first: a missing or wrong server is refused before the encoder is loaded
        self.model_card = check_served_model(self.base_url, served_model_name, model_source, verify_export=verify_export)
        self.encoder = GapMllmEncoder.from_pretrained(model_source, device=device, dtype=dtype)
        self.tokenizer = self.encoder.processor.tokenizer
        eos = self.encoder.model.generation_config.eos_token_id
        self.eos_token_ids = () if eos is None else ((eos,) if isinstance(eos, int) else tuple(eos))

    # ------------------------------------------------------------------------------------------ stages

    def answer_stages(self, request_for: Callable[[int, int, list[str]], Request], members: list[int], stages: int,
                      names: dict[int, str] | None = None) -> dict[int, list[str]]:
        """`{member: [text per stage]}`: every stage of every member, a stage's request built from the earlier
        answers (`request_for(member, stage, previous texts)`, as `answer_in_batches` calls it)."""
        texts: dict[int, list[str]] = {i: [] for i in members}
        for stage in range(stages):
            requests = {i: request_for(i, stage, list(texts[i])) for i in members}
            for i, text in self.answer(requests, names, stage).items():
                texts[i].append(text)
        return texts

    def answer(self, requests: dict[int, Request], names: dict[int, str] | None = None, stage: int = 0) -> dict[int, str]:
        """`{index: text}` for one model call per request.

        The worker threads only build the payloads and wait for the server; the answers are read (tokenizer use) in
        this thread, as they arrive, so a failed request stops the encoding of the rest."""
        groups = scene_groups(requests) if self.scene_reuse else [[i] for i in requests]
        gate = threading.BoundedSemaphore(self.max_concurrency)
        pending: dict[int, tuple[Future, EncodedRequest]] = {}
        answers: dict[int, str] = {}
        pool = ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="gap-vllm")
        try:
            for start in range(0, len(groups), self.batch_size):
                self._read_finished(pending, requests, answers, names, stage)
                chunk = groups[start : start + self.batch_size]
                firsts = [requests[group[0]] for group in chunk]
                encoded = self.encoder.encode_prompts([list(r.images) for r in firsts], [r.prompt for r in firsts],
                                                      point_prompts=[_marker(r) for r in firsts])
                for group, scene in zip(chunk, encoded, strict=True):
                    for position, index in enumerate(group):
                        request = requests[index]
                        one = (replace(scene, task=request.task) if position == 0
                               else self.encoder.reprompt(scene, request.prompt, task=request.task))
                        gate.acquire()
                        try:
                            pending[index] = (pool.submit(self._post, one, request, gate), one)
                        except BaseException:
                            gate.release()
                            raise
            self._read_finished(pending, requests, answers, names, stage, wait=True)
            return {index: answers[index] for index in requests}
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    # --------------------------------------------------------------------------------------- internals

    def budget(self, request: Request) -> int:
        """The request's token budget, capped like the HF backend's (`BatchGenerator.max_new_tokens`)."""
        return request.max_new_tokens if self.max_new_tokens is None else min(request.max_new_tokens, self.max_new_tokens)

    def _post(self, encoded: EncodedRequest, request: Request, gate: threading.BoundedSemaphore) -> dict:
        """The server's response to one request (a worker thread)."""
        try:
            payload = chat_completion_payload(encoded, model=self.served_model_name, max_tokens=self.budget(request),
                                              constrained=request.constrained, **RETURN_TOKEN_IDS)
            return post_json(self.base_url, payload, timeout=self.timeout)
        finally:
            gate.release()

    def _read_finished(self, pending: dict, requests: dict[int, Request], answers: dict[int, str], names, stage: int,
                       wait: bool = False) -> None:
        """Turn finished responses into answer texts (all of them with `wait`), in request order; the first failure is
        raised with its sample and stage."""
        where = f"{self.base_url} ({self.served_model_name})"
        for index in list(pending):
            future, encoded = pending[index]
            if not (wait or future.done()):
                continue
            try:
                response = future.result()
                check_prompt_token_ids(response, encoded, self.tokenizer, where)
                answers[index] = answer_from_token_ids(generated_token_ids(response, where), self.tokenizer,
                                                       requests[index].task, requests[index].stop_at_answer_end,
                                                       self.eos_token_ids)
            except Exception as error:
                _name(error, index, names, stage)
                raise
            del pending[index]


def _marker(request: Request):
    return None if request.pixel_coords is None else tuple(int(v) for v in request.pixel_coords)


def _name(error: BaseException, index: int, names: dict[int, str] | None, stage: int) -> None:
    """Add which sample and stage failed to the error (its type and message stay)."""
    sample = names.get(index, index) if names else index
    error.add_note(f"gap_mllm (backend=vllm): while answering sample {sample!r}, stage {stage + 1}")


__all__ = ["DEFAULT_MAX_CONCURRENCY", "DEFAULT_SERVED_MODEL_NAME", "DEFAULT_TIMEOUT_S", "VllmAnswerer"]
