"""A model scored on SynthRooms scenes it trained on is said so in one line (processing/held_out.py).

The trap: SynthRooms numbers scenes across splits, so `--scenes 2` data trains on the scene that `--scenes 1
--val-scenes 1` data (same settings) holds out for validation. The embedded GAP-MLLM-Mini records its own training
scenes (the mini preset's seed 0, scenes 0-1199); the documented evaluation commands write another seed.
"""

import json
import logging
import re
from pathlib import Path

import pytest

from gap_mllm.evaluation.runner import run_evaluation
from gap_mllm.processing.dataset_identity import TRAINING_RECORD
from gap_mllm.processing import held_out
from gap_mllm.processing.held_out import check_held_out, record_scene_id, split_scenes, trained_scenes
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
    held = split_scenes(datasets / "small", "val")["scenes"]
    assert held == ["synth0001_00"]
    on_large = _model_trained_on(tmp_path / "large", split_scenes(datasets / "large", "train"))
    assert check_held_out(on_large, datasets / "small", held) == (
        "the model large was trained on 1 of the 1 scenes scored (synth0001_00; its gap_mllm_training.json), so these "
        "scores are not held-out scores: data written by `gap-mllm synth` with the same settings and seed numbers its "
        "scenes across the splits; write the data with another --seed")
    # its own data's training scenes are named too; data of another seed shares no scene with it
    assert "trained on 2 of the 2 scenes scored (synth0000_00 to synth0001_00;" in check_held_out(
        on_large, datasets / "large", split_scenes(datasets / "large", "train")["scenes"])
    assert check_held_out(on_large, datasets / "other", split_scenes(datasets / "other", "train")["scenes"]) is None
    # trained on the small data's training split: its validation split is held out
    on_small = _model_trained_on(tmp_path / "small", split_scenes(datasets / "small", "train"))
    assert check_held_out(on_small, datasets / "small", held) is None


def test_a_folder_without_a_record_is_said_once_to_record_none(datasets, tmp_path, monkeypatch, caplog):
    """Was: nothing at all, so a model without a record (the Mini's folder before it had one) was scored on its own
    training scenes in silence."""
    monkeypatch.setattr(held_out, "_UNRECORDED_SAID", set())
    bare = tmp_path / "bare"
    bare.mkdir()
    with caplog.at_level(logging.WARNING, logger=held_out.__name__):
        for _ in range(2):
            check_held_out(bare, datasets / "small", ["synth0001_00"])
    assert [r.getMessage() for r in caplog.records] == [
        "the model bare records no training scenes (no gap_mllm_training.json), so whether the scenes of small are "
        "held out from it is not checked"]


def test_the_training_record_carries_the_scenes_of_the_model_it_started_from(datasets, tmp_path):
    earlier = _model_trained_on(tmp_path / "stage1", split_scenes(datasets / "large", "train"))
    sets = trained_scenes(datasets / "other", "train", started_from=earlier)
    assert sets == [split_scenes(datasets / "large", "train"), split_scenes(datasets / "other", "train")]
    assert trained_scenes(datasets / "other", "train", started_from=tmp_path / "no-record") == sets[1:]
    assert trained_scenes(None, "train") == []


def test_evaluate_warns_on_a_trained_folder_s_own_scenes_and_not_on_held_out_ones(datasets, tmp_path, caplog):
    """A folder `gap-mllm train` writes records its scenes (training/run.py `training_record`): `evaluate` scores it on
    them with one warning naming the overlap; on held-out scenes, without one. The grounding diagnostics say it too."""
    from gap_mllm.evaluation.grounding_identification_cli import generated
    from gap_mllm.tiny.tiny_model import save_tiny_checkpoint

    model = _model_trained_on(save_tiny_checkpoint(tmp_path / "tiny"), split_scenes(datasets / "large", "train"))
    with caplog.at_level(logging.WARNING, logger=held_out.__name__):
        run_evaluation("grounding", datasets / "small", tmp_path / "seen", model_dir=model, split="val", meteor=False,
                       limit=1, plots=False, progress=False)
    assert [r.getMessage() for r in caplog.records] == [check_held_out(model, datasets / "small", ["synth0001_00"])]
    assert "tiny was trained on 1 of the 1 scenes scored (synth0001_00;" in caplog.records[0].getMessage()
    caplog.clear()
    on_small = _model_trained_on(model, split_scenes(datasets / "small", "train"))
    with caplog.at_level(logging.WARNING, logger=held_out.__name__):
        run_evaluation("grounding", datasets / "small", tmp_path / "held-out", model_dir=on_small, split="val",
                       meteor=False, limit=1, plots=False, progress=False)
        assert caplog.records == []
        _model_trained_on(model, split_scenes(datasets / "large", "train"))
        generated(model, datasets / "small", "val", limit=1, annotated_frame=False)
    assert len(caplog.records) == 1 and "tiny was trained on 1 of the 1 scenes scored" in caplog.records[0].getMessage()


@pytest.fixture(scope="module")
def mini_rooms(tmp_path_factory):
    """The Mini's data preset as `gap-mllm synth --preset mini` writes it: seed 0 (its training seed; scene 1 in the
    val split) and the seed its record names as used by none of its data."""
    from gap_mllm.mini import default_model_path
    from gap_mllm.processing.synth.presets import synth_config

    record = json.loads((default_model_path() / TRAINING_RECORD).read_text())
    root = tmp_path_factory.mktemp("mini_rooms")
    write_dataset(root / "seed0", SynthRooms(synth_config("mini")), {"train": 1, "val": 1})
    write_dataset(root / "held", SynthRooms(synth_config("mini", seed=record["synthrooms"]["held_out_seed"])),
                  {"val": 1})
    return root


def test_evaluate_warns_when_the_mini_is_scored_on_its_training_scenes(mini_rooms, tmp_path, caplog):
    """Was silent: the README's `gap-mllm synth --preset mini ...` (seed 0) wrote 45 of the Mini's 1,200 training
    scenes, and its test split was scored as held out. The shipped folder records them; its held-out seed is not."""
    from gap_mllm.mini import default_model_path

    mini = default_model_path()
    (scenes,) = json.loads((mini / TRAINING_RECORD).read_text())["trained_scenes"]
    assert scenes["scenes"] == [f"synth{index:04d}_00" for index in range(1200)]
    # the generator settings it names are the mini preset's at seed 0, as `gap-mllm synth` writes them today
    assert scenes["generator"] == split_scenes(mini_rooms / "seed0", "val")["generator"]
    with caplog.at_level(logging.WARNING, logger=held_out.__name__):
        run_evaluation("reconstruction", mini_rooms / "seed0", tmp_path / "seen", model_dir=mini, split="val",
                       limit=1, plots=False, progress=False)
    assert [r.getMessage() for r in caplog.records] == [
        "the model GAP-MLLM-Mini was trained on 1 of the 1 scenes scored (synth0001_00; its gap_mllm_training.json), so "
        "these scores are not held-out scores: data written by `gap-mllm synth` with the same settings and seed numbers "
        "its scenes across the splits; write the data with another --seed"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=held_out.__name__):
        run_evaluation("reconstruction", mini_rooms / "held", tmp_path / "held-out", model_dir=mini, split="val",
                       limit=1, plots=False, progress=False)
    assert caplog.records == []


DOCUMENTED = ("README.md", "docs/evaluate-at-scale.md", "docs/publish.md")


def test_every_documented_evaluation_runs_on_scenes_the_mini_never_saw():
    """The synth command of README.md's evaluation (and of the docs that reuse its data/mini) writes the seed the Mini's
    folder records as used by none of its data; and that seed is none of the seeds the record names as used."""
    from gap_mllm.mini import default_model_path

    synthrooms = json.loads((default_model_path() / TRAINING_RECORD).read_text())["synthrooms"]
    seed = synthrooms["held_out_seed"]
    assert seed != synthrooms["seed"] and seed not in synthrooms["judged_on_seeds"]
    repo = Path(__file__).resolve().parent.parent
    for name in DOCUMENTED:
        commands = re.findall(r"^gap-mllm synth .*$", (repo / name).read_text(encoding="utf-8"), flags=re.MULTILINE)
        assert commands, name
        for command in commands:
            assert f" --seed {seed} " in f"{command} ", (name, command)


def test_a_record_s_scene_id_needs_no_image():
    """Was: IndexError (the first image's folder was computed as the default even beside a scene_id)."""
    assert record_scene_id({"scene_id": "scene0001_00", "images": []}) == "scene0001_00"
    assert record_scene_id({"images": ["scene0002_00/00010.jpg"]}) == "scene0002_00"
