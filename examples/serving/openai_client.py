"""Ask GAP-MLLM through vLLM's OpenAI-compatible server: the encoder half runs here, the language half in vLLM.

    # the server (vLLM environment), on a folder written by `gap-mllm export-llm`:
    vllm serve gap-mllm-mini-llm --served-model-name gap-mllm --port 8000 --enable-mm-embeds \
        --limit-mm-per-prompt '{"image": 32, "video": 0}' --chat-template-content-format openai \
        --structured-outputs-config.backend guidance
    # the client (gap-mllm environment), on the GAP folder the export came from:
    python examples/serving/openai_client.py --url http://localhost:8000 --task grounding_stage2 --query "the chair"
    python examples/serving/openai_client.py --task detection --out answer.json   # the text and its parsed result
    python examples/serving/openai_client.py --dry-run --task detection      # build and describe the request, send nothing

Frames: `--frames a.png b.png ...`, or a held-out SynthRooms room (`--scene-seed`, `--views`). The request asks for
the task's token budget (from the task registry: detection 1280; `--max-tokens` to choose another) and the generated
token ids, which are cut where the package's `generate` stops (the task's stop rule: `answer_from_token_ids`; vLLM
stops only at <|im_end|> or the budget) and parsed by the task's parser (`processor.post_process`), as
`gap-mllm predict` does. `--device cuda` runs the encoder half on the GPU (default: the GPU when there is one).
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from gap_mllm.serving import (
    RETURN_TOKEN_IDS,
    GapMllmEncoder,
    answer_from_token_ids,
    chat_completion_payload,
    check_prompt_token_ids,
    eos_token_ids,
    generated_token_ids,
    parsed_answer_json,
    post_chat_completion,
    task_budget,
)
from gap_mllm.tasks_gap_mllm import resolve_task


def frames_and_query(args):
    if args.frames:
        return args.frames, args.query
    from gap_mllm.cli.scenes import synthetic_scene

    scene = synthetic_scene(seed=args.scene_seed, num_frames=args.views)
    return scene.views, args.query or scene.example_inputs["grounding"]["query"]


def ask(encoder, request, url: str, served_model_name: str, max_tokens: int | None = None, constrained: bool = False) -> dict:
    """Send one encoded request and read the answer as `generate` would have stopped it: `{"task", "max_tokens",
    "text", "parsed"}` (the prompt the server tokenized is checked against the encoder's first). `constrained`: the
    request carries the task's answer grammar (vLLM's `structured_outputs`), as `generate` decodes with
    `constrained=True`."""
    budget = task_budget(request.task, max_tokens)
    payload = chat_completion_payload(request, model=served_model_name, max_tokens=budget, constrained=constrained,
                                      **RETURN_TOKEN_IDS)
    response = post_chat_completion(url, payload)
    tokenizer = encoder.processor.tokenizer
    check_prompt_token_ids(response, request, tokenizer, where=url)
    text = answer_from_token_ids(generated_token_ids(response, url), tokenizer, request.task,
                                 eos_token_ids=eos_token_ids(encoder.model))
    parsed = encoder.processor.post_process([text], task=request.task)[0]
    return {"task": request.task, "max_tokens": budget, "text": text, "parsed": parsed_answer_json(parsed)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="the GAP-MLLM folder the served export came from (default: the embedded mini)")
    parser.add_argument("--url", default="http://localhost:8000", help="the vLLM server")
    parser.add_argument("--served-model-name", default="gap-mllm")
    parser.add_argument("--task", default="grounding_stage2")
    parser.add_argument("--query", default=None, help="the description (grounding) or question (spatial_qa)")
    parser.add_argument("--frames", nargs="*", default=None, help="image files of one scene (default: a SynthRooms room)")
    parser.add_argument("--scene-seed", type=int, default=0)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=None, help="default: the task's budget")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the encoder half runs (default: cuda when available)")
    parser.add_argument("--out", type=Path, default=None, help="write the answer text and its parsed result here (JSON)")
    parser.add_argument("--dry-run", action="store_true", help="build the request and print its outline; send nothing")
    parser.add_argument("--constrained", action="store_true",
                        help="decode inside the task's answer grammar (vLLM's structured_outputs; off: the engine's free answer)")
    args = parser.parse_args()

    if args.model is None:
        from gap_mllm.mini import default_model_path

        args.model = default_model_path()
    encoder = GapMllmEncoder.from_pretrained(args.model, device=args.device)
    frames, query = frames_and_query(args)
    needs_query = "query" in resolve_task(args.task).parameters
    request = encoder.encode(frames, task=args.task, query=query if needs_query else None)
    if args.dry_run:
        payload = chat_completion_payload(request, model=args.served_model_name, max_tokens=args.max_tokens,
                                          constrained=args.constrained)
        parts = [part["type"] for part in payload["messages"][1]["content"]]
        print(json.dumps({"views": request.num_views, "embedding_shape": list(request.image_embeds[0].shape),
                          "image_grid_thw": request.image_grid_thw.tolist(), "content_parts": parts,
                          "max_tokens": payload["max_tokens"], "payload_bytes": len(json.dumps(payload)),
                          "structured_outputs": sorted(payload.get("structured_outputs", {}))}))
        return 0
    try:
        answer = {"query": query if needs_query else None, **ask(encoder, request, args.url, args.served_model_name,
                                                                 args.max_tokens, args.constrained)}
    except (ConnectionError, TimeoutError) as error:  # no server at --url (the line says how to start one), or too slow
        print(f"openai_client.py: error: {error}", file=sys.stderr)
        return 1
    print("answer:", answer["text"])
    print("parsed:", json.dumps(answer["parsed"]))
    if args.out is not None:
        args.out.write_text(json.dumps(answer, indent=1))
        print(f"wrote the answer and its parsed result to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
