"""`--task` arguments of the commands: the registry's names, old names accepted with a deprecation note; and the tasks
a front end (`predict`, `demo`, the Space) runs. Light to import (the registry imports neither torch nor
transformers): `gap-mllm COMMAND --help` reads it."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence

from gap_mllm.tasks_gap_mllm import CAPTIONING, DETECTION, GROUNDING, RECONSTRUCTION, SPATIAL_QA, TaskSpec, resolve_task

# The tasks a front end runs, one model call each (cli/tasks.py).
FRONT_END_TASKS: tuple[TaskSpec, ...] = (DETECTION, GROUNDING, CAPTIONING, RECONSTRUCTION, SPATIAL_QA)
TASKS = tuple(spec.name for spec in FRONT_END_TASKS)


def task_argument(allowed: Sequence[str], command: str) -> Callable[[str], str]:
    """An argparse `type=` for `--task`: returns the canonical name of one of `allowed`.

    A deprecated name ("det", "caption", "recon", "qa", ...) is accepted and the command prints which name
    replaces it; anything else is rejected with the list of names this command runs.
    """
    allowed = tuple(allowed)

    def parse(value: str) -> str:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", FutureWarning)
            try:
                spec = resolve_task(value)
            except ValueError:
                spec = None
        if spec is None or spec.name not in allowed:
            raise argparse.ArgumentTypeError(f"{value!r} is not a task of this command; choose from {', '.join(allowed)}")
        for warning in caught:
            print(f"{command}: {warning.message}", file=sys.stderr)
        return spec.name

    parse.__name__ = "task"  # argparse names the type in its messages
    return parse
