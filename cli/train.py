"""`gap-mllm train`: training/train_cli.py's run, with the front ends' model names.

`--model mini` (or `model.name_or_path: mini` in a recipe) is the embedded GAP-MLLM-Mini, read by the one resolver
that `predict` and `evaluate` use (`resolve_model_source`). The training package sits below `gap_mllm.mini` and the
CLI (tests/test_layering.py), so it cannot resolve the name itself: this command hands it the resolver.
"""

from __future__ import annotations

import argparse

from gap_mllm.training import train_cli
from gap_mllm.training.train_arguments import add_arguments  # noqa: F401 - the command's add_arguments

from .model_source import resolve_model_source


def main(args: argparse.Namespace) -> int:
    return train_cli.main(args, resolve_model=resolve_model_source)
