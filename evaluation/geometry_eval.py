"""A geometry encoder's reconstruction on held-out clips against exact ground truth, next to a trivial baseline.

    report = evaluate_geometry(model, held_out_clips, baseline_clips=train_clips)

`model` is a GAP-MLLM (or its geometry encoder) with camera and depth heads; clips come from
`training.geometry_data.GeometryClips` (exact ground truth), batched with `processing.collator.collate_clips`.
The baseline knows nothing about the clip: its depth is the per-pixel mean normalised depth of `baseline_clips`
(training data), its cameras are the identity rotation with the mean normalised translation of each frame position
over the same clips, and it uses the true intrinsics. Both go through the same scale alignment and metrics.

VGGT's outputs are scale-normalised (docs/vggt.md §5), so every comparison with metric ground
truth first aligns the scale, once per clip (one number for all its frames, as multi-view depth
benchmarks evaluate VGGT): `s = median(d* / d)` over the clip's valid pixels.

    depth       AbsRel = mean |s·d − d*| / d*,  δ<1.25 = share of pixels with max(s·d/d*, d*/(s·d)) < 1.25
                (pixel means per clip, then the mean over clips)
    rotation    geodesic angle (degrees) between the predicted and true rotation of each frame relative to
                frame 0 (frames 1..S−1; frame 0 is the reference by construction)
    translation angle (degrees) between predicted and true translation directions of frames 1..S−1 (scale
                free), and the metric error ‖s·t − t*‖ with the depth scale
    points      per valid pixel, ‖s·p − p*‖ in metres between the points unprojected from the predicted depth
                with the predicted cameras and the true points, all in frame 0's camera (mean per clip, then
                the mean and the median over clips)

`GeometryMetrics` accumulates clips and summarises with means, medians and 95 % bootstrap intervals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch

from gap_mllm.modeling_vggt import pose_encoding_to_extrinsics_intrinsics
from gap_mllm.processing.collator import collate_clips

from .confidence import bootstrap_interval


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


# ---- metrics of one clip and of many clips
def depth_scale(predicted: np.ndarray, target: np.ndarray, valid: np.ndarray) -> float:
    """Median ratio `d*/d` over the valid pixels (the per-clip scale alignment)."""
    ratios = target[valid] / np.maximum(predicted[valid], 1e-9)
    return float(np.median(ratios))


def depth_errors(predicted: np.ndarray, target: np.ndarray, scale: float) -> tuple[float, float]:
    """(AbsRel, δ<1.25) of `scale · predicted` against `target` over pixels with target > 0."""
    valid = target > 0
    aligned = np.maximum(scale * predicted[valid], 1e-9)
    truth = target[valid]
    abs_rel = float(np.mean(np.abs(aligned - truth) / truth))
    delta = float(np.mean(np.maximum(aligned / truth, truth / aligned) < 1.25))
    return abs_rel, delta


def rotation_angle_degrees(r_pred: np.ndarray, r_true: np.ndarray) -> np.ndarray:
    """Geodesic angles `[...]` between rotation matrices `[..., 3, 3]`."""
    relative = np.einsum("...ji,...jk->...ik", r_pred, r_true)
    cosine = (np.trace(relative, axis1=-2, axis2=-1) - 1) / 2
    return np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))


def direction_angle_degrees(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angles `[...]` between vectors `[..., 3]` (0 for a zero vector against anything is undefined: NaN)."""
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    cosine = np.sum(a * b, axis=-1) / np.where(norms > 0, norms, np.nan)
    return np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))


def unproject_to_first(depth: np.ndarray, extrinsics: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """`[S, H, W, 3]` points in frame 0's camera from depth `[S, H, W]`, camera-from-first extrinsics
    `[S, 3, 4]` and intrinsics `[S, 3, 3]` (pixel centres at integers)."""
    views, height, width = depth.shape
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    out = np.empty((views, height, width, 3))
    for v in range(views):
        k = intrinsics[v]
        camera = np.stack([(cols - k[0, 2]) * depth[v] / k[0, 0], (rows - k[1, 2]) * depth[v] / k[1, 1], depth[v]], -1)
        rotation, translation = extrinsics[v, :3, :3], extrinsics[v, :3, 3]
        out[v] = (camera - translation) @ rotation  # Rᵀ(x − t) in row-vector form
    return out


@dataclass
class ClipPrediction:
    """One clip's reconstruction (normalised units) and its metric ground truth.

    depth `[S, H, W]`, extrinsics `[S, 3, 4]` camera-from-first, intrinsics `[S, 3, 3]` (predicted);
    true_depth `[S, H, W]` metres (0 invalid), true_extrinsics `[S, 4, 4]` camera-from-first (metres),
    true_points `[S, H, W, 3]` metres in frame 0's camera.
    """

    depth: np.ndarray
    extrinsics: np.ndarray
    intrinsics: np.ndarray
    true_depth: np.ndarray
    true_extrinsics: np.ndarray
    true_points: np.ndarray


def clip_metrics(clip: ClipPrediction) -> dict[str, float | list[float]]:
    """The metrics of one clip (see the module docstring); rotation/translation errors per frame 1..S−1."""
    valid = clip.true_depth > 0
    scale = depth_scale(clip.depth, clip.true_depth, valid)
    abs_rel, delta = depth_errors(clip.depth, clip.true_depth, scale)
    rotation = rotation_angle_degrees(clip.extrinsics[1:, :3, :3], clip.true_extrinsics[1:, :3, :3])
    direction = direction_angle_degrees(clip.extrinsics[1:, :3, 3], clip.true_extrinsics[1:, :3, 3])
    metric_translation = np.linalg.norm(scale * clip.extrinsics[1:, :3, 3] - clip.true_extrinsics[1:, :3, 3], axis=-1)
    points = unproject_to_first(clip.depth, clip.extrinsics, clip.intrinsics)
    point_error = np.linalg.norm(scale * points[valid] - clip.true_points[valid], axis=-1)
    return {
        "depth_abs_rel": abs_rel,
        "depth_delta_1.25": delta,
        "rotation_error_deg": rotation.tolist(),
        "translation_direction_error_deg": direction.tolist(),
        "translation_error_m": metric_translation.tolist(),
        "point_error_m": float(point_error.mean()),
        "scale": scale,
    }


@dataclass
class GeometryMetrics:
    """Accumulates `clip_metrics` of many clips; `summary()` gives means, medians and 95 % intervals."""

    clips: list[dict] = field(default_factory=list)

    def add(self, clip: ClipPrediction) -> dict:
        metrics = clip_metrics(clip)
        self.clips.append(metrics)
        return metrics

    def summary(self, seed: int = 0) -> dict:
        if not self.clips:
            raise ValueError("no clip was evaluated")
        out: dict[str, float | int | list] = {"num_clips": len(self.clips)}
        for key in ("depth_abs_rel", "depth_delta_1.25", "point_error_m"):
            values = np.array([c[key] for c in self.clips])
            out[key] = float(values.mean())
            out[f"{key}_ci95"] = bootstrap_interval(values, np.mean, seed=seed)
        out["point_error_m_median"] = float(np.median([c["point_error_m"] for c in self.clips]))
        for key in ("rotation_error_deg", "translation_direction_error_deg", "translation_error_m"):
            values = np.concatenate([c[key] for c in self.clips])
            values = values[np.isfinite(values)]
            out[f"{key}_median"] = float(np.median(values))
            out[f"{key}_mean"] = float(values.mean())
            out[f"{key}_median_ci95"] = bootstrap_interval(values, np.median, seed=seed)
        return out


def tensor_clip(output, batch, index: int) -> ClipPrediction:
    """A `ClipPrediction` from a reconstruction output (`GeometryReconstructionOutput`) and a GeometryClips
    batch, for batch element `index` (ground truth de-normalised to metres with the clip's scale)."""
    def numpy(tensor: torch.Tensor) -> np.ndarray:
        return tensor.detach().float().cpu().numpy().astype(np.float64)

    scale = float(batch["scale"][index])

    height, width = batch["depth"].shape[-2:]
    true_extrinsics, _ = pose_encoding_to_extrinsics_intrinsics(batch["pose_encoding"][index].double(), (height, width))
    true = numpy(true_extrinsics)
    true[:, :3, 3] *= scale
    bottom = np.tile(np.array([[[0.0, 0.0, 0.0, 1.0]]]), (true.shape[0], 1, 1))
    return ClipPrediction(
        depth=numpy(output.depth[index, ..., 0]),
        extrinsics=numpy(output.extrinsics[index]),
        intrinsics=numpy(output.intrinsics[index]),
        true_depth=numpy(batch["depth"][index]) * scale,
        true_extrinsics=np.concatenate([true, bottom], axis=1),
        true_points=numpy(batch["points"][index]) * scale,
    )
