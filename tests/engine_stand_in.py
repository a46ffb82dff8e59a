"""Test support, not product: a stand-in for vLLM 0.33.0's OpenAI-compatible server, on 127.0.0.1, for the part of
its API that GAP-MLLM's clients use (`GET /v1/models`, non-streaming `POST /v1/chat/completions`).

It serves a folder written by `gap-mllm export-llm` with a STOCK `transformers.Qwen3VLForConditionalGeneration`
(the language half; GAP's own classes are never loaded here) and does with a request what vLLM does, as read in its
code (gap_mllm/serving/README.md):

- the messages are rendered with the folder's chat template, content format "openai" (`--chat-template-content-format
  openai`): a string content is one text part, each `image_embeds` part an image item in place; the text is tokenized
  without special tokens added;
- each `image_embeds` part is a dict: a string value is a base64 `torch.save` tensor read with
  `torch.load(weights_only=True)` (`ImageEmbeddingMediaIO`); a JSON array is metadata (only `image_grid_thw`), read as
  an int64 tensor; the parts of a request must have the same keys and are merged: the embeddings concatenated
  `[Σ tokens, width]`, the grids stacked `[V, 3]` (`_merge_embeds`); the width must be `(1 + levels) · hidden` and the
  rows `Σ t·h·w / merge²` (`Qwen2VLMultiModalDataParser`);
- each `<|image_pad|>` becomes its view's `t·h·w / merge²` tokens; a prompt longer than the context is refused with
  vLLM's message; `max_tokens` is clamped to the room left (`get_max_tokens`);
- the embeddings are cast to the model dtype and split into the main level and the DeepStack levels
  (`_compute_deepstack_embeds`), given to the stock model through its `mm_encoder_outputs` hook (per image);
- greedy decoding (temperature 0 only), stopping at the tokenizer's EOS and the generation config's EOS ids or after
  `max_tokens` (vLLM knows no answer-end rule); a `structured_outputs` field holds exactly one constraint (vLLM's
  400 otherwise), of which the stand-in applies `grammar` (GBNF, read by llguidance as vLLM's `guidance` backend reads it,
  `llguidance.grammar_from("grammar", ...)`, compiled for the folder's tokenizer at the model's vocabulary width and
  applied by the package's logits processor with the prompt as its prefix) and refuses the other kinds; a grammar that
  does not compile is a 400; the reply carries the text (special tokens skipped), `finish_reason`,
  and with `return_token_ids` the generated ids (the stop token included) and the prompt ids.

Requests are answered one at a time (vLLM batches them; greedy answers do not depend on it here). Errors are vLLM's
`{"error": {"message", "type", "code"}}` with its status codes (400, 404).

`OfflineLLMStandIn` / `SamplingParamsStandIn` do the same for the offline API, `vllm.LLM(model=folder, ...)
.generate(prompts, sampling_params)` on `{"prompt", "multi_modal_data": {"image": {"image_embeds": [Σ tokens,
width], "image_grid_thw": [V, 3]}}}` dicts (gap_mllm/serving/offline.py), answering with `RequestOutput`-shaped
objects (`.prompt_token_ids`, `.outputs[0].text`, `.token_ids`, `.finish_reason`).
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration
from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

IMAGE_PAD = "<|image_pad|>"
METADATA_FIELDS = ("image_grid_thw",)  # Qwen2VLMultiModalDataParser.embedding_fields["image"]: the metadata key


class RequestRefused(Exception):
    """An error answer: HTTP status, OpenAI error type, message."""

    def __init__(self, status: int, kind: str, message: str):
        super().__init__(message)
        self.status, self.kind = status, kind


def _bad(message: str) -> RequestRefused:
    return RequestRefused(400, "BadRequestError", message)


class EngineStandIn:
    """`with EngineStandIn(folder) as server: server.url`; `server.completions` records every answer given.

    Args:
        folder: an `export-llm` folder (stock Qwen3-VL config, weights, tokenizer, chat template, generation config).
        served_model_name: the name `/v1/models` lists and requests must use (`--served-model-name`).
        max_model_len: the context (`--max-model-len`; default the config's `max_position_embeddings`).
        port: the port on 127.0.0.1 (0: a free one).
    """

    def __init__(self, folder, served_model_name: str = "gap-mllm", max_model_len: int | None = None, port: int = 0):
        self.folder = Path(folder).resolve()
        self.served_model_name = served_model_name
        self.model = Qwen3VLForConditionalGeneration.from_pretrained(self.folder).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        config = self.model.config
        vision = config.vision_config
        self.hidden = vision.out_hidden_size
        self.levels = len(vision.deepstack_visual_indexes)
        self.merge = vision.spatial_merge_size
        self.image_token_id = config.image_token_id
        self.max_model_len = int(max_model_len or config.text_config.max_position_embeddings)
        eos = self.model.generation_config.eos_token_id
        stops = {self.tokenizer.eos_token_id} | ({eos} if isinstance(eos, int) else set(eos or ()))
        self.stop_token_ids = sorted(i for i in stops if i is not None)
        self.completions: list[dict] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "EngineStandIn":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=30)

    # ------------------------------------------------------------------------------------------- API

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.served_model_name, "object": "model", "created": int(time.time()),
                                            "owned_by": "vllm", "root": str(self.folder), "parent": None,
                                            "max_model_len": self.max_model_len, "permission": []}]}

    def chat_completion(self, body: dict) -> dict:
        if body.get("model") != self.served_model_name:
            raise RequestRefused(404, "NotFoundError", f"The model `{body.get('model')}` does not exist.")
        if body.get("stream"):
            raise _bad("the stand-in answers non-streaming requests only")
        if float(body.get("temperature", 1.0)) != 0.0:
            raise _bad("the stand-in decodes greedily only (temperature 0)")
        messages, items = self._render_messages(body.get("messages"))
        prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        grammar = self._grammar(body.get("structured_outputs"))
        embeds, grid = self._merge(items) if items else (None, None)
        if grid is not None:
            ids = self._expand(ids, grid)
        if len(ids) > self.max_model_len:
            raise _bad(f"Input length ({len(ids)}) exceeds model's maximum context length ({self.max_model_len}).")
        requested = body.get("max_completion_tokens", body.get("max_tokens"))
        max_tokens = min(self.max_model_len - len(ids), int(requested) if requested is not None else self.max_model_len)
        with self._lock:
            new = self._generate(ids, embeds, grid, max_tokens, grammar)
        stopped = bool(new) and new[-1] in self.stop_token_ids
        content = self.tokenizer.decode(new, skip_special_tokens=True)
        self.completions.append({"content": content, "token_ids": new, "max_tokens": max_tokens, "prompt_tokens": len(ids)})
        choice = {"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": None,
                  "finish_reason": "stop" if stopped else "length", "stop_reason": None}
        response = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                    "model": self.served_model_name, "choices": [choice],
                    "usage": {"prompt_tokens": len(ids), "completion_tokens": len(new), "total_tokens": len(ids) + len(new)}}
        if body.get("return_token_ids"):
            choice["token_ids"] = new
            response["prompt_token_ids"] = ids
        return response

    # ------------------------------------------------------------------------------------- internals

    def _render_messages(self, messages) -> tuple[list[dict], list[dict]]:
        """Messages for the chat template (content format "openai") and the `image_embeds` dicts, in order."""
        if not isinstance(messages, list) or not messages:
            raise _bad("messages must be a non-empty list")
        rendered, items = [], []
        for message in messages:
            content = message.get("content")
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
            if not isinstance(parts, list):
                raise _bad(f"message content must be a string or a list of parts, got {type(content).__name__}")
            out = []
            for part in parts:
                kind = part.get("type")
                if kind == "text":
                    out.append({"type": "text", "text": part["text"]})
                elif kind == "image_embeds":
                    items.append(self._read_image_embeds(part.get("image_embeds")))
                    out.append({"type": "image"})
                else:
                    raise _bad(f"the stand-in reads text and image_embeds parts only, got {kind!r}")
            rendered.append({"role": message["role"], "content": out})
        return rendered, items

    @staticmethod
    def _read_image_embeds(value) -> dict:
        if not isinstance(value, dict):
            raise _bad("Qwen3-VL's image_embeds part must be a dict with image_embeds and image_grid_thw")
        item = {}
        for key, field in value.items():
            if isinstance(field, str):
                tensor = torch.load(io.BytesIO(base64.b64decode(field, validate=True)), weights_only=True)
                item[key] = tensor.to_dense() if tensor.is_sparse else tensor
            elif isinstance(field, list):
                if key not in METADATA_FIELDS:
                    raise _bad(f"JSON arrays are only supported for metadata: {key}")
                if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in field):
                    raise _bad(f"Metadata {key} must be a finite numeric array.")
                item[key] = torch.tensor(field, dtype=torch.float64 if any(isinstance(v, float) for v in field) else torch.int64)
            else:
                raise _bad(f"image_embeds field {key!r}: expected a base64 tensor or a metadata array")
        return item

    def _merge(self, items: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        keys = set(items[0])
        if any(set(item) != keys for item in items[1:]):
            raise _bad("All dictionaries in the list of embeddings must have the same keys.")
        if keys != {"image_embeds", "image_grid_thw"}:
            raise _bad(f"Qwen3-VL's image embeddings need image_embeds and image_grid_thw, got {sorted(keys)}")
        embeds = torch.cat([item["image_embeds"] for item in items], dim=0)
        grid = torch.stack([item["image_grid_thw"] for item in items])
        return self._check_embeds(embeds, grid)

    def _check_embeds(self, embeds: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The merged embeddings and grid of one prompt, refused as vLLM refuses them (shapes, width, rows)."""
        if grid.ndim != 2 or grid.shape[1] != 3:
            raise _bad(f"image_grid_thw must stack to [images, 3], got {list(grid.shape)}")
        width = (1 + self.levels) * self.hidden
        if embeds.ndim != 2 or embeds.shape[1] != width:
            raise _bad(f"image_embeds of shape {list(embeds.shape)}; expected [tokens, {width}]")
        tokens = int((grid.prod(dim=-1) // self.merge**2).sum())
        if embeds.shape[0] != tokens:
            raise _bad(f"image_embeds has {embeds.shape[0]} rows for grids of {tokens} tokens")
        return embeds, grid

    def _expand(self, ids: list[int], grid: torch.Tensor) -> list[int]:
        counts = (grid.prod(dim=-1) // self.merge**2).tolist()
        if ids.count(self.image_token_id) != len(counts):
            raise _bad(f"the prompt has {ids.count(self.image_token_id)} image placeholders for {len(counts)} images")
        views, out = iter(counts), []
        for token in ids:
            out.extend([token] * next(views) if token == self.image_token_id else [token])
        return out

    STRUCTURED_OUTPUT_KINDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")

    def _grammar(self, value):
        """The grammar of a request's `structured_outputs` field, checked to compile (None without one)."""
        if value is None:
            return None
        if not isinstance(value, dict):
            raise _bad(f"structured_outputs must be an object, got {type(value).__name__}")
        kinds = [kind for kind in self.STRUCTURED_OUTPUT_KINDS if value.get(kind) not in (None, False)]
        if len(kinds) != 1:
            raise _bad(f"You can only use one kind of structured outputs constraint but multiple are specified: {kinds}")
        if kinds != ["grammar"]:
            raise _bad(f"the stand-in applies structured_outputs.grammar only, got {kinds[0]}")
        from gap_mllm.tasks_gap_mllm import grammar_matcher

        try:
            grammar_matcher(self.tokenizer, self.model.config.text_config.vocab_size, value["grammar"])
        except Exception as error:  # noqa: BLE001 - vLLM answers 400 for a grammar its backend cannot read
            raise _bad(f"Invalid grammar specification: {error}") from error
        return value["grammar"]

    @torch.inference_mode()
    def _generate(self, ids: list[int], embeds, grid, max_tokens: int, grammar=None) -> list[int]:
        input_ids = torch.tensor([ids])
        inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        if embeds is not None:
            dtype = self.model.model.visual.dtype  # vLLM casts the embeddings to the vision tower's (the model's) dtype
            main, multiscale = torch.split(embeds.to(dtype), [self.hidden, self.levels * self.hidden], dim=-1)
            deepstack = multiscale.reshape(embeds.shape[0], self.levels, self.hidden).permute(1, 0, 2)
            sizes = (grid.prod(-1) // self.merge**2).tolist()
            inputs.update(mm_token_type_ids=(input_ids == self.image_token_id).long(), image_grid_thw=grid.long(),
                          mm_encoder_outputs={"image": BaseModelOutputWithDeepstackFeatures(
                              pooler_output=torch.split(main, sizes),
                              deepstack_features=[torch.split(level, sizes) for level in deepstack])})
        if grammar is not None:
            from gap_mllm.tasks_gap_mllm import GrammarLogitsProcessor

            inputs["logits_processor"] = [GrammarLogitsProcessor(self.tokenizer, grammar, prompt_length=len(ids))]
        out = self.model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False, num_beams=1,
                                  eos_token_id=self.stop_token_ids, pad_token_id=self.stop_token_ids[0])
        return out[0, len(ids):].tolist()

    def _handler(self):
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _refuse(self, error: RequestRefused) -> None:
                self._reply(error.status, {"error": {"message": str(error), "type": error.kind, "param": None,
                                                     "code": error.status}})

            def do_GET(self):  # noqa: N802 - the http.server name
                if self.path == "/v1/models":
                    self._reply(200, stand_in.models())
                else:
                    self._refuse(RequestRefused(404, "NotFoundError", f"no route {self.path}"))

            def do_POST(self):  # noqa: N802
                if self.path != "/v1/chat/completions":
                    return self._refuse(RequestRefused(404, "NotFoundError", f"no route {self.path}"))
                try:
                    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                    self._reply(200, stand_in.chat_completion(body))
                except RequestRefused as error:
                    self._refuse(error)
                except (ValueError, KeyError, TypeError, RuntimeError) as error:
                    self._refuse(_bad(f"{type(error).__name__}: {error}"))

            def log_message(self, *args):
                pass

        return Handler


@dataclass
class SamplingParamsStandIn:
    """`vllm.SamplingParams` for what the stand-in reads, with vLLM's defaults (temperature 1.0, max_tokens 16)."""

    temperature: float = 1.0
    max_tokens: int | None = 16
    structured_outputs: object = None  # `vllm.sampling_params.StructuredOutputsParams` (the offline stand-in ignores it)


class OfflineLLMStandIn:
    """`vllm.LLM` (0.33.0) for offline requests carrying image embeddings (see the module docstring), on the stock
    Qwen3-VL of an `export-llm` folder; `calls` records `(prompt tokens, max_tokens, generated ids)` per request.

    Refused as vLLM refuses them: image embeddings without `enable_mm_embeds=True`, more images in a prompt than
    `limit_mm_per_prompt["image"]`, a `sampling_params` list of another length than the prompts, sampling."""

    def __init__(self, model, dtype: str = "auto", enable_mm_embeds: bool = False, limit_mm_per_prompt=None, **_):
        self.engine = EngineStandIn(model)
        self.engine._server.server_close()  # the model and its request rules only: no HTTP server
        self.enable_mm_embeds = enable_mm_embeds
        self.max_images = (limit_mm_per_prompt or {}).get("image", 1)
        self.calls: list[tuple[int, int, list[int]]] = []

    def generate(self, prompts, sampling_params=None, use_tqdm: bool = True) -> list:
        prompts = prompts if isinstance(prompts, list) else [prompts]
        params = sampling_params if sampling_params is not None else SamplingParamsStandIn()
        params = params if isinstance(params, list) else [params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError("The lengths of prompts and sampling_params must be the same.")
        return [self._one(prompt, param) for prompt, param in zip(prompts, params)]

    def _one(self, prompt: dict, params: SamplingParamsStandIn):
        engine = self.engine
        if float(params.temperature) != 0.0:
            raise ValueError("the stand-in decodes greedily only (temperature 0)")
        ids = engine.tokenizer(prompt["prompt"])["input_ids"]
        embeds = grid = None
        image = prompt.get("multi_modal_data", {}).get("image")
        if image is not None:
            if not self.enable_mm_embeds:
                raise ValueError("You must set `--enable-mm-embeds` to input `image_embeds`")
            embeds, grid = engine._check_embeds(image["image_embeds"], image["image_grid_thw"])
            if grid.shape[0] > self.max_images:
                raise ValueError(f"At most {self.max_images} image(s) may be provided in one prompt.")
            ids = engine._expand(ids, grid)
        if len(ids) > engine.max_model_len:
            raise ValueError(f"The decoder prompt (length {len(ids)}) is longer than the maximum model length of "
                             f"{engine.max_model_len}.")
        max_tokens = engine.max_model_len - len(ids) if params.max_tokens is None else int(params.max_tokens)
        new = engine._generate(ids, embeds, grid, min(max_tokens, engine.max_model_len - len(ids)))
        self.calls.append((len(ids), max_tokens, new))
        stopped = bool(new) and new[-1] in engine.stop_token_ids
        completion = SimpleNamespace(index=0, text=engine.tokenizer.decode(new, skip_special_tokens=True),
                                     token_ids=new, finish_reason="stop" if stopped else "length")
        return SimpleNamespace(prompt=prompt["prompt"], prompt_token_ids=ids, outputs=[completion], finished=True)


def main() -> None:
    """`python -m tests.engine_stand_in FOLDER --port 8000`: serve an export-llm folder until interrupted (the CPU
    route to run the lmms-eval `backend=vllm` command where vLLM cannot run)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("folder", help="a folder written by `gap-mllm export-llm`")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", default="gap-mllm")
    parser.add_argument("--max-model-len", type=int, default=None)
    args = parser.parse_args()
    stand_in = EngineStandIn(args.folder, args.served_model_name, args.max_model_len, port=args.port)
    print(f"serving {stand_in.folder} as {args.served_model_name!r} at {stand_in.url} (Ctrl-C stops)", flush=True)
    try:
        stand_in._server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        stand_in._server.server_close()


if __name__ == "__main__":
    main()
