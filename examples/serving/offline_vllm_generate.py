"""The vLLM half of the offline batch (run in the vLLM environment; it does not import gap_mllm).

    python examples/serving/offline_vllm_generate.py EXPORTED_FOLDER requests.pt --out answers.json

EXPORTED_FOLDER: written by `gap-mllm export-llm`; requests.pt: by `offline_batch.py encode`. Greedy decoding, the
engine options of gap_mllm/serving/vllm_settings.py (embeddings on, images per prompt > 0, no video).
"""

import argparse
import json
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="the export-llm folder")
    parser.add_argument("requests", help="requests.pt from offline_batch.py encode")
    parser.add_argument("--out", required=True, help="answers.json: one generated text per request, in order")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-images", type=int, default=32, help="views per request (must stay above 0)")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()
    try:
        import torch
        from vllm import LLM, SamplingParams
    except ImportError as error:
        raise SystemExit(f"this step runs in the vLLM environment (make vllm-venv): {error}") from None
    requests = torch.load(args.requests, weights_only=True)
    # the same options as gap_mllm.serving.vllm_settings.engine_options (this environment has no gap_mllm)
    llm = LLM(model=args.folder, dtype=args.dtype, enable_mm_embeds=True,
              limit_mm_per_prompt={"image": args.max_images, "video": 0})
    outputs = llm.generate(requests, SamplingParams(temperature=0.0, max_tokens=args.max_tokens))
    with open(args.out, "w") as handle:
        json.dump([output.outputs[0].text for output in outputs], handle, indent=1)
    print(f"wrote {len(outputs)} answers to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
