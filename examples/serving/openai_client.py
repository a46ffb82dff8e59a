"""Ask GAP-MLLM through vLLM's OpenAI-compatible server: the encoder half runs here, the language half in vLLM.

    # the server (vLLM environment), on a folder written by `gap-mllm export-llm`:
    vllm serve gap-mllm-mini-llm --served-model-name gap-mllm --port 8000 --enable-mm-embeds \
        --limit-mm-per-prompt '{"image": 32, "video": 0}' --chat-template-content-format openai
    # the client (gap-mllm environment), on the GAP folder the export came from:
    python examples/serving/openai_client.py --url http://localhost:8000 --task grounding_stage2 --query "the chair"
    python examples/serving/openai_client.py --dry-run --task detection      # build and describe the request, send nothing

Frames: `--frames a.png b.png ...`, or a held-out SynthRooms room (`--scene-seed`, `--views`). The answer is parsed by
the task's parser (`processor.post_process`), as `gap-mllm predict` does.
"""

import argparse
import json
import sys

from gap_mllm.serving import GapMllmEncoder, chat_completion_payload, post_chat_completion
from gap_mllm.serving.openai_payload import answer_text


def frames_and_query(args):
    if args.frames:
        return args.frames, args.query
    from gap_mllm.cli.scenes import synthetic_scene

    scene = synthetic_scene(seed=args.scene_seed, num_frames=args.views)
    return scene.views, args.query or scene.example_inputs["grounding"]["query"]


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
    parser.add_argument("--dry-run", action="store_true", help="build the request and print its outline; send nothing")
    args = parser.parse_args()

    if args.model is None:
        from gap_mllm.mini import default_model_path

        args.model = default_model_path()
    encoder = GapMllmEncoder.from_pretrained(args.model)
    frames, query = frames_and_query(args)
    needs_query = args.task in ("grounding", "grounding_stage1", "grounding_stage2", "spatial_qa")
    request = encoder.encode(frames, task=args.task, query=query if needs_query else None)
    payload = chat_completion_payload(request, model=args.served_model_name, max_tokens=args.max_tokens)
    if args.dry_run:
        parts = [part["type"] for part in payload["messages"][1]["content"]]
        print(json.dumps({"views": request.num_views, "embedding_shape": list(request.image_embeds[0].shape),
                          "image_grid_thw": request.image_grid_thw.tolist(), "content_parts": parts,
                          "max_tokens": payload["max_tokens"], "payload_bytes": len(json.dumps(payload))}))
        return 0
    text = answer_text(post_chat_completion(args.url, payload))
    print("answer:", text)
    print("parsed:", encoder.processor.post_process([text], task=args.task)[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
