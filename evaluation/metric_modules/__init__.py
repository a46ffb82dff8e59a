"""Local `evaluate` metric modules (the Hub copies cannot be fetched offline, docs/transformers-notes.md §13).

    import evaluate
    from gap_mllm.evaluation.metric_modules import metric_module_path
    detection = evaluate.load(metric_module_path("gap_detection"))
    detection.compute(predictions=[model_text, ...], references=[[{"label": ..., "bbox_3d": [...]}, ...], ...])

The folder `gap_<task>` of a task with a package module (gap_mllm.processing.tasks) holds the few lines that make
its metric from the module's (`PackageTask.metric`, `package_task_metric.py`), so the numbers are identical to the
task runners'. `metric_modules()` names them all.
"""

from pathlib import Path

from gap_mllm.processing.tasks import package_task_names

HERE = Path(__file__).parent


def metric_modules() -> tuple[str, ...]:
    """The metric modules: those of the task modules that have a folder here."""
    return tuple(f"gap_{name}" for name in package_task_names() if (HERE / f"gap_{name}").is_dir())


def metric_module_path(name: str) -> str:
    """Folder of a metric module, for `evaluate.load(path)`."""
    if name not in metric_modules():
        raise ValueError(f"unknown metric module {name!r}; expected one of {metric_modules()}")
    return str(HERE / name)
