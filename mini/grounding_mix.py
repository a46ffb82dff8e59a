"""Does finding a named object in 2D carry into the 3D box when both are trained together?

    python -m gap_mllm.mini.grounding_mix --model mini/gap-mllm-mini --data runs/mini/data --out runs/grounding-mix \
        [--share-2d 0.5] [--steps 2000] [--batch-size 32] [--lr 1e-3] [--eval-every 500] [--device cuda --workers 8]

The mini LLM learns to find a described object in one view and draw its 2D box (referring_2d.py), and a short
run of grounding's box stage after that still answered the constant 3D box (mini/README.md, "Finding a named
object in one view"). This run trains both at once, so the finding is not unlearned while the 3D box is: each
batch holds `share_2d` of 2D referring samples (referring_2d.py, the official view-first layout) and the rest
grounding stage-2 samples as the package trains them (the views from the first clear frame k* on, the
description, the 3D box in k*'s camera: the official `{"bbox_3d": [...]}` answer). `--share-2d 0` is the
control: the box stage alone, in the same number of steps and samples per step.

Scores at each evaluation, on the validation split: the 2D referring scores (Acc@0.5, mIoU, centre in box,
what the box points at; referring_2d.py) and grounding's box stage in the annotated frame k*
(`EvaluationSlice(annotated_frame=True)`: Acc@0.25 / 0.5 as the evaluation package scores them, which object
the box points at and its median centre error; evaluation/grounding_identification.py), next to the constant
mean boxes of both tasks. Training, resuming and the log are referring_2d.py's loop.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


from gap_mllm.processing.annotation_files import find_annotation_file
from gap_mllm.processing.builders import load_annotation_file
from gap_mllm.processing.scannet_layout import posed_images_dir

from .referring_2d import (
    MIN_PIXELS,
    ShuffledDraw,
    evaluate,
    load_run_start,
    mean_box,
    pointing,
    referring_samples,
    score,
    train_steps,
)

BOX_TASK = "grounding_stage2"


def box_samples(data_root, split: str) -> list[dict]:
    """Grounding stage-2 records of `split` as training samples: `{"id", "images" (paths), "prompt", "answer"}`."""
    media = posed_images_dir(data_root)
    samples = []
    for number, record in enumerate(load_annotation_file(find_annotation_file(data_root, BOX_TASK, split))):
        human, answer = record["conversations"][0]["value"], record["conversations"][1]["value"]
        samples.append({"id": f"{BOX_TASK}_{number}", "images": [str(media / p) for p in record["images"]],
                        "prompt": human, "answer": answer})
    if not samples:
        raise ValueError(f"no {BOX_TASK} record in the {split} split of {data_root}")
    return samples


class MixedDraw:
    """`draw(step)`: `round(batch_size * share_2d)` 2D referring samples, then box samples to `batch_size`; each
    task walks its own fixed shuffled order."""

    def __init__(self, referring: list[dict], boxes: list[dict], batch_size: int, share_2d: float, seed: int = 0):
        if not 0 <= share_2d <= 1:
            raise ValueError(f"share_2d must lie in [0, 1], got {share_2d}")
        self.referring_per_step = round(batch_size * share_2d)
        self.referring = ShuffledDraw(referring, self.referring_per_step, seed)
        self.boxes = ShuffledDraw(boxes, batch_size - self.referring_per_step, seed)

    def __call__(self, step: int) -> list[dict]:
        return self.referring(step) + self.boxes(step)


def box_stage(model, processor, box_slice, batch_size: int = 32) -> tuple[dict, list[dict]]:
    """(metrics, per-record rows) of grounding's box stage on `box_slice` (an `EvaluationSlice` of grounding with
    `annotated_frame=True`): the logged metrics, and per record its answer, IoU as the evaluator scores it,
    whether the box's centre is nearest the target and its distance to the target's centre (m; inf: no box)."""
    from gap_mllm.evaluation.grounding_identification import identify, world_box
    from gap_mllm.evaluation.tasks import GroundingTask

    metrics, outputs = box_slice.score(model, processor, batch_size, max_new_tokens=GroundingTask.spec.max_new_tokens)
    rows, _ = box_slice.task.evaluate(box_slice.records, outputs)
    per_record = []
    for record, row in zip(box_slice.records, rows):
        found, error = identify(record, world_box(record, row["parsed"]["frame"], row["parsed"]["bbox_3d"]), box_slice.data_root)
        per_record.append({"id": row["id"], "answer": row["raw"][-1], "iou": row["score"], "identified": found, "centre_error_m": error})
    return metrics, per_record


def evaluate_both(model, processor, referring_slice: list[dict], box_slice, batch_size: int = 32) -> dict:
    """The 2D referring scores of `referring_slice` and the box-stage metrics of `box_slice` (`box_stage`)."""
    metrics, rows = box_stage(model, processor, box_slice, batch_size)
    return {"referring_val": evaluate(model, processor, {"val": referring_slice}, batch_size)["val"],
            "box_val": {**metrics, "examples": [row["answer"] for row in rows[:3]]}}


def compare(answers_a, answers_b) -> dict:
    """Paired differences (A - B, bootstrap 95 % intervals) of two models' box-stage rows on the same records
    (`--answers` files of `--evaluate-only`): Acc@0.25, identification and median centre error."""
    from gap_mllm.evaluation.confidence import paired_difference

    a, b = ([json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()] for path in (answers_a, answers_b))
    if [row["id"] for row in a] != [row["id"] for row in b]:
        raise ValueError(f"{answers_a} and {answers_b} do not hold the same records in the same order")
    column = lambda rows, key: np.array([float(row[key]) for row in rows])  # noqa: E731
    errors_a, errors_b = column(a, "centre_error_m"), column(b, "centre_error_m")
    if np.isfinite(np.median(errors_a)) and np.isfinite(np.median(errors_b)):
        centre = paired_difference(errors_a, errors_b, np.median)
    else:  # inf - inf has no value: say why instead of writing nan
        centre = {"difference": None, "reason": "over half the answers of an arm hold no box (infinite median centre error)"}
    return {"num_samples": len(a),
            "acc@0.25": paired_difference(column(a, "iou") >= 0.25, column(b, "iou") >= 0.25),
            "identification": paired_difference(column(a, "identified"), column(b, "identified")),
            "median_centre_error_m": centre}


def constant_baselines(data_root, referring_train: list[dict], referring_slice: list[dict]) -> dict:
    """The constant mean 2D box on the referring slice and the constant mean 3D box in k* on the box slice."""
    from gap_mllm.evaluation.baselines import grounding_baselines

    box = mean_box(referring_train)
    constant_3d = grounding_baselines(data_root, "val")["constant_mean_box"]
    return {"referring_val": {**score([box] * len(referring_slice), [s["box"] for s in referring_slice]),
                              "points_at": pointing([box] * len(referring_slice), referring_slice)},
            "box_val": {"acc@0.25": constant_3d["acc@0.25"], "acc@0.5": constant_3d["acc@0.5"],
                        "identification": constant_3d["identification"]["identification"],
                        "median_centre_error_m": constant_3d["identification"]["median_centre_error_m"]}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a GAP-MLLM folder to start from (or to evaluate)")
    parser.add_argument("--data", help="SynthRooms output (needs synthrooms/ instance masks)")
    parser.add_argument("--out", help="run folder (log.jsonl, model/, training_state.pt); resumed when it exists")
    parser.add_argument("--evaluate-only", action="store_true", help="score --model on --split without training")
    parser.add_argument("--split", default="val", help="with --evaluate-only: the split to score")
    parser.add_argument("--answers", help="with --evaluate-only: write the box stage's per-record rows here (JSON lines)")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="paired differences of two --answers files")
    parser.add_argument("--share-2d", type=float, default=0.5, help="share of each batch that is 2D referring (0: the box stage alone)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--eval-samples", type=int, default=None, help="validation samples of each task (default: all)")
    parser.add_argument("--eval-batch-size", type=int, default=32)
    parser.add_argument("--views-per-object", type=int, default=4, help="2D referring training views per object")
    parser.add_argument("--min-pixels", type=int, default=MIN_PIXELS, help="pixels the object covers in a 2D sample's view")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader processes decoding the views (0: in this one)")
    parser.add_argument("--time-limit-s", type=float, default=None, help="save and stop after this long (resume: the same command)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    args = parser.parse_args(argv)
    if args.compare:
        report = compare(*args.compare)
        print(json.dumps(report), flush=True)
        return report
    if args.model is None or args.data is None or (args.out is None and not args.evaluate_only):
        parser.error("--model and --data are needed, and --out to train")
    from gap_mllm.evaluation.in_memory import EvaluationSlice

    split = args.split if args.evaluate_only else "val"
    referring_slice = referring_samples(args.data, split, 1, "views_first", args.min_pixels, seed=1)[: args.eval_samples]
    box_slice = EvaluationSlice("grounding", args.data, split, args.eval_samples, annotated_frame=True)
    if args.evaluate_only:
        model, processor = load_run_start(args.model, device=args.device)
        metrics, rows = box_stage(model, processor, box_slice, args.eval_batch_size)
        report = {"model": args.model, "split": split, "box": metrics,
                  "referring": evaluate(model, processor, {split: referring_slice}, args.eval_batch_size)[split]}
        if args.answers:
            Path(args.answers).write_text("".join(json.dumps(row) + "\n" for row in rows))
        print(json.dumps(report), flush=True)
        return report
    referring = referring_samples(args.data, "train", args.views_per_object, "views_first", args.min_pixels, seed=0)
    boxes = box_samples(args.data, "train")
    draw = MixedDraw(referring, boxes, args.batch_size, args.share_2d)
    report = {"share_2d": args.share_2d, "per_step": {"referring": draw.referring_per_step, "box": args.batch_size - draw.referring_per_step},
              "num_train": {"referring": len(referring), "box": len(boxes)},
              "num_val": {"referring": len(referring_slice), "box": len(box_slice.records)},
              "constant": constant_baselines(args.data, referring, referring_slice)}
    print(json.dumps(report), flush=True)
    model, processor = load_run_start(args.model, args.out, args.device)
    report["evaluations"] = train_steps(
        model, processor, draw,
        lambda m, p: evaluate_both(m, p, referring_slice, box_slice, args.eval_batch_size),
        args.out, args.steps, args.lr, args.eval_every, workers=args.workers, time_limit_s=args.time_limit_s, log=lambda line: print(line, flush=True))
    return report


if __name__ == "__main__":
    main()
