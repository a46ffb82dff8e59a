"""Evaluate a geometry encoder's reconstruction heads on held-out clips, next to a trivial baseline.

    report = evaluate_geometry(model, held_out_clips, baseline_clips=train_clips)

`model` is a GAP-MLLM (or its geometry encoder) with camera and depth heads; clips come from
`training.geometry_data.GeometryClips` (exact ground truth), batched with `processing.collator.collate_clips`. The baseline knows nothing about the clip:
its depth is the per-pixel mean normalised depth of `baseline_clips` (training data), its cameras are
the identity rotation with the mean normalised translation of each frame position over the same clips,
and it uses the true intrinsics. Both go through the same scale alignment and metrics
(evaluation/geometry_metrics.py).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from gap_mllm.processing.collator import collate_clips

from .geometry_metrics import GeometryMetrics, tensor_clip


def _loader(clips, batch_size: int):
    return torch.utils.data.DataLoader(clips, batch_size=batch_size, collate_fn=collate_clips)


class MeanClipBaseline:
    """The clip-blind predictor of the module docstring, fitted on `clips` (at most `max_clips` of them)."""

    def __init__(self, clips, max_clips: int = 256, batch_size: int = 16):
        depth_sum, count, translations = None, 0, []
        for batch in _loader(torch.utils.data.Subset(clips, range(min(max_clips, len(clips)))), batch_size):
            depth = batch["depth"].double()
            depth_sum = depth.sum((0, 1)) if depth_sum is None else depth_sum + depth.sum((0, 1))
            count += depth.shape[0] * depth.shape[1]
            translations.append(batch["pose_encoding"][..., :3].double())
        self.depth = (depth_sum / count).float()  # [H, W] normalised units
        self.translation = torch.cat(translations).mean(0).float()  # [S, 3]

    def __call__(self, batch) -> SimpleNamespace:
        b, s = batch["depth"].shape[:2]
        extrinsics = torch.zeros(b, s, 3, 4)
        extrinsics[..., :3, :3] = torch.eye(3)
        extrinsics[..., :3, 3] = self.translation[:s]
        return SimpleNamespace(depth=self.depth.expand(b, s, *self.depth.shape)[..., None], extrinsics=extrinsics,
                               intrinsics=batch["intrinsics"])


@torch.no_grad()
def evaluate_geometry(model, clips, baseline_clips=None, batch_size: int = 8, device=None) -> dict:
    """`{"model": summary, "baseline": summary}` over every clip of `clips` (see the module docstring)."""
    encoder = getattr(model, "geometry_encoder", model)
    was_training = encoder.training
    encoder.eval()
    device = device or next(encoder.parameters()).device
    dtype = next(encoder.parameters()).dtype
    ours, baseline_metrics = GeometryMetrics(), GeometryMetrics()
    baseline = MeanClipBaseline(baseline_clips) if baseline_clips is not None else None
    try:
        for batch in _loader(clips, batch_size):
            output = encoder.reconstruct(batch["images"].to(device=device, dtype=dtype))
            for index in range(batch["images"].shape[0]):
                ours.add(tensor_clip(output, batch, index))
            if baseline is not None:
                guess = baseline(batch)
                for index in range(batch["images"].shape[0]):
                    baseline_metrics.add(tensor_clip(guess, batch, index))
    finally:
        encoder.train(was_training)
    report = {"model": ours.summary()}
    if baseline is not None:
        report["baseline"] = baseline_metrics.summary()
    return report


def format_geometry_report(report: dict) -> str:
    """A Markdown table of the headline geometry figures, model next to baseline."""
    rows = [
        ("depth AbsRel (lower is better)", "depth_abs_rel", "{:.3f}"),
        ("depth δ<1.25 (higher is better)", "depth_delta_1.25", "{:.3f}"),
        ("median rotation error, degrees", "rotation_error_deg_median", "{:.2f}"),
        ("median translation direction error, degrees", "translation_direction_error_deg_median", "{:.2f}"),
        ("median translation error, m", "translation_error_m_median", "{:.3f}"),
        ("mean point error, m", "point_error_m", "{:.3f}"),
    ]
    columns = [name for name in ("model", "baseline") if name in report]
    lines = ["| metric | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for label, key, fmt in rows:
        cells = []
        for column in columns:
            value = report[column][key]
            interval = report[column].get(f"{key}_ci95")
            cells.append(fmt.format(value) + (f" [{fmt.format(interval[0])}, {fmt.format(interval[1])}]" if interval else ""))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(f"\n{report['model']['num_clips']} held-out clips; 95 % bootstrap intervals in brackets.")
    return "\n".join(lines)
