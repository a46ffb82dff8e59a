"""Offline batch through `vllm.LLM.generate`, in two environments: encode here, generate there, parse here.

    # 1. gap-mllm environment: grounding stage 1 (32 frames) for every object of one SynthRooms room
    python examples/serving/offline_batch.py encode --out requests.pt --views 32
    # 2. vLLM environment, on the folder written by `gap-mllm export-llm` from the same checkpoint
    python examples/serving/offline_vllm_generate.py gap-mllm-mini-llm requests.pt --out answers.json
    # 3. gap-mllm environment: the task's parser on every answer
    python examples/serving/offline_batch.py parse answers.json --requests requests.pt

`requests.pt` is the list `vllm.LLM.generate` takes (prompt text + one `image_embeds`/`image_grid_thw` dict per
prompt, gap_mllm/serving/offline.py); `requests.pt.json` beside it names each request's task and query.
"""

import argparse
import json
import sys
from pathlib import Path

from gap_mllm.serving import GapMllmEncoder, offline_request, save_offline_requests


def load_encoder(model):
    if model is None:
        from gap_mllm.mini import default_model_path

        model = default_model_path()
    return GapMllmEncoder.from_pretrained(model)


def encode(args) -> int:
    from gap_mllm.cli.scenes import synthetic_scene

    scene = synthetic_scene(seed=args.scene_seed, num_frames=args.views)
    labels = sorted(set(scene.reference_labels))
    if not labels:
        raise SystemExit(f"scene {args.scene_seed} has no visible object to ask about; try another --scene-seed")
    queries = [f"the {label}" for label in labels]
    encoder = load_encoder(args.model)
    requests = encoder.encode_batch([scene.views] * len(queries), task=args.task, query=queries)
    save_offline_requests([offline_request(r) for r in requests], args.out)
    Path(str(args.out) + ".json").write_text(json.dumps([{"task": args.task, "query": q} for q in queries], indent=1))
    print(f"wrote {len(requests)} requests ({args.views} views each, {requests[0].image_embeds[0].shape[1]}-wide embeddings) "
          f"to {args.out}")
    return 0


def parse(args) -> int:
    meta = json.loads(Path(str(args.requests) + ".json").read_text())
    answers = json.loads(Path(args.answers).read_text())
    if len(answers) != len(meta):
        raise SystemExit(f"{args.answers}: {len(answers)} answers for {len(meta)} requests in {args.requests}")
    processor = load_encoder(args.model).processor
    for item, text in zip(meta, answers):
        result = processor.post_process([text], task=item["task"])[0]
        print(f"{item['query']!r}: {result}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="GAP-MLLM folder (default: the embedded mini)")
    sub = parser.add_subparsers(dest="step", required=True)
    enc = sub.add_parser("encode", help="frames + task -> requests.pt for vllm.LLM.generate")
    enc.add_argument("--out", type=Path, required=True)
    enc.add_argument("--task", default="grounding_stage1")
    enc.add_argument("--views", type=int, default=32)
    enc.add_argument("--scene-seed", type=int, default=0)
    par = sub.add_parser("parse", help="answers.json (from offline_vllm_generate.py) -> typed results")
    par.add_argument("answers", type=Path)
    par.add_argument("--requests", type=Path, required=True)
    args = parser.parse_args()
    return encode(args) if args.step == "encode" else parse(args)


if __name__ == "__main__":
    sys.exit(main())
