"""Inputs that used to be read silently wrong are refused with the sample named, or read correctly:
a marker pixel outside its view, 16-bit PNG frames, image paths that leave the data root, a sample longer than the
model's context."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import PIL.Image
import pytest

from gap_mllm.processing.annotation_files import find_annotation_file
from gap_mllm.processing.builders import ReconstructionBuilder, load_annotation_file
from gap_mllm.processing.collator import GapMllmDataCollator
from gap_mllm.processing.errors import DataError
from gap_mllm.processing.scannet_layout import media_path, posed_images_dir, read_color, resolve_inside
from gap_mllm.processing_gap_mllm import load_image
from gap_mllm.tiny.tiny_model import build_tiny_model
from gap_mllm.training.bad_samples import SKIPPED_KEY, BadSampleGuard
from gap_mllm.training.config import AuxLossConfig, DataConfig
from gap_mllm.training.data import build_collator, sample_collator

from .test_data_bad_inputs import build, data_error
from .test_data_fixtures import tiny_dataset  # noqa: F401


@pytest.fixture
def data_copy(tiny_dataset, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    return root


def edit_first_record(root, task="reconstruction", **changes):
    path = find_annotation_file(root, task, "train")
    records = load_annotation_file(path)
    records[0].update(changes)
    path.write_text(json.dumps(records))
    return records


# ------------------------------------------------------------------------------------------ marker


def test_marker_outside_the_view_is_refused_by_the_builder_or_skipped(data_copy, tmp_path):
    records = load_annotation_file(find_annotation_file(data_copy, "reconstruction", "train"))
    view = records[0]["pixel_coords"][0]
    edit_first_record(data_copy, pixel_coords=[view, 80 + 5, 10])  # frames are 80 x 60
    with pytest.raises(Exception) as excinfo:
        build(ReconstructionBuilder, data_copy, tmp_path)
    error = data_error(excinfo.value)
    assert records[0]["id"] in str(error) and "marker pixel (x=85, y=10) is outside the 80x60 view" in str(error)
    builder = build(ReconstructionBuilder, data_copy, tmp_path / "skip", skip_bad_samples=True)
    assert builder.skipped["train"].total == 1 and len(builder.as_dataset(split="train")) == len(records) - 1


@pytest.fixture
def marker_batch(tiny_dataset, tmp_path):
    """Two built reconstruction samples; the second one's marker moved outside its 80 x 60 view."""
    examples = [dict(e) for e in build(ReconstructionBuilder, tiny_dataset, tmp_path).as_dataset(split="train").select(range(2))]
    examples[1]["pixel_coords"] = [examples[1]["pixel_coords"][0], -4, 30]
    return examples


def test_bad_sample_guard_names_a_marker_outside_its_view(marker_batch, tiny_processor):
    guard = BadSampleGuard(GapMllmDataCollator(tiny_processor), policy="raise")
    with pytest.raises(DataError, match=rf"sample '{marker_batch[1]['id']}'.*marker pixel \(x=-4, y=30\) is outside"):
        guard(marker_batch)


def test_bad_sample_guard_skips_and_counts_a_marker_outside_its_view(marker_batch, tiny_processor):
    collator = GapMllmDataCollator(tiny_processor)
    batch = BadSampleGuard(collator, policy="skip")(marker_batch)
    assert int(batch[SKIPPED_KEY]) == 1
    expected = collator(marker_batch[:1])
    assert batch["input_ids"].shape == expected["input_ids"].shape and bool((batch["input_ids"] == expected["input_ids"]).all())


# ---------------------------------------------------------------------------------------- 16-bit


def sixteen_bit_png(path, height=4, width=5):
    values = np.linspace(0, 65535, height * width).round().astype(np.uint16).reshape(height, width)
    PIL.Image.fromarray(values).save(path)
    return values


def test_sixteen_bit_png_frames_are_scaled_by_their_full_range(tmp_path):
    values = sixteen_bit_png(tmp_path / "frame.png")
    with PIL.Image.open(tmp_path / "frame.png") as opened:
        assert opened.mode == "I;16"
        assert np.asarray(opened.convert("RGB")).mean() > 240  # the old reading: almost all white
    expected = np.rint(values * (255 / 65535)).astype(np.uint8)
    for image in (load_image(tmp_path / "frame.png"), read_color(tmp_path / "frame.png")):
        rgb = np.asarray(image)
        assert image.mode == "RGB" and rgb.dtype == np.uint8
        for channel in range(3):
            np.testing.assert_array_equal(rgb[..., channel], expected)
    assert np.asarray(load_image(tmp_path / "frame.png"))[0, 0, 0] == 0 and np.asarray(load_image(tmp_path / "frame.png"))[-1, -1, 0] == 255


def test_float_images_are_refused_with_the_input_named(tmp_path):
    image = PIL.Image.fromarray(np.full((4, 5), 3.5, dtype=np.float32))
    assert image.mode == "F"
    with pytest.raises(ValueError, match="sample 0, view 2: a 32-bit float image"):
        load_image(image, name="sample 0, view 2")


def test_sixteen_bit_uploads_are_scaled_too(tmp_path):
    from gap_mllm.cli.uploads import UploadLimits, load_frames

    values = sixteen_bit_png(tmp_path / "up.png", 40, 50)
    frames = load_frames([tmp_path / "up.png"], UploadLimits(), allowed_roots=[tmp_path])
    np.testing.assert_array_equal(np.asarray(frames[0])[..., 0], np.rint(values * (255 / 65535)).astype(np.uint8))


# ------------------------------------------------------------------------------------------- paths


def test_media_path_rules(tmp_path):
    root = tmp_path / "posed_images"
    (root / "scene").mkdir(parents=True)
    (tmp_path / "secret.jpg").write_bytes(b"x")
    assert media_path(root, "scene/00000.jpg") == root / "scene" / "00000.jpg"
    assert media_path(root, "scene/../scene/00000.jpg") == root / "scene" / "../scene/00000.jpg"  # stays inside
    with pytest.raises(DataError, match=r"sample 's1': image path '\.\./secret\.jpg' leaves the media root"):
        media_path(root, "../secret.jpg", "s1")
    with pytest.raises(DataError, match="is absolute"):
        media_path(root, str(tmp_path / "secret.jpg"), "s1")
    os.symlink(tmp_path / "secret.jpg", root / "scene" / "link.jpg")
    with pytest.raises(DataError, match="symbolic link"):
        media_path(root, "scene/link.jpg", "s1")
    # a media root that is itself a link (data on another disk) is fine: both sides are resolved
    os.symlink(root, tmp_path / "linked_root")
    assert media_path(tmp_path / "linked_root", "scene/00000.jpg") == tmp_path / "linked_root" / "scene" / "00000.jpg"
    assert resolve_inside(root, tmp_path / "secret.jpg") is None and resolve_inside(root, root / "scene") == (root / "scene").resolve()


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_builder_refuses_image_paths_leaving_the_data_root(data_copy, tmp_path, kind):
    media = posed_images_dir(data_copy)
    records = load_annotation_file(find_annotation_file(data_copy, "reconstruction", "train"))
    outside = tmp_path / "outside.jpg"
    shutil.copy(media / records[0]["images"][1], outside)
    path = {"dotdot": os.path.relpath(outside, media), "absolute": str(outside), "symlink": "escape.jpg"}[kind]
    if kind == "symlink":
        os.symlink(outside, media / "escape.jpg")
    edit_first_record(data_copy, images=[records[0]["images"][0], path, *records[0]["images"][2:]])
    with pytest.raises(Exception) as excinfo:
        build(ReconstructionBuilder, data_copy, tmp_path / "cache")
    error = data_error(excinfo.value)
    assert records[0]["id"] in str(error) and repr(path) in str(error)
    builder = build(ReconstructionBuilder, data_copy, tmp_path / "skip", skip_bad_samples=True)
    assert builder.skipped["train"].total == 1


def test_evaluation_runner_refuses_image_paths_leaving_the_data_root(data_copy, tmp_path, monkeypatch):
    from gap_mllm.evaluation import scene_generation
    from gap_mllm.evaluation.runner import run_evaluation

    class RecordingGenerator:
        requested = []

        def __init__(self, *args, **kwargs):
            pass

        def generate(self, requests):
            self.requested.extend(p for r in requests for p in r.images)
            return ["{}"] * len(requests)

        generate_on_scenes = generate

    monkeypatch.setattr(scene_generation, "SceneGenerator", RecordingGenerator)
    path = find_annotation_file(data_copy, "detection", "val")
    records = load_annotation_file(path)
    records[1]["images"][0] = "../../../etc/passwd"
    path.write_text(json.dumps(records))
    with pytest.raises(DataError, match=rf"sample '{records[1]['id']}': image path '\.\./\.\./\.\./etc/passwd' leaves"):
        # the generator is a stand-in: the model folder is only read for the run record (an empty one will do)
        run_evaluation("detection", data_copy, tmp_path / "run", model_dir=tmp_path, plots=False, progress=False)
    assert all("passwd" not in p for p in RecordingGenerator.requested)


# ------------------------------------------------------------------------------------------ context


@pytest.fixture(scope="module")
def tiny_model_and_processor():
    return build_tiny_model(seed=0)


@pytest.fixture
def overlong_batch(tiny_dataset, tmp_path):
    """Two built reconstruction samples; the second one's prompt 5,000 words longer (the tiny model's context: 4,096)."""
    built = build(ReconstructionBuilder, tiny_dataset, tmp_path).as_dataset(split="train")
    examples = [dict(example) for example in built.select(range(2))]
    examples[1]["prompt"] += " word" * 5000
    return examples


TOO_LONG = ("tokens (chat text, prompt, answer and the visual tokens of its 4 view(s)) do not fit the model's context "
            "of 4096 (text_config.max_position_embeddings); shorten its prompt or answer, or give it fewer views")


def test_a_sample_longer_than_the_models_context_is_refused_by_name(overlong_batch, tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    collator = build_collator(processor, DataConfig(on_bad_sample="raise"), AuxLossConfig(), model=model)
    with pytest.raises(DataError) as error:
        collator(overlong_batch)
    message, name = str(error.value), overlong_batch[1]["id"]
    assert message.startswith(f"sample {name!r}: cannot be collated: ") and message.endswith(TOO_LONG)
    assert message.count(name) == 1  # named once
    # every path that makes batches for the model has the bound: the feature cache's filling collator too
    with pytest.raises(DataError, match="do not fit the model's context of 4096"):
        sample_collator(processor, DataConfig(on_bad_sample="raise"), AuxLossConfig(), model)(overlong_batch[1:])


def test_a_sample_longer_than_the_models_context_is_skipped_and_counted(overlong_batch, tiny_model_and_processor,
                                                                          caplog):
    model, processor = tiny_model_and_processor
    batch = build_collator(processor, DataConfig(on_bad_sample="skip"), AuxLossConfig(), model=model)(overlong_batch)
    assert int(batch[SKIPPED_KEY]) == 1 and batch["input_ids"].shape[0] == 1
    name = overlong_batch[1]["id"]
    assert f"skipping bad sample {name!r}: " in caplog.text and caplog.text.count(name) == 1
    assert caplog.text.rstrip().endswith(TOO_LONG)
