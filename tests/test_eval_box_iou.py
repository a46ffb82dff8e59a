"""Exact oriented-box IoU: closed-form cases and a Monte Carlo cross-check."""

import warnings

import numpy as np
import pytest

from gap_mllm.processing.coordinates import euler_to_matrix
from gap_mllm.processing.scoring.box_iou import box_iou, box_iou_matrix, box_iou_pairs, box_problem, intersection_volume
from gap_mllm.processing.scoring.detection_metrics import DetectionEvaluator
from gap_mllm.processing.scoring.grounding_metrics import UNSCORED_NO_BOX, GroundingScore, score_grounding

EXACT = 1e-8  # slab widening (1e-9 relative) bounds the error of the exact method


def test_identical_boxes_any_rotation():
    rng = np.random.default_rng(1)
    for _ in range(20):
        box = np.concatenate([rng.normal(size=3), rng.uniform(0.1, 3, 3), rng.uniform(-np.pi, np.pi, 3)])
        assert box_iou(box, box) == pytest.approx(1.0, abs=EXACT)
        assert box_iou(box, box, euler_mode="official") == pytest.approx(1.0, abs=EXACT)


def test_disjoint_and_touching_boxes():
    assert box_iou([0, 0, 0, 1, 1, 1, 0, 0, 0], [3, 0, 0, 1, 1, 1, 0.3, 0.2, 0.1]) == 0.0
    # sharing one face: zero-volume intersection
    assert box_iou([0, 0, 0, 1, 1, 1, 0, 0, 0], [1, 0, 0, 1, 1, 1, 0, 0, 0]) == pytest.approx(0.0, abs=EXACT)
    # sharing an edge only
    assert box_iou([0, 0, 0, 1, 1, 1, 0, 0, 0], [1, 1, 0, 1, 1, 1, 0, 0, 0]) == pytest.approx(0.0, abs=EXACT)


def test_nested_box_is_volume_ratio():
    outer = [0, 0, 0, 4, 4, 4, 0.2, -0.1, 0.3]
    inner = [0.1, -0.2, 0.1, 1, 1, 2, 1.0, 0.5, -0.7]  # fits inside the inscribed sphere of radius 2
    assert box_iou(outer, inner) == pytest.approx(2 / 64, abs=EXACT)


def test_axis_aligned_overlaps_closed_form():
    a = [0, 0, 0, 2, 2, 2, 0, 0, 0]
    assert box_iou(a, [1, 0, 0, 2, 2, 2, 0, 0, 0]) == pytest.approx(4 / 12, abs=EXACT)
    assert box_iou(a, [1, 1, 1, 2, 2, 2, 0, 0, 0]) == pytest.approx(1 / 15, abs=EXACT)


@pytest.mark.parametrize("euler_mode", ["zxy", "official"])
@pytest.mark.parametrize("axis", [6, 7, 8])
def test_90_degree_rotations_swap_sizes(euler_mode, axis):
    """A box rotated by 90° about one of its axes is the same point set as the box with the two other
    sizes swapped; a 180° turn maps a box onto itself."""
    box = np.array([0.5, -0.2, 2.0, 1.0, 2.0, 3.0, 0, 0, 0])
    rotated = box.copy()
    rotated[axis] = np.pi / 2
    # yaw (index 6) turns about z, pitch (7) about x, roll (8) about y
    swap = {6: (3, 4), 7: (4, 5), 8: (3, 5)}[axis]
    swapped = box.copy()
    swapped[[swap[0], swap[1]]] = swapped[[swap[1], swap[0]]]
    assert box_iou(rotated, swapped, euler_mode) == pytest.approx(1.0, abs=EXACT)
    flipped = box.copy()
    flipped[axis] = np.pi
    assert box_iou(flipped, box, euler_mode) == pytest.approx(1.0, abs=EXACT)


def test_square_rotated_45_degrees_closed_form():
    """Unit square vs itself turned 45° about z: octagon area 2(√2 − 1) per unit height."""
    a = [0, 0, 0, 1, 1, 1, 0, 0, 0]
    b = [0, 0, 0, 1, 1, 1, np.pi / 4, 0, 0]
    inter = 2 * (np.sqrt(2) - 1)
    assert box_iou(a, b) == pytest.approx(inter / (2 - inter), abs=EXACT)


def test_monte_carlo_agreement_random_oriented_boxes():
    """Exact IoU vs a Monte Carlo estimate (200k points per pair, seed 0).

    Tolerance 0.01 absolute: the estimate of the inside fraction f has std sqrt(f(1-f)/n) <= 0.0011,
    so 0.01 is > 8 sigma for the fraction and more for the IoU (IoU <= f)."""
    rng = np.random.default_rng(0)
    n_pairs, n_points = 24, 200_000

    def random_boxes(n):
        return np.concatenate([rng.uniform(-0.4, 0.4, (n, 3)), rng.uniform(0.3, 2.0, (n, 3)),
                               rng.uniform(-np.pi, np.pi, (n, 3))], axis=1)

    a, b = random_boxes(n_pairs), random_boxes(n_pairs)
    exact = box_iou_pairs(a, b)
    assert (exact > 0.02).sum() >= 20  # the check is about real overlaps
    for k in range(n_pairs):
        local = rng.uniform(-0.5, 0.5, (n_points, 3)) * a[k, 3:6]
        world = local @ euler_to_matrix(a[k, 6:9]).T + a[k, :3]
        in_b = (np.abs((world - b[k, :3]) @ euler_to_matrix(b[k, 6:9])) <= b[k, 3:6] / 2).all(axis=1)
        vol_a, vol_b = np.prod(a[k, 3:6]), np.prod(b[k, 3:6])
        inter = in_b.mean() * vol_a
        assert exact[k] == pytest.approx(inter / (vol_a + vol_b - inter), abs=0.01)


def test_matrix_matches_pairs_and_is_symmetric():
    rng = np.random.default_rng(3)
    boxes = np.concatenate([rng.uniform(-0.5, 0.5, (6, 3)), rng.uniform(0.5, 1.5, (6, 3)),
                            rng.uniform(-1, 1, (6, 3))], axis=1)
    m = box_iou_matrix(boxes, boxes)
    assert m.shape == (6, 6)
    np.testing.assert_allclose(m, m.T, atol=EXACT)
    np.testing.assert_allclose(np.diag(m), 1.0, atol=EXACT)
    assert m[1, 4] == pytest.approx(box_iou(boxes[1], boxes[4]), abs=1e-12)
    assert box_iou_matrix(boxes[:0], boxes).shape == (0, 6)


def test_euler_modes_differ_on_tilted_boxes():
    """The two readings agree when pitch = roll = 0 and differ otherwise (docs/method.md §5.3)."""
    flat = [0, 0, 0, 1, 2, 3, 0.7, 0, 0]
    assert box_iou(flat, [0, 0, 0, 1, 2, 3, 0.7, 0, 0], "official") == pytest.approx(1.0, abs=EXACT)
    tilted = np.array([0, 0, 0, 1, 2, 3, 0.7, 0.5, 0.9])
    # same triple read both ways describes two different boxes
    r_s, r_p = euler_to_matrix(tilted[6:9], "zxy"), euler_to_matrix(tilted[6:9], "official")
    equivalent = tilted.copy()
    from gap_mllm.processing.coordinates import matrix_to_euler
    equivalent[6:9] = matrix_to_euler(r_p, "zxy")  # the official box written in our convention
    assert not np.allclose(r_s, r_p)
    assert box_iou(tilted, equivalent) < 0.9
    # the official reading of `tilted` equals our reading of `equivalent`
    official_self = box_iou(tilted, [0, 0, 0, 1, 2, 3, 0, 0, 0], "official")
    assert official_self == pytest.approx(box_iou(equivalent, [0, 0, 0, 1, 2, 3, 0, 0, 0], "zxy"), abs=EXACT)


def test_official_compat_degenerate_face_rule():
    thin = [0, 0, 0, 0.01, 0.01, 2.0, 0, 0, 0]  # face 0.01 x 0.01: triangle area 5e-5 < 1e-4
    assert box_iou(thin, thin) == pytest.approx(1.0, abs=EXACT)
    assert box_iou(thin, thin, official_compat=True) == 0.0


def test_negative_sizes_read_as_absolute_and_bad_input_raises():
    assert box_iou([0, 0, 0, -1, 2, 3, 0, 0, 0], [0, 0, 0, 1, 2, 3, 0, 0, 0]) == pytest.approx(1.0, abs=EXACT)
    assert intersection_volume(np.zeros((0, 9)), np.zeros((0, 9))).shape == (0,)
    with pytest.raises(ValueError):
        box_iou([0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 1, 0, 0, 0])
    with pytest.raises(ValueError):
        box_iou([0, 0, np.nan, 1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1, 0, 0, 0])


def test_a_box_beyond_the_float_range_is_a_miss_without_overflow_warnings():
    """Was: numpy's overflow warnings (RuntimeWarning) for boxes of 1e308, in both modes. A value beyond ±1e100 is a
    miss in the IoU (0, never computed) and, in the default mode, a box the evaluators refuse as a non-finite one:
    dropped in detection, "no box" in grounding (both modes)."""
    huge, unit = [1e308] * 6 + [0, 0, 0], [0, 0, 0, 1, 1, 1, 0, 0, 0]
    problem = "bbox_3d holds a value beyond ±1e+100 (1e+308), where its volume and distances overflow"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any numpy warning fails the test
        for official_compat in (False, True):
            assert box_iou(huge, unit, official_compat=official_compat) == 0.0
            matrix = box_iou_matrix([huge, unit], [unit, huge], official_compat=official_compat)
            assert matrix.tolist() == [[0, 0], [1, 0]]
        assert box_problem(huge) == problem and box_problem([0, 0, 0, 1e100, 1, 1, 0, 0, 0]) is None
        default, official = DetectionEvaluator(), DetectionEvaluator(official_compat=True)
        default.add(["chair", "chair"], [huge, unit], ["chair"], [unit])
        official.add(["chair", "chair"], [huge, unit], ["chair"], [unit])
        assert default.compute()["dropped_predictions"] == 1 and default.counts["chair"].fp == 0
        assert official.compute()["dropped_predictions"] == 0 and official.counts["chair"].fp == 1
        assert default.counts["chair"].tp == official.counts["chair"].tp == 1
        for official_compat in (False, True):
            assert score_grounding(huge, unit, np.eye(4), np.eye(4), official_compat) == GroundingScore(
                None, UNSCORED_NO_BOX, f"the predicted {problem}")
