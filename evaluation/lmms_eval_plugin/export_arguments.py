"""The arguments of `gap-mllm export-lmms` (export.py runs it). Light to import (no torch, no transformers):
`gap-mllm export-lmms --help` reads only this."""

from __future__ import annotations

import argparse

from gap_mllm.processing.argument_types import positive_int

from . import LMMS_TASKS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="data root (annotations/ and scannet/posed_images/)")
    parser.add_argument("--out", required=True, help="folder for the documents and task YAMLs (lmms-eval --include_path)")
    parser.add_argument("--split", default="val", help="annotation split (default: val)")
    parser.add_argument("--tasks", default=",".join(LMMS_TASKS), help=f"comma-separated, from {', '.join(LMMS_TASKS)} (default: all)")
    parser.add_argument("--limit", type=positive_int, help="only the first N records of each task")
    parser.add_argument("--official-compat", action="store_true",
                        help="score as the released scripts do and stop answers only at EOS / the budget (as gap-mllm evaluate --official-compat)")
    parser.add_argument("--no-meteor", action="store_true", help="captioning: report METEOR as null (it needs Java)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out even if it holds files this command "
                                                                 "did not write (they are deleted)")
