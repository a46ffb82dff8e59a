"""Marker-pointmap reconstruction: accuracy, completion, overall, raw and Umeyama-aligned (docs/method.md §6.4).

Per scene (scene id = parent folder of `images[0]`), the parsed predicted points P `[K, 3]` and the
ground-truth points G `[K, 3]` are stacked in sample order (a sample whose prediction or ground
truth does not parse is dropped from both):

    accuracy    mean over p in P of the distance to the nearest g in G   (KD-tree)
    completion  mean over g in G of the distance to the nearest p in P
    overall     (accuracy + completion) / 2
    medians     the same with medians (computed, not reported, by the official code)
    aligned     the same after the Umeyama Sim(3) fit of P onto G with ORDER-based correspondences
                (p_i <-> g_i): minimise sum ||c·R·p_i + t - g_i||², SVD with reflection correction,
                c = tr(D·S) / sigma_P², sigma_P² = mean squared distance of P from its centroid.

The report is the mean over scenes of each number. Units are those of the data (metres).
Per-sample score (printed, never aggregated, by the official code): max(0, 1 - ||p - g|| / 1.0).

Degenerate scenes: Sim(3) needs >= 3 non-collinear points. The official code does not guard and
produces NaN (fewer than 2 points) or an arbitrary fit; here such scenes get their raw metrics, no
aligned metrics, and are counted in `num_scenes_unaligned`. `official_compat=True` instead aligns
every scene with >= 1 point like the official code and lets NaNs propagate into the means.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

METRIC_KEYS = ("accuracy", "completion", "overall", "accuracy_median", "completion_median", "overall_median")


def umeyama_sim3(source, target):
    """Least-squares similarity `target ≈ c · R @ source + t` for corresponding rows `[K, 3]`.

    Returns `(c, R [3, 3], t [3])`. Umeyama (1991): covariance `Σ = (T - μ_T)ᵀ (S - μ_S) / K`,
    `U D Vᵀ = svd(Σ)`, `S = diag(1, 1, -1)` if det(U)·det(V) < 0, `R = U S Vᵀ`, `c = tr(D S) / σ_S²`.
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    mu_s, mu_t = source.mean(axis=0), target.mean(axis=0)
    var_s = np.square(source - mu_s).sum(axis=1).mean()
    cov = (target - mu_t).T @ (source - mu_s) / len(source)
    u, d, vh = np.linalg.svd(cov)
    s = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vh) < 0:
        s[2, 2] = -1.0
    rotation = u @ s @ vh
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.trace(np.diag(d) @ s) / var_s
    translation = mu_t - scale * rotation @ mu_s
    return float(scale), rotation, translation


def can_align(points) -> bool:
    """True when `points` `[K, 3]` hold >= 3 non-collinear points (Sim(3) is then well defined)."""
    points = np.asarray(points, dtype=np.float64)
    if len(points) < 3:
        return False
    centred = points - points.mean(axis=0)
    singular = np.linalg.svd(centred, compute_uv=False)
    return singular[0] > 0 and singular[1] > 1e-9 * singular[0]


def chamfer_metrics(pred, gt) -> dict:
    """Accuracy / completion / overall (means and medians) between point sets `[K, 3]` and `[M, 3]`."""
    pred, gt = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    from scipy.spatial import cKDTree  # here: scipy.spatial is slow to import (gap-mllm evaluate --help)

    acc_d, _ = cKDTree(gt).query(pred)
    comp_d, _ = cKDTree(pred).query(gt)
    acc, comp = float(np.mean(acc_d)), float(np.mean(comp_d))
    acc_med, comp_med = float(np.median(acc_d)), float(np.median(comp_d))
    return {"accuracy": acc, "completion": comp, "overall": (acc + comp) / 2,
            "accuracy_median": acc_med, "completion_median": comp_med, "overall_median": (acc_med + comp_med) / 2}


def point_score(pred, gt, max_distance: float = 1.0) -> float:
    """The official per-sample score `max(0, 1 - ||p - g|| / max_distance)`; 0.0 if `pred` is None."""
    if pred is None:
        return 0.0
    return max(0.0, 1.0 - float(np.linalg.norm(np.asarray(pred, float) - np.asarray(gt, float))) / max_distance)


@dataclass
class ReconstructionEvaluator:
    """Collect (scene, predicted point or None, ground-truth point) triples; `compute` the scene means."""

    official_compat: bool = False
    scenes: dict = field(default_factory=lambda: defaultdict(lambda: ([], [])))
    num_dropped: int = 0

    def add(self, scene_id: str, pred_point, gt_point) -> None:
        if pred_point is None or gt_point is None:
            self.num_dropped += 1  # the official code drops the sample from both sides
            return
        preds, gts = self.scenes[scene_id]
        preds.append(np.asarray(pred_point, dtype=np.float64).reshape(3))
        gts.append(np.asarray(gt_point, dtype=np.float64).reshape(3))

    def per_scene(self) -> dict:
        out = {}
        for scene_id, (preds, gts) in self.scenes.items():
            pred, gt = np.stack(preds), np.stack(gts)
            row = {"num_points": len(pred), "raw": chamfer_metrics(pred, gt), "aligned": None}
            if self.official_compat or can_align(pred) and can_align(gt):
                scale, rotation, translation = umeyama_sim3(pred, gt)
                aligned = scale * pred @ rotation.T + translation
                if np.all(np.isfinite(aligned)):
                    row["aligned"] = chamfer_metrics(aligned, gt)
                else:
                    row["aligned"] = {k: float("nan") for k in METRIC_KEYS}
            out[scene_id] = row
        return out

    def compute(self) -> dict:
        """`{"raw": {metric: mean over scenes}, "aligned": {...}, "num_scenes", "num_scenes_unaligned",
        "num_points", "num_dropped", "per_scene"}`. Headline (official): `aligned.overall`."""
        scenes = self.per_scene()
        raw = {k: float(np.mean([s["raw"][k] for s in scenes.values()])) if scenes else None for k in METRIC_KEYS}
        aligned_rows = [s["aligned"] for s in scenes.values() if s["aligned"] is not None]
        aligned = {k: float(np.mean([r[k] for r in aligned_rows])) if aligned_rows else None for k in METRIC_KEYS}
        return {
            "raw": raw,
            "aligned": aligned,
            "num_scenes": len(scenes),
            "num_scenes_unaligned": len(scenes) - len(aligned_rows),
            "num_points": int(sum(s["num_points"] for s in scenes.values())),
            "num_dropped": self.num_dropped,
            "per_scene": scenes,
            "official_compat": self.official_compat,
        }
