"""A model is never scored on SynthRooms scenes it trained on (processing/held_out.py).

The trap: SynthRooms numbers scenes across splits, so `--scenes 2` data trains on the scene that `--scenes 1
--val-scenes 1` data (same settings) holds out for validation.
"""

import json

import pytest

from gap_mllm.evaluation.runner import run_evaluation
from gap_mllm.processing.dataset_identity import TRAINING_RECORD
from gap_mllm.processing.held_out import (TrainedOnEvaluationScenes, check_held_out, record_scene_id, split_scenes,
                                         trained_scenes)
from gap_mllm.processing.synth.generator import SynthConfig, SynthRooms
from gap_mllm.processing.synth.writer import write_dataset

CONFIG = dict(image_size=(48, 64), num_frames=12, min_objects=3, max_objects=3, grounding_frames=4, caption_frames=4,
              qa_frames=4, recon_samples_per_scene=2, detection_clips_per_scene=1, captions_per_scene=1)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """`small`: scene 0 for training, scene 1 held out; `large`: scenes 0-1 for training; `other`: another seed."""
    root = tmp_path_factory.mktemp("held_out")
    write_dataset(root / "small", SynthRooms(SynthConfig(seed=0, **CONFIG)), {"train": 1, "val": 1})
    write_dataset(root / "large", SynthRooms(SynthConfig(seed=0, **CONFIG)), {"train": 2})
    write_dataset(root / "other", SynthRooms(SynthConfig(seed=1, **CONFIG)), {"train": 2})
    return root


def _model_trained_on(folder, *scene_sets):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / TRAINING_RECORD).write_text(json.dumps({"trained_scenes": list(scene_sets)}))
    return folder


def test_a_larger_training_split_holds_the_smaller_data_s_validation_scenes(datasets, tmp_path):
    held_out = split_scenes(datasets / "small", "val")["scenes"]
    assert held_out == ["synth0001_00"]
    on_large = _model_trained_on(tmp_path / "large", split_scenes(datasets / "large", "train"))
    with pytest.raises(TrainedOnEvaluationScenes, match=r"trained on 1 of the 1 scenes to score \(e.g. synth0001_00\)"):
        check_held_out(on_large, datasets / "small", held_out)
    # its own data's training scenes are refused too; data of another seed shares no scene with it
    with pytest.raises(TrainedOnEvaluationScenes):
        check_held_out(on_large, datasets / "small", split_scenes(datasets / "small", "train")["scenes"])
    check_held_out(on_large, datasets / "other", split_scenes(datasets / "other", "train")["scenes"])
    # trained on the small data's training split: its validation split is held out
    on_small = _model_trained_on(tmp_path / "small", split_scenes(datasets / "small", "train"))
    check_held_out(on_small, datasets / "small", held_out)


def test_the_training_record_carries_the_scenes_of_the_model_it_started_from(datasets, tmp_path):
    earlier = _model_trained_on(tmp_path / "stage1", split_scenes(datasets / "large", "train"))
    sets = trained_scenes(datasets / "other", "train", started_from=earlier)
    assert sets == [split_scenes(datasets / "large", "train"), split_scenes(datasets / "other", "train")]
    assert trained_scenes(datasets / "other", "train", started_from=tmp_path / "no-record") == sets[1:]
    assert trained_scenes(None, "train") == []


def test_evaluate_refuses_before_generating(datasets, tmp_path):
    from gap_mllm.tiny.tiny_model import save_tiny_checkpoint

    model = save_tiny_checkpoint(tmp_path / "tiny")
    _model_trained_on(model, split_scenes(datasets / "large", "train"))
    with pytest.raises(TrainedOnEvaluationScenes):
        run_evaluation("grounding", datasets / "small", tmp_path / "out", model_dir=model, split="val", meteor=False)
    assert not any((tmp_path / "out").glob("raw_outputs*"))  # nothing was generated


def test_the_grounding_diagnostics_refuse_too(datasets, tmp_path):
    from gap_mllm.evaluation.grounding_identification_cli import generated
    from gap_mllm.tiny.tiny_model import save_tiny_checkpoint

    model = _model_trained_on(save_tiny_checkpoint(tmp_path / "tiny"), split_scenes(datasets / "large", "train"))
    with pytest.raises(TrainedOnEvaluationScenes):
        generated(model, datasets / "small", "val", limit=2, annotated_frame=False)


def test_a_record_s_scene_id_needs_no_image():
    """Was: IndexError (the first image's folder was computed as the default even beside a scene_id)."""
    assert record_scene_id({"scene_id": "scene0001_00", "images": []}) == "scene0001_00"
    assert record_scene_id({"images": ["scene0002_00/00010.jpg"]}) == "scene0002_00"
