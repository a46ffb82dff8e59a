"""mini/referring_2d.py: 2D boxes from the written instance masks, the two prompt layouts, exact scores, and a
short training run that logs its evaluations and resumes where it stopped (tiny model, SynthRooms fixture)."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest

from gap_mllm.mini.referring_2d import (
    LOG_FILE,
    STATE_FILE,
    box_2d,
    iou_2d,
    main,
    mean_box,
    pointing,
    read_box,
    referring_prompt,
    referring_samples,
    score,
    train,
)
from gap_mllm.processing.synth.writer import encode_instance_mask, read_instance_mask
from gap_mllm.tiny.tiny_model import build_tiny_model

from .test_train_fixtures import train_data_root  # noqa: F401


def test_box_2d_is_the_pixel_bounds_relative_to_the_image():
    mask = np.zeros((100, 200), dtype=np.int32)
    mask[10:30, 50:150] = 3  # rows 10-29, columns 50-149
    assert box_2d(mask, 3, min_pixels=2000) == [250, 100, 750, 300]
    assert box_2d(mask, 3, min_pixels=2001) is None
    assert box_2d(mask, 4, min_pixels=1) is None


def test_layouts_put_the_view_before_or_after_the_description():
    views_first = referring_prompt("the red chair.", "views_first")
    text_first = referring_prompt("the red chair.", "text_first")
    assert views_first.startswith("<image>Locate") and views_first.count("<image>") == 1
    assert text_first.startswith("Locate") and "Text: the red chair.\n<image>Output" in text_first
    assert sorted(views_first.replace("<image>", "")) == sorted(text_first.replace("<image>", ""))
    with pytest.raises(ValueError, match="unknown order"):
        referring_prompt("x", "sideways")


def test_samples_carry_the_box_of_their_view_and_the_records_description(train_data_root):
    samples = referring_samples(train_data_root, "train", views_per_object=3, order="text_first", min_pixels=50)
    records = json.loads(next((train_data_root / "annotations").glob("scanrefer_train_*_stage1.json")).read_text())
    objects = {(r["scene_id"], r["object_id"]) for r in records}
    assert samples and len(samples) <= 3 * len(objects)
    for sample in samples:
        scene, index, frame = sample["id"].rsplit("_", 2)
        assert (scene, int(index)) in objects
        mask = read_instance_mask(train_data_root / "synthrooms" / "instance" / scene / f"{frame}.png")
        assert sample["box"] == box_2d(mask, int(index) + 1, min_pixels=50)
        assert json.loads(sample["answer"]) == {"bbox_2d": sample["box"]}
        assert read_box(sample["answer"]) == [float(v) for v in sample["box"]]
        assert sample["image"].endswith(f"{scene}/{frame}.jpg")
    again = referring_samples(train_data_root, "train", views_per_object=3, order="text_first", min_pixels=50)
    assert [s["id"] for s in again] == [s["id"] for s in samples]  # a fixed seed per split
    with pytest.raises(ValueError, match="covers 100000 pixels"):
        referring_samples(train_data_root, "train", 1, min_pixels=100000)


def test_scores_are_exact():
    truth = [[0, 0, 100, 100], [0, 0, 100, 100], [0, 0, 100, 100], [0, 0, 100, 100]]
    predictions = [[0, 0, 100, 100], [50, 0, 150, 100], [90, 90, 300, 300], None]
    assert iou_2d(predictions[1], truth[1]) == pytest.approx(50 * 100 / (2 * 100 * 100 - 50 * 100))
    assert iou_2d([10, 10, 5, 5], truth[0]) == 0.0  # inverted: no area
    report = score(predictions, truth)
    assert report["acc@0.5"] == 0.25  # IoU 1, 1/3, small, none
    assert report["centre_in_box"] == 0.5  # centres (50, 50) and (100, 50) are inside
    assert report["miou"] == pytest.approx((1 + 1 / 3 + 100 / (100 * 100 + 210 * 210 - 100)) / 4)
    assert report["unparsed"] == 1 and report["acc@0.5_ci"][0] < 0.25 < report["acc@0.5_ci"][1]
    assert read_box('{"bbox_2d": [12, 5') is None
    assert read_box('{"bbox_2d": [0, 36, 238, 681]}') == [0.0, 36.0, 238.0, 681.0]  # not the key's 2
    assert read_box('{"bbox_2d": [1.5, 2, 3, 4, 5]}') == [1.5, 2.0, 3.0, 4.0]
    assert mean_box([{"box": [0, 0, 10, 10]}, {"box": [1, 2, 13, 14]}]) == [0.0, 1.0, 12.0, 12.0]


def test_pointing_reads_what_the_box_centre_lies_on(tmp_path):
    """A 10×20 mask: the named object (id 2) on the left, another object (id 5) on the right, wall (-1) above."""
    mask = np.zeros((10, 20), dtype=np.int32)
    mask[:3] = -1
    mask[3:, :10] = 2
    mask[3:, 10:] = 5
    PIL.Image.fromarray(encode_instance_mask(mask)).save(tmp_path / "m.png")
    sample = {"mask": str(tmp_path / "m.png"), "instance_id": 2}
    predictions = [[0, 500, 400, 900], [600, 500, 1000, 900], [0, 0, 1000, 100], None, [900, 900, 1500, 1500]]
    shares = pointing(predictions, [sample] * 5)
    assert shares == {"named_object": 0.2, "other_object": 0.2, "room": 0.2, "nothing": 0.4}


def test_training_logs_its_evaluations_and_resumes(train_data_root, tmp_path):
    samples = referring_samples(train_data_root, "train", views_per_object=2, min_pixels=50)
    held_out = referring_samples(train_data_root, "val", 1, min_pixels=50, seed=1)[:2]
    model, processor = build_tiny_model(seed=0)
    first = model.vlm.model.language_model.layers[0].mlp.up_proj.weight.detach().clone()
    evaluations = train(model, processor, samples, {"val": held_out}, tmp_path, steps=2, batch_size=2, eval_every=1,
                        warmup_steps=1, log=lambda line: None)
    assert [e["step"] for e in evaluations] == [1, 2]
    assert not np.allclose(first, model.vlm.model.language_model.layers[0].mlp.up_proj.weight.detach())
    assert evaluations[-1]["val"]["num_samples"] == 2 and 0 <= evaluations[-1]["val"]["centre_in_box"] <= 1
    assert sum(evaluations[-1]["val"]["points_at"].values()) == pytest.approx(1.0)
    assert not model.vlm.model.visual.blocks[0].attn.qkv.weight.requires_grad  # encoders stay frozen

    from gap_mllm import GapMllmForConditionalGeneration, GapMllmProcessor

    resumed = GapMllmForConditionalGeneration.from_pretrained(tmp_path / "model")
    lines = []
    more = train(resumed, GapMllmProcessor.from_pretrained(tmp_path / "model"), samples, {"val": held_out}, tmp_path,
                 steps=3, batch_size=2, eval_every=1, warmup_steps=1, log=lines.append)
    assert lines[0] == "resuming at step 3" and [e["step"] for e in more] == [3]
    logged = [json.loads(line)["step"] for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert logged == [1, 2, 3] and (tmp_path / STATE_FILE).exists()


def test_the_command_trains_then_scores_a_saved_model(train_data_root, tmp_path, capsys):
    model, processor = build_tiny_model(seed=0)
    model.save_pretrained(tmp_path / "start")
    processor.save_pretrained(tmp_path / "start")
    common = ["--data", str(train_data_root), "--min-pixels", "50", "--eval-samples", "2", "--views-per-object", "1"]
    report = main(["--model", str(tmp_path / "start"), "--out", str(tmp_path / "run"), "--steps", "1", "--batch-size", "2",
                   "--order", "text_first", *common])
    assert report["order"] == "text_first" and [e["step"] for e in report["evaluations"]] == [1]
    assert set(report["constant_box"]) == {"val", "train_fit"}
    scored = main(["--model", str(tmp_path / "run" / "model"), "--evaluate-only", *common])
    assert scored["model"]["val"]["examples"] == report["evaluations"][0]["val"]["examples"]  # the saved model answers alike
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["model"]["val"]["num_samples"] == 2
