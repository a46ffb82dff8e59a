"""95 % confidence intervals for evaluation tables.

    wilson_interval(successes, n)          a proportion (accuracy at an IoU threshold): Wilson score interval,
                                           good at small n and near 0 or 1 where the normal one is not
    bootstrap_interval(values, statistic)  any statistic of per-sample values (mean IoU, median error, ...):
                                           percentile bootstrap over samples
    bootstrap_statistic(samples, fn)       a statistic of a whole set (detection F1 pooled over samples,
                                           CIDEr whose IDF depends on the set): percentile bootstrap that
                                           resamples the samples and recomputes `fn` on each resample
    paired_difference(a, b, statistic)     two arms on the same samples: statistic(a) - statistic(b), bootstrap
                                           over the samples drawn jointly for both (what they share cancels)
    paired_statistic_difference(a, b, fn)  the same for a statistic of a whole set (pooled detection F1)

Both paired forms take `groups` (one label per sample, e.g. its scene): the bootstrap then draws whole groups with
replacement (a cluster bootstrap), so samples that share a scene are not counted as independent evidence; without
`groups` it draws samples. All bootstraps use a fixed seed, so a table is reproducible.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

Z_95 = 1.959963984540054
DEFAULT_RESAMPLES = 1000


def wilson_interval(successes: int, n: int, z: float = Z_95) -> list[float]:
    """[low, high] of the Wilson score interval of `successes / n` (n ≥ 1)."""
    if n <= 0:
        raise ValueError("a confidence interval needs at least one sample")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def bootstrap_interval(values, statistic: Callable = np.mean, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> list[float]:
    """[2.5 %, 97.5 %] percentiles of `statistic` over bootstrap resamples of `values` (1-D)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("a confidence interval needs at least one sample")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, values.size, size=(resamples, values.size))
    stats = np.array([statistic(values[row]) for row in draws])
    return [float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))]


def bootstrap_statistic(samples: Sequence, fn: Callable[[list], float], resamples: int = 200, seed: int = 0) -> list[float]:
    """[2.5 %, 97.5 %] of `fn(resample)` over bootstrap resamples of `samples` (any objects)."""
    if len(samples) == 0:
        raise ValueError("a confidence interval needs at least one sample")
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(resamples):
        rows = rng.integers(0, len(samples), size=len(samples))
        stats.append(fn([samples[i] for i in rows]))
    return [float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))]


def _group_members(groups, size: int) -> list[np.ndarray]:
    """[G] index arrays, one per distinct label of `groups` (in first-seen order), over `size` samples."""
    labels = list(groups)
    if len(labels) != size:
        raise ValueError(f"groups: {len(labels)} labels for {size} samples; give one group (e.g. scene) per sample")
    members: dict = {}
    for index, label in enumerate(labels):
        members.setdefault(label, []).append(index)
    return [np.asarray(indices, dtype=np.int64) for indices in members.values()]


def resample_rows(rng: np.random.Generator, size: int, resamples: int, groups=None) -> list[np.ndarray]:
    """`resamples` bootstrap draws of row indices over `size` samples: samples with replacement, or (with `groups`)
    whole groups with replacement, each drawn group contributing all of its samples (a cluster bootstrap)."""
    if groups is None:
        return list(rng.integers(0, size, size=(resamples, size)))
    members = _group_members(groups, size)
    draws = rng.integers(0, len(members), size=(resamples, len(members)))
    return [np.concatenate([members[g] for g in row]) for row in draws]


def paired_difference(a, b, statistic: Callable = np.mean, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                      groups=None) -> dict:
    """`statistic(a) - statistic(b)` of two arms scored on the same samples (`a[i]`, `b[i]` one sample), with the
    [2.5 %, 97.5 %] percentiles of the difference over bootstrap resamples of the samples (drawn jointly, so
    what the samples share cancels; with `groups`, of whole groups: module docstring), and the share of samples
    where `a` is above / below `b`."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired arms need the same non-empty 1-D shape, got {a.shape} and {b.shape}")
    rng = np.random.default_rng(seed)
    stats = np.array([statistic(a[row]) - statistic(b[row]) for row in resample_rows(rng, a.size, resamples, groups)])
    found = {"difference": float(statistic(a) - statistic(b)),
             "ci95": [float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))],
             "share_above": float(np.mean(a > b)), "share_below": float(np.mean(a < b))}
    if groups is not None:
        found["num_groups"] = len(set(groups))
    return found


def paired_statistic_difference(samples_a: Sequence, samples_b: Sequence, fn: Callable[[list], float],
                                resamples: int = 200, seed: int = 0, groups=None) -> dict:
    """`fn(samples_a) - fn(samples_b)` for a statistic of a whole set (e.g. detection F1 pooled over samples),
    `samples_a[i]` and `samples_b[i]` being the two arms' results on one sample; the [2.5 %, 97.5 %] percentiles
    of the difference over bootstrap resamples of the samples (with `groups`, of whole groups), drawn jointly for
    both arms."""
    if len(samples_a) != len(samples_b) or len(samples_a) == 0:
        raise ValueError(f"paired arms need the same non-empty number of samples, got {len(samples_a)} and {len(samples_b)}")
    rng = np.random.default_rng(seed)
    stats = [fn([samples_a[i] for i in rows]) - fn([samples_b[i] for i in rows])
             for rows in resample_rows(rng, len(samples_a), resamples, groups)]
    found = {"difference": float(fn(list(samples_a)) - fn(list(samples_b))),
             "ci95": [float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))]}
    if groups is not None:
        found["num_groups"] = len(set(groups))
    return found
