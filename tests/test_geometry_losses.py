"""VGGT's confidence-weighted regression losses of stage 0 (training/aux_losses.py), against the formula
written out pixel by pixel in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gap_mllm.training.aux_losses import depth_loss, pointmap_loss


def formula(prediction, confidence, target, valid, gradient_weight, alpha):
    """The loss of one view, pixel by pixel: `[H, W, C]` prediction/target, `[H, W]` confidence/valid."""
    height, width = valid.shape
    pointwise = [confidence[i, j] * np.linalg.norm(prediction[i, j] - target[i, j])
                 for i in range(height) for j in range(width) if valid[i, j]]
    along_w = [confidence[i, j + 1] * np.linalg.norm((prediction[i, j + 1] - prediction[i, j]) - (target[i, j + 1] - target[i, j]))
               for i in range(height) for j in range(width - 1) if valid[i, j] and valid[i, j + 1]]
    along_h = [confidence[i + 1, j] * np.linalg.norm((prediction[i + 1, j] - prediction[i, j]) - (target[i + 1, j] - target[i, j]))
               for i in range(height - 1) for j in range(width) if valid[i, j] and valid[i + 1, j]]
    log_c = [np.log(confidence[i, j]) for i in range(height) for j in range(width) if valid[i, j]]
    return np.mean(pointwise) + gradient_weight * (np.mean(along_w) + np.mean(along_h)) - alpha * np.mean(log_c)


@pytest.fixture
def view():
    rng = np.random.default_rng(3)
    height, width = 5, 7
    valid = rng.random((height, width)) > 0.3
    return {"prediction": rng.normal(size=(height, width, 3)), "target": rng.normal(size=(height, width, 3)),
            "confidence": 1 + rng.exponential(size=(height, width)), "valid": valid}


def test_pointmap_loss_is_the_confidence_weighted_euclidean_formula(view):
    expected = formula(view["prediction"], view["confidence"], view["target"], view["valid"], 0.7, 0.2)
    got = pointmap_loss(*(torch.from_numpy(view[k]) for k in ("prediction", "confidence", "target", "valid")), 0.7, 0.2)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_depth_loss_is_the_one_channel_case_with_invalid_depth_at_zero(view):
    depth, target = view["prediction"][..., 0], np.abs(view["target"][..., 0]) * view["valid"]
    expected = formula(depth[..., None], view["confidence"], target[..., None], target > 0, 1.0, 0.2)
    got = depth_loss(torch.from_numpy(depth), torch.from_numpy(view["confidence"]), torch.from_numpy(target), 1.0, 0.2)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_a_view_without_valid_pixels_gives_zero_with_a_gradient():
    prediction = torch.ones(3, 4, 3, requires_grad=True)
    loss = pointmap_loss(prediction, torch.ones(3, 4), torch.zeros(3, 4, 3), torch.zeros(3, 4, dtype=torch.bool))
    loss.backward()
    assert float(loss) == 0.0 and prediction.grad is not None
