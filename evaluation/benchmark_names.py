"""The registry tasks `gap-mllm evaluate` scores, one benchmark each (evaluation/tasks.py builds its `TASKS` in this
order and checks it against this list). Names only, importable without torch: the command's `--help` lists them."""

from __future__ import annotations

from gap_mllm.tasks_gap_mllm import CAPTIONING, DETECTION, GROUNDING, RECONSTRUCTION, SPATIAL_QA

BENCHMARK_TASKS: tuple[str, ...] = tuple(spec.name for spec in (DETECTION, GROUNDING, CAPTIONING, RECONSTRUCTION, SPATIAL_QA))

__all__ = ["BENCHMARK_TASKS"]
