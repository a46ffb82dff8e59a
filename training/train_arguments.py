"""The arguments of `gap-mllm train` (training/train_cli.py runs it). Light to import (no torch, no transformers):
`gap-mllm train --help` reads only this."""

from __future__ import annotations

import argparse

from gap_mllm.processing.argument_types import add_deprecated_alias, positive_seconds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="recipe YAML (see training/recipes/)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override a recipe value (YAML-parsed), e.g. --set training.max_steps=100 --set aux.feature_align_weight=0.5",
    )
    parser.add_argument("--model", default=None,
                        help='the model to start from: a GAP-MLLM folder or Hub id, or "mini", the embedded GAP-MLLM-Mini '
                             '(as predict and evaluate read it); shortcut for --set model.name_or_path=...')
    parser.add_argument("--resume", default=None, help='checkpoint folder, or "auto" for the last one in training.output_dir')
    out = parser.add_argument("--out", dest="output_dir", default=None, metavar="OUT",
                              help="output folder: shortcut for --set training.output_dir=...")
    add_deprecated_alias(parser, "--output-dir", out)
    parser.add_argument("--report-to", default=None, help='shortcut for --set training.report_to=... ("none", "tensorboard", "wandb", ...)')
    data = parser.add_argument("--data", dest="data_root", default=None, metavar="DATA",
                               help="data root: shortcut for --set data.data_root=...")
    add_deprecated_alias(parser, "--data-root", data)
    time_limit = parser.add_argument(
        "--time-limit", dest="time_limit_s", type=positive_seconds, default=None, metavar="SECONDS",
        help="stop after this many seconds of training with a checkpoint (a SIGTERM stops any run so), exit status 75; "
             "the line printed names the command that continues it, this one with --resume auto (shortcut for --set "
             "time_limit_s=...)")
    add_deprecated_alias(parser, "--time-limit-s", time_limit)
    parser.add_argument("--run-state", default=None, metavar="DIR",
                        help="after every checkpoint, keep the run's state (the checkpoint without what the starting model "
                             "holds) in DIR, a folder git can carry; on a machine without the checkpoint, --resume auto "
                             "continues from it (shortcut for --set run_state.directory=...; training/run_state.py)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                        help="where to train (default: the recipe's `device`, auto = CUDA if available, else CPU); "
                             "precision and CPU settings follow, and are logged")
    parser.add_argument("--debug", action="store_true",
                        help="the libraries' INFO records (transformers, datasets, accelerate) and progress bars "
                             "on the terminal too (they always go to train.log in the output folder), and the full "
                             "traceback of an error")
