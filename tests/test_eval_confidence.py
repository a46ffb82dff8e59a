"""evaluation/confidence.py: the paired bootstrap of two arms scored on the same samples."""

from __future__ import annotations

import numpy as np
import pytest

from gap_mllm.evaluation.confidence import paired_difference


def test_paired_difference_of_means_and_medians():
    a, b = [1.0, 2.0, 3.0, 4.0], [0.0, 2.0, 1.0, 4.0]
    mean = paired_difference(a, b)
    assert mean["difference"] == pytest.approx(0.75)
    assert mean["share_above"] == 0.5 and mean["share_below"] == 0.0
    # every paired difference is 0, 1 or 2, so every resample's mean lies in [0, 2] and the interval holds 0.75
    assert 0.0 <= mean["ci95"][0] <= 0.75 <= mean["ci95"][1] <= 2.0
    assert paired_difference(a, b, np.median)["difference"] == pytest.approx(1.0)  # 2.5 - 1.5


def test_paired_resampling_cancels_what_the_samples_share():
    """B is A plus 0.1 on every sample: each resample differs by exactly -0.1, however spread the samples are."""
    a = np.random.default_rng(0).normal(0, 10, size=200)
    out = paired_difference(a, a + 0.1, np.median)
    assert out["difference"] == pytest.approx(-0.1)
    assert out["ci95"] == pytest.approx([-0.1, -0.1])
    assert out["share_below"] == 1.0


def test_paired_difference_refuses_unpaired_arms():
    with pytest.raises(ValueError, match="same non-empty 1-D shape"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="same non-empty 1-D shape"):
        paired_difference([], [])
