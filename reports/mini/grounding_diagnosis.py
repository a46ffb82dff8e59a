"""Why the Mini's grounding box is worse than a constant box (issue 56, item 1): a one-off diagnosis.

    python reports/mini/grounding_diagnosis.py --model mini/gap-mllm-mini --data runs/mini/data --split val \
        --out runs/grounding-diagnosis

Five readings, on the validation split (the test split is read only by a release's final evaluation):

1. the model's answers, both stages, split by whether stage 1 chose the annotated frame k*;
2. the box stage given k* (stage 1 skipped): per box coordinate in k*'s camera, the spread of the truth and of the
   predictions, their correlation, and the error of the predictions against the constant training-mean box;
3. the training signal: tokens per answer of each task of mini_stage2.yaml's mix, and the share of the
   `global_token_mean` loss that the frame index and the box numbers get in an epoch;
4. where a wrong frame leaves the target: whether its centre projects into the chosen frame's image;
5. which half of a right-frame answer misses: its centre or its sizes and angles (each swapped for the truth).

Everything is written to OUT/diagnosis.json; the report is reports/mini/stage2.md ("Why the box is worse than a
constant").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import yaml

from gap_mllm.evaluation.confidence import bootstrap_interval, wilson_interval
from gap_mllm.evaluation.grounding_identification import annotated_frame, identify, scene_camera, world_box
from gap_mllm.processing.annotation_files import find_annotation_file
from gap_mllm.processing.builders import load_annotation_file
from gap_mllm.processing.coordinates import world_boxes_to_camera
from gap_mllm.processing.scoring.grounding_metrics import score_grounding
from gap_mllm.tasks_gap_mllm import parse_grounding

COORDINATES = ("cx", "cy", "cz", "sx", "sy", "sz", "yaw", "pitch", "roll")
RECIPE = Path(__file__).resolve().parents[2] / "training" / "recipes" / "mini_stage2.yaml"


def records(data_root, task: str, split: str) -> list[dict]:
    return load_annotation_file(find_annotation_file(data_root, task, split))


def answer(record: dict) -> str:
    return record["conversations"][1]["value"]


def truth_in_frame(record: dict, frame: int) -> np.ndarray:
    """The target's box `[9]` in the OpenCV camera of `frame` (what stage 2 is trained to write for k*)."""
    return world_boxes_to_camera(np.asarray(record["gt_bbox"], dtype=np.float64)[None], record["cam2global"][frame],
                                 record.get("axis_align_matrix"))[0]


def generate_answers(model_dir, data_root, split: str, annotated: bool, batch_size: int) -> list[dict]:
    """Per grounding record of `split`: the selected frame and the parsed camera-frame box (or None)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from gap_mllm import register_auto_classes
    from gap_mllm.evaluation.in_memory import EvaluationSlice
    from gap_mllm.evaluation.tasks import GroundingTask

    register_auto_classes()
    model = AutoModelForImageTextToText.from_pretrained(str(model_dir), trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(str(model_dir), trust_remote_code=True)
    slice_ = EvaluationSlice("grounding", data_root, split, None, annotated_frame=annotated)
    _, outputs = slice_.score(model, processor, batch_size, max_new_tokens=GroundingTask.spec.max_new_tokens)
    rows, _ = slice_.task.evaluate(slice_.records, outputs)
    return [{"frame": int(r["parsed"]["frame"]), "box": r["parsed"]["bbox_3d"], "raw": r["raw"]} for r in rows]


def per_sample(record: dict, frame: int, box, data_root) -> dict:
    """IoU (the evaluator's), identification and centre error of one answer, with the frame it was placed in."""
    iou = score_grounding(box, record["gt_bbox"], record["cam2global"][frame], record.get("axis_align_matrix")).value(False)
    hit, error = identify(record, world_box(record, frame, box), data_root)
    return {"frame": frame, "frame_right": frame == annotated_frame(record), "iou": float(iou or 0.0),
            "identified": bool(hit), "centre_error_m": float(error)}


def summary(rows: list[dict]) -> dict:
    if not rows:
        return {"n": 0}
    ious = np.array([r["iou"] for r in rows])
    errors = np.array([r["centre_error_m"] for r in rows])
    finite = errors[np.isfinite(errors)]
    hits = int((ious >= 0.25).sum())
    ident = sum(r["identified"] for r in rows)
    return {"n": len(rows), "acc@0.25": hits / len(rows), "acc@0.25_ci95": wilson_interval(hits, len(rows)),
            "identification": ident / len(rows), "identification_ci95": wilson_interval(ident, len(rows)),
            "median_centre_error_m": float(np.median(errors)),
            "median_centre_error_m_ci95": bootstrap_interval(finite, np.median) if finite.size > 1 else None}


def coordinate_table(truths: np.ndarray, predictions: np.ndarray, constant: np.ndarray) -> dict:
    """Per coordinate: std of truth and prediction, Pearson r, mean absolute error of the prediction and of
    `constant` (the training-mean box), all in k*'s camera."""
    out = {}
    for j, name in enumerate(COORDINATES):
        t, p = truths[:, j], predictions[:, j]
        r = float(np.corrcoef(t, p)[0, 1]) if t.std() > 0 and p.std() > 0 else float("nan")
        out[name] = {"truth_std": float(t.std()), "prediction_std": float(p.std()), "pearson_r": r,
                     "mae_prediction": float(np.abs(p - t).mean()), "mae_constant": float(np.abs(constant[j] - t).mean())}
    centre_pred = np.linalg.norm(predictions[:, :3] - truths[:, :3], axis=1)
    centre_const = np.linalg.norm(constant[None, :3] - truths[:, :3], axis=1)
    out["centre"] = {"median_error_prediction_m": float(np.median(centre_pred)),
                     "median_error_constant_m": float(np.median(centre_const)),
                     "prediction_closer_than_constant": float(np.mean(centre_pred < centre_const))}
    return out


def loss_shares(data_root, tokenizer_dir) -> dict:
    """Answer tokens per task in one epoch of the stage-2 mix as the recipe samples it (task_max_samples,
    task_repeats), and the share of a `global_token_mean` loss (every answer token weighs the same) that goes to the
    frame digit, the box numbers and the other tasks. Each answer is counted with its end-of-turn token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    data = yaml.safe_load(RECIPE.read_text(encoding="utf-8"))["data"]
    limits, repeats = data.get("task_max_samples") or {}, data.get("task_repeats") or {}
    rng = np.random.default_rng(0)
    out = {}
    for task in data["tasks"]:
        recs = records(data_root, task, "train")
        count = min(len(recs), limits.get(task, len(recs))) * repeats.get(task, 1)
        pick = [recs[i] for i in rng.choice(len(recs), size=min(len(recs), 400), replace=False)]
        lengths = [len(tokenizer(answer(r), add_special_tokens=False)["input_ids"]) + 1 for r in pick]
        out[task] = {"samples_per_epoch": count, "mean_answer_tokens": float(np.mean(lengths)),
                     "tokens_per_epoch": float(count * np.mean(lengths))}
    total = sum(v["tokens_per_epoch"] for v in out.values())
    for v in out.values():
        v["loss_share"] = v["tokens_per_epoch"] / total
    # the one token that decides stage 1's answer, and the digits of the 9 numbers of a box
    example = answer(records(data_root, "grounding_stage2", "train")[0])
    pieces = [tokenizer.decode([i]) for i in tokenizer(example, add_special_tokens=False)["input_ids"]]
    number_tokens = sum(p.strip() in set("0123456789.-") and p.strip() != "" for p in pieces)
    frame_tokens = out["grounding_stage1"]["samples_per_epoch"]
    return {"tasks": out, "total_answer_tokens_per_epoch": total,
            "frame_digit_share": frame_tokens / total,
            "box_example": example, "box_example_tokens": pieces, "box_number_tokens": number_tokens,
            "box_numbers_share": out["grounding_stage2"]["samples_per_epoch"] * number_tokens / total}


def centre_or_shape(records, answers) -> dict:
    """On the answers whose stage 1 chose k* and that hold a box: the share at IoU >= 0.25 of the answer, of its
    centre with the true sizes and angles, and of the true centre with its sizes and angles (which half misses)."""
    from gap_mllm.processing.scoring.box_iou import box_iou_pairs

    rows = []
    for record, found in zip(records, answers):
        k = annotated_frame(record)
        if found["frame"] != k or found["box"] is None:
            continue
        truth, box = truth_in_frame(record, k), np.asarray(found["box"], dtype=np.float64)
        mixed = np.stack([box, np.concatenate([box[:3], truth[3:]]), np.concatenate([truth[:3], box[3:]])])
        rows.append(box_iou_pairs(mixed, np.stack([truth] * 3)) >= 0.25)
    hits = np.asarray(rows, dtype=np.float64)
    return {"n": len(rows), "answer": float(hits[:, 0].mean()), "answer_centre_true_shape": float(hits[:, 1].mean()),
            "true_centre_answer_shape": float(hits[:, 2].mean())}


def in_view(record: dict, frame: int, data_root) -> bool:
    """Whether the target's centre projects inside the image of `frame`, in front of its camera."""
    k, (height, width) = scene_camera(data_root, record["scene_id"])
    c = truth_in_frame(record, frame)[:3]
    if c[2] <= 0:
        return False
    u, v = (k @ c)[:2] / c[2]
    return bool(0 <= u < width and 0 <= v < height)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    recs = records(args.data, "grounding_stage1", args.split)
    train_boxes = np.array([parse_grounding(answer(r)).box.to_list() for r in records(args.data, "grounding_stage2", "train")])
    constant = train_boxes.mean(0)

    answers = {}
    for mode, annotated in (("two_stages", False), ("annotated_frame", True)):
        cache = out_dir / f"answers_{mode}.json"
        if not cache.is_file():
            cache.write_text(json.dumps(generate_answers(args.model, args.data, args.split, annotated, args.batch_size)))
        answers[mode] = json.loads(cache.read_text())

    result = {"split": args.split, "records": len(recs)}
    two = [per_sample(r, a["frame"], a["box"], args.data) for r, a in zip(recs, answers["two_stages"])]
    given = [per_sample(r, a["frame"], a["box"], args.data) for r, a in zip(recs, answers["annotated_frame"])]
    const_given = [per_sample(r, annotated_frame(r), constant.tolist(), args.data) for r in recs]
    const_chosen = [per_sample(r, a["frame"], constant.tolist(), args.data) for r, a in zip(recs, answers["two_stages"])]
    right = [i for i, s in enumerate(two) if s["frame_right"]]
    wrong = [i for i, s in enumerate(two) if not s["frame_right"]]
    result["answers"] = {
        "two_stages": summary(two),
        "two_stages_frame_right": summary([two[i] for i in right]),
        "two_stages_frame_wrong": summary([two[i] for i in wrong]),
        "box_stage_in_annotated_frame": summary(given),
        "box_stage_in_annotated_frame_where_stage1_wrong": summary([given[i] for i in wrong]),
        "constant_in_annotated_frame": summary(const_given),
        "constant_in_chosen_frame": summary(const_chosen),
        "constant_in_chosen_frame_where_stage1_wrong": summary([const_chosen[i] for i in wrong]),
    }
    frames = np.array([s["frame"] for s in two])
    truth_frames = np.array([annotated_frame(r) for r in recs])
    result["frames"] = {"chosen": np.bincount(frames, minlength=8).tolist(),
                        "annotated": np.bincount(truth_frames, minlength=8).tolist(),
                        "train_annotated": np.bincount([annotated_frame(r) for r in records(args.data, "grounding_stage1", "train")],
                                                       minlength=8).tolist()}
    result["target_in_view_of_chosen_frame_where_wrong"] = float(np.mean([in_view(recs[i], int(frames[i]), args.data) for i in wrong])) if wrong else None
    with_box = [i for i, a in enumerate(answers["annotated_frame"]) if a["box"] is not None]
    truths = np.array([truth_in_frame(recs[i], annotated_frame(recs[i])) for i in with_box])
    predictions = np.array([answers["annotated_frame"][i]["box"] for i in with_box])
    result["coordinates_in_annotated_frame"] = coordinate_table(truths, predictions, constant)
    result["centre_or_shape_where_stage1_right"] = centre_or_shape(recs, answers["two_stages"])
    result["train_truth_std"] = dict(zip(COORDINATES, train_boxes.std(0).round(3).tolist()))
    result["constant_box"] = constant.round(3).tolist()
    result["loss"] = loss_shares(args.data, args.model)
    (out_dir / "diagnosis.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
