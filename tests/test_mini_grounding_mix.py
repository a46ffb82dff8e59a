"""mini/grounding_mix.py: 2D referring and grounding's box stage trained together (batches, samples, the run)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gap_mllm.mini.grounding_mix import MixedDraw, box_samples, main
from gap_mllm.mini.referring_2d import LOG_FILE, STATE_FILE
from gap_mllm.output_parsing import parse_grounding
from gap_mllm.processing.annotation_files import find_annotation_file
from gap_mllm.tiny.tiny_model import build_tiny_model

from .test_train_fixtures import train_data_root  # noqa: F401


def test_mixed_batches_hold_the_share_of_each_task_in_its_own_order():
    referring = [{"id": f"r{i}"} for i in range(5)]
    boxes = [{"id": f"b{i}"} for i in range(3)]
    draw = MixedDraw(referring, boxes, batch_size=4, share_2d=0.5)
    seen_referring, seen_boxes = [], []
    for step in range(1, 16):
        batch = draw(step)
        assert [s["id"][0] for s in batch] == ["r", "r", "b", "b"]
        seen_referring += [s["id"] for s in batch[:2]]
        seen_boxes += [s["id"] for s in batch[2:]]
    # each task walks a fixed permutation cyclically: every sample the same number of times
    assert sorted(seen_referring) == sorted([f"r{i}" for i in range(5)] * 6)
    assert sorted(seen_boxes) == sorted([f"b{i}" for i in range(3)] * 10)
    assert draw(7) == MixedDraw(referring, boxes, 4, 0.5)(7)  # the same batches on resume
    assert [s["id"][0] for s in MixedDraw(referring, boxes, 4, 0.0)(1)] == ["b"] * 4  # the control
    assert [s["id"][0] for s in MixedDraw(referring, boxes, 3, 1 / 3)(1)] == ["r", "b", "b"]
    with pytest.raises(ValueError, match="share_2d"):
        MixedDraw(referring, boxes, 4, 1.5)


def test_box_samples_are_the_stage2_records_with_their_views(train_data_root):
    records = json.loads(find_annotation_file(train_data_root, "grounding_stage2", "train").read_text())
    samples = box_samples(train_data_root, "train")
    assert len(samples) == len(records)
    for sample, record in zip(samples, records):
        assert sample["prompt"].count("<image>") == len(sample["images"]) == len(record["images"])
        assert all(path.endswith(name) for path, name in zip(sample["images"], record["images"]))
        assert parse_grounding(sample["answer"]).box.to_list() == pytest.approx(parse_grounding(record["conversations"][1]["value"]).box.to_list())


def test_the_run_stops_at_its_time_limit_and_resumes_to_its_evaluation(train_data_root, tmp_path):
    model, processor = build_tiny_model(seed=0)
    model.save_pretrained(tmp_path / "start")
    processor.save_pretrained(tmp_path / "start")
    common = ["--model", str(tmp_path / "start"), "--data", str(train_data_root), "--out", str(tmp_path / "run"),
              "--min-pixels", "50", "--eval-samples", "2", "--views-per-object", "1", "--steps", "3", "--batch-size", "2",
              "--eval-every", "3", "--eval-batch-size", "2"]
    stopped = main([*common, "--time-limit-s", "0"])
    assert stopped["evaluations"] == [] and stopped["per_step"] == {"referring": 1, "box": 1}
    assert not (tmp_path / "run" / LOG_FILE).exists()
    import torch

    assert torch.load(tmp_path / "run" / STATE_FILE, weights_only=True)["step"] == 1
    report = main([*common, "--workers", "1"])  # the resumed steps decoded by a DataLoader process
    assert [e["step"] for e in report["evaluations"]] == [3]
    final = report["evaluations"][0]
    assert final["referring_val"]["num_samples"] == 2 and set(final["referring_val"]["points_at"]) >= {"named_object", "room"}
    assert 0 <= final["box_val"]["identification"] <= 1 and final["box_val"]["frame_accuracy"] == 1.0  # k* is given
    assert {"acc@0.25", "median_centre_error_m"} <= set(report["constant"]["box_val"])
    assert [json.loads(line)["step"] for line in (tmp_path / "run" / LOG_FILE).read_text().splitlines()] == [3]


def _write_rows(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_compare_pairs_two_models_rows(tmp_path):
    a = _write_rows(tmp_path / "a.jsonl", [{"id": "0", "iou": 0.3, "identified": True, "centre_error_m": 0.2},
                                           {"id": "1", "iou": 0.1, "identified": True, "centre_error_m": 0.5},
                                           {"id": "2", "iou": 0.0, "identified": False, "centre_error_m": float("inf")}])
    b = _write_rows(tmp_path / "b.jsonl", [{"id": "0", "iou": 0.2, "identified": False, "centre_error_m": 1.0},
                                           {"id": "1", "iou": 0.1, "identified": True, "centre_error_m": 0.7},
                                           {"id": "2", "iou": 0.0, "identified": False, "centre_error_m": 2.0}])
    out = main(["--compare", str(a), str(b)])
    assert out["num_samples"] == 3
    assert out["acc@0.25"]["difference"] == pytest.approx(1 / 3)
    assert out["identification"]["difference"] == pytest.approx(1 / 3)
    assert out["median_centre_error_m"]["difference"] == pytest.approx(0.5 - 1.0)
    boxless = _write_rows(tmp_path / "boxless.jsonl", [{"id": str(i), "iou": 0.0, "identified": False, "centre_error_m": float("inf")}
                                                       for i in range(3)])
    no_median = main(["--compare", str(boxless), str(b)])["median_centre_error_m"]
    assert no_median["difference"] is None and "no box" in no_median["reason"]
    c = _write_rows(tmp_path / "c.jsonl", [{"id": "9", "iou": 0.3, "identified": True, "centre_error_m": 0.2}] * 3)
    with pytest.raises(ValueError, match="same records"):
        main(["--compare", str(a), str(c)])


def test_evaluate_only_writes_one_row_per_record(train_data_root, tmp_path):
    model, processor = build_tiny_model(seed=0)
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    answers = tmp_path / "answers.jsonl"
    report = main(["--evaluate-only", "--model", str(tmp_path / "m"), "--data", str(train_data_root), "--split", "val",
                   "--min-pixels", "50", "--eval-batch-size", "4", "--answers", str(answers)])
    records = json.loads(find_annotation_file(train_data_root, "grounding_stage1", "val").read_text())
    rows = [json.loads(line) for line in answers.read_text().splitlines()]
    assert len(rows) == len(records)
    for row in rows:
        assert set(row) == {"id", "answer", "iou", "identified", "centre_error_m"} and row["centre_error_m"] >= 0
    assert report["box"]["identification"] == pytest.approx(np.mean([row["identified"] for row in rows]))
    assert report["split"] == "val" and report["referring"]["num_samples"] >= 1
    same = main(["--compare", str(answers), str(answers)])
    assert same["identification"] == {"difference": 0.0, "ci95": [0.0, 0.0], "share_above": 0.0, "share_below": 0.0}
    if np.median([row["centre_error_m"] for row in rows]) == float("inf"):  # the untrained model writes few boxes
        assert same["median_centre_error_m"]["difference"] is None and "no box" in same["median_centre_error_m"]["reason"]
    else:
        assert same["median_centre_error_m"]["difference"] == 0.0
