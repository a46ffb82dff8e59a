"""The arguments of `gap-mllm export-vsibench` (vsibench_export.py runs it). Light to import (no torch, no
transformers): `gap-mllm export-vsibench --help` reads only this."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="a SynthRooms data root (gap-mllm synth --out)")
    parser.add_argument("--out", required=True,
                        help="folder for the local VSI-Bench (rows, videos, task YAML); lmms-eval runs with HF_HOME=OUT. "
                             "An earlier export there is replaced; any other non-empty folder is refused")
    parser.add_argument("--overwrite", action="store_true", help="replace --out even if it holds files this command "
                                                                 "did not write (they are deleted)")
    parser.add_argument("--split", default="test", help="the split whose spatial questions are written (default: test, "
                                                         "VSI-Bench's only split)")
