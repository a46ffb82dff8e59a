"""Which object a grounding answer points at, and how far its centre lies from the target's.

Acc@0.25 is 0 for every box that misses the target's extent, so an undertrained model scores 0 whether it
looks at the right object with a poor box or ignores the scene. Three finer readings of the same answers
(SynthRooms only: they need every object of the scene, which `synthrooms/<scene_id>.json` holds):

    identification   the scene object whose centre is nearest the predicted box's centre (axis-aligned
                     world, after the grounding evaluator's camera → world transform of the selected frame)
                     is the target; a sample without a parsed box is wrong
    centre error     distance (m) between the predicted and the target box centres; a sample without a
                     parsed box has an infinite error (so it counts, and the median stays defined)
    frame accuracy   (from a run's rows) the stage-1 selected frame is the annotated first clear frame k*;
                     a constant box placed in k* already points at the target most of the time (the
                     target is in view), so a wrong frame costs identification before the box does

Reference levels on the same records: `scene_chance` (a uniformly random object of the scene, in expectation:
the mean of 1 / objects) and `category_chance` (a random object of the target's category: the mean of
1 / objects of that category), and whatever constant box the caller scores with `identification_summary`.

How precise a box must be: `tolerated_shift` is the largest distance the target's own box (true size and
orientation) may be moved, in one direction, before its IoU with the target falls below a threshold; and
`token_grid_oracle` scores the target's own box with its centre snapped to the centre of the visual-token
cell it projects into (at its true depth): what reading "which token holds the object" alone can give, at the
frames' token resolution (32-pixel cells for Qwen's 16-pixel patches merged 2 x 2). `frame_grid_oracle` does the
same for stage 1: the frame each rule picks from the target's coverage of every view counted in such cells.

The command line (a run's answers, a model folder's, the targets' slack, the oracles) is
evaluation/grounding_identification_cli.py.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from gap_mllm.processing.annotation_files import find_annotation_file
from gap_mllm.processing.builders import load_annotation_file
from gap_mllm.processing.coordinates import backproject_pixel, camera_boxes_to_world, camera_to_world_transform, project
from gap_mllm.processing.dataset_identity import SYNTHROOMS_INFO, read_dataset_info
from gap_mllm.processing.errors import DataError
from gap_mllm.processing.scoring.box_iou import box_iou
from gap_mllm.processing.synth.generator import SynthConfig
from gap_mllm.processing.synth.samples import first_clear_frame
from gap_mllm.processing.synth.writer import read_instance_mask
from gap_mllm.tasks_gap_mllm import parse_frame_selection

from .confidence import bootstrap_interval, wilson_interval
from .tasks import sample_id


@lru_cache(maxsize=4096)
def _scene_objects(scene_file: str) -> tuple[np.ndarray, tuple[str, ...]]:
    objects = json.loads(Path(scene_file).read_text(encoding="utf-8"))["objects"]
    return np.array([o["bbox_3d"][:3] for o in objects], dtype=np.float64), tuple(o["category"] for o in objects)


def scene_objects(data_root, scene_id: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """`(centres [N, 3] in the axis-aligned world, categories)` of a SynthRooms scene's objects, in
    `object_id` order."""
    path = Path(data_root) / "synthrooms" / f"{scene_id}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no SynthRooms scene truth for {scene_id!r}; identification needs "
                                "SynthRooms data (gap-mllm synth)")
    return _scene_objects(str(path))


def scene_camera(data_root, scene_id: str) -> tuple[np.ndarray, tuple[int, int]]:
    """`(K [3, 3], (height, width))` of a SynthRooms scene's frames."""
    truth = json.loads((Path(data_root) / "synthrooms" / f"{scene_id}.json").read_text(encoding="utf-8"))
    return np.asarray(truth["intrinsics"], dtype=np.float64), tuple(truth["image_size"])


def world_box(record: dict, frame: int, box_camera) -> np.ndarray | None:
    """The predicted camera-frame box of `frame` moved to the axis-aligned world, or None (no box)."""
    if box_camera is None:
        return None
    return camera_boxes_to_world(np.asarray(box_camera, dtype=np.float64).reshape(1, 9), record["cam2global"][frame],
                                 record.get("axis_align_matrix"))[0]


def identify(record: dict, predicted_world_box, data_root) -> tuple[bool, float]:
    """(nearest object is the target, centre error in m) of one grounding record's predicted world box."""
    centres, _ = scene_objects(data_root, record["scene_id"])
    if predicted_world_box is None:
        return False, float("inf")
    centre = np.asarray(predicted_world_box, dtype=np.float64)[:3]
    nearest = int(np.argmin(np.linalg.norm(centres - centre, axis=1)))
    target = int(record["object_id"])
    return nearest == target, float(np.linalg.norm(centres[target] - centre))


def chance_levels(records, data_root) -> dict:
    """Expected identification of a random object of the scene and of a random object of the target's category."""
    scene, category = [], []
    for record in records:
        _, categories = scene_objects(data_root, record["scene_id"])
        target = categories[int(record["object_id"])]
        scene.append(1.0 / len(categories))
        category.append(1.0 / categories.count(target))
    return {"scene_chance": float(np.mean(scene)), "category_chance": float(np.mean(category))}


def identification_summary(records, predicted_world_boxes, data_root) -> dict:
    """Identification accuracy (Wilson 95 % interval) and median centre error (bootstrap interval) of one
    predicted world box (or None) per grounding record."""
    if len(records) != len(predicted_world_boxes) or not records:
        raise ValueError(f"need one predicted box per record, got {len(predicted_world_boxes)} for {len(records)} records")
    hits, errors = zip(*(identify(r, b, data_root) for r, b in zip(records, predicted_world_boxes)))
    hits, errors = int(sum(hits)), np.asarray(errors)
    return {
        "num_samples": len(records),
        "num_without_box": int(np.isinf(errors).sum()),
        "identification": hits / len(records),
        "identification_ci95": wilson_interval(hits, len(records)),
        "median_centre_error_m": float(np.median(errors)),
        # with no box at all every error is infinite, and a percentile of infinities is not defined
        "median_centre_error_m_ci95": bootstrap_interval(errors, np.median) if np.isfinite(errors).any() else [math.inf, math.inf],
        **chance_levels(records, data_root),
    }


def annotated_frame(record: dict) -> int:
    """The first clear frame k* of a grounding stage-1 record (its answer), 0 if it has none."""
    frame = parse_frame_selection(record["conversations"][1]["value"], num_frames=len(record["images"])).frame
    return 0 if frame is None else frame


def from_rows(records, rows, data_root) -> dict:
    """`identification_summary` of a grounding run's per-sample rows (grounding's `evaluate`: the selected
    frame and the parsed camera-frame box of each record, matched to `records` by sample id), plus
    `frame_accuracy` when every record carries its annotated frame (training-style records do)."""
    by_id = {sample_id(record, index): record for index, record in enumerate(records)}
    chosen = [by_id[str(row["id"])] for row in rows]
    # a frame outside the record's poses (possible in official_compat runs) places no box: wrong, as the IoU is 0
    boxes = [world_box(record, int(row["parsed"]["frame"]), row["parsed"]["bbox_3d"])
             if 0 <= int(row["parsed"]["frame"]) < len(record["cam2global"]) else None for record, row in zip(chosen, rows)]
    out = identification_summary(chosen, boxes, data_root)
    if all(len(record.get("conversations", [])) > 1 for record in chosen):
        hits = sum(int(row["parsed"]["frame"]) == annotated_frame(record) for record, row in zip(chosen, rows))
        out["frame_accuracy"] = hits / len(rows)
        out["frame_accuracy_ci95"] = wilson_interval(hits, len(rows))
    return out


def from_samples(samples_path, data_root, split: str) -> dict:
    """`from_rows` of the `samples.jsonl` a grounding evaluation run wrote on `split` of `data_root`."""
    rows = [json.loads(line) for line in Path(samples_path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{samples_path}: no samples")
    return from_rows(load_annotation_file(find_annotation_file(data_root, "grounding_stage1", split)), rows, data_root)


def has_scene_truth(data_root) -> bool:
    """Whether `data_root` is SynthRooms data with the per-scene object truth identification needs."""
    return (Path(data_root) / "synthrooms").is_dir()


def constant_box(records, box_camera, data_root) -> dict:
    """`identification_summary` of one camera-frame box answered for every record in its annotated frame k*
    (how the grounding baselines place a constant box)."""
    boxes = [world_box(record, annotated_frame(record), box_camera) for record in records]
    return identification_summary(list(records), boxes, data_root)


def tolerated_shift(box, direction, threshold: float, max_shift: float = 10.0, iterations: int = 30) -> float:
    """Largest distance (m) `box` (9 numbers) may be moved along `direction` (3 numbers, any length) with
    IoU(moved, box) >= `threshold` still; bisection, as IoU falls monotonically with the distance."""
    box = np.asarray(box, dtype=np.float64)
    unit = np.asarray(direction, dtype=np.float64) / np.linalg.norm(direction)
    low, high = 0.0, max_shift
    for _ in range(iterations):
        middle = (low + high) / 2
        moved = box.copy()
        moved[:3] += middle * unit
        if box_iou(moved, box) >= threshold:
            low = middle
        else:
            high = middle
    return low


def tolerance_summary(records, thresholds=(0.25, 0.5), directions: int = 4, seed: int = 0) -> dict:
    """Per IoU threshold, the median and quartiles of `tolerated_shift` of the records' target boxes
    (`gt_bbox`) along `directions` random directions each (seeded)."""
    rng = np.random.default_rng(seed)
    shifts = {threshold: [] for threshold in thresholds}
    for record in records:
        for _ in range(directions):
            direction = rng.normal(size=3)
            for threshold in thresholds:
                shifts[threshold].append(tolerated_shift(record["gt_bbox"], direction, threshold))
    return {f"iou>={threshold:g}": {"median_m": float(np.median(values)),
                                     "quartiles_m": [float(np.percentile(values, 25)), float(np.percentile(values, 75))]}
            for threshold, values in shifts.items()}


def token_grid_oracle(records, data_root, cell_pixels: int = 32) -> dict:
    """Acc@0.25 / Acc@0.5 (Wilson intervals) and median centre error of the target's own box (`gt_bbox`: true size
    and orientation) with its centre moved to the centre of the `cell_pixels` cell of the annotated frame k* it
    projects into, at its true depth; `centre_in_view` = share of targets whose centre projects inside the frame
    (the others are snapped to the nearest cell)."""
    ious, errors, in_view = [], [], 0
    for record in records:
        intrinsics, (height, width) = scene_camera(data_root, record["scene_id"])
        transform = camera_to_world_transform(record["cam2global"][annotated_frame(record)], record.get("axis_align_matrix"))
        box = np.asarray(record["gt_bbox"], dtype=np.float64)
        (u, v), depth = project(box[:3], intrinsics, transform)
        in_view += bool(depth > 0 and 0 <= u < width and 0 <= v < height)
        column = np.clip(np.floor(u / cell_pixels), 0, width // cell_pixels - 1)
        row = np.clip(np.floor(v / cell_pixels), 0, height // cell_pixels - 1)
        # pixel centres sit at integer coordinates, so a cell's centre is (cell - 1) / 2 past its first pixel
        half = (cell_pixels - 1) / 2
        snapped = box.copy()
        snapped[:3] = backproject_pixel(cell_pixels * column + half, cell_pixels * row + half, float(depth), intrinsics, transform)
        ious.append(box_iou(snapped, box))
        errors.append(float(np.linalg.norm(snapped[:3] - box[:3])))
    ious, n = np.asarray(ious), len(records)
    out = {"cell_pixels": cell_pixels, "num_samples": n, "centre_in_view": in_view / n,
           "median_centre_error_m": float(np.median(errors)), "median_centre_error_m_ci95": bootstrap_interval(errors, np.median)}
    for threshold in (0.25, 0.5):
        hits = int((ious >= threshold).sum())
        out[f"acc@{threshold:g}"], out[f"acc@{threshold:g}_ci95"] = hits / n, wilson_interval(hits, n)
    return out


FRAME_RULES = ("half_of_best", "first_seen", "most_seen", "frame_0")


def min_visible_pixels(data_root) -> int:
    """The pixels an object must cover to count as seen, from the SynthRooms configuration that wrote `data_root`."""
    info = read_dataset_info(data_root)
    if info is None or "config" not in info:
        raise DataError("no SynthRooms settings ('config') to read min_visible_pixels from; this measure needs data "
                        "written by gap-mllm synth", path=Path(data_root) / SYNTHROOMS_INFO)
    config = info["config"]
    return SynthConfig(**{key: tuple(value) if isinstance(value, list) else value for key, value in config.items()}).min_visible_pixels


def target_coverage(record: dict, data_root, cell_pixels: int = 1) -> np.ndarray:
    """`[frames]`: how much of each of a grounding stage-1 record's frames its target covers, read from the written
    instance masks: pixels (`cell_pixels=1`), or the `cell_pixels`-square cells of which it covers at least half
    (what a visual token shows: 32-pixel cells for Qwen's 16-pixel patches merged 2 x 2)."""
    counts = []
    for image in record["images"]:
        scene, name = Path(image).parent.name, Path(image).stem
        mask = read_instance_mask(Path(data_root) / "synthrooms" / "instance" / scene / f"{name}.png") == record["object_id"] + 1
        if cell_pixels > 1:
            rows, columns = mask.shape[0] // cell_pixels, mask.shape[1] // cell_pixels
            shares = mask[: rows * cell_pixels, : columns * cell_pixels].reshape(rows, cell_pixels, columns, cell_pixels).mean(axis=(1, 3))
            counts.append(int((shares >= 0.5).sum()))
        else:
            counts.append(int(mask.sum()))
    return np.asarray(counts)


def frame_from_coverage(coverage: np.ndarray, rule: str, min_coverage: int = 1) -> int:
    """The frame a rule picks from per-frame coverage: "half_of_best" (SynthRooms' first clear frame: the first frame
    covering at least half the best frame's coverage and `min_coverage`), "first_seen" (the first frame with
    `min_coverage`), "most_seen" (the best frame), "frame_0" (the prior the mini default answers); 0 when the
    target is never covered."""
    if rule == "frame_0" or coverage.max() < min_coverage:
        return 0
    if rule == "half_of_best":
        return first_clear_frame(coverage, min_coverage)
    if rule == "first_seen":
        return int(np.flatnonzero(coverage >= min_coverage)[0])
    if rule == "most_seen":
        return int(np.argmax(coverage))
    raise ValueError(f"frame rule {rule!r}; choose from {FRAME_RULES}")


def frame_grid_oracle(records, data_root, cell_pixels: int = 32) -> dict:
    """How often each rule of `FRAME_RULES`, applied to the target's coverage counted in `cell_pixels` cells, picks
    the annotated first clear frame k* (Wilson intervals): what reading "which tokens show the object" in every view
    can give grounding's stage 1 at the frames' token resolution. With `cell_pixels=1` and the dataset's
    `min_visible_pixels`, "half_of_best" is the rule that wrote k*, so it scores 1."""
    min_coverage = min_visible_pixels(data_root) if cell_pixels == 1 else 1
    hits = dict.fromkeys(FRAME_RULES, 0)
    for record in records:
        coverage, truth = target_coverage(record, data_root, cell_pixels), annotated_frame(record)
        for rule in FRAME_RULES:
            hits[rule] += frame_from_coverage(coverage, rule, min_coverage) == truth
    n = len(records)
    return {"cell_pixels": cell_pixels, "num_samples": n,
            **{rule: {"frame_accuracy": count / n, "frame_accuracy_ci95": wilson_interval(count, n)} for rule, count in hits.items()}}
