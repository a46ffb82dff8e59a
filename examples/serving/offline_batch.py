"""Offline batch through `vllm.LLM.generate`, in two environments: encode here, generate there, parse here.

    # 1. gap-mllm environment: one request per object of a SynthRooms room (grounding stage 1, 32 frames), or one
    #    for the room (--task detection)
    python examples/serving/offline_batch.py encode --out requests.pt --views 32
    # 2. vLLM environment, on the folder written by `gap-mllm export-llm` from the same checkpoint
    python examples/serving/offline_vllm_generate.py gap-mllm-mini-llm requests.pt --out answers.json
    # 3. gap-mllm environment: every answer cut by its task's stop rule and parsed; results.json holds both
    python examples/serving/offline_batch.py parse answers.json --requests requests.pt --out results.json

`requests.pt` is the list `vllm.LLM.generate` takes (prompt text + one `image_embeds`/`image_grid_thw` dict per
prompt, gap_mllm/serving/offline.py); `requests.pt.json` beside it holds each request's task, query and token budget
(the task's, from the registry: `--max-tokens` only to choose another), which the vLLM step generates with. vLLM
stops only at <|im_end|> or the budget, so the parse step cuts the generated token ids where the package's `generate`
stops (`gap_mllm.serving.offline_answer_text`: the same cut as `answer_from_token_ids`) and writes, per request, the
answer text next to its parsed result.

`--device cuda` runs the encoder half on the GPU (default: the GPU when there is one); with vLLM on the same GPU,
give vLLM a share of its memory (`--gpu-memory-utilization`, see gap_mllm/serving/README.md).
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from gap_mllm.serving import (
    GapMllmEncoder,
    eos_token_ids,
    offline_answer_text,
    offline_request,
    offline_settings,
    parsed_answer_json,
    save_offline_requests,
)
from gap_mllm.tasks_gap_mllm import resolve_task


def load_encoder(model, device: str = "cpu"):
    if model is None:
        from gap_mllm.mini import default_model_path

        model = default_model_path()
    return GapMllmEncoder.from_pretrained(model, device=device)


def settings_path(requests_path) -> Path:
    """requests.pt.json, beside requests.pt (offline_vllm_generate.py reads it there)."""
    return Path(str(requests_path) + ".json")


def scene_queries(task: str, labels: list[str]) -> list[str | None]:
    """The queries of one room's requests: one per object label for a task that takes a query, one request without
    a query for a task that takes nothing (detection); other tasks need inputs this example does not make."""
    spec = resolve_task(task)
    if spec.parameters == ("query",):
        return [f"the {label}" for label in labels]
    if not spec.parameters and not spec.needs_marker:
        return [None]
    raise SystemExit(f"--task {task}: this example makes requests for tasks that take a query or nothing; "
                     f"{task} needs {'a marker' if spec.needs_marker else ', '.join(spec.parameters)}")


def encode(args) -> int:
    from gap_mllm.cli.scenes import synthetic_scene

    scene = synthetic_scene(seed=args.scene_seed, num_frames=args.views)
    labels = sorted(set(scene.reference_labels))
    if not labels:
        raise SystemExit(f"scene {args.scene_seed} has no visible object to ask about; try another --scene-seed")
    queries = scene_queries(args.task, labels)
    encoder = load_encoder(args.model, args.device)
    requests = encoder.encode_batch([scene.views] * len(queries), task=args.task,
                                    query=None if queries == [None] else queries)
    save_offline_requests([offline_request(r) for r in requests], args.out)
    settings = [{**offline_settings(r, args.max_tokens, args.constrained), "query": q} for r, q in zip(requests, queries)]
    settings_path(args.out).write_text(json.dumps(settings, indent=1))
    print(f"wrote {len(requests)} requests ({len(scene.views)} views each, {requests[0].image_embeds[0].shape[1]}-wide embeddings, "
          f"budget {settings[0]['max_tokens']} tokens) to {args.out}")
    return 0


def parse_answers(answers: list, settings: list[dict], encoder) -> list[dict]:
    """Per request `{"task", "query", "text", "parsed"}`: the text `generate` would have returned for the engine's
    token ids (cut by the task's stop rule) and the task parser's result of it."""
    processor, eos = encoder.processor, eos_token_ids(encoder.model)
    results = []
    for index, (item, answer) in enumerate(zip(settings, answers)):
        text = offline_answer_text(answer, item["task"], processor.tokenizer, eos, where=f"answer {index}")
        options = {"num_frames": item["views"]} if "num_frames" in resolve_task(item["task"]).parse_options else {}
        parsed = processor.post_process([text], task=item["task"], **options)[0]
        results.append({"task": item["task"], "query": item.get("query"), "text": text,
                        "parsed": parsed_answer_json(parsed)})
    return results


def parse(args) -> int:
    """Exits with one line (no traceback) for a missing or unreadable file and for answers that are not these
    requests' (another count, text without token ids, token ids outside the tokenizer)."""
    try:
        settings = json.loads(settings_path(args.requests).read_text())
        answers = json.loads(Path(args.answers).read_text())
    except (OSError, ValueError) as error:  # ValueError: a file that is not JSON
        raise SystemExit(f"offline_batch.py parse: {error}") from None
    if len(answers) != len(settings):
        raise SystemExit(f"{args.answers}: {len(answers)} answers for {len(settings)} requests in {args.requests}")
    try:
        results = parse_answers(answers, settings, load_encoder(args.model))
    except ValueError as error:
        raise SystemExit(f"{args.answers}: {error}") from None
    for result in results:
        print(f"{result['query'] or result['task']!r}: {result['parsed']}")
    out = args.out or Path(args.answers).with_suffix(".parsed.json")
    Path(out).write_text(json.dumps(results, indent=1))
    print(f"wrote {len(results)} parsed answers (each next to its text) to {out}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="GAP-MLLM folder (default: the embedded mini)")
    sub = parser.add_subparsers(dest="step", required=True)
    enc = sub.add_parser("encode", help="frames + task -> requests.pt (+ requests.pt.json) for vllm.LLM.generate")
    enc.add_argument("--out", type=Path, required=True)
    enc.add_argument("--task", default="grounding_stage1")
    enc.add_argument("--views", type=int, default=32)
    enc.add_argument("--scene-seed", type=int, default=0)
    enc.add_argument("--max-tokens", type=int, default=None, help="token budget (default: the task's own)")
    enc.add_argument("--constrained", action="store_true",
                     help="each request carries its task's answer grammar; the vLLM step decodes inside it (StructuredOutputsParams)")
    enc.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                     help="where the encoder half runs (default: cuda when available)")
    par = sub.add_parser("parse", help="answers.json (from offline_vllm_generate.py) -> texts and typed results")
    par.add_argument("answers", type=Path)
    par.add_argument("--requests", type=Path, required=True)
    par.add_argument("--out", type=Path, default=None, help="default: ANSWERS.parsed.json beside answers.json")
    args = parser.parse_args()
    return encode(args) if args.step == "encode" else parse(args)


if __name__ == "__main__":
    sys.exit(main())
