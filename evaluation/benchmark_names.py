"""The registry tasks `gap-mllm evaluate` scores, one benchmark each: the benchmarks evaluation/tasks.py defines, then
one per task with a package module (gap_mllm.processing.tasks). Names only, importable without torch: the command's
`--help` lists them."""

from __future__ import annotations

from gap_mllm.processing.tasks import package_task_names
from gap_mllm.tasks_gap_mllm import DETECTION

# the benchmarks with a class of their own in evaluation/tasks.py (it checks this list against them)
OWN_BENCHMARKS: tuple[str, ...] = tuple(spec.name for spec in (DETECTION,))


def benchmark_tasks() -> tuple[str, ...]:
    """Every benchmark's task name, those registered from code included."""
    return (*OWN_BENCHMARKS, *package_task_names())


__all__ = ["OWN_BENCHMARKS", "benchmark_tasks"]
