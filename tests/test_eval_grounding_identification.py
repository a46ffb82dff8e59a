"""Grounding identification and centre error (evaluation/grounding_identification.py) on SynthRooms data:
the oracle finds every target at 0 m, a box moved onto another object points at that object, a missing box is
wrong at an infinite distance, and the in-memory slice logs both figures."""

import json
import math

import numpy as np
import pytest

from gap_mllm.evaluation import grounding_identification as gi
from gap_mllm.evaluation.runner import run_evaluation, write_oracle_predictions
from gap_mllm.processing.annotation_files import find_annotation_file
from gap_mllm.processing.builders import load_annotation_file
from gap_mllm.processing.coordinates import world_boxes_to_camera


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    from gap_mllm.processing.synth.generator import SynthConfig, SynthRooms
    from gap_mllm.processing.synth.writer import write_dataset

    root = tmp_path_factory.mktemp("synth")
    config = SynthConfig(seed=3, image_size=(48, 64), num_frames=12, min_objects=3, max_objects=5, grounding_frames=8,
                         caption_frames=4, qa_frames=4, recon_samples_per_scene=1, detection_clips_per_scene=1,
                         captions_per_scene=1)  # fmt: skip
    write_dataset(root, SynthRooms(config), {"val": 3})
    return root


@pytest.fixture(scope="module")
def records(synth_data):
    found = load_annotation_file(find_annotation_file(synth_data, "grounding_stage1", "val"))
    assert len(found) >= 4
    return found


def _objects(synth_data, record):
    return json.loads((synth_data / "synthrooms" / f"{record['scene_id']}.json").read_text())["objects"]


def test_oracle_run_identifies_every_target_at_zero_distance(synth_data, records, tmp_path):
    oracle = write_oracle_predictions("grounding", synth_data, tmp_path / "oracle.jsonl")
    run_evaluation("grounding", synth_data, tmp_path / "out", predictions_file=oracle, plots=False)
    found = gi.from_samples(tmp_path / "out" / "samples.jsonl", synth_data, "val")
    assert found["num_samples"] == len(records) and found["num_without_box"] == 0
    assert found["identification"] == 1.0 and found["frame_accuracy"] == 1.0
    assert found["median_centre_error_m"] < 0.01  # the answer text keeps two decimals


def test_frame_accuracy_counts_the_selected_frames(synth_data, records):
    """Rows that select frame 0 everywhere are right exactly on the records annotated with frame 0."""
    rows = [{"id": r["id"], "parsed": {"frame": 0, "bbox_3d": None}} for r in records]
    found = gi.from_rows(records, rows, synth_data)
    expected = sum(gi.annotated_frame(r) == 0 for r in records) / len(records)
    assert found["frame_accuracy"] == pytest.approx(expected)
    assert found["identification"] == 0.0 and found["num_without_box"] == len(records)
    outside = [{"id": r["id"], "parsed": {"frame": len(r["images"]), "bbox_3d": r["gt_bbox"]}} for r in records]
    assert gi.from_rows(records, outside, synth_data)["num_without_box"] == len(records)  # no pose: no box


def test_tolerated_shift_of_a_unit_cube_is_exact():
    """A unit cube moved by d along an axis keeps IoU (1 - d) / (1 + d): 0.25 at d = 0.6, 0.5 at d = 1/3;
    along a diagonal of the x-y plane the overlap is (1 - d/sqrt2)^2, so IoU 0.25 needs a shorter move."""
    cube = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert gi.tolerated_shift(cube, [1.0, 0.0, 0.0], 0.25) == pytest.approx(0.6, abs=1e-6)
    assert gi.tolerated_shift(cube, [0.0, 0.0, -3.0], 0.5) == pytest.approx(1 / 3, abs=1e-6)
    a = 1 - 0.5 ** 0.5 * gi.tolerated_shift(cube, [1.0, 1.0, 0.0], 0.25)  # overlap side along x and y
    assert a * a / (2 - a * a) == pytest.approx(0.25, abs=1e-6)


def test_box_on_another_object_points_at_that_object(synth_data, records):
    """A world box centred on object j of the scene identifies j (so it is right only when j is the target)
    and its centre error is the distance between the two objects' centres."""
    record = records[0]
    objects = _objects(synth_data, record)
    target = int(record["object_id"])
    other = next(j for j in range(len(objects)) if j != target)
    box = np.asarray(objects[other]["bbox_3d"], dtype=np.float64)
    hit, error = gi.identify(record, box, synth_data)
    assert not hit
    expected = np.linalg.norm(np.subtract(objects[other]["bbox_3d"][:3], objects[target]["bbox_3d"][:3]))
    assert error == pytest.approx(expected, abs=1e-12)
    assert gi.identify(record, np.asarray(objects[target]["bbox_3d"]), synth_data) == (True, 0.0)


def test_camera_box_of_the_selected_frame_reaches_the_world(synth_data, records):
    """`world_box` inverts the camera transform of the selected frame: the target's box written in frame k's
    camera comes back on the target."""
    record = records[1]
    k = len(record["images"]) - 1
    camera = world_boxes_to_camera(np.asarray(record["gt_bbox"])[None], record["cam2global"][k], record.get("axis_align_matrix"))[0]
    world = gi.world_box(record, k, camera.tolist())
    np.testing.assert_allclose(world[:3], record["gt_bbox"][:3], atol=1e-9)
    assert gi.identify(record, world, synth_data)[0]


def test_missing_box_is_wrong_and_infinitely_far(synth_data, records):
    boxes = [None] + [np.asarray(r["gt_bbox"], dtype=np.float64) for r in records[1:]]
    found = gi.identification_summary(records, boxes, synth_data)
    assert found["num_without_box"] == 1
    assert found["identification"] == pytest.approx((len(records) - 1) / len(records))
    assert found["median_centre_error_m"] == 0.0  # fewer than half the samples are missing
    with pytest.raises(ValueError, match="one predicted box per record"):
        gi.identification_summary(records, boxes[:-1], synth_data)


def test_chance_levels_count_the_scene_objects(synth_data, records):
    levels = gi.chance_levels(records, synth_data)
    scene, category = [], []
    for record in records:
        objects = _objects(synth_data, record)
        label = objects[int(record["object_id"])]["category"]
        scene.append(1 / len(objects))
        category.append(1 / sum(o["category"] == label for o in objects))
    assert levels == {"scene_chance": pytest.approx(np.mean(scene)), "category_chance": pytest.approx(np.mean(category))}
    assert levels["scene_chance"] <= levels["category_chance"] <= 1.0


def test_constant_box_is_placed_in_the_annotated_frame(synth_data, records):
    box = [0.0, 0.0, 2.0, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0]
    found = gi.constant_box(records, box, synth_data)
    errors = []
    for record in records:
        world = gi.world_box(record, gi.annotated_frame(record), box)
        errors.append(np.linalg.norm(world[:3] - np.asarray(record["gt_bbox"][:3])))
    assert found["median_centre_error_m"] == pytest.approx(float(np.median(errors)))


def test_tolerance_summary_covers_every_threshold(records):
    found = gi.tolerance_summary(records[:2], thresholds=(0.25, 0.5), directions=2)
    assert set(found) == {"iou>=0.25", "iou>=0.5"}
    assert 0 < found["iou>=0.5"]["median_m"] < found["iou>=0.25"]["median_m"]


def test_token_grid_oracle_is_exact_on_a_cell_centre_and_fine_cells_lose_little(synth_data, records):
    """A target whose centre projects onto a cell centre keeps its box (error 0, IoU 1); with 1-pixel cells
    every target moves by less than a pixel's footprint."""
    from gap_mllm.processing.coordinates import backproject_pixel, camera_to_world_transform

    record = dict(records[0])
    intrinsics, _ = gi.scene_camera(synth_data, record["scene_id"])
    transform = camera_to_world_transform(record["cam2global"][gi.annotated_frame(record)], record.get("axis_align_matrix"))
    box = list(record["gt_bbox"])
    box[:3] = backproject_pixel(16 + 7.5, 7.5, 2.0, intrinsics, transform).tolist()  # cell (1, 0) of 16 px, 2 m deep
    record["gt_bbox"] = box
    exact = gi.token_grid_oracle([record], synth_data, cell_pixels=16)
    assert exact["median_centre_error_m"] == pytest.approx(0.0, abs=1e-9) and exact["acc@0.5"] == 1.0
    assert exact["centre_in_view"] == 1.0
    fine = gi.token_grid_oracle(records, synth_data, cell_pixels=1)
    coarse = gi.token_grid_oracle(records, synth_data, cell_pixels=16)
    assert fine["median_centre_error_m"] < 0.1 and fine["acc@0.5"] >= coarse["acc@0.5"]
    assert fine["median_centre_error_m"] < coarse["median_centre_error_m"]


def test_scene_without_truth_is_named(tmp_path, records):
    with pytest.raises(FileNotFoundError, match=records[0]["scene_id"]):
        gi.identify(records[0], np.zeros(9), tmp_path)


def test_in_memory_grounding_slice_logs_identification(synth_data, monkeypatch):
    """The slice scores the model's answers with both figures; here the 'model' answers the oracle."""
    from gap_mllm.evaluation import in_memory

    slice_ = in_memory.EvaluationSlice("grounding", synth_data, "val", max_samples=None)
    assert "identification" in slice_.figures
    oracle = [slice_.task.oracle(record, slice_.media_root) for record in slice_.records]
    monkeypatch.setattr(slice_, "answer", lambda generator, batch_size=16: oracle)
    monkeypatch.setattr(in_memory.BatchGenerator, "from_model", staticmethod(lambda *args, **kwargs: None))

    class _Model:
        training = False

        def eval(self):
            return self

        def train(self, mode=True):
            return self

    metrics, _ = slice_.score(_Model(), processor=None)
    assert metrics["identification"] == 1.0 and metrics["acc@0.25"] == 1.0
    assert metrics["median_centre_error_m"] < 0.01 and not math.isnan(metrics["median_centre_error_m"])
    assert metrics["frame_accuracy"] == 1.0


def test_annotated_frame_slice_answers_stage_one_with_the_truth(synth_data, records):
    """With `annotated_frame` the model is asked only the box stage, in the annotated frame k*."""
    from gap_mllm.evaluation import in_memory

    slice_ = in_memory.EvaluationSlice("grounding", synth_data, "val", max_samples=3, annotated_frame=True)

    class _Generator:
        asked = []

        def generate(self, requests):
            self.asked.extend(requests)
            return ['{"bbox_3d": [0, 0, 1, 1, 1, 1, 0, 0, 0]}'] * len(requests)

    outputs = slice_.answer(_Generator(), batch_size=2)
    assert [texts[0] for texts in outputs] == [slice_.task.oracle(r, slice_.media_root)[0] for r in slice_.records]
    assert len(_Generator.asked) == 3  # one box request per record, no frame selection
    with pytest.raises(ValueError, match="frame selection"):
        in_memory.EvaluationSlice("captioning", synth_data, "val", annotated_frame=True)


def test_frame_grid_oracle_at_pixel_resolution_reproduces_the_annotated_frame(synth_data, records):
    result = gi.frame_grid_oracle(records, synth_data, cell_pixels=1)
    assert result["num_samples"] == len(records) and result["half_of_best"]["frame_accuracy"] == 1.0
    zero = sum(gi.annotated_frame(record) == 0 for record in records) / len(records)
    assert result["frame_0"]["frame_accuracy"] == pytest.approx(zero)


def test_frame_rules_on_given_coverage():
    coverage = np.array([0, 3, 10, 6, 0])
    assert gi.frame_from_coverage(coverage, "half_of_best") == 2  # first >= 5
    assert gi.frame_from_coverage(coverage, "first_seen") == 1
    assert gi.frame_from_coverage(coverage, "first_seen", min_coverage=4) == 2
    assert gi.frame_from_coverage(coverage, "most_seen") == 2
    assert gi.frame_from_coverage(coverage, "frame_0") == 0
    assert gi.frame_from_coverage(np.zeros(5, dtype=int), "most_seen") == 0  # never covered
    with pytest.raises(ValueError, match="frame rule 'last'"):
        gi.frame_from_coverage(coverage, "last")


def test_cell_coverage_counts_cells_the_target_covers_at_least_half(synth_data, records):
    from gap_mllm.processing.synth.writer import read_instance_mask

    record = max(records, key=lambda r: gi.target_coverage(r, synth_data).max())  # a well visible target
    cells = gi.target_coverage(record, synth_data, cell_pixels=8)
    for frame, image in enumerate(record["images"]):
        scene, name = image.split("/")[0], image.split("/")[1].rsplit(".", 1)[0]
        mask = read_instance_mask(synth_data / "synthrooms" / "instance" / scene / f"{name}.png") == record["object_id"] + 1
        expected = sum(mask[r:r + 8, c:c + 8].sum() >= 32 for r in range(0, mask.shape[0] - 7, 8) for c in range(0, mask.shape[1] - 7, 8))
        assert cells[frame] == expected
    assert cells.max() > 0
