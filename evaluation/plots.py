"""Figures of a run (matplotlib, headless): per-category bars, IoU histograms, per-sample box overlays.

    per_category.png   detection P / R / F1 per category; spatial QA score per question type;
                       reconstruction overall per scene (raw and aligned)
    iou_hist.png       detection: IoU of every prediction with its best same-label box;
                       grounding: per-sample IoU with the 0.25 / 0.5 thresholds; captioning: CIDEr
    samples/<id>.png   detection / grounding: the reference frame with the ground-truth (green) and
                       predicted (red) boxes projected with the pinhole intrinsics (first samples only)

Projection: boxes in the OpenCV camera frame of the drawn frame, corners from
`processing.coordinates.box_corners` (R = Ry·Rx·Rz), `u = fx·x/z + cx`, `v = fy·y/z + cy`; edges with
an end closer than 5 cm to the camera plane are not drawn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gap_mllm.image_utils_gap_mllm import read_image_file
from gap_mllm.processing.coordinates import box_corners, intrinsics_3x3
from gap_mllm.processing.errors import DataError
from gap_mllm.processing.scannet_layout import media_path, read_intrinsics
from gap_mllm.processing.scoring.box_iou import BOX_EDGES
from gap_mllm.processing.tasks import package_task, package_task_names

MAX_SAMPLE_FIGURES = 8
MIN_DEPTH = 0.05


def _pyplot():
    # here, not at the top: matplotlib is optional (the eval extra) and slow to import; only the plots need it
    import matplotlib

    matplotlib.use("Agg")  # no display on servers / CI
    import matplotlib.pyplot as plt

    return plt


def project_box_edges(box_camera, intrinsics) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pixel segments `[(p0, p1), ...]` of the box edges in front of the camera (`box_camera` `[9]`)."""
    corners = box_corners(np.asarray(box_camera, dtype=np.float64))
    k = intrinsics_3x3(intrinsics)
    segments = []
    for a, b in BOX_EDGES:
        pa, pb = corners[a], corners[b]
        if pa[2] < MIN_DEPTH or pb[2] < MIN_DEPTH:
            continue
        ua, ub = k @ (pa / pa[2]), k @ (pb / pb[2])
        segments.append((ua[:2], ub[:2]))
    return segments


def _bars(ax, names, series: dict, title: str):
    x = np.arange(len(names))
    width = 0.8 / max(len(series), 1)
    for n, (label, values) in enumerate(series.items()):
        ax.bar(x + n * width - 0.4 + width / 2, [np.nan if v is None else v for v in values], width, label=label)
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8)


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)


def plot_per_category(task: str, metrics: dict, path) -> bool:
    plt = _pyplot()
    entry = package_task(task) if task in package_task_names() else None
    bars = entry.per_category_bars(metrics) if entry is not None and entry.per_category_bars is not None else None
    if bars is None:  # the task module's chart (`PackageTask.per_category_bars`)
        return False
    names, series, title = bars
    fig, ax = plt.subplots(figsize=(max(4, 0.4 * len(names) + 2), 3.5))
    _bars(ax, names, series, title)
    if not entry.per_category_shares:
        ax.set_ylim(0, None)
    _save(fig, path)
    return True


def plot_histogram(task: str, rows: list[dict], path) -> bool:
    plt = _pyplot()
    entry = package_task(task) if task in package_task_names() else None
    if entry is None or entry.histogram is None:  # the task module's histogram (`PackageTask.histogram`)
        return False
    values, title, lines = entry.histogram(rows)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist(values, bins=20, range=(0, max(1.0, max(values, default=1.0))), color="tab:blue")
    for x in lines:
        ax.axvline(x, color="tab:red", linestyle="--", linewidth=1)
    ax.set_title(title)
    ax.set_ylabel("count")
    _save(fig, path)
    return True


def _draw_boxes(ax, boxes, intrinsics, colour, width):
    for box in boxes:
        for p0, p1 in project_box_edges(box, intrinsics):
            ax.plot([p0[0], p1[0]], [p0[1], p1[1]], color=colour, linewidth=width)


def _intrinsics(record: dict, image_path: Path):
    if "cam2img" in record:
        return np.asarray(record["cam2img"], dtype=np.float64)

    candidate = image_path.parent / "intrinsic.txt"
    return read_intrinsics(candidate) if candidate.is_file() else None


def plot_sample(task: str, record: dict, row: dict, media_root, path) -> bool:
    """Frame with projected ground-truth (green) and predicted (red) boxes; False if not drawable."""
    plt = _pyplot()
    entry = package_task(task) if task in package_task_names() else None
    boxes = entry.sample_boxes(record, row) if entry is not None and entry.sample_boxes is not None else None
    if boxes is None:  # the task module's figure (`PackageTask.sample_boxes`), when the sample can be drawn
        return False
    k, gt, pred = boxes
    try:
        image_path = media_path(media_root, record["images"][k], row["id"])
    except DataError:
        return False  # a path outside the media root is never read
    intrinsics = _intrinsics(record, image_path)
    if intrinsics is None or not image_path.is_file():
        return False
    image = read_image_file(image_path).convert("RGB")  # upright, as the builder read the frame
    fig, ax = plt.subplots(figsize=(6, 6 * image.height / image.width))
    ax.imshow(image)
    _draw_boxes(ax, gt, intrinsics, "lime", 3.0)  # wider, so an exact prediction on top leaves it visible
    _draw_boxes(ax, pred, intrinsics, "red", 1.2)
    ax.set_xlim(0, image.width)
    ax.set_ylim(image.height, 0)
    ax.set_axis_off()
    score = "excluded" if row["score"] is None else f"{row['score']:.3f}"
    ax.set_title(f"{row['id']}  score {score}  (green: truth, red: prediction)", fontsize=8)
    _save(fig, path)
    return True


def write_plots(task: str, records, rows, metrics, media_root, out_dir) -> list[Path]:
    """Write every figure that applies to `task`; returns the written paths."""
    out_dir = Path(out_dir)
    written = []
    if plot_per_category(task, metrics, out_dir / "per_category.png"):
        written.append(out_dir / "per_category.png")
    if plot_histogram(task, rows, out_dir / "iou_hist.png"):
        written.append(out_dir / "iou_hist.png")
    entry = package_task(task) if task in package_task_names() else None
    if entry is not None and entry.sample_boxes is not None:
        (out_dir / "samples").mkdir(exist_ok=True)
        for record, row in list(zip(records, rows))[:MAX_SAMPLE_FIGURES]:
            path = out_dir / "samples" / f"{row['id']}.png"
            if plot_sample(task, record, row, media_root, path):
                written.append(path)
    return written
