"""`gap-mllm synth` bounds what it is asked for before any work: the number of scenes, the frames' size and count,
a sample's frames, and says which settings a folder of other scenes differs in. A refusal is one line (exit status 2)
and leaves nothing behind: no folder, no lock file, no partial sibling (processing/synth/generator.py holds the
limits, processing/synth/writer.py applies them to every writer, processing/synth_cli.py words them as options).

Nothing here renders more than one tiny scene: every limit is met by the refusal path, never by allocating."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from gap_mllm.cli.main import main as gap_mllm
from gap_mllm.processing.synth import generator
from gap_mllm.processing.synth.generator import MAX_SCENES, SynthConfig, SynthRooms
from gap_mllm.processing.synth.presets import synth_config
from gap_mllm.processing.synth.writer import write_dataset, write_dataset_folder
from gap_mllm.processing.synth_arguments import add_arguments
from gap_mllm.processing.synth_cli import config_from_args

TINY = ["--size", "48", "64", "--frames", "4", "--min-objects", "2", "--max-objects", "2"]
ERROR = "gap-mllm synth: error: "


def synth(out: Path, *argv: str) -> int:
    return gap_mllm(["synth", "--out", str(out), *argv])


def refusal(capsys) -> list[str]:
    """The lines the command wrote to stderr (a progress bar would be one more)."""
    return capsys.readouterr().err.splitlines()


def left_behind(tmp_path: Path) -> list[str]:
    """What a refused run left in the folder holding its --out (a lock, a partial sibling, the folder)."""
    return sorted(entry.name for entry in tmp_path.iterdir())


@pytest.fixture
def machine_memory(monkeypatch):
    """This machine has `set(gib)` GiB of memory, as the limits read it."""

    def set_memory(gib: int) -> None:
        monkeypatch.setattr(generator, "machine_memory_bytes", lambda: gib << 30)

    return set_memory


def test_a_billion_scenes_are_refused_before_any_work(tmp_path, capsys):
    """The command was OOM-killed at 21 GB (a list of a billion indices), leaving its lock and partial folder."""
    assert synth(tmp_path / "data", "--scenes", "1000000000", *TINY) == 2
    assert refusal(capsys) == [
        f"{ERROR}--scenes/--val-scenes/--test-scenes: 1,000,000,000 scenes is more than the 10,000 scenes SynthRooms "
        "writes (scene ids keep ScanNet's four digits, synth0000_00 to synth9999_00, so that they sort in scene order)"]
    assert left_behind(tmp_path) == []


def test_the_scene_limit_counts_every_split(tmp_path, capsys):
    assert synth(tmp_path / "data", "--scenes", "9000", "--val-scenes", "999", "--test-scenes", "2", *TINY) == 2
    assert refusal(capsys)[0].startswith(f"{ERROR}--scenes/--val-scenes/--test-scenes: 10,001 scenes is more than")
    assert left_behind(tmp_path) == []


def test_the_writers_refuse_too_many_scenes_before_taking_the_folder(tmp_path):
    """write_dataset_folder (python -m lab.mini's data, the fresh seeds) and write_dataset apply the same limit."""
    rooms = SynthRooms(synth_config("mini"))
    with pytest.raises(ValueError, match="^scene index 10000 is outside 0 to 9999: scene ids keep ScanNet's four digits$"):
        rooms.scene_id(MAX_SCENES)
    assert rooms.scene_id(MAX_SCENES - 1) == "synth9999_00"
    message = rf"^splits \{{'train': {MAX_SCENES}, 'val': 1\}}: 10,001 scenes is more than the 10,000 scenes"
    with pytest.raises(ValueError, match=message):
        write_dataset_folder(tmp_path / "data", rooms, {"train": MAX_SCENES, "val": 1}, command="gap-mllm synth")
    with pytest.raises(ValueError, match=message):
        write_dataset(tmp_path / "data", rooms, {"train": MAX_SCENES, "val": 1})
    assert left_behind(tmp_path) == []


def test_frames_larger_than_a_jpeg_holds_are_refused_before_allocation(tmp_path, capsys):
    """`--size 100000 100000` ended in numpy's 'Unable to allocate 74.5 GiB' traceback."""
    assert synth(tmp_path / "data", "--scenes", "1", "--size", "100000", "100000") == 2
    assert refusal(capsys) == [f"{ERROR}48 frames of 100000x100000 pixels (--frames, --size) are larger than JPEG "
                               "frames go (65,500 pixels a side): give smaller frames"]
    assert left_behind(tmp_path) == []


def test_frames_that_do_not_fit_the_machines_memory_are_refused(tmp_path, capsys, machine_memory):
    machine_memory(8)
    assert synth(tmp_path / "data", "--scenes", "1", "--size", "4000", "4000") == 2
    assert refusal(capsys) == [
        f"{ERROR}48 frames of 4000x4000 pixels (--frames, --size) need at least 8.8 GiB of memory to render a scene "
        "(its frames are held until written), more than this machine's 8.0 GiB: give smaller or fewer frames"]
    assert synth(tmp_path / "data", "--scenes", "1", "--preset", "mini", "--frames", "1000000000") == 2
    assert refusal(capsys) == [
        f"{ERROR}1000000000 frames of 128x160 pixels (--frames, --size) need at least 210,285.2 GiB of memory to "
        "render a scene (its frames are held until written), more than this machine's 8.0 GiB: give smaller or fewer "
        "frames"]
    assert left_behind(tmp_path) == []


def test_each_worker_holds_a_scene(tmp_path, capsys, machine_memory, monkeypatch):
    machine_memory(4)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    size = ["--preset", "mini", "--size", "3000", "3000"]
    assert synth(tmp_path / "data", "--scenes", "2", "--workers", "2", *size) == 2
    assert refusal(capsys) == [
        f"{ERROR}24 frames of 3000x3000 pixels (--frames, --size) need at least 5.5 GiB of memory to render 2 scenes "
        "at once, one a worker (their frames are held until written), more than this machine's 4.0 GiB: give smaller "
        "or fewer frames, or fewer workers"]
    assert left_behind(tmp_path) == []


def test_the_generator_refuses_frames_the_machine_cannot_hold(machine_memory):
    """The Python API (SynthRooms) too: a ValueError before the first frame is allocated."""
    machine_memory(8)
    with pytest.raises(ValueError, match=r"^48 frames of 4000x4000 pixels \(num_frames, image_size\) need at least "
                                         r"8\.8 GiB of memory to render a scene"):
        SynthRooms(SynthConfig(image_size=(4000, 4000)))


@pytest.mark.parametrize("argv, expected", [
    (["--clip-frames", "500"], "--clip-frames 500 is more than the 48 frames of a 'default' scene (--frames): a "
                               "sample's frames are frames of its scene; give at most 48, or more --frames"),
    (["--frames", "12", "--grounding-frames", "13"], "--grounding-frames 13 is more than --frames 12: a sample's "
                                                     "frames are frames of its scene; give at most 12, or more --frames"),
    (["--preset", "mini", "--qa-frames", "25"], "--qa-frames 25 is more than the 24 frames of a 'mini' scene "
                                                "(--frames): a sample's frames are frames of its scene; give at most "
                                                "24, or more --frames"),
])
def test_a_sample_frame_count_above_the_scenes_is_refused(tmp_path, capsys, argv, expected):
    """`--clip-frames 500` wrote 48-frame clips, silently."""
    assert synth(tmp_path / "data", "--scenes", "1", *argv) == 2
    assert refusal(capsys) == [ERROR + expected]
    assert left_behind(tmp_path) == []


def test_more_objects_than_a_room_holds_are_refused(tmp_path, capsys):
    """`--max-objects 1000` spent minutes a scene trying to place objects no room has space for, then left them out."""
    assert synth(tmp_path / "data", "--scenes", "1", "--min-objects", "2", "--max-objects", "1000") == 2
    assert refusal(capsys) == [
        f"{ERROR}--max-objects 1000 is more objects than a room of these settings holds (at most 385: its largest "
        "floor, 7x6 m, over the smallest footprint; an object that finds no free spot is left out): give at most 385"]
    assert left_behind(tmp_path) == []
    with pytest.raises(ValueError, match=r"^max_objects 386 is more objects than a room of these settings holds"):
        SynthRooms(SynthConfig(max_objects=386))


def test_a_presets_sample_frame_count_is_lowered_to_the_frames_given():
    """`--frames 8` of the default preset (32-frame grounding and captioning): the user gave the scene's frames, the
    preset's sample counts follow them (the annotation files are named by what the samples hold)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = config_from_args(parser.parse_args(["--scenes", "1", "--out", "x", "--frames", "8"]))
    assert (config.clip_frames, config.grounding_frames, config.caption_frames, config.qa_frames) == (4, 8, 8, 8)


def test_the_writer_refuses_a_sample_frame_count_above_the_scenes(tmp_path):
    """Through the Python API the samples held the scene's 8 frames under a file named 32frames."""
    with pytest.raises(ValueError, match=r"^caption_frames 32 is more than the 8 frames of a scene \(num_frames\): "
                                         r"give at most 8$"):
        write_dataset(tmp_path / "data", SynthRooms(SynthConfig(image_size=(48, 64), num_frames=8)), {"train": 1})
    assert left_behind(tmp_path) == []


def test_a_folder_of_other_scenes_is_refused_naming_each_setting_that_differs(tmp_path, capsys):
    """The refusal printed two equal dicts ({'train': 1} ... {'train': 1}) and 'other settings', not the seed."""
    data = tmp_path / "data"
    assert synth(data, "--scenes", "1", *TINY) == 0
    capsys.readouterr()
    assert synth(data, "--scenes", "1", "--seed", "5", *TINY) == 2
    assert refusal(capsys) == [
        f"{ERROR}--out {data} is not empty (annotations/, scannet/, synthrooms/) and holds other SynthRooms scenes "
        "(seed 0 there, 5 here); pass --overwrite to replace it, or give an empty or new folder"]
    assert synth(data, "--scenes", "2", "--seed", "5", "--size", "48", "80", *TINY[3:]) == 2
    assert refusal(capsys)[0].endswith(
        "holds other SynthRooms scenes (image_size [48, 64] there, [48, 80] here; seed 0 there, 5 here; scenes "
        "{'train': 1} there, {'train': 2} here); pass --overwrite to replace it, or give an empty or new folder")
    assert json.loads((data / "synthrooms" / "dataset_info.json").read_text())["config"]["seed"] == 0
    assert left_behind(tmp_path) == ["data"]
