"""The box a user gives for captioning: refused as an answer's box would be, given by its centre and size alone, and
noted when its orientation is one the model never trained on.

- a box with a side of 0 (as the prompt writes it, 2 decimals) or a number that is not finite is refused in one line
  naming the box, on every path that takes one: `gap-mllm predict --box`, the Space's field and the demo (the front
  ends' request), the processor and the serving encoder (the prompt's rule, `format_box`);
- `--box cx cy cz sx sy sz` is an upright object as the model's training cameras see it: yaw π, roll π and pitch π/2
  less the typical downward tilt its folder records (box_angles.json's camera_tilt), the convention the model writes
  its own boxes in; a level first camera (pitch π/2) for a folder that records none (processing/box_angles.py);
- a box whose angles no training box of the model's folder had (its box_angles.json) gets one line naming the
  convention; GAP-MLLM-Mini's folder records its training boxes' angles, and the angles of its own answers and of the
  bundled rooms lie inside them.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

from gap_mllm.cli import predict
from gap_mllm.cli.command_arguments import add_predict_arguments
from gap_mllm.cli.main import main as gap_mllm
from gap_mllm.cli.scenes import EXAMPLE_SEEDS, synthetic_scene
from gap_mllm.cli.space_backend import parse_numbers
from gap_mllm.cli.task_request import TaskRequest, example_request
from gap_mllm.mini import SHIPPED_DIR
from gap_mllm.processing.box_angles import (
    BOX_ANGLES_RECORD,
    CAMERA_TILT,
    UPRIGHT_LEVEL_ANGLES,
    angle_intervals,
    box_angle_record,
    read_box_angles,
    unseen_angles_note,
    upright_angles,
    write_box_angles,
)
from gap_mllm.processing.coordinates import euler_to_matrix
from gap_mllm.processing.synth.generator import SynthRooms
from gap_mllm.processing.synth.presets import synth_config
from gap_mllm.processing.synth.samples import camera_box_angles, camera_tilts
from gap_mllm.serving import GapMllmEncoder
from gap_mllm.tasks_gap_mllm import CAPTIONING

from lab.mini.export import BOX_ANGLES_SOURCE, mini_box_angles

from .conftest import make_views

ROOM = "synthetic room A"


class _Stopped(Exception):
    """Raised where `gap-mllm predict` would load the model: what it printed before is the test's."""


@pytest.fixture
def stop_before_the_model(monkeypatch):
    def stop(*args, **kwargs):
        raise _Stopped

    monkeypatch.setattr(predict, "load_model_source", stop)
    monkeypatch.setattr(predict, "load_model_and_processor", stop)


def _predict_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gap-mllm predict")
    add_predict_arguments(parser)
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------ a box of no object


ZERO_BOXES = {  # the box given -> the sides the prompt would write as 0
    "0 0 0 0 0 0 0 0 0": "x, y, z",
    "0.2 0.3 2.0 0.6 0.0 0.6 3.14 1.2 3.1": "y",
    "0.2 0.3 2.0 0.004 0.8 0.6 3.14 1.2 3.1": "x",  # 0.004 m: written 0.0
    "0.2 0.3 2.0 0.6 0.8 -0.0 3.14 1.2 3.1": "z",
}


@pytest.mark.parametrize("box", ZERO_BOXES)
def test_a_box_with_a_side_of_zero_is_refused_naming_it_on_every_path(box, tiny_processor, stop_before_the_model,
                                                                       capsys):
    """`predict --task captioning --box 0 0 0 0 0 0 0 0 0` was captioned (while a 0x0x0 box in an answer exits 3):
    refused now, before any model loads, as the processor, the serving encoder and the Space's request refuse it."""
    values = [float(v) for v in box.split()]
    written = [round(v, 2) for v in values]
    problem = (f"box {written} has a size of 0 along {ZERO_BOXES[box]}: a box with a side of 0 is no object's box "
               "(sizes, entries 3-5, must be at least 0.01 as the prompt writes them)")
    assert gap_mllm(["predict", "--example", ROOM, "--task", "captioning", "--box", *box.split()]) == 2
    assert capsys.readouterr().err == f"gap-mllm predict: error: captioning {problem}\n"
    with pytest.raises(ValueError) as refused:  # the Space's and the demo's request (predict's too)
        example_request("captioning", {}, box=parse_numbers(box, (6, 9), "object box")).validate(1)
    assert str(refused.value) == f"captioning {problem}"
    with pytest.raises(ValueError) as refused:  # the Python API
        tiny_processor(images=[make_views(1)], task="captioning", box=values, return_tensors="pt")
    assert problem in str(refused.value)
    with pytest.raises(ValueError) as refused:  # vLLM requests: the serving encoder's prompt
        GapMllmEncoder.segments(object(), 1, task="captioning", box=values)
    assert str(refused.value) == problem


def test_a_box_that_is_not_finite_is_refused_naming_it(stop_before_the_model, capsys):
    box = "0 0 2 1 1 nan 0 0 0".split()
    assert gap_mllm(["predict", "--example", ROOM, "--task", "captioning", "--box", *box]) == 2
    assert capsys.readouterr().err == ("gap-mllm predict: error: captioning box must hold 9 finite numbers, got "
                                       "[0.0, 0.0, 2.0, 1.0, 1.0, nan, 0.0, 0.0, 0.0]\n")


# ------------------------------------------------------------------------------------ a box given by centre and size


def test_a_box_given_by_centre_and_size_is_an_upright_object_seen_by_a_level_camera(stop_before_the_model, capsys):
    """Its angles are yaw π, pitch π/2, roll π: the object's x axis along the camera's x (across the view), its y along
    the camera's z (away from it), its z (height) along the camera's -y (up, OpenCV's y pointing down); the prompt
    writes them as the model writes an upright object's (roll ±3.14)."""
    request = TaskRequest("captioning", box=[0.2, 0.3, 2.0, 0.6, 0.8, 0.9])
    assert request.box == [0.2, 0.3, 2.0, 0.6, 0.8, 0.9, math.pi, math.pi / 2, math.pi]
    axes = euler_to_matrix(request.box[6:9])  # columns: the object's x, y, z axes in the camera
    assert np.allclose(axes, [[1, 0, 0], [0, 0, -1], [0, 1, 0]], rtol=0, atol=1e-15)
    assert "[0.2, 0.3, 2.0, 0.6, 0.8, 0.9, 3.14, 1.57, 3.14]" in CAPTIONING.task_text(box=request.box)
    assert example_request("captioning", {}, box=[0.2, 0.3, 2.0, 0.6, 0.8, 0.9]).box == request.box  # predict, Space
    assert parse_numbers("0.2, 0.3, 2.0, 0.6, 0.8, 0.9", (6, 9), "object box") == request.box[:6]  # the Space's field
    assert _predict_args(["--example", ROOM, "--task", "captioning", "--box", "0.2", "0.3", "2", "0.6", "0.8",
                          "0.9"]).box == [0.2, 0.3, 2.0, 0.6, 0.8, 0.9]
    with pytest.raises(SystemExit):
        _predict_args(["--example", ROOM, "--task", "captioning", "--box", *"1 2 3 4 5 6 7".split()])
    assert capsys.readouterr().err.endswith("gap-mllm predict: error: argument --box: expected 6 numbers (cx cy cz sx "
                                            "sy sz) or 9 (cx cy cz sx sy sz yaw pitch roll), got 7\n")


MINI_BOX = ["0.3", "0.6", "2.5", "1.0", "0.6", "0.7"]  # the box: a 1.0 x 0.6 x 0.7 m object 2.5 m ahead


def test_a_box_given_by_centre_and_size_takes_the_tilt_of_the_model_s_training_cameras():
    """The Mini's folder records its training cameras' typical downward tilt (the median over the frames of its 1,200
    training scenes: 0.33 rad); a 6-number box is an upright object seen by such a camera: its height axis is the
    room's up as that camera sees it, and its angles lie among those of the Mini's training boxes."""
    record = read_box_angles(SHIPPED_DIR)
    tilt = record[CAMERA_TILT]
    assert tilt == 0.33
    yaw, pitch, roll = upright_angles(record)
    assert (yaw, roll) == (math.pi, math.pi) and pitch == pytest.approx(math.pi / 2 - 0.33, abs=1e-12)
    axes = euler_to_matrix([yaw, pitch, roll])  # the object's height (z) is the room's up in a camera tilted down
    assert np.allclose(axes[:, 2], [0, -math.cos(tilt), -math.sin(tilt)], rtol=0, atol=1e-12)
    assert np.allclose(axes[:, 0], [1, 0, 0], rtol=0, atol=1e-12)  # its width across the view
    box = example_request("captioning", {}, box=[float(v) for v in MINI_BOX], upright=upright_angles(record)).box
    assert box[6:] == [math.pi, pitch, math.pi] and unseen_angles_note(box, record) is None
    assert upright_angles(None) == UPRIGHT_LEVEL_ANGLES == upright_angles({"angles": MINI_LIKE})  # records none
    # the record's writer: the median tilt of the frames (2 scenes here), which is where the boxes' pitch lies
    generator = SynthRooms(synth_config("mini"))
    scenes = [generator.layout_scene(index) for index in range(2)]
    tilts = np.concatenate([camera_tilts(scene) for scene in scenes])
    assert mini_box_angles(2)[CAMERA_TILT] == round(float(np.median(tilts)), 2)
    pitches = np.concatenate([camera_box_angles(scene)[:, 1] for scene in scenes])
    assert abs(float(np.median(pitches)) - (math.pi / 2 - float(np.median(tilts)))) < 0.01  # upright objects
    with pytest.raises(ValueError, match=r"camera_tilt nan is not a camera tilt in radians"):
        upright_angles({CAMERA_TILT: float("nan")})


def test_the_6_number_box_answers_on_the_mini_s_room_without_the_note_and_a_box_truly_outside_still_gets_it(capsys):
    """Was: every 6-number box got "an orientation no box this model was trained on had" on the default model, whose
    cameras all look down (a level camera's pitch 1.57 is outside its training boxes' 0.99-1.46)."""
    assert gap_mllm(["predict", "--example", ROOM, "--task", "captioning", "--box", *MINI_BOX, "--json"]) == 0
    printed = capsys.readouterr()
    assert "orientation no box this model was trained on had" not in printed.err
    assert json.loads(printed.out)["task"] == "captioning"
    # the level camera's angles given in full, and a box lying on its back: outside, noted (before the model loads)
    for angles in (["3.14", "1.57", "3.14"], ["0", "0", "0"]):
        assert gap_mllm(["predict", "--example", ROOM, "--task", "captioning", "--box", *MINI_BOX, *angles,
                         "--json"]) == 0
        assert "an orientation no box this model was trained on had" in capsys.readouterr().err


# ------------------------------------------------------------------------------ an orientation it never trained on


MINI_LIKE = {"yaw": [[-3.15, 3.15]], "pitch": [[0.99, 1.46]], "roll": [[-3.15, -2.77], [2.77, 3.15]]}


def test_angle_ranges_are_the_smallest_arc_widened_to_two_decimals():
    assert angle_intervals([1.0, 1.2, 1.4504]) == [[1.0, 1.46]]
    assert angle_intervals([3.0, -3.1, 2.8, -2.95]) == [[-3.15, -2.95], [2.8, 3.15]]  # through ±π
    assert angle_intervals(np.linspace(-math.pi, math.pi, 1000)) == [[-3.15, 3.15]]  # no gap a prompt can write


def test_a_box_of_an_orientation_no_training_box_had_gets_one_note_naming_the_convention(
        tmp_path, stop_before_the_model, capsys):
    """A model folder records its training boxes' angles; a box outside them is one line on stderr before the model
    loads (the request still runs), inside them nothing, and a folder without the record checks nothing."""
    folder = tmp_path / "model"
    folder.mkdir()
    write_box_angles(folder, {**box_angle_record([[0.0, 1.2, 3.1]], "a test"), "angles": MINI_LIKE})
    note = ("note: the box's angles (yaw pitch roll 0 0 0) hold pitch 0 (trained: 0.99 to 1.46), roll 0 (trained: "
            "-3.15 to -2.77 or 2.77 to 3.15), an orientation no box this model was trained on had, so its answer may "
            "mean nothing. Angles are yaw pitch roll in radians, R = Ry(roll)·Rx(pitch)·Rz(yaw) (scipy 'zxy'), in "
            "the first camera's OpenCV frame (x right, y down, z forward): an upright object has pitch π/2 less the "
            "camera's downward tilt and roll ±π; the angles of this model's own detection answers are in its "
            "convention")
    given = [0.2, 0.3, 2.0, 0.6, 0.8, 0.6]
    with pytest.raises(_Stopped):
        predict.main(_predict_args(["--model", str(folder), "--example", ROOM, "--task", "captioning", "--box",
                                    *map(str, given + [0, 0, 0])]))
    assert capsys.readouterr().err == note + "\n"
    with pytest.raises(_Stopped):
        predict.main(_predict_args(["--model", str(folder), "--example", ROOM, "--task", "captioning", "--box",
                                    *map(str, given + [2.08, 1.03, -3.06])]))  # as the Mini writes a box
    assert capsys.readouterr().err == ""
    assert unseen_angles_note(given + [0.0, 0.0, 0.0], read_box_angles(tmp_path)) is None  # no record
    (folder / BOX_ANGLES_RECORD).write_text("{}")
    with pytest.raises(ValueError, match=rf"{BOX_ANGLES_RECORD}: not a record of box angles \(KeyError"):
        read_box_angles(folder)


def test_the_minis_folder_records_its_training_boxes_angles():
    """The shipped record holds the angles of the Mini's training data (here: of its first two scenes, a part of it)
    and of the bundled rooms' boxes (docs/usage.md's box, of its detection answer: tests/test_docs_snippets.py);
    a level camera's upright box (pitch π/2) is outside it: the Mini's cameras all looked down."""
    record = read_box_angles(SHIPPED_DIR)
    assert record["convention"] == box_angle_record([[0, 0, 0]], "")["convention"]
    part = mini_box_angles(2)["angles"]
    for name, intervals in part.items():
        for low, high in intervals:
            assert any(a <= low and high <= b for a, b in record["angles"][name]), (name, low, high, record)
    for name, seed in EXAMPLE_SEEDS.items():
        box = synthetic_scene(seed).example_inputs["captioning"]["box"]
        assert unseen_angles_note(box, record) is None, (name, box)
    assert unseen_angles_note(TaskRequest("captioning", box=[0, 0, 2, 1, 1, 1]).box, record) is not None
    shipped = json.loads((SHIPPED_DIR / BOX_ANGLES_RECORD).read_text(encoding="utf-8"))
    assert shipped["source"] == BOX_ANGLES_SOURCE.format(scenes=1200)  # the full budget's training scenes


@pytest.mark.parametrize("edit, problem", [
    (lambda record: record["angles"].__setitem__("pitch", []), "pitch has no interval"),
    (lambda record: record["angles"].__setitem__("pitch", [[float("nan"), 1.46]]),
     "pitch interval [nan, 1.46] is not within ±3.15 radians"),
    (lambda record: record["angles"].__setitem__("yaw", [[-3.15, 7.0]]),
     "yaw interval [-3.15, 7.0] is not within ±3.15 radians"),
    (lambda record: record["angles"].__setitem__("pitch", [[1.46, 0.99]]), "pitch interval [1.46, 0.99] runs backwards"),
    (lambda record: record.__setitem__("convention", "yaw pitch roll\x1b[2J\x1b[31m in radians"),
     r"convention holds control characters ('\x1b')"),
    (lambda record: record.__setitem__("source", "data\nnote: all fine"), r"source holds control characters ('\n')"),
    (lambda record: record.__setitem__("convention", 7), "convention is int, not text"),
])
def test_a_tampered_box_angle_record_is_refused_naming_what_is_wrong(tmp_path, edit, problem):
    """An empty, NaN or reversed interval used to print "trained: nan to 1.46" and check nothing; a convention with
    terminal escape codes was printed raw in the note."""
    record = json.loads(json.dumps({**box_angle_record([[0.0, 1.2, 3.1]], "a test"), "angles": MINI_LIKE}))
    edit(record)
    write_box_angles(tmp_path, record)
    with pytest.raises(ValueError) as refused:
        read_box_angles(tmp_path)
    assert str(refused.value) == (f"{tmp_path / BOX_ANGLES_RECORD}: not a record of box angles ({problem}); delete it "
                                  "or write it again")
    assert read_box_angles(SHIPPED_DIR)["angles"]["pitch"] == [[0.99, 1.46]]  # the shipped record reads as before
