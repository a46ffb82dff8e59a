"""An answer next to the exact one, on a bundled room (its `Scene.example_inputs`), as the demo, `gap-mllm predict`
and the Space print it: the request in readable form, the reference answer, and how close the answer is
(3D IoU in the package's box convention, metres).
"""

from __future__ import annotations

import numpy as np

from gap_mllm.processing.scoring.box_iou import box_iou
from gap_mllm.tasks_gap_mllm import CAPTIONING, DETECTION, GROUNDING, RECONSTRUCTION

IOU_THRESHOLD = 0.25  # a reference box counts as found at IoU > 0.25 (the benchmarks' Acc@0.25 / F1@0.25)


def _numbers(values, digits: int = 2) -> str:
    return "[" + ", ".join(f"{float(v):.{digits}f}" for v in values) + "]"


def request_text(request) -> str:
    """The task inputs of a `TaskRequest` that its task uses, as a person reads them (a box with 2 decimals, not
    17); "" for a task without inputs (detection)."""
    spec, parts = request.spec, []
    if "query" in spec.parameters and request.query is not None:
        parts.append(f"query={request.query!r}")
    if "box" in spec.parameters and request.box is not None:
        parts.append(f"box={_numbers(request.box)}")
    if spec.needs_marker and request.marker is not None:
        view, x, y = (int(v) for v in request.marker)
        parts.append(f"marker=(view {view}, x {x}, y {y})")
    return ", ".join(parts)


def reference_text(scene, task: str, given: dict) -> str:
    """The exact answer of `task` on a bundled room; "" when the scene has none (uploaded frames)."""
    if not scene.calibrated:
        return ""
    if task == DETECTION.name:
        return f"{len(scene.reference_boxes)} box(es): " + ", ".join(scene.reference_labels)
    if task == GROUNDING.name and "box" in given:
        return f"{given['label']}: {_numbers(given['box'])}"
    if task == CAPTIONING.name and "references" in given:
        return " | ".join(given["references"])
    if task == RECONSTRUCTION.name and "point" in given:
        return f"point: {_numbers(given['point'])} label: {given['label']}"
    return ""


def reference_score(scene, task: str, given: dict, result) -> str:
    """How good `result` (a `TaskResult`) is against the exact answer; "" where there is nothing to compare
    (uploaded frames; captioning, whose references are shown instead)."""

    if not scene.calibrated:
        return ""
    if task == DETECTION.name:
        hits = 0
        for label, truth in zip(scene.reference_labels, scene.reference_boxes):
            ious = [box_iou(b.to_list(), truth) for b in result.boxes if b.label == label]
            hits += bool(ious) and max(ious) > IOU_THRESHOLD
        return f"{hits} of {len(scene.reference_boxes)} reference box(es) found at IoU > {IOU_THRESHOLD}"
    if task == GROUNDING.name and "box" in given:
        return f"IoU {box_iou(result.boxes[0].to_list(), given['box']):.2f}" if result.boxes else "no box parsed"
    if task == RECONSTRUCTION.name and "point" in given:
        if result.point is None:
            return "no point parsed"
        distance = float(np.linalg.norm(np.asarray(result.point) - np.asarray(given["point"])))
        label = getattr(result.parsed, "label", None)
        return f"point error {distance:.2f} m; label {'correct' if label == given['label'] else 'wrong'}"
    return ""


def query_reference_box(scene, query: str | None) -> list[float] | None:
    """The reference box of the object a grounding `query` describes, on a bundled room asked its own grounding query
    (`Scene.example_inputs`); None for another query or uploaded frames, whose object no reference names."""
    given = scene.example_inputs.get(GROUNDING.name, {})
    if query is None or query != given.get("query") or "box" not in given:
        return None
    return given["box"]


def _is_the_example_request(task: str, given: dict, request) -> bool:
    """Whether the user asked the bundled request (its reference answer then applies)."""
    if task == GROUNDING.name:
        return request.query == given.get("query")
    if task == CAPTIONING.name:
        return request.box is not None and "box" in given and np.allclose(request.box, given["box"])
    if task == RECONSTRUCTION.name:
        return request.marker is not None and tuple(int(v) for v in request.marker) == tuple(given.get("marker", ()))
    return True


def reference_lines(scene, request, result) -> list[tuple[str, str]]:
    """`[("truth", ...), ("score", ...)]` of a request on a bundled room (empty entries left out): the reference
    applies only when the request is the room's own (the same query, box or marker)."""
    given = scene.example_inputs.get(request.task, {})
    if not _is_the_example_request(request.task, given, request):
        return []
    lines = [("truth", reference_text(scene, request.task, given)),
             ("score", reference_score(scene, request.task, given, result))]
    return [(name, text) for name, text in lines if text]
