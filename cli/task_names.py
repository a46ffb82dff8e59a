"""`--task` arguments of the commands: the registry's names, old names accepted with a deprecation note; and the tasks
a front end (`predict`, `demo`, the Space) runs. Light to import (the registry imports neither torch nor
transformers): `gap-mllm COMMAND --help` reads it."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence

from gap_mllm.processing.tasks import package_task_names
from gap_mllm.tasks_gap_mllm import TaskSpec, resolve_task


def front_end_tasks() -> tuple[TaskSpec, ...]:
    """The tasks a front end runs (cli/tasks.py), one model call each: every task with a package module
    (gap_mllm.processing.tasks; a task run in stages asks its last stage's prompt), its answer shown from its facts,
    those registered from code included."""
    return tuple(resolve_task(name) for name in package_task_names())


def front_end_task_names() -> tuple[str, ...]:
    """The names of `front_end_tasks()`: what `--task` of `predict` accepts and its help lists."""
    return tuple(spec.name for spec in front_end_tasks())


def stage_refusal(stage: str, pipeline: str) -> str:
    """Why `--task <stage>` is refused where `pipeline` runs, and how to run the stage: one line."""
    return (f"{stage!r} is one stage of {pipeline}, which this command runs as one call (the last stage's prompt on "
            f"every frame): --task {pipeline}; one stage at a time: processor(images=frames, task={stage!r}, ...) in "
            f"Python (README.md, Use); both stages in turn, scored: gap-mllm evaluate --task {pipeline}")


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
        if spec is not None and spec.name not in allowed:
            pipeline = next((task for task in allowed if spec.name in resolve_task(task).stages), None)
            if pipeline is not None:  # a stage of a task this command runs whole (grounding's two)
                raise argparse.ArgumentTypeError(stage_refusal(spec.name, pipeline))
        if spec is None or spec.name not in allowed:
            raise argparse.ArgumentTypeError(f"{value!r} is not a task of this command; choose from {', '.join(allowed)}")
        for warning in caught:
            print(f"{command}: {warning.message}", file=sys.stderr)
        return spec.name

    parse.__name__ = "task"  # argparse names the type in its messages
    return parse
