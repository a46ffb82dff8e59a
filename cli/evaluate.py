"""`gap-mllm evaluate`: run one benchmark and write samples.jsonl, summary.json, summary.md and plots.

    gap-mllm evaluate --task detection|grounding|captioning|reconstruction|spatial_qa --model DIR|mini --data DIR
                      --out DIR [--split val] [--annotation-file FILE] [--batch-size 4] [--max-new-tokens N]
                      [--official-compat] [--no-meteor] [--limit N] [--no-plots] [--no-scene-reuse]
    gap-mllm evaluate --task detection --predictions answers.jsonl --data DIR --out DIR   (score given texts)
    gap-mllm evaluate --task detection --write-oracle oracle.jsonl --data DIR             (ground truth as text)

Task names are the registry's (gap_mllm.tasks_gap_mllm); the old det / caption / recon / qa still work.

Multi-GPU: `accelerate launch -m gap_mllm.cli.evaluate --task ...`. Rerunning with the
same `--out` resumes: finished samples are skipped, if the same model, data and token budgets wrote them
(`run_fingerprint.json`; else refused, naming what differs). The lead CLI calls `add_arguments(subparser)`
and `main(args)`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gap_mllm.evaluation.runner import run_evaluation, write_oracle_predictions
from gap_mllm.evaluation.tasks import TASKS

from .argument_types import positive_int
from .loading import resolve_model_source
from .model_source import check_model_source
from .task_names import task_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, type=task_argument(TASKS, "gap-mllm evaluate"), metavar="TASK",
                        help=f"benchmark to run: {', '.join(TASKS)}")
    parser.add_argument("--data", required=True, help="data root (annotations/ and scannet/posed_images/)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help='model folder or Hub id to generate with; "mini": the embedded GAP-MLLM-Mini')
    source.add_argument("--predictions", help="JSONL of answers to score instead of generating")
    source.add_argument("--write-oracle", metavar="FILE", help="write the ground truth as a predictions file and exit")
    parser.add_argument("--out", help="output folder (required unless --write-oracle)")
    parser.add_argument("--split", default="val", help="annotation split (default: val)")
    parser.add_argument("--annotation-file", help="explicit annotation JSON instead of the split lookup")
    parser.add_argument("--batch-size", type=positive_int, default=1, help="samples per generate() call (left padded)")
    parser.add_argument("--max-new-tokens", type=positive_int, help="cap on the official token budgets (1280 / 4096)")
    parser.add_argument("--official-compat", action="store_true",
                        help="reproduce the official numbers (Euler reading, category lists, parsing quirks)")
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR (captioning; needs Java)")
    parser.add_argument("--limit", type=positive_int, help="evaluate only the first N samples")
    parser.add_argument("--no-plots", action="store_true", help="skip the figures")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--no-scene-reuse", action="store_true",
                        help="answer every sample with its own full model call (the one-at-a-time protocol; same "
                             "answers, slower: for comparison)")


def main(args: argparse.Namespace) -> int:
    if args.write_oracle:
        path = write_oracle_predictions(args.task, args.data, args.write_oracle, args.split, args.annotation_file)
        print(f"wrote {path}")
        return 0
    if not args.out:
        print("error: --out is required", file=sys.stderr)
        return 2
    if args.model is not None:  # a missing / empty / truncated checkpoint is named before any work
        args.model = check_model_source(resolve_model_source(args.model), "--model")  # "mini": the embedded default
    for value, flag in ((args.data, "--data"), (args.predictions, "--predictions"), (args.annotation_file, "--annotation-file")):
        if value is not None and not Path(value).exists():
            raise FileNotFoundError(f"{flag} {value}: no such file or folder")
    summary = run_evaluation(
        args.task, args.data, args.out, model_dir=args.model, predictions_file=args.predictions, split=args.split,
        annotation_file=args.annotation_file, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
        official_compat=args.official_compat, meteor=False if args.no_meteor else None, limit=args.limit,
        plots=not args.no_plots, progress=not args.quiet, scene_reuse=not args.no_scene_reuse,
    )  # fmt: skip
    if summary is not None:
        head = summary["headline"]
        print(f"{summary['task']}: {head['name']} = {head['value']}  ({summary['num_samples']} samples) -> {args.out}")
    return 0


if __name__ == "__main__":  # `accelerate launch -m gap_mllm.cli.evaluate ...`
    cli = argparse.ArgumentParser(prog="gap-mllm evaluate", description=__doc__.splitlines()[0])
    add_arguments(cli)
    sys.exit(main(cli.parse_args()))
