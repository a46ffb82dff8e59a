"""Scenes of fresh generator seeds: the evidence a GAP-MLLM-Mini release is judged on.

The test split shares its generator seed with the training data (scenes are numbered across the splits of one
seed). A release is judged on scenes that no model of this package was trained, tuned or tested on: SynthRooms
scenes of `FRESH_SEEDS`, chosen once and never the data seed (0) of the training, validation and test splits.
Each seed's scenes form a data folder of one split, "test" (`<out>/fresh/seed-<S>/data`); every task is evaluated
there by the official runners, and the figures are pooled over the seeds, beside what a model gets without looking
on the same scenes:

    grounding     Acc@0.25 (Wilson) and frame selection, against `best_constant_box` = of `CONSTANT_CANDIDATES`
                  training target boxes and their mean, the one with the highest Acc@0.25 on these very records,
                  placed in the annotated frame (chosen on the scenes it is scored on: an upper bound on what a
                  constant box drawn from the training targets can score), and always frame 0;
    detection     F1@0.25 (the runner's headline, bootstrap), against the category mean boxes (true labels);
    captioning    CIDEr@0.5 (mean per-sample CIDEr, the IDF of each seed's captioning samples), against the most
                  frequent training caption;
    marker        median point error, against the mean training point.

`release_decision` applies the release rule of mini/README.md to a candidate and the current release evaluated on
the same samples (paired differences, 95 % paired-bootstrap intervals):

    grounding Acc@0.25 ≥ 12 % and ≥ 2 × best_constant_box;
    frame selection above always-frame-0: the paired interval of (model right − frame 0 right) above 0;
    detection F1, CIDEr@0.5 and the marker point not worse than the current release: the paired interval of the
    difference does not lie wholly on the worse side of 0.

    python -m lab.mini.fresh_seeds --data runs/mini/data --out runs/fresh --model CANDIDATE [--reference RELEASE]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from gap_mllm.evaluation.baselines import (
    category_mean_boxes,
    category_mean_matches,
    constant_box_ious,
    constant_marker_answer,
    most_frequent_caption,
)
from gap_mllm.processing.scoring.caption_metrics import caption_scores
from gap_mllm.evaluation.confidence import bootstrap_interval, paired_difference, paired_statistic_difference, wilson_interval
from gap_mllm.evaluation.grounding_identification import annotated_frame
from gap_mllm.evaluation.marker_metrics import paired_marker_difference, point_errors
from gap_mllm.evaluation.runner import one_load_per_model, run_evaluation
from gap_mllm.processing.annotation_files import find_annotation_file
from gap_mllm.processing.argument_types import positive_int, worker_count
from gap_mllm.processing.builders import load_annotation_file
from gap_mllm.processing.synth.presets import synth_config
from gap_mllm.tasks_gap_mllm import parse_grounding

from .markdown_sections import signed_cell
from .pipeline_settings import ANSWERS_OF_ANOTHER_RUN, EVAL_MAX_NEW_TOKENS, UNRECORDED_FRAMES
from .report import fresh_seed_lines
from .sample_rows import detection_counts, f1_interval, f1_of_counts, sample_rows
from .synth_data import ensure_synth_data

logger = logging.getLogger(__name__)

FRESH_SEEDS = (5601, 5602, 5603)  # fixed apart from every other seed; the training data's seed is 0
FRESH_SCENES = 90  # test scenes per seed: about 4.1 grounding records a scene, so ≥ 1,000 pooled over three seeds
# (evaluation task, results folder name): the marker task is scored on the final model, as in the test table
FRESH_TASKS = (("grounding", "grounding"), ("detection", "detection"), ("captioning", "captioning"),
               ("reconstruction", "reconstruction_final"))
CONSTANT_CANDIDATES = 300
MIN_GROUNDING_ACC = 0.12
CONSTANT_FACTOR = 2.0
RESAMPLES = 1000


def seed_folder(out: Path, seed: int) -> Path:
    return Path(out) / "fresh" / f"seed-{seed}"


def fresh_data(out: Path, seed: int, scenes: int = FRESH_SCENES, workers: int = 1) -> Path:
    """The data folder of `seed`'s `scenes` test scenes (the mini preset with that seed), written when missing."""
    folder = seed_folder(out, seed) / "data"
    ensure_synth_data(folder, synth_config("mini", seed=seed), {"test": scenes}, named=f"the fresh-seed data folder {folder}",
                      workers=workers, remedy="delete it to have it written again")
    return folder


def evaluate_fresh(out: Path, model_dir: Path, label: str, seeds=FRESH_SEEDS, scenes: int = FRESH_SCENES,
                   batch_size: int = 16, max_new_tokens: dict | None = None, limit: int | None = None, workers: int = 1) -> None:
    """Answer every task of every fresh seed with `model_dir` into `<out>/fresh/seed-<S>/results/<label>/<task>`
    (a task whose summary.json is there is skipped, so an interrupted evaluation continues; answers there of another
    run are answered again: ANSWERS_OF_ANOTHER_RUN)."""
    budgets = {**EVAL_MAX_NEW_TOKENS, **(max_new_tokens or {})}
    with one_load_per_model():  # the model is loaded once for every task of every seed
        for seed in seeds:
            data = fresh_data(out, seed, scenes, workers)
            for task, name in FRESH_TASKS:
                folder = seed_folder(out, seed) / "results" / label / name
                if (folder / "summary.json").is_file():
                    continue
                logger.info("fresh seed %d: %s of %s", seed, task, model_dir)
                run_evaluation(task, data_dir=data, out_dir=folder, model_dir=model_dir, split="test",
                               batch_size=batch_size, limit=limit, max_new_tokens=budgets[task], meteor=False,
                               plots=False, progress=False, other_run_answers=ANSWERS_OF_ANOTHER_RUN,
                               unrecorded_frames=UNRECORDED_FRAMES)


# ------------------------------------------------------------------------------------------- pooled figures


def seed_parts(out: Path, label: str, seeds) -> list[tuple[str, Path, Path]]:
    """Where `label` answered each fresh seed: [(seed, its results folder, its data folder)], for `figures_of`."""
    return [(str(seed), seed_folder(out, seed) / "results" / label, seed_folder(out, seed) / "data") for seed in seeds]


def pooled_rows(parts, label: str, name: str, task: str) -> tuple[list[dict], list[dict]]:
    """(rows, records) of one results folder `name` over `parts` ([(prefix, results folder, data folder)]), row i
    answering record i; ids and each record's "scene" prefixed by the part (scene names repeat across seeds)."""
    rows, records = [], []
    for prefix, results, data in parts:
        path = Path(results) / name / "samples.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: {label} was not evaluated on {prefix} ({task}); evaluate it there first")
        annotation = task if task != "grounding" else "grounding_stage1"
        part_records = load_annotation_file(find_annotation_file(Path(data), annotation, "test"))
        for row in sample_rows(path):
            record = part_records[row["index"]]
            rows.append({**row, "id": f"{prefix}/{row['id']}"})
            records.append({**record, "scene": f"{prefix}/{record['scene_id']}"})
    return rows, records


def grounding_hits(rows, threshold: float = 0.25) -> np.ndarray:
    """[N] 1.0 where the two-stage answer reached IoU ≥ threshold (an unscored sample counts 0, as the runner's)."""
    return np.array([float((row["score"] or 0.0) >= threshold) for row in rows])


def frame_hits(rows, records) -> np.ndarray:
    """[N] 1.0 where stage 1 answered the annotated first clear frame k*."""
    return np.array([float(int(row["parsed"]["frame"]) == annotated_frame(record)) for row, record in zip(rows, records)])


def model_figures(out: Path, label: str, seeds=FRESH_SEEDS) -> dict:
    """Pooled figures of one model evaluated on the fresh seeds (`evaluate_fresh`): `figures_of`."""
    return figures_of(label, seed_parts(out, label, seeds))


def figures_of(label: str, parts) -> dict:
    """Pooled figures of one evaluated model over `parts` ([(prefix, results folder, data folder)]: the fresh seeds,
    or a run's test split), with 95 % intervals, and the per-sample values (and each sample's scene) the pairs need."""
    figures: dict = {"label": label}
    rows, records = pooled_rows(parts, label, "grounding", "grounding")
    hits, frames = grounding_hits(rows), frame_hits(rows, records)
    figures["grounding"] = {"num_samples": len(rows), "acc@0.25": float(hits.mean()),
                            "acc@0.25_ci95": wilson_interval(int(hits.sum()), len(rows)),
                            "frame_accuracy": float(frames.mean()), "frame_accuracy_ci95": wilson_interval(int(frames.sum()), len(rows)),
                            "ids": [row["id"] for row in rows], "hits": hits.tolist(), "frame_hits": frames.tolist(),
                            "scenes": [record["scene"] for record in records],
                            # always frame 0 on the same samples: what the frame choice is paired against
                            "frame_0_hits": [float(annotated_frame(record) == 0) for record in records]}
    rows, records = pooled_rows(parts, label, "detection", "detection")
    # detection_counts reads row i's record at its "index": the pooled position, not the index within its part
    counts = detection_counts([{**row, "index": i} for i, row in enumerate(rows)], records)
    figures["detection"] = {"num_samples": len(rows), "f1@0.25": f1_of_counts(counts),
                            "f1@0.25_ci95": f1_interval(counts), "ids": [row["id"] for row in rows], "counts": counts,
                            "scenes": [record["scene"] for record in records]}
    rows, records = pooled_rows(parts, label, "captioning", "captioning")
    scores = np.array([row["score"] for row in rows], dtype=np.float64)
    figures["captioning"] = {"num_samples": len(rows), "cider@0.5": float(scores.mean()),
                             "cider@0.5_ci95": bootstrap_interval(scores, np.mean, RESAMPLES),
                             "ids": [row["id"] for row in rows], "scores": scores.tolist(),
                             "scenes": [record["scene"] for record in records]}
    rows, records = pooled_rows(parts, label, "reconstruction_final", "reconstruction")
    predictions = [row["raw"][0] for row in rows]
    answers = [record["conversations"][1]["value"] for record in records]
    errors = point_errors(predictions, answers)
    finite = errors[np.isfinite(errors)]
    figures["marker"] = {"num_samples": len(rows), "unparsed": int(errors.size - finite.size),
                         "point_error_m_median": float(np.median(finite)) if finite.size else None,
                         "point_error_m_median_ci95": bootstrap_interval(finite, np.median, RESAMPLES) if finite.size else None,
                         "ids": [row["id"] for row in rows], "predictions": predictions, "answers": answers,
                         "marked_frames": [record["pixel_coords"][0] for record in records],
                         "scenes": [record["scene"] for record in records]}
    return figures


# ------------------------------------------------------------------------------------------- baselines on the same scenes


def _test_records(out: Path, seeds, task: str, limit: int | None = None) -> list[dict]:
    """The records of `task` over the fresh seeds' test splits, in seed order: the first `limit` of each seed, the
    samples the models answered with that limit (`evaluate_fresh`; the runner takes `records[:limit]`)."""
    return [record for seed in seeds
            for record in load_annotation_file(find_annotation_file(seed_folder(out, seed) / "data", task, "test"))[:limit]]


def baselines(out: Path, train_data: Path, seeds=FRESH_SEEDS, candidates: int = CONSTANT_CANDIDATES,
              limit: int | None = None) -> dict:
    """What a model gets without looking, on the pooled fresh-seed samples the models answered (module docstring; the
    first `limit` of each seed's task, as `evaluate_fresh` with that limit); the training statistics come from the
    train split of `train_data` (evaluation/baselines.py's pieces)."""
    found: dict = {}
    records = _test_records(out, seeds, "grounding_stage1", limit)
    train_boxes = np.array([parse_grounding(r["conversations"][1]["value"]).box.to_list()
                            for r in load_annotation_file(find_annotation_file(train_data, "grounding_stage2", "train"))])
    rng = np.random.default_rng(0)
    pool = np.concatenate([train_boxes.mean(0, keepdims=True),
                           train_boxes[rng.choice(len(train_boxes), size=min(candidates, len(train_boxes)), replace=False)]])
    ious = np.array([constant_box_ious(box, records) for box in pool])  # [candidates + 1, N]
    accuracy = (ious >= 0.25).mean(1)
    best = int(np.argmax(accuracy))
    hits = int((ious[best] >= 0.25).sum())
    frame0 = sum(annotated_frame(r) == 0 for r in records)
    found["grounding"] = {
        "num_samples": len(records), "candidates": len(pool),
        "best_constant_box": {"acc@0.25": float(accuracy[best]), "acc@0.25_ci95": wilson_interval(hits, len(records)),
                              "box": [round(float(v), 3) for v in pool[best]]},
        "constant_mean_box": {"acc@0.25": float(accuracy[0]),
                              "acc@0.25_ci95": wilson_interval(int((ious[0] >= 0.25).sum()), len(records))},
        "frame_0": {"frame_accuracy": frame0 / len(records), "frame_accuracy_ci95": wilson_interval(frame0, len(records))},
    }
    matches = category_mean_matches(_test_records(out, seeds, "detection", limit), category_mean_boxes(train_data))
    counts = [{label: [c.tp, c.fp, c.fn] for label, c in match.counts.items()} for match in matches]
    found["detection"] = {"category_mean_boxes": {"f1@0.25": f1_of_counts(counts), "f1@0.25_ci95": f1_interval(counts)}}
    caption = most_frequent_caption(train_data)
    scores = []
    for seed in seeds:  # CIDEr's IDF over each seed's samples, as the runner scores the model there
        seed_records = _test_records(out, (seed,), "captioning", limit)
        scored = caption_scores([caption] * len(seed_records), [r["annotations"] for r in seed_records],
                                [r.get("iou", 1.0) for r in seed_records], meteor=False)
        scores += list(scored["per_sample"]["cider"])
    found["captioning"] = {"constant_caption": {"cider@0.5": float(np.mean(scores)), "caption": caption,
                                                "cider@0.5_ci95": bootstrap_interval(scores, np.mean, RESAMPLES)}}
    guess, _ = constant_marker_answer(train_data)
    answers = [r["conversations"][1]["value"] for r in _test_records(out, seeds, "reconstruction", limit)]
    errors = point_errors([guess] * len(answers), answers)
    found["marker"] = {"constant_point": {"num_samples": len(answers), "point_error_m_median": float(np.median(errors)),
                                          "point_error_m_median_ci95": bootstrap_interval(errors, np.median, RESAMPLES)}}
    return found


# ------------------------------------------------------------------------------------------- the release rule


def _same_ids(a: dict, b: dict, task: str) -> None:
    if a[task]["ids"] != b[task]["ids"]:
        raise ValueError(f"{a['label']} and {b['label']} did not answer the same fresh-seed {task} samples in the same order")


def paired(candidate: dict, reference: dict) -> dict:
    """Candidate − reference on the same fresh-seed samples (95 % paired-bootstrap intervals)."""
    for task in ("grounding", "detection", "captioning", "marker"):
        _same_ids(candidate, reference, task)
    marker = paired_marker_difference(candidate["marker"]["predictions"], reference["marker"]["predictions"],
                                      candidate["marker"]["answers"], candidate["marker"]["marked_frames"], resamples=RESAMPLES)
    return {
        "grounding_acc@0.25": paired_difference(candidate["grounding"]["hits"], reference["grounding"]["hits"], resamples=RESAMPLES),
        "frame_accuracy": paired_difference(candidate["grounding"]["frame_hits"], reference["grounding"]["frame_hits"], resamples=RESAMPLES),
        "detection_f1@0.25": paired_statistic_difference(candidate["detection"]["counts"], reference["detection"]["counts"],
                                                         f1_of_counts, resamples=RESAMPLES // 5),
        "captioning_cider@0.5": paired_difference(candidate["captioning"]["scores"], reference["captioning"]["scores"], resamples=RESAMPLES),
        "marker_point_error_m_median": marker.get("all"),
    }


def release_decision(candidate: dict, reference: dict, base: dict) -> dict:
    """The release rule (module docstring) for `candidate` and `reference` (`model_figures` of each) and the
    baselines `base` of the same scenes: `{"ship": bool, "checks": {name: {"passed", "detail"}}, "paired": ...}`."""
    grounding = candidate["grounding"]["acc@0.25"]
    constant = base["grounding"]["best_constant_box"]["acc@0.25"]
    frame = paired_difference(candidate["grounding"]["frame_hits"], candidate["grounding"]["frame_0_hits"], resamples=RESAMPLES)
    pairs = paired(candidate, reference)
    checks = {
        "grounding Acc@0.25 ≥ 12 %": (grounding >= MIN_GROUNDING_ACC, f"{grounding:.1%}"),
        "grounding Acc@0.25 ≥ 2 × best constant box": (grounding >= CONSTANT_FACTOR * constant, f"{grounding:.1%} vs 2 × {constant:.1%}"),
        "frame selection above always-frame-0": (frame["ci95"][0] > 0, _signed(frame, True)),
        "detection F1@0.25 not worse": (pairs["detection_f1@0.25"]["ci95"][1] >= 0, _signed(pairs["detection_f1@0.25"], True)),
        "CIDEr@0.5 not worse": (pairs["captioning_cider@0.5"]["ci95"][1] >= 0, _signed(pairs["captioning_cider@0.5"], False)),
        "marker point not worse": (pairs["marker_point_error_m_median"] is not None and pairs["marker_point_error_m_median"]["ci95"][0] <= 0,
                                   _signed(pairs["marker_point_error_m_median"], False)),
    }
    return {"ship": all(passed for passed, _ in checks.values()), "paired": pairs, "frame_vs_frame_0": frame,
            "checks": {name: {"passed": bool(passed), "detail": detail} for name, (passed, detail) in checks.items()}}


def _signed(found: dict | None, percent: bool) -> str:
    """A check's figure: `signed_cell`, with its unit where it is in percentage points."""
    return signed_cell(found, percent) + (" points" if percent and found is not None else "")


# ------------------------------------------------------------------------------------------- results


def summary(figures: dict) -> dict:
    """The figures without the per-sample lists (what results.json keeps)."""
    keep = ("ids", "hits", "frame_hits", "frame_0_hits", "counts", "scores", "predictions", "answers", "marked_frames",
            "scenes")
    return {task: {k: v for k, v in part.items() if k not in keep} if isinstance(part, dict) else part
            for task, part in figures.items()}


def fresh_results(out: Path, train_data: Path, models: dict[str, Path], seeds=FRESH_SEEDS, scenes: int = FRESH_SCENES,
                  candidate: str | None = None, reference: str | None = None, **evaluation) -> dict:
    """Evaluate `models` ({label: folder}) on the fresh seeds, with the baselines and, given a `candidate` and a
    `reference` label, the release decision: results.json's `"fresh_seeds"` entry."""
    for label, folder in models.items():
        evaluate_fresh(out, folder, label, seeds, scenes, **evaluation)
    figures = {label: model_figures(out, label, seeds) for label in models}
    base = baselines(out, train_data, seeds, limit=evaluation.get("limit"))  # on the samples the models answered
    found = {"seeds": list(seeds), "scenes_per_seed": scenes, "models": {label: summary(f) for label, f in figures.items()},
             "baselines": base}
    if candidate is not None and reference is not None:
        decision = release_decision(figures[candidate], figures[reference], base)
        found.update(candidate=candidate, reference=reference, decision=decision)
    return found


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the SynthRooms data the models were trained on (its train split)")
    parser.add_argument("--out", type=Path, required=True, help="run folder: fresh/seed-<S>/{data,results} are written here")
    parser.add_argument("--model", type=Path, required=True, help="the candidate model folder")
    parser.add_argument("--reference", type=Path, default=None, help="the current release: apply the release rule against it")
    parser.add_argument("--scenes", type=positive_int, default=FRESH_SCENES, help="test scenes per seed")
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--workers", type=worker_count, default=1, help="processes writing the scenes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    models = {"candidate": args.model, **({"reference": args.reference} if args.reference else {})}
    found = fresh_results(args.out, args.data, models, scenes=args.scenes, candidate="candidate" if args.reference else None,
                          reference="reference" if args.reference else None, batch_size=args.batch_size, workers=args.workers)
    (args.out / "fresh").mkdir(parents=True, exist_ok=True)
    (args.out / "fresh" / "fresh_seeds.json").write_text(json.dumps(found, indent=1))
    print("\n".join(fresh_seed_lines({**found, "candidate": str(args.model), "reference": str(args.reference)})))
    return found


if __name__ == "__main__":
    main()
