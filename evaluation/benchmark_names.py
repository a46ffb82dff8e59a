"""The registry tasks `gap-mllm evaluate` scores, one benchmark each: one per task with a package module
(gap_mllm.processing.tasks; a task run in stages is one benchmark of its stages). Names only, importable without
torch: the command's `--help` lists them."""

from __future__ import annotations

from gap_mllm.processing.tasks import package_task_names


def benchmark_tasks() -> tuple[str, ...]:
    """Every benchmark's task name, those registered from code included."""
    return package_task_names()


__all__ = ["benchmark_tasks"]
