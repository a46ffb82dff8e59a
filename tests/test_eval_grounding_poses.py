"""Grounding on real (rounded) poses: transformed like the official code, never a silent 0.

The poses are the official demo sample's (`demo/3d_video_object_detection/sample.json`, scene0362_00):
stored with 6 decimals, so their rotation parts are orthonormal only to ~1e-6. The old rigidity check
(1e-6) rejected frame 1 and the sample silently scored 0.
"""

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from gap_mllm.evaluation.plots import plot_histogram, plot_sample
from gap_mllm.evaluation.tasks import get_task
from gap_mllm.processing.coordinates import (
    RIGID_TOLERANCE,
    box_corners,
    camera_boxes_to_world,
    nearest_rotation,
    orthonormalize_rigid,
    world_boxes_to_camera,
)
from gap_mllm.processing.scoring.box_iou import box_iou
from gap_mllm.processing.scoring.grounding_metrics import (
    UNSCORED_FRAME,
    UNSCORED_GT,
    UNSCORED_NO_BOX,
    UNSCORED_POSE,
    GroundingEvaluator,
    score_grounding,
)

DEMO_POSES = np.array([
    [[0.453649, -0.308603, 0.836042, 2.080077], [-0.888342, -0.231401, 0.396613, 3.510754],
     [0.071065, -0.922615, -0.37912, 1.352882], [0.0, 0.0, 0.0, 1.0]],
    [[0.69275, -0.297506, 0.656953, 2.206703], [-0.718518, -0.362884, 0.593335, 3.279519],
     [0.061876, -0.883066, -0.465151, 1.330153], [0.0, 0.0, 0.0, 1.0]],
])  # fmt: skip
DEMO_ALIGN = np.array([[-0.990268, 0.139173, 0.0, 1.60983], [-0.139173, -0.990268, 0.0, 3.83849],
                       [0.0, 0.0, 1.0, -0.082755], [0.0, 0.0, 0.0, 1.0]])
GT_WORLD = np.array([1.2, 0.8, 0.45, 0.9, 0.6, 0.9, 0.7, 0.0, 0.0])  # gravity-aligned, axis-aligned world


def official_camera_to_world(box, extrinsic):
    """The official `transform_scanrefer_bbox` written out from docs/method.md §5.4: centre with the raw
    matrix, rotation re-read through scipy's `from_matrix` (which returns the nearest rotation)."""
    centre = (extrinsic @ np.r_[box[:3], 1.0])[:3]
    rotation = Rotation.from_matrix(extrinsic[:3, :3] @ Rotation.from_euler("zxy", box[6:9]).as_matrix())
    return np.r_[centre, box[3:6], rotation.as_euler("zxy")]


def test_demo_pose_is_not_exactly_orthonormal_but_within_tolerance():
    extrinsic = DEMO_ALIGN @ DEMO_POSES[1]
    rotation = extrinsic[:3, :3]
    assert np.abs(rotation @ rotation.T - np.eye(3)).max() > 1e-6  # what the old check refused
    cleaned = orthonormalize_rigid(extrinsic)
    np.testing.assert_allclose(cleaned[:3, :3] @ cleaned[:3, :3].T, np.eye(3), atol=1e-14)
    assert np.abs(cleaned[:3, :3] - rotation).max() < 2e-6 and np.array_equal(cleaned[:3, 3], extrinsic[:3, 3])
    # the SVD polar factor is the rotation scipy's from_matrix returns (the official code's route)
    np.testing.assert_allclose(nearest_rotation(rotation), Rotation.from_matrix(rotation).as_matrix(), atol=1e-12)


@pytest.mark.parametrize("frame", [0, 1])
def test_exact_prediction_on_the_demo_poses_scores_one(frame):
    pred_camera = world_boxes_to_camera(GT_WORLD[None], DEMO_POSES[frame], DEMO_ALIGN)[0]
    score = score_grounding(pred_camera, GT_WORLD, DEMO_POSES[frame], DEMO_ALIGN)
    assert score.reason is None
    assert score.iou == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("frame", [0, 1])
def test_official_compat_moves_the_centre_with_the_raw_matrix_as_the_official_code(frame):
    """official_compat is the official recipe exactly (same numbers, not just close): the centre moved with
    the stored 6-decimal matrix, so the box that is exact under the cleaned pose scores ~1e-6 below 1."""
    pred_camera = world_boxes_to_camera(GT_WORLD[None], DEMO_POSES[frame], DEMO_ALIGN)[0]
    score = score_grounding(pred_camera, GT_WORLD, DEMO_POSES[frame], DEMO_ALIGN, official_compat=True)
    official_world = official_camera_to_world(pred_camera, DEMO_ALIGN @ DEMO_POSES[frame])
    assert score.reason is None
    assert score.iou == box_iou(official_world, GT_WORLD, "official", official_compat=True)  # bitwise
    assert score.iou == pytest.approx(1.0, abs=1e-5)
    cleaned = camera_boxes_to_world(pred_camera[None], DEMO_POSES[frame], DEMO_ALIGN)[0]
    assert not np.array_equal(official_world[:3], cleaned[:3])  # the two transforms really differ


def test_official_compat_uses_a_scaled_pose_as_the_official_code_does():
    """The official code applies whatever finite matrix is stored; only the default refuses a non-rigid one."""
    scaled = np.diag([1.01, 1.0, 1.0, 1.0])
    assert score_grounding(GT_WORLD, GT_WORLD, scaled).reason == UNSCORED_POSE
    score = score_grounding(GT_WORLD, GT_WORLD, scaled, official_compat=True)
    assert score.reason is None
    assert score.iou == box_iou(official_camera_to_world(GT_WORLD, scaled), GT_WORLD, "official", official_compat=True)


def test_transform_matches_the_official_recipe_to_micrometres():
    rng = np.random.default_rng(0)
    extrinsic = DEMO_ALIGN @ DEMO_POSES[1]
    for _ in range(5):
        box = np.r_[rng.uniform(-1, 1, 2), rng.uniform(1, 3), rng.uniform(0.2, 1.5, 3), rng.uniform(-1.5, 1.5, 3)]
        ours = camera_boxes_to_world(box[None], DEMO_POSES[1], DEMO_ALIGN)[0]
        official = official_camera_to_world(box, extrinsic)
        # rotations agree to rounding; centres differ by the raw-vs-cleaned matrix (~1e-6 of the distance)
        np.testing.assert_allclose(box_corners(ours), box_corners(official), atol=2e-5)


@pytest.mark.parametrize(
    "pose, expected_fragment",
    [
        (np.full((4, 4), -np.inf), "NaN or inf"),  # ScanNet marks failed tracking frames with -inf poses
        (np.diag([1.01, 1.0, 1.0, 1.0]), "not a rigid motion"),  # a 1 % scale
        (np.diag([-1.0, 1.0, 1.0, 1.0]), "not a rigid motion"),  # a reflection
    ],
)
def test_unusable_pose_is_unscored_by_reason(pose, expected_fragment):
    score = score_grounding(GT_WORLD, GT_WORLD, pose)
    assert score.iou is None and score.reason == UNSCORED_POSE and expected_fragment in score.detail
    assert score.value(official_compat=False) is None and score.value(official_compat=True) == 0.0


def test_tolerance_edge():
    inside = np.diag([1 + 0.9 * RIGID_TOLERANCE, 1.0, 1.0, 1.0])
    outside = np.diag([1 + 1.1 * RIGID_TOLERANCE, 1.0, 1.0, 1.0])
    assert score_grounding(GT_WORLD, GT_WORLD, inside).iou == pytest.approx(1.0, abs=1e-12)
    assert score_grounding(GT_WORLD, GT_WORLD, outside).reason == UNSCORED_POSE


def demo_records():
    """Five ScanRefer-style records on the demo poses: good, bad pose (-inf), missing cam2global,
    NaN gt_bbox, and one whose answer will have no box."""
    base = {"images": ["scene0362_00/00350.jpg", "scene0362_00/00380.jpg"], "gt_bbox": GT_WORLD.tolist(),
            "cam2global": DEMO_POSES.tolist(), "axis_align_matrix": DEMO_ALIGN.tolist()}
    bad_pose = json.loads(json.dumps(base))
    bad_pose["cam2global"][1] = np.full((4, 4), -np.inf).tolist()
    no_pose = {k: v for k, v in base.items() if k != "cam2global"}
    bad_gt = {**base, "gt_bbox": [float("nan")] * 9}
    return [dict(base, id="good"), dict(bad_pose, id="bad_pose"), dict(no_pose, id="no_pose"),
            dict(bad_gt, id="bad_gt"), dict(base, id="no_box")]


def run_grounding(official_compat):
    records = demo_records()
    task = get_task("grounding", official_compat)
    good_box = world_boxes_to_camera(GT_WORLD[None], DEMO_POSES[1], DEMO_ALIGN)[0]
    answer = json.dumps({"bbox_3d": [round(v, 6) for v in good_box.tolist()]})
    outputs = [['{"frame": 1}', answer] for _ in records]
    outputs[-1][1] = "I cannot find it."
    return task.evaluate(records, outputs, official_compat=official_compat)


def test_default_mode_excludes_data_failures_and_reports_every_reason():
    rows, summary = run_grounding(official_compat=False)
    assert summary["unscored"] == {UNSCORED_GT: 1, UNSCORED_NO_BOX: 1, UNSCORED_POSE: 2}
    assert summary["num_samples"] == 2 and summary["num_excluded"] == 3  # "good" and "no_box" count
    assert summary["hits@0.25"] == 1 and summary["acc@0.25"] == 0.5
    assert summary["miou"] == pytest.approx(0.5, abs=1e-4)
    assert [r["unscored"] for r in rows] == [None, UNSCORED_POSE, UNSCORED_POSE, UNSCORED_GT, UNSCORED_NO_BOX]
    assert [r["score"] is None for r in rows] == [False, True, True, True, False]
    assert rows[0]["score"] == pytest.approx(1.0, abs=1e-4)  # 6-decimal answer text


def test_official_mode_counts_every_failure_as_zero_and_still_reports_it():
    rows, summary = run_grounding(official_compat=True)
    assert summary["unscored"] == {UNSCORED_GT: 1, UNSCORED_NO_BOX: 1, UNSCORED_POSE: 2}
    assert summary["num_samples"] == 5 and summary["num_excluded"] == 0
    assert summary["acc@0.25"] == pytest.approx(1 / 5) and summary["miou"] == pytest.approx(1 / 5, abs=1e-4)
    assert [r["score"] for r in rows][1:] == [0.0, 0.0, 0.0, 0.0]


def test_frame_out_of_range_is_a_counted_model_failure():
    ev = GroundingEvaluator()
    record = dict(demo_records()[0])
    from gap_mllm.processing.scoring.grounding_metrics import score_grounding_record

    score = score_grounding_record(record, 5, GT_WORLD.tolist())
    ev.add_score(score)
    assert score.reason == UNSCORED_FRAME and ev.compute()["num_samples"] == 1 and ev.compute()["miou"] == 0.0


def test_oracle_scores_one_on_rounded_poses_and_reports_unusable_ones(tmp_path):
    task = get_task("grounding")
    records = demo_records()[:2]
    for record in records:
        record["conversations"] = [{"value": ""}, {"value": '{"frame": 1}'}]
    oracle = [task.oracle(r, tmp_path) for r in records]
    assert oracle[1][1] == ""  # no camera-frame truth for a -inf pose; the scorer says why
    rows, summary = task.evaluate(records, oracle)
    assert rows[0]["score"] > 0.97  # the answer text is rounded to 2 decimals: faces move by <= 5 mm
    assert summary["unscored"] == {UNSCORED_POSE: 1} and summary["num_excluded"] == 1


def test_plots_skip_unusable_samples_instead_of_crashing(tmp_path):
    rows, _ = run_grounding(official_compat=False)
    records = demo_records()
    assert plot_sample("grounding", records[1], rows[1], tmp_path, tmp_path / "x.png") is False
    assert plot_histogram("grounding", rows, tmp_path / "hist.png") and (tmp_path / "hist.png").is_file()
