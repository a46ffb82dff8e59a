"""Builders read a written synthetic dataset and give the generator's in-memory samples back."""

from __future__ import annotations


import datasets
import numpy as np
import pytest
import torch

from gap_mllm.processing.builders import (
    BUILDERS,
    DetectionBuilder,
    MultiViewBuilder,
    ReconstructionBuilder,
    builder_for_task,
)
from gap_mllm.processing.collator import IGNORE_INDEX, GapMllmDataCollator, views_to_tensors
from gap_mllm.processing.parquet_export import export_parquet
from gap_mllm.processing.synth.writer import generate_samples

from .test_data_fixtures import TINY_CONFIG, tiny_dataset, tiny_generator  # noqa: F401

JPEG_TOLERANCE = 6.0  # mean absolute difference (of 255) after JPEG quality 95 on 60x80 frames


def prepared(builder_class, root, tmp_path, **kwargs):
    builder = builder_class(data_root=str(root), cache_dir=str(tmp_path / builder_class.TASK), **kwargs)
    builder.download_and_prepare()
    return builder


@pytest.fixture(scope="module")
def in_memory():
    """Generator output of the train scenes (0 and 1), by task and record id."""
    generator = tiny_generator()
    scenes, records = {}, {}
    for index in range(2):
        scene, recs = generate_samples(generator, index)
        scenes[scene.scene_id] = scene
        for task, task_records in recs.items():
            records.setdefault(task, {}).update({r["id"]: r for r in task_records})
    return scenes, records


def frame_index(scene, path: str) -> int:
    return scene.frame_names.index(path.split("/")[1].split(".")[0])


@pytest.mark.parametrize("task", sorted(BUILDERS))
def test_builder_gives_the_generator_samples(task, tiny_dataset, tmp_path, in_memory):
    scenes, records = in_memory
    builder = prepared(BUILDERS[task], tiny_dataset, tmp_path, load_depth=True, load_poses=True)
    ds = builder.as_dataset(split="train")
    assert len(ds) == len(records[task]) > 0
    assert set(builder.as_dataset(split="val")["scene_id"]) == {"synth0002_00"}
    for example in ds.select(range(min(3, len(ds)))):
        record = records[task][example["id"]]
        scene = scenes[example["scene_id"]]
        assert example["prompt"] == record["conversations"][0]["value"]
        assert example["answer"] == record["conversations"][1]["value"]
        assert example["image_paths"] == record["images"]
        frames = [frame_index(scene, p) for p in record["images"]]
        for image, f in zip(example["images"], frames):
            difference = np.abs(np.asarray(image, dtype=float) - scene.frames[f].rgb).mean()
            assert difference < JPEG_TOLERANCE
        # Depth is stored in millimetres: within half a millimetre of the rendered depth.
        np.testing.assert_allclose(np.asarray(example["depth"]), np.stack([scene.frames[f].depth for f in frames]), atol=5e-4 + 1e-6)
        np.testing.assert_array_equal(np.asarray(example["cam_to_world"]), scene.cam_to_world[frames])  # %.17g: exact
        np.testing.assert_allclose(np.asarray(example["intrinsics"])[0], scene.intrinsics, rtol=0, atol=0)
        if task == "reconstruction":
            assert example["pixel_coords"] == record["pixel_coords"]
        if task == "detection":
            label_feature = ds.features["boxes"].feature["label"]
            labels = [label_feature.int2str(b["label"]) for b in example["boxes"]]
            assert labels == [b["label"] for b in record["boxes"]]
            np.testing.assert_allclose([b["bbox_3d"] for b in example["boxes"]], [b["bbox_3d"] for b in record["boxes"]], atol=1e-6)
            np.testing.assert_array_equal(np.asarray(example["cam2global"]), np.asarray(record["cam2global"]))
        if task == "grounding_stage1":
            assert example["object_id"] == record["object_id"] and f'{{"frame": {example["frame"]}}}' == example["answer"]
        if task in ("grounding_stage1", "grounding_stage2"):
            np.testing.assert_allclose(example["gt_bbox"], record["gt_bbox"], atol=1e-6)
        if task == "captioning":
            assert example["annotations"] == record["annotations"]


def test_features_are_typed(tiny_dataset, tmp_path):
    features = prepared(DetectionBuilder, tiny_dataset, tmp_path, load_depth=True, load_poses=True).info.features
    assert isinstance(features["images"], datasets.List) and isinstance(features["images"].feature, datasets.Image)
    assert isinstance(features["depth"], datasets.Array3D) and features["depth"].shape == (None, *TINY_CONFIG.image_size)
    assert isinstance(features["boxes"].feature["label"], datasets.ClassLabel)
    assert isinstance(features["axis_align_matrix"], datasets.Array2D)
    qa = prepared(builder_for_task("spatial_qa"), tiny_dataset, tmp_path).info.features
    assert isinstance(qa["question_type"], datasets.ClassLabel)


def test_each_builder_declares_the_features_of_its_task():
    """The task's own fields are declared once, by its builder next to its registry task; a builder without a
    task has none, and a task without a builder is named."""
    fields = {
        "reconstruction": ["pixel_coords", "point", "label"],
        "detection": ["boxes", "cam2img", "cam2global", "axis_align_matrix"],
        "grounding_stage1": ["description", "object_id", "gt_bbox", "cam2global", "axis_align_matrix", "frame"],
        "grounding_stage2": ["description", "object_id", "gt_bbox", "cam2global", "axis_align_matrix", "bbox_3d"],
        "captioning": ["object_id", "bbox_3d", "iou", "annotations"],
        "spatial_qa": ["question_type", "options", "ground_truth"],
    }
    assert {name: list(builder.task_features(("chair",))) for name, builder in BUILDERS.items()} == fields
    assert DetectionBuilder.task_features(("chair", "lamp"))["boxes"].feature["label"].names == ["chair", "lamp"]
    with pytest.raises(NotImplementedError, match="MultiViewBuilder declares no task_features"):
        MultiViewBuilder.task_features(("chair",))
    with pytest.raises(ValueError, match="task 'grounding' has no data builder; use its stages"):
        builder_for_task("grounding")
    with pytest.raises(ValueError, match="unknown task 'boxes'"):
        builder_for_task("boxes")


def test_streaming_gives_the_same_examples(tiny_dataset, tmp_path):
    builder = prepared(ReconstructionBuilder, tiny_dataset, tmp_path)
    stored = builder.as_dataset(split="train")
    streamed = list(builder.as_streaming_dataset(split="train"))
    assert [e["id"] for e in streamed] == stored["id"]
    assert streamed[0]["answer"] == stored[0]["answer"] and streamed[0]["pixel_coords"] == stored[0]["pixel_coords"]
    assert np.array_equal(np.asarray(streamed[0]["images"][1]), np.asarray(stored[0]["images"][1]))


def test_with_transform_gives_tensors(tiny_dataset, tmp_path):
    ds = prepared(ReconstructionBuilder, tiny_dataset, tmp_path, load_depth=True).as_dataset(split="train")
    batch = ds.with_transform(views_to_tensors)[0:2]
    views = batch["pixel_views"][0]
    assert views.shape == (TINY_CONFIG.clip_frames, 3, *TINY_CONFIG.image_size) and views.dtype == torch.float32
    assert 0.0 <= float(views.min()) and float(views.max()) <= 1.0
    assert batch["depth"][0].shape == (TINY_CONFIG.clip_frames, *TINY_CONFIG.image_size)


def test_parquet_export_round_trips(tiny_dataset, tmp_path):
    builder = prepared(DetectionBuilder, tiny_dataset, tmp_path, load_poses=True)
    original = datasets.DatasetDict({split: builder.as_dataset(split=split) for split in ("train", "val")})
    card = export_parquet(original, tmp_path / "hub", pretty_name="SynthRooms detection")
    text = card.read_text()
    assert "config_name: default" in text and "path: data/train-*.parquet" in text and "zxy" in text
    reloaded = datasets.load_dataset(str(tmp_path / "hub"))
    assert reloaded["train"].features == original["train"].features
    assert reloaded["val"][0]["answer"] == original["val"][0]["answer"]
    np.testing.assert_array_equal(np.asarray(reloaded["train"][0]["cam_to_world"]), np.asarray(original["train"][0]["cam_to_world"]))
    streamed = next(iter(datasets.load_dataset(str(tmp_path / "hub"), split="train", streaming=True)))
    assert streamed["id"] == original["train"][0]["id"]


def test_collator_feeds_the_processor_with_answer_labels(tiny_dataset, tmp_path):
    from gap_mllm.tiny.tiny_tokenizer import build_tiny_processor

    processor = build_tiny_processor()
    ds = prepared(ReconstructionBuilder, tiny_dataset, tmp_path).as_dataset(split="train")
    batch = GapMllmDataCollator(processor)([ds[0], ds[1]])
    for key in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "geometry_pixel_values", "geometry_views_per_sample", "labels"):
        assert key in batch
    assert batch["geometry_views_per_sample"].tolist() == [TINY_CONFIG.clip_frames] * 2
    for row in range(2):
        trained = batch["input_ids"][row][batch["labels"][row] != IGNORE_INDEX]
        assert processor.tokenizer.decode(trained) == ds[row]["answer"] + "<|im_end|>\n"
    # The marker is painted: the same sample without pixel_coords gives different pixels.
    unmarked = GapMllmDataCollator(processor, marker=False)([ds[0]])
    assert not torch.equal(unmarked["pixel_values"], GapMllmDataCollator(processor)([ds[0]])["pixel_values"])
    inference = GapMllmDataCollator(processor, train=False)([ds[0]])
    assert "labels" not in inference and processor.tokenizer.decode(inference["input_ids"][0]).endswith("<|im_start|>assistant\n")


def test_records_with_only_the_official_fields_load(tiny_dataset, tmp_path):
    """Official files lack our extras (ids, cameras in some tasks): absent fields get defined empties."""
    import json
    import shutil

    from gap_mllm.processing.annotation_files import find_annotation_file

    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    path = find_annotation_file(root, "detection", "train")
    records = json.loads(path.read_text())
    for record in records:
        for key in ("id", "scene_id", "cam2img", "cam2global", "axis_align_matrix"):
            record.pop(key)
    path.write_text(json.dumps(records))
    example = prepared(DetectionBuilder, root, tmp_path).as_dataset(split="train")[0]
    assert example["id"] == "train-0" and example["scene_id"] == "synth0000_00"  # from the image folder
    assert example["cam2img"] is None and example["axis_align_matrix"] is None and example["cam2global"] == []
    assert len(example["boxes"]) == len(records[0]["boxes"])
