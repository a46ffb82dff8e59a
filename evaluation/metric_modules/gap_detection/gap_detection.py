"""The `evaluate` module of the task this folder is named after (`gap_<task>`): its package module's metric."""

from pathlib import Path

from gap_mllm.evaluation.metric_modules.package_task_metric import package_task_metric

GapTaskMetric = package_task_metric(Path(__file__).stem)
