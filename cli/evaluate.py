"""`gap-mllm evaluate`: run one benchmark and write samples.jsonl, summary.json, summary.md and plots.

    gap-mllm evaluate --task TASK --model DIR|mini --data DIR
                      --out DIR [--split val] [--annotation-file FILE] [--batch-size 4] [--max-new-tokens N]
                      [--official-compat] [--constrained] [--no-meteor] [--limit N] [--no-plots] [--no-scene-reuse]
                      [--compile-decoding auto|on|off] [--quantize int8|int4|bnb-int8|bnb-nf4]
    gap-mllm evaluate --task detection --predictions answers.jsonl --data DIR --out DIR   (score given texts)
    gap-mllm evaluate --task detection --write-oracle oracle.jsonl --data DIR             (ground truth as text;
                                                                                         no --out: one file)

TASK is a task of the registry with a benchmark (gap_mllm.tasks_gap_mllm; `--help` lists them); the old names
(det, caption, ...) still work.

Multi-GPU: `accelerate launch -m gap_mllm.cli.evaluate --task ...`. Rerunning with the
same `--out` resumes: finished samples are skipped, if the same model, data and token budgets wrote them
(`run_fingerprint.json`; else refused, naming what differs) from the same frames (else they are answered again);
a line says how many answers were reused. The lead CLI calls `add_arguments(subparser)`
and `main(args)`.
"""

from __future__ import annotations

import argparse
import sys

from gap_mllm.evaluation.reports import format_figure
from gap_mllm.evaluation.runner import run_evaluation, write_oracle_predictions

from .command_arguments import add_evaluate_arguments as add_arguments  # noqa: F401 - the command's add_arguments
from .early_checks import check_evaluate_sources, check_existing
from .model_source import check_model_source, resolve_model_source


def main(args: argparse.Namespace) -> int:
    check_evaluate_sources(args)
    if args.write_oracle:
        path = write_oracle_predictions(args.task, args.data, args.write_oracle, args.split, args.annotation_file)
        print(f"wrote {path}")
        return 0
    if not args.out:
        print("error: --out is required", file=sys.stderr)
        return 2
    if args.model is not None:  # a missing / empty / truncated checkpoint is named before any work
        # "mini": the embedded default; resolved and checked once: by the early check when it ran
        args.model = (getattr(args, "model_source", None)
                      or check_model_source(resolve_model_source(args.model), "--model"))
    check_existing(args.data, "--data", "folder")  # a link loop or a link to nothing is named as one
    check_existing(args.predictions, "--predictions")
    check_existing(args.annotation_file, "--annotation-file")
    summary = run_evaluation(
        args.task, args.data, args.out, model_dir=args.model, predictions_file=args.predictions, split=args.split,
        annotation_file=args.annotation_file, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
        official_compat=args.official_compat, meteor=False if args.no_meteor else None, limit=args.limit,
        plots=not args.no_plots, progress=not args.quiet, scene_reuse=not args.no_scene_reuse,
        constrained=args.constrained, compile_decoding=args.compile_decoding, quantize=args.quantize,
    )  # fmt: skip
    if summary is not None:
        if "answers" in summary:  # a model's run: what it reused of the folder's answers, always said
            answers = summary["answers"]
            print(f"answers in {args.out}: {answers['reused']} reused, {answers['answered_again']} answered again, "
                  f"{answers['new']} new")
        head = summary["headline"]
        print(f"{summary['task']}: {head['name']} = {format_figure(head['value'])}  ({samples_text(summary['num_samples'], args.limit)})"
              f" -> {args.out}")
    return 0


def samples_text(num_samples: int, limit: int | None) -> str:
    """"N samples" for the line `evaluate` prints; a `--limit` above what the annotation file holds (all of it is
    scored) is said, not passed over: "43 samples: all the annotation file holds, fewer than --limit 1000000"."""
    if limit is not None and num_samples < limit:
        return f"{num_samples} samples: all the annotation file holds, fewer than --limit {limit}"
    return f"{num_samples} samples"


if __name__ == "__main__":  # `accelerate launch -m gap_mllm.cli.evaluate ...`
    cli = argparse.ArgumentParser(prog="gap-mllm evaluate", description=__doc__.splitlines()[0])
    add_arguments(cli)
    sys.exit(main(cli.parse_args()))
