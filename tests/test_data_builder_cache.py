"""The `datasets` cache of the task builders: one entry per task, options and data content.

Regressions of silent wrong answers: builders sharing a data root shared one cache folder, so the
second task of a stage-2 recipe loaded the first task's samples, edited annotations were ignored, and a
frame replaced by another of the same size with its modification time restored was served stale.
"""

from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
import PIL.Image

from gap_mllm.processing.annotation_files import find_annotation_file
from gap_mllm.processing.builders import BUILDERS, DetectionBuilder, GroundingStage2Builder
from gap_mllm.training.config import AuxLossConfig, DataConfig
from gap_mllm.training.data import load_split

from .test_data_fixtures import tiny_dataset  # noqa: F401


def _prepared(builder_class, root, cache, **kwargs):
    builder = builder_class(data_root=str(root), cache_dir=str(cache), **kwargs)
    builder.download_and_prepare()
    return builder


def _answers(root, task, split="train"):
    return [r["conversations"][1]["value"] for r in json.loads(find_annotation_file(root, task, split).read_text())]


def test_every_task_gets_its_own_samples_from_one_data_root_and_cache(tiny_dataset, tmp_path):
    cache = tmp_path / "cache"
    folders = set()
    for task, builder_class in BUILDERS.items():
        builder = _prepared(builder_class, tiny_dataset, cache)
        assert builder.as_dataset(split="train")["answer"] == _answers(tiny_dataset, task), task
        folders.add(builder.cache_dir)
    assert len(folders) == len(BUILDERS)


def test_stage2_mix_loads_each_task_once_through_the_training_loader(tiny_dataset, tmp_path):
    data = DataConfig(data_root=str(tiny_dataset), cache_dir=str(tmp_path / "hf"), tasks=["detection", "grounding_stage2"])
    mixed = load_split(data, "train", AuxLossConfig())
    expected = _answers(tiny_dataset, "detection") + _answers(tiny_dataset, "grounding_stage2")
    assert mixed["answer"] == expected


def test_options_change_the_cache_entry(tiny_dataset, tmp_path):
    plain = DetectionBuilder(data_root=str(tiny_dataset), cache_dir=str(tmp_path))
    with_poses = DetectionBuilder(data_root=str(tiny_dataset), cache_dir=str(tmp_path), load_poses=True)
    skipping = DetectionBuilder(data_root=str(tiny_dataset), cache_dir=str(tmp_path), skip_bad_samples=True)
    assert len({plain.cache_dir, with_poses.cache_dir, skipping.cache_dir}) == 3
    again = DetectionBuilder(data_root=str(tiny_dataset), cache_dir=str(tmp_path))
    assert again.cache_dir == plain.cache_dir  # same inputs: the prepared entry is reused


def test_edited_annotations_are_not_served_from_the_old_cache(tiny_dataset, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    first = _prepared(GroundingStage2Builder, root, tmp_path / "cache").as_dataset(split="train")
    path = find_annotation_file(root, "grounding_stage2", "train")
    records = json.loads(path.read_text())
    records = records[:1]
    path.write_text(json.dumps(records))
    second = _prepared(GroundingStage2Builder, root, tmp_path / "cache").as_dataset(split="train")
    assert len(first) > 1 and len(second) == 1


def _replace_keeping_stat(path, data: bytes):
    """Overwrite `path` with `data` (same size) and restore its modification time, as `cp -p` would."""
    stat = path.stat()
    assert len(data) == stat.st_size
    path.write_bytes(data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)


def test_changed_image_files_invalidate_the_cache_even_with_the_same_size_and_mtime(tiny_dataset, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    cache = str(tmp_path / "cache")
    before = DetectionBuilder(data_root=str(root), cache_dir=cache).cache_dir
    record = json.loads(find_annotation_file(root, "detection", "train").read_text())[0]
    image = root / "scannet" / "posed_images" / record["images"][1]
    other = root / "scannet" / "posed_images" / record["images"][2]
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert DetectionBuilder(data_root=str(root), cache_dir=cache).cache_dir == before  # touched only: same bytes
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 0xFF  # another frame of the same size
    _replace_keeping_stat(image, bytes(data))
    after = DetectionBuilder(data_root=str(root), cache_dir=cache).cache_dir
    assert after != before
    # depth files only count when depth is loaded
    depth = other.with_suffix(".png")
    without_depth = DetectionBuilder(data_root=str(root), cache_dir=cache).cache_dir
    with_depth = DetectionBuilder(data_root=str(root), cache_dir=cache, load_depth=True).cache_dir
    data = bytearray(depth.read_bytes())
    data[-20] ^= 0xFF
    _replace_keeping_stat(depth, bytes(data))
    assert DetectionBuilder(data_root=str(root), cache_dir=cache).cache_dir == without_depth
    assert DetectionBuilder(data_root=str(root), cache_dir=cache, load_depth=True).cache_dir != with_depth


def test_a_replaced_frame_is_never_served_from_the_old_cache(tiny_dataset, tmp_path):
    """The adversarial case: a frame swapped for another of the same size, mtime restored."""
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    cache = tmp_path / "cache"
    first = _prepared(DetectionBuilder, root, cache).as_dataset(split="train")
    record = json.loads(find_annotation_file(root, "detection", "train").read_text())[0]
    image = root / "scannet" / "posed_images" / record["images"][0]
    original = image.read_bytes()
    for value in range(256):  # another JPEG of exactly the same byte size
        buffer = io.BytesIO()
        PIL.Image.fromarray(np.full((60, 80, 3), value, dtype=np.uint8)).save(buffer, format="JPEG", quality=95)
        candidate = buffer.getvalue()
        if len(candidate) <= len(original):
            break
    replacement = candidate + b"\0" * (len(original) - len(candidate))  # JPEG readers ignore trailing bytes
    _replace_keeping_stat(image, replacement)
    second = _prepared(DetectionBuilder, root, cache).as_dataset(split="train")
    assert first[0]["images"][0].tobytes() != second[0]["images"][0].tobytes()
    assert np.asarray(second[0]["images"][0]).std() == 0  # the new, uniform frame


def test_the_code_key_covers_every_rule_that_refuses_a_sample():
    """The required detection `boxes` (processing/detection_record.py) and the prompt-text rule (tasks_gap_mllm.py)
    decide which samples a prepared builder holds: a change to either must not serve the old cache."""
    from pathlib import Path

    from gap_mllm import tasks_gap_mllm
    from gap_mllm.processing import builder_fingerprint, detection_record

    code = builder_fingerprint._code_bytes()
    for module in (detection_record, tasks_gap_mllm):
        assert Path(module.__file__).read_bytes() in code, module.__name__
