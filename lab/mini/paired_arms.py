"""Two arms of the miniature on the same test samples: every figure of the ablation table as a paired difference.

Each arm's row of RESULTS.md has its own 95 % interval over the test samples; whether arm A is better than arm B
is a paired question (a hard scene is hard for both, and cancels). For two results folders of the pipeline
(`<run>/results/<arm>`, holding the runners' samples.jsonl per task) this gives A − B with a 95 % paired-bootstrap
interval (the samples drawn jointly for both arms) for

    grounding_acc@0.25, grounding_acc@0.5   per-sample hit (IoU ≥ t); samples either arm left unscored are left out
    detection_f1@0.25                       the table's pooled F1 (mean over categories of F1 from summed counts)
    captioning_cider@0.5                    mean of per-sample CIDEr (its IDF comes from the references alone, so
                                            both arms share it and the corpus CIDEr is that mean)
    stage1_point_error_m_median             the marker task, overall and by marked frame (compare_stage1.py)

    python -m lab.mini.paired_arms --data runs/mini/data runs/abl/results/gap_add_s0 runs/abl/results/gap_gated_s0

A task is compared when both folders hold it; folders that answered different samples are refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gap_mllm.evaluation.confidence import DEFAULT_RESAMPLES, paired_difference, paired_statistic_difference
from gap_mllm.processing.annotation_files import find_annotation_file
from gap_mllm.processing.builders import load_annotation_file

from .compare_stage1 import compare_stage1, pair_parser
from .sample_rows import detection_counts, f1_of_counts, sample_rows

GROUNDING_THRESHOLDS = (0.25, 0.5)


def _aligned_rows(folder_a: Path, folder_b: Path, task: str) -> tuple[list[dict], list[dict]]:
    """The two arms' per-sample rows of `task`, refused unless they answered the same samples in the same order."""
    rows_a, rows_b = (sample_rows(Path(folder) / task / "samples.jsonl") for folder in (folder_a, folder_b))
    if [row["id"] for row in rows_a] != [row["id"] for row in rows_b]:
        raise ValueError(f"{folder_a} and {folder_b} did not answer the same {task} samples in the same order "
                         f"({len(rows_a)} and {len(rows_b)} rows): evaluate both with the same --split and --limit")
    return rows_a, rows_b


def _has(folder: Path, task: str) -> bool:
    return (Path(folder) / task / "samples.jsonl").is_file()


def paired_grounding(rows_a: list[dict], rows_b: list[dict], resamples: int = DEFAULT_RESAMPLES) -> dict:
    """{"grounding_acc@t": A − B of the hit rate at IoU ≥ t} over the samples both arms were scored on."""
    both = [(a["score"], b["score"]) for a, b in zip(rows_a, rows_b) if a["score"] is not None and b["score"] is not None]
    if not both:
        return {}
    ious = np.asarray(both, dtype=np.float64)
    return {f"grounding_acc@{t:g}": {**paired_difference(ious[:, 0] >= t, ious[:, 1] >= t, resamples=resamples),
                                     "num_samples": len(both), "num_left_out": len(rows_a) - len(both)}
            for t in GROUNDING_THRESHOLDS}


def paired_detection(rows_a: list[dict], rows_b: list[dict], records: list[dict], resamples: int = DEFAULT_RESAMPLES) -> dict:
    """{"detection_f1@0.25": A − B of the pooled F1}; fewer resamples than the others (F1 is pooled in Python)."""
    counts_a, counts_b = detection_counts(rows_a, records), detection_counts(rows_b, records)
    return {"detection_f1@0.25": {**paired_statistic_difference(counts_a, counts_b, f1_of_counts, resamples=max(resamples // 5, 1)),
                                  "num_samples": len(rows_a)}}


def paired_captioning(rows_a: list[dict], rows_b: list[dict], resamples: int = DEFAULT_RESAMPLES) -> dict:
    """{"captioning_cider@0.5": A − B of the mean per-sample CIDEr (gated samples score 0 in both)}."""
    return {"captioning_cider@0.5": {**paired_difference([row["score"] for row in rows_a], [row["score"] for row in rows_b],
                                                         resamples=resamples), "num_samples": len(rows_a)}}


def paired_arms(folder_a: Path, folder_b: Path, data: Path, split: str = "test", resamples: int = DEFAULT_RESAMPLES) -> dict:
    """A − B for every figure of the ablation table that both results folders hold (module docstring):
    `{metric: {"difference", "ci95", "num_samples", ...}}`; the marker task adds
    `stage1_point_error_m_median_first_frame` / `_other_frame`."""
    folder_a, folder_b = Path(folder_a), Path(folder_b)
    out: dict = {}
    if _has(folder_a, "grounding") and _has(folder_b, "grounding"):
        out.update(paired_grounding(*_aligned_rows(folder_a, folder_b, "grounding"), resamples=resamples))
    if _has(folder_a, "detection") and _has(folder_b, "detection"):
        records = load_annotation_file(find_annotation_file(data, "detection", split))
        out.update(paired_detection(*_aligned_rows(folder_a, folder_b, "detection"), records, resamples=resamples))
    if _has(folder_a, "captioning") and _has(folder_b, "captioning"):
        out.update(paired_captioning(*_aligned_rows(folder_a, folder_b, "captioning"), resamples=resamples))
    if _has(folder_a, "reconstruction") and _has(folder_b, "reconstruction"):
        marker = compare_stage1(folder_a / "reconstruction", folder_b / "reconstruction", data, split)
        for part, suffix in (("all", ""), ("first", "_first_frame"), ("other", "_other_frame")):
            if part in marker:
                out[f"stage1_point_error_m_median{suffix}"] = marker[part]
    return out


def main(argv=None) -> dict:
    parser = pair_parser(__doc__.split("\n\n")[0], "results folder (`<run>/results/<arm>`, one subfolder per task)")
    args = parser.parse_args(argv)
    result = paired_arms(args.a, args.b, args.data, args.split)
    if not result:
        parser.error(f"{args.a} and {args.b} share no evaluated task (subfolders with samples.jsonl)")
    print(json.dumps({"a": str(args.a), "b": str(args.b), "split": args.split, **result}, indent=1))
    return result


if __name__ == "__main__":
    main()
