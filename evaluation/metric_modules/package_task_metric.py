"""The `evaluate` metric of a task with a package module (gap_mllm.processing.tasks): its module folder
`gap_<task>/gap_<task>.py` holds `package_task_metric(<its file's name>)`, so the numbers are the module's own
(`PackageTask.metric`); predictions are strings, references strings or what the module declares
(`PackageTask.metric_reference`)."""

from __future__ import annotations

import datasets
import evaluate

from gap_mllm.processing.tasks import package_task

MODULE_PREFIX = "gap_"  # `gap_<task>`: the module folder of a task's metric (evaluation/metric_modules/)


def package_task_metric(module_name: str) -> type[evaluate.Metric]:
    """The `evaluate.Metric` class of the metric module `gap_<task>` (its folder and script name).

    Raises:
        ValueError: `module_name` is not `gap_<task>` for a task whose package module has a metric.
    """
    task = package_task(module_name.removeprefix(MODULE_PREFIX)) if module_name.startswith(MODULE_PREFIX) else None
    if task is None or task.metric is None:
        raise ValueError(f"{module_name!r} is not the metric module of a task with a metric (gap_<task>)")

    reference = datasets.Value("string") if task.metric_reference is None else task.metric_reference()

    class PackageTaskMetric(evaluate.Metric):
        def _info(self):
            return evaluate.MetricInfo(
                description=task.metric_description, citation="", inputs_description=task.metric_description,
                features=datasets.Features({"predictions": datasets.Value("string"), "references": reference}),
            )

        def _compute(self, predictions, references, **options):
            return task.metric(predictions, references, **options)

    PackageTaskMetric.__name__ = PackageTaskMetric.__qualname__ = "".join(
        part.title() for part in module_name.split("_")) + "Metric"
    return PackageTaskMetric
