"""The command line of grounding identification (evaluation/grounding_identification.py), and the answers of a
model folder scored with it.

    python -m gap_mllm.evaluation.grounding_identification_cli --data DATA --samples OUT/samples.jsonl   # a run's answers
    python -m gap_mllm.evaluation.grounding_identification_cli --data DATA --model DIR [--annotated-frame] [--limit N]
    python -m gap_mllm.evaluation.grounding_identification_cli --data DATA --tolerance                   # the targets' slack
    python -m gap_mllm.evaluation.grounding_identification_cli --data DATA --token-grid 32               # the token-grid oracle
    python -m gap_mllm.evaluation.grounding_identification_cli --data DATA --frame-grid 32               # stage 1 from token coverage

Apart from the metrics because answering with a model goes through `in_memory.EvaluationSlice`, which logs the
identification figures itself.
"""

from __future__ import annotations

import argparse
import json

from transformers import AutoModelForImageTextToText, AutoProcessor

from gap_mllm import register_auto_classes
from gap_mllm.loading import load_model
from gap_mllm.processing.annotation_files import find_annotation_file
from gap_mllm.processing.argument_types import positive_int
from gap_mllm.processing.builders import load_annotation_file
from gap_mllm.processing.held_out import check_held_out, record_scene_id

from . import grounding_identification
from .grounding_identification import from_rows, from_samples, frame_grid_oracle, token_grid_oracle, tolerance_summary
from .in_memory import EvaluationSlice
from .tasks import GroundingTask


def generated(model_dir, data_root, split: str, limit: int | None, annotated_frame: bool, batch_size: int = 32) -> dict:
    """Answer the first `limit` grounding records of `split` with the model folder (two stages, or the box
    stage alone in the annotated frame) and return the grounding metrics with `from_rows`."""
    register_auto_classes()  # the package's classes load the folder, not its remote-code copy
    model = load_model(str(model_dir), loader=AutoModelForImageTextToText.from_pretrained, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(str(model_dir), trust_remote_code=True)
    slice_ = EvaluationSlice("grounding", data_root, split, limit, annotated_frame=annotated_frame)
    check_held_out(model_dir, data_root, {record_scene_id(r) for r in slice_.records})
    metrics, outputs = slice_.score(model, processor, batch_size, max_new_tokens=GroundingTask.spec.max_new_tokens)
    rows, _ = slice_.task.evaluate(slice_.records, outputs)
    return {"metrics": metrics, **from_rows(slice_.records, rows, data_root)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=grounding_identification.__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="SynthRooms data root")
    parser.add_argument("--split", default="val")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--samples", help="samples.jsonl of a grounding evaluation run on --split")
    mode.add_argument("--model", help="a model folder to answer the grounding records of --split")
    mode.add_argument("--tolerance", action="store_true", help="how far the target boxes may move at IoU 0.25 / 0.5")
    mode.add_argument("--token-grid", type=positive_int, metavar="PIXELS", help="the token-grid oracle with cells of PIXELS")
    mode.add_argument("--frame-grid", type=positive_int, metavar="PIXELS", help="stage 1's frame read from the target's coverage in cells of PIXELS")
    parser.add_argument("--annotated-frame", action="store_true", help="with --model: give stage 2 the annotated frame k*")
    parser.add_argument("--limit", type=positive_int, default=None, help="the first N records of the split")
    args = parser.parse_args(argv)
    if args.annotated_frame and not args.model:
        parser.error("--annotated-frame needs --model")
    if args.samples:
        result = from_samples(args.samples, args.data, args.split)
    elif args.model:
        result = generated(args.model, args.data, args.split, args.limit, args.annotated_frame)
    else:
        records = load_annotation_file(find_annotation_file(args.data, "grounding_stage1", args.split))[: args.limit]
        if args.tolerance:
            result = tolerance_summary(records)
        elif args.frame_grid is not None:
            result = frame_grid_oracle(records, args.data, args.frame_grid)
        else:
            result = token_grid_oracle(records, args.data, args.token_grid)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
