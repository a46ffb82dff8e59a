"""The vLLM half of the offline batch (run in the vLLM environment; it does not import gap_mllm).

    python examples/serving/offline_vllm_generate.py EXPORTED_FOLDER requests.pt --out answers.json

EXPORTED_FOLDER: written by `gap-mllm export-llm`; requests.pt and requests.pt.json beside it: by `offline_batch.py
encode`. Each request is generated greedily with its own budget, `max_tokens` in requests.pt.json (the task's, from
gap-mllm's task registry: detection 1280), with the engine options of gap_mllm/serving/vllm_settings.py (embeddings
on, images per prompt > 0, no video). answers.json keeps per request vLLM's text and the generated token ids: vLLM
stops only at <|im_end|> or the budget, so `offline_batch.py parse` cuts the ids where gap-mllm's `generate` stops
(the task's stop rule) and parses the answer.

The functions below take vLLM's classes as arguments (`vllm.LLM`, `vllm.SamplingParams`), so they run, and are
tested, without vLLM; only `main` imports it.
"""

import argparse
import json
import sys
from pathlib import Path

# the same options as gap_mllm.serving.vllm_settings.engine_options (this environment has no gap_mllm)
DEFAULT_MAX_IMAGES = 32


def settings_path(requests_path) -> Path:
    """requests.pt.json: the settings `offline_batch.py encode` writes beside requests.pt (gap_mllm.serving.offline)."""
    return Path(str(requests_path) + ".json")


def read_requests(requests_path) -> tuple[list, list[dict]]:
    """`(requests, settings)`: the `vllm.LLM.generate` inputs and, for each, `{"task", "max_tokens", ...}`; a
    SystemExit naming the file when they do not belong together."""
    import torch  # the vLLM environment has torch; only this step reads the requests

    requests = torch.load(requests_path, weights_only=True)
    path = settings_path(requests_path)
    if not path.is_file():
        raise SystemExit(f"{path}: not found; it is written beside {requests_path} by offline_batch.py encode")
    settings = json.loads(path.read_text())
    if not isinstance(requests, list) or not isinstance(settings, list) or len(requests) != len(settings):
        raise SystemExit(f"{requests_path} and {path}: expected one settings entry per request, got "
                         f"{len(settings) if isinstance(settings, list) else settings!r:.60} for "
                         f"{len(requests) if isinstance(requests, list) else type(requests).__name__}")
    for index, item in enumerate(settings):
        budget = item.get("max_tokens") if isinstance(item, dict) else None
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
            raise SystemExit(f"{path}: entry {index} has no max_tokens (a whole number >= 1): {item!r:.120}")
    return requests, settings


def sampling_params(settings: list[dict], sampling_params_class, structured_outputs_class=None) -> list:
    """One `SamplingParams` per request: greedy (the official setting), `max_tokens` = the request's budget, and where
    the request carries its task's answer grammar (`offline_batch.py encode --constrained`) vLLM's structured output
    (`structured_outputs_class(grammar=...)`: `vllm.sampling_params.StructuredOutputsParams`)."""
    params = []
    for index, item in enumerate(settings):
        options = {"temperature": 0.0, "max_tokens": item["max_tokens"]}
        if item.get("grammar") is not None:
            if structured_outputs_class is None:
                raise SystemExit(f"request {index} carries an answer grammar, but no structured-output class was given")
            options["structured_outputs"] = structured_outputs_class(grammar=item["grammar"])
        params.append(sampling_params_class(**options))
    return params


def generate_answers(llm, requests: list, params: list) -> list[dict]:
    """`llm.generate(requests, params)` (one `SamplingParams` per request), read as one
    `{"text", "token_ids", "finish_reason"}` per request, in request order."""
    outputs = llm.generate(requests, params)
    answers = []
    for output in outputs:
        completion = output.outputs[0]
        answers.append({"text": completion.text, "token_ids": [int(t) for t in completion.token_ids],
                        "finish_reason": completion.finish_reason})
    return answers


def run(folder, requests_path, out, llm_class, sampling_params_class, max_images: int = DEFAULT_MAX_IMAGES,
        dtype: str = "auto", structured_outputs_class=None) -> list[dict]:
    """Generate every request of `requests_path` with `llm_class(model=folder, ...)` and write answers.json to `out`."""
    requests, settings = read_requests(requests_path)
    llm = llm_class(model=str(folder), dtype=dtype, enable_mm_embeds=True,
                    limit_mm_per_prompt={"image": max_images, "video": 0})
    answers = generate_answers(llm, requests, sampling_params(settings, sampling_params_class, structured_outputs_class))
    Path(out).write_text(json.dumps(answers, indent=1))
    return answers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="the export-llm folder")
    parser.add_argument("requests", help="requests.pt from offline_batch.py encode (requests.pt.json beside it)")
    parser.add_argument("--out", required=True, help="answers.json: per request the text and the generated token ids")
    parser.add_argument("--max-images", type=int, default=DEFAULT_MAX_IMAGES, help="views per request (must stay above 0)")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()
    try:
        from vllm import LLM, SamplingParams
        from vllm.sampling_params import StructuredOutputsParams  # vLLM >= 0.12 (guided_decoding before)
    except ImportError as error:
        raise SystemExit(f"this step runs in the vLLM environment (make vllm-venv): {error}") from None
    answers = run(args.folder, args.requests, args.out, LLM, SamplingParams, args.max_images, args.dtype,
                  StructuredOutputsParams)
    print(f"wrote {len(answers)} answers to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
