"""`gap-mllm train --config RECIPE.yaml [--set section.key=value ...] [--resume auto|DIR] [--device auto|cpu|cuda]`.

`--time-limit-s N` stops after N seconds of training with a checkpoint, and a SIGTERM or Ctrl-C (with or without it)
at the next step; the command then exits with status 75 (130 after Ctrl-C) and prints the command that continues it (itself with
`--resume auto`, training/time_limit.py), for schedulers that give a run fixed slots of time. `--run-state DIR` keeps the run's state
in a folder a git repository can carry, and `--resume auto` continues from it on a machine that lost the output
folder (training/run_state.py).

Values are checked against the recipe's field types (`training.*` against TrainingArguments); the
device and precision are picked by themselves (`--device auto`, the default: CUDA when torch sees
one, else the CPU in float32) and logged.

The terminal shows what a person reads: the run's plan (device, model, data, steps, the feature cache's decision),
Trainer's progress bar with its loss lines, the evaluations, and where the model and the log went. The libraries'
INFO records (transformers' configuration dumps, Trainer's banner, the files saved) go to `train.log` in the output
folder (training/run.py `training_log`); `--debug` shows them on the terminal too.

Runs under `accelerate launch` unchanged (one process per device):

    accelerate launch --config_file training/configs/accelerate_deepspeed_zero2.yaml \\
        -m gap_mllm.training.train_cli --config training/recipes/stage1_pretrain.yaml
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from gap_mllm.processing.errors import RunStoppedEarly

from .config import load_recipe
from .run import ALREADY_FINISHED, TRAIN_LOG, run_training
from .train_arguments import add_arguments  # noqa: F401 - the command's add_arguments


def main(args: argparse.Namespace, resolve_model=None) -> int:
    """Train the recipe of `args`. `resolve_model`: the front end's reader of `model.name_or_path` (`gap-mllm train`
    passes cli/model_source.py's, which reads "mini" as the embedded GAP-MLLM-Mini; this package may not import it)."""
    overrides = list(args.overrides)
    for value, key in ((args.model, "model.name_or_path"), (args.output_dir, "training.output_dir"),
                       (args.report_to, "training.report_to"),
                       (args.data_root, "data.data_root"), (args.device, "device"), (args.time_limit_s, "time_limit_s"),
                       (args.run_state, "run_state.directory")):
        if value is not None:
            overrides.append(f"{key}={value}")
    recipe = load_recipe(args.config, overrides)
    if resolve_model is not None and recipe.model.name_or_path and not recipe.model.tiny:
        recipe.model.name_or_path = resolve_model(recipe.model.name_or_path)
    package, handler, level = logging.getLogger("gap_mllm"), None, None
    if not package.handlers:  # the run's plan, the device and the cache decision: INFO lines
        # on the stderr of this command, for this command only: a handler left behind would keep writing to the
        # stream of its first call (in one process calling the CLI again, a stream since closed)
        handler, level = logging.StreamHandler(), package.level
        handler.setFormatter(TerminalFormat("%(message)s"))
        package.addHandler(handler)
        package.setLevel(logging.INFO)
    try:
        # a stopped run raises TrainingStoppedAtTimeLimit: one line and status 75 (cli/errors.py), never "trained"
        result = run_training(recipe, resume_from_checkpoint=args.resume, log_file=TRAIN_LOG,
                              echo_library_log=getattr(args, "debug", False))
    finally:
        if handler is not None:
            package.removeHandler(handler)
            package.setLevel(level)
    output_dir = recipe.training["output_dir"]
    if ALREADY_FINISHED in result.metrics:  # resumed at its last step: nothing trained, and no loss of this command
        print(f"nothing to train: the run had already finished at step {result.global_step} "
              f"({result.metrics[ALREADY_FINISHED]}); its final model is in {output_dir}")
        return 0
    print(f"trained {result.global_step} steps, final train loss {result.training_loss:.4f}; saved to {output_dir} "
          f"(log: {Path(output_dir, TRAIN_LOG)})")
    return 0


class TerminalFormat(logging.Formatter):
    """The package's records as a person reads them: an INFO record is its message, a warning or an error is
    prefixed with its level."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno <= logging.INFO else f"{record.levelname}: {text}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="gap-mllm train", description="GAP-MLLM geometry-aligned pre-training / fine-tuning")
    add_arguments(parser)
    try:
        sys.exit(main(parser.parse_args()))
    except RunStoppedEarly as stop:  # as `gap-mllm train` reports it (cli/errors.py, a layer above this one)
        print(f"gap-mllm train: {stop}", file=sys.stderr)
        sys.exit(stop.status)
