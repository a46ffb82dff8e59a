"""The per-sample rows of the pipeline's evaluation runs (a runner's samples.jsonl), read back for the tables:
the table itself (lab/mini/report.py) and the paired comparisons of two arms (lab/mini/paired_arms.py,
lab/mini/compare_stage1.py).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from gap_mllm.processing.annotation_files import find_annotation_file
from gap_mllm.processing.builders import load_annotation_file
from gap_mllm.processing.scoring.detection_metrics import CategoryCounts, headline_f1


def sample_rows(path: Path) -> list[dict]:
    """The per-sample rows of a runner's samples.jsonl, in order."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def detection_counts(rows: list[dict], records: list[dict]) -> list[dict[str, list[int]]]:
    """Per sample {label: [tp, fp, fn]} from the runner's matches and the records' true boxes."""
    out = []
    for row in rows:
        counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        for match in row["matches"]:
            counts[match["label"]][0 if match["tp"] else 1] += 1
        for box in records[row["index"]]["boxes"]:
            counts[box["label"]][2] += 1
        for label, (tp, _, _) in list(counts.items()):
            counts[label][2] -= tp  # true boxes found are not misses
        out.append(dict(counts))
    return out


def f1_of_counts(samples: list[dict[str, list[int]]]) -> float:
    """The runner's detection headline (default mode: the mean F1 over the categories of the headline list present,
    `detection_metrics.headline_f1`) from per-sample counts summed per label; 0 when no such category is present, as
    the baselines' table cell (evaluation/baselines.py)."""
    totals: dict[str, CategoryCounts] = defaultdict(CategoryCounts)
    for sample in samples:
        for label, (tp, fp, fn) in sample.items():
            totals[label].add(CategoryCounts(int(tp), int(fp), int(fn)))
    return headline_f1(totals) or 0.0


def f1_interval(samples: list[dict[str, list[int]]], resamples: int = 200, seed: int = 0) -> list[float]:
    """[2.5 %, 97.5 %] of `f1_of_counts` over bootstrap resamples of the per-sample counts."""
    rng = np.random.default_rng(seed)
    stats = [f1_of_counts([samples[i] for i in rng.integers(0, len(samples), len(samples))]) for _ in range(resamples)]
    return [float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))]


def marker_answers(samples: Path, data: Path, split: str = "test") -> dict[str, list]:
    """A marker-task evaluation's per-sample rows (`samples.jsonl` of the runner) next to their records:
    {"ids", "predictions", "answers", "marked_frames"} (the view index of each marker), in the rows' order."""
    rows = sample_rows(samples)
    marker_records = load_annotation_file(find_annotation_file(data, "reconstruction", split))
    records = [marker_records[row["index"]] for row in rows]
    return {"ids": [row["id"] for row in rows], "predictions": [row["raw"][0] for row in rows],
            "answers": [record["conversations"][1]["value"] for record in records],
            "marked_frames": [record["pixel_coords"][0] for record in records]}
