"""Detection answers → scored predictions, in the default (tolerant) or the official reading.

Default (`official_compat=False`): `gap_mllm.tasks_gap_mllm.parse_detection`, the tolerant parser: the
whole answer as one JSON / Python literal (a fenced list, a normal multi-line list, a single dict),
else line by line; entries keyed `bbox_3d` or `box_3d` (the detection prompt says "box_3d"); an entry
whose box is not 9 finite numbers with sizes >= 0 is dropped, named in `parse_error` and counted
(`dropped`; the summary's `dropped_predictions`). A negative size is not read as its absolute value:
scoring `[0, 0, 1, -1, -1, -1, 0, 0, 0]` as the unit box would give a malformed answer a perfect match.

Official (`official_compat=True`), exactly the released `inference_det.py::calculate_iou_for_sample`
(docs/deviations.md §4.2), so that numbers are comparable with the paper:

1. `text.strip("\\n").strip("`").strip("json").strip()`: Python's `str.strip` with those CHARACTER
   SETS (newlines, backticks, the letters j/s/o/n at both ends), then split on "\\n";
2. each line: `.strip().strip(",")` (whitespace, then commas at both ends); lines containing neither
   `bbox_3d` nor `label` are ignored;
3. the line is evaluated as one literal (the official code calls `eval`; here `ast.literal_eval`, which
   accepts the same literals and executes nothing); lines that fail are skipped;
4. a parsed value is kept iff `value["bbox_3d"]` converts with `numpy.array(..., dtype=float)` and
   `value["label"]` is hashable (so only dicts with both keys; lists, `box_3d` and whole-answer JSON
   are NOT read);
5. a kept entry whose array is not 9 finite numbers still counts as a prediction: the official IoU
   raises on it and scores 0, so it is a false positive ("unscorable" here, counted in the summary);
6. sizes are kept as written: the official IoU (pytorch3d `box3d_overlap` on the corners) orients each
   face by the box centre and takes absolute volumes, so a negated size is the same box there (an oracle
   whose sizes are negated scores F1 = 1.0 officially, and here in this mode).

Non-string labels (possible only in the official reading) can never match a ground-truth label; they
are kept as `"<repr> (not a string)"` so the per-category table stays sortable.
"""

from __future__ import annotations

import ast
import warnings
from dataclasses import dataclass, field

import numpy as np

from gap_mllm.tasks_gap_mllm import parse_detection

NO_LABEL = "(no label)"  # an entry without "label" (tolerant reading): matches no ground truth


@dataclass
class DetectionPredictions:
    """One answer's predictions, in output order.

    labels: `[P]` strings; boxes: `[P, 9]` float64 (rows of unscorable entries are zeros);
    valid: `[P]` bool, False for an entry kept by the official reading whose box cannot be scored;
    rows: JSON-ready `{"label", "bbox_3d"}` per prediction (the box as given when it is unscorable);
    reason: None for a clean parse, else what was skipped or went wrong;
    dropped: number of entries the reading skipped (malformed: not scored, neither TP nor FP).
    """

    labels: list = field(default_factory=list)
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 9)))
    valid: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    rows: list = field(default_factory=list)
    reason: str | None = None
    dropped: int = 0


def _official_lines(text: str) -> list[str]:
    body = text.strip("\n").strip("`").strip("json").strip()
    return [line.strip().strip(",") for line in body.split("\n")]


def official_literal(line: str):
    """`ast.literal_eval(line)`, or None when it fails (the official `eval` in a try/except)."""
    try:
        with warnings.catch_warnings():  # invalid escapes in model text are not our warning to raise
            warnings.simplefilter("ignore")
            return ast.literal_eval(line)
    except Exception:  # noqa: BLE001 - SyntaxError, ValueError, MemoryError, RecursionError, ...
        return None


def _label_text(label) -> str:
    return label if isinstance(label, str) else f"{label!r} (not a string)"


def parse_detection_official(text: str) -> DetectionPredictions:
    """The official line-based reading (module docstring, steps 1-5)."""
    if not isinstance(text, str):
        return DetectionPredictions(reason=f"expected a string, got {type(text).__name__}")
    labels, boxes, valid, rows = [], [], [], []
    skipped_lines = skipped_values = 0
    for line in _official_lines(text):
        if "bbox_3d" not in line and "label" not in line:
            continue
        value = official_literal(line)
        if value is None:
            skipped_lines += 1
            continue
        try:
            values = np.array(value["bbox_3d"], dtype=float)
            label = value["label"]
            hash(label)
        except Exception:  # noqa: BLE001 - the official code skips any entry that fails here
            skipped_values += 1
            continue
        scorable = values.shape == (9,) and bool(np.all(np.isfinite(values)))
        labels.append(_label_text(label))
        boxes.append(values if scorable else np.zeros(9))
        valid.append(scorable)
        rows.append({"label": _label_text(label), "bbox_3d": values.tolist()})
    problems = []
    if skipped_lines:
        problems.append(f"{skipped_lines} line(s) are not a literal")
    if skipped_values:
        problems.append(f"{skipped_values} value(s) lack a numeric bbox_3d or a label")
    if not all(valid):
        problems.append(f"{valid.count(False)} box(es) are not 9 finite numbers (IoU 0)")
    return DetectionPredictions(labels, np.asarray(boxes, dtype=np.float64).reshape(-1, 9),
                                np.asarray(valid, dtype=bool), rows, "; ".join(problems) or None,
                                skipped_lines + skipped_values)


def detection_predictions(text: str, official_compat: bool = False) -> DetectionPredictions:
    """The predictions of one detection answer in the reading of the chosen mode."""
    if official_compat:
        return parse_detection_official(text)
    parsed = parse_detection(text)
    boxes = parsed.boxes
    return DetectionPredictions(
        labels=[NO_LABEL if b.label is None else b.label for b in boxes],
        boxes=np.asarray([b.to_list() for b in boxes], dtype=np.float64).reshape(-1, 9),
        valid=np.ones(len(boxes), dtype=bool),
        rows=[{"label": NO_LABEL if b.label is None else b.label, "bbox_3d": [round(v, 6) for v in b.to_list()]} for b in boxes],
        reason=parsed.reason,
        dropped=parsed.skipped,
    )
