"""The diagnostic probes of mini/probes.py: the ridge read-out is exact on linear data, and both probes run
on SynthRooms frames and marker samples with the shapes and ranges they document (tiny model, seconds)."""

from __future__ import annotations

import numpy as np

from gap_mllm.mini.probes import fit_ridge, marker_readout_probe, r_squared, vit_position_probe
from gap_mllm.tiny.tiny_model import build_tiny_model

from .test_train_fixtures import train_data_root  # noqa: F401


def test_ridge_recovers_a_linear_map_and_r_squared_reads_it():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(400, 6)) * [1, 5, 0.1, 2, 3, 1] + 7
    weights, bias = rng.normal(size=(6, 2)), np.array([3.0, -1.0])
    targets = features @ weights + bias
    predicted = fit_ridge(features, targets, lam=1e-6)(features[:50])
    np.testing.assert_allclose(predicted, targets[:50], atol=1e-4)
    assert r_squared(targets[:, 0], np.full(len(targets), targets[:, 0].mean())) == 0.0
    assert abs(r_squared(targets[:50, 1], predicted[:, 1]) - 1.0) < 1e-8


def test_probes_run_on_synthrooms_with_documented_outputs(train_data_root):
    model, processor = build_tiny_model(seed=0)
    model.eval()
    vit = vit_position_probe(model, processor, train_data_root, fit_scenes=2, eval_scenes=1)
    assert vit["num_fit"] > 0 and vit["num_eval"] > 0
    assert all(np.isfinite(vit[f"{name}_r2"]) and vit[f"{name}_r2"] <= 1.0 for name in ("column", "row", "depth", "camera_x"))
    readout = marker_readout_probe(model, processor, train_data_root, fit_samples=12, eval_samples=4, eval_split="val")
    assert 0 < readout["num_fit"] <= 12 and 0 < readout["num_eval"] <= 4
    assert readout["readout_error_m_median"] >= 0 and readout["constant_error_m_median"] > 0
    assert len(readout["axis_correlation"]) == 3
