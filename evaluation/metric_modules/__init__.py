"""Local `evaluate` metric modules (the Hub copies cannot be fetched offline, docs/transformers-notes.md §13).

    import evaluate
    from gap_mllm.evaluation.metric_modules import metric_module_path
    detection = evaluate.load(metric_module_path("gap_detection"))
    detection.compute(predictions=[model_text, ...], references=[[{"label": ..., "bbox_3d": [...]}, ...], ...])

Each module folder holds one script that wraps the package functions (`gap_mllm.evaluation`), so
the numbers are identical to the task runners'. Modules: gap_detection, gap_grounding,
gap_captioning, gap_reconstruction, gap_spatial_qa.
"""

from pathlib import Path

METRIC_MODULES = ("gap_detection", "gap_grounding", "gap_captioning", "gap_reconstruction", "gap_spatial_qa")


def metric_module_path(name: str) -> str:
    """Folder of a metric module, for `evaluate.load(path)`."""
    if name not in METRIC_MODULES:
        raise ValueError(f"unknown metric module {name!r}; expected one of {METRIC_MODULES}")
    return str(Path(__file__).parent / name)
