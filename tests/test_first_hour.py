"""Mistakes in a `gap-mllm` command are one line before the model is loaded (torch is not even imported), whatever the
mistake: a missing or unsupported file, a missing model folder or recipe (with the recipe meant), a grounding without
its query, an output folder that is a file, a frame that does not decode, a marker outside the frames, a misspelt
option (with the option meant, also a required one; an unambiguous prefix still works), an option the command would
ignore, a task input left out (named by its option)."""

from __future__ import annotations

import pytest
from PIL import Image

from .test_cli_startup import heavy_modules_after

EXAMPLE = ["--example", "synthetic room A"]


def one_line_before_torch(argv: list[str], *fragments: str) -> str:
    result = heavy_modules_after(argv)
    assert result["status"] == 2 and result["heavy"] == [], result
    lines = [line for line in result["err"].splitlines() if line.startswith("gap-mllm ")]
    assert len(lines) == 1 and "Traceback" not in result["err"], result["err"]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture
def frame(tmp_path):
    path = tmp_path / "frame.png"
    Image.new("RGB", (200, 100), (90, 120, 150)).save(path)
    return path


# ------------------------------------------------------------------ an output folder that is a file


def test_an_output_folder_that_is_a_file_is_refused_before_the_model(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    one_line_before_torch(["predict", *EXAMPLE, "--task", "detection", "--out", str(notes)],
                          f"--out {notes}: this is a file; give a folder")
    one_line_before_torch(["predict", *EXAMPLE, "--task", "detection", "--out", str(notes / "run")],
                          f"--out {notes / 'run'}: {notes} is a file; give a folder")
    one_line_before_torch(["demo", "--out", str(notes)], f"--out {notes}: this is a file; give a folder")
    one_line_before_torch(["evaluate", "--task", "grounding", "--data", str(tmp_path), "--model", "mini",
                           "--out", str(notes)], f"--out {notes}: this is a file; give a folder")
    assert notes.read_text() == "mine"


# ------------------------------------------------------------------ a frame that does not decode


def test_a_corrupt_image_is_refused_before_the_model(tmp_path, frame):
    noise = tmp_path / "noise.png"
    noise.write_bytes(bytes(range(256)) * 2)
    one_line_before_torch(["predict", "--images", str(noise), "--task", "detection"],
                          f"{noise}: not a readable image (UnidentifiedImageError)")
    truncated = tmp_path / "truncated.png"  # a PNG header that promises pixels it does not hold
    truncated.write_bytes(frame.read_bytes()[:80])
    one_line_before_torch(["predict", "--images", str(frame), str(truncated), "--task", "detection"],
                          f"{truncated}: not a readable image")


# ------------------------------------------------------------------ a marker outside the frames


def test_a_marker_outside_the_frames_is_refused_before_the_model(frame):
    one_line_before_torch(["predict", "--images", str(frame), str(frame), "--task", "reconstruction",
                           "--marker", "2", "10", "10"], "marker view 2 is out of range: there are 2 views")
    one_line_before_torch(["predict", "--images", str(frame), "--task", "reconstruction", "--marker", "0", "200", "10"],
                          "marker view 0: marker pixel (x=200, y=10) is outside the 200x100 view")
    # a bundled room: 4 frames of 160x128, known before the room is rendered
    one_line_before_torch(["predict", *EXAMPLE, "--task", "reconstruction", "--marker", "0", "10", "128"],
                          "marker view 0: marker pixel (x=10, y=128) is outside the 160x128 view")
    one_line_before_torch(["predict", *EXAMPLE, "--task", "reconstruction", "--marker", "4", "10", "10"],
                          "marker view 4 is out of range: there are 4 views")


def test_the_predict_command_applies_the_same_marker_rule_to_the_frames_it_read(frame, tmp_path, capsys):
    """Past the early check (a script calling `predict.main`), the marker is checked against the frames read and the
    output folder as the early check does, before any model: the model given does not exist."""
    from gap_mllm.cli import predict
    from gap_mllm.cli.main import CommandParser

    parser = CommandParser()
    predict.add_arguments(parser)
    args = parser.parse_args(["--model", str(tmp_path / "no-model"), "--images", str(frame), "--task", "reconstruction",
                              "--marker", "0", "10", "100"])
    assert predict.main(args) == 2
    assert "marker pixel (x=10, y=100) is outside the 200x100 view" in capsys.readouterr().err
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    args = parser.parse_args(["--model", str(tmp_path / "no-model"), "--images", str(frame), "--task", "detection",
                              "--out", str(notes)])
    assert predict.main(args) == 2
    assert f"--out {notes}: this is a file; give a folder" in capsys.readouterr().err


def test_a_bundled_rooms_frames_are_as_the_early_check_says():
    from gap_mllm.cli.example_rooms import EXAMPLE_FRAMES, EXAMPLE_IMAGE_SIZE, EXAMPLE_PRESET
    from gap_mllm.cli.scenes import synthetic_scene
    from gap_mllm.processing.synth.presets import synth_config

    assert EXAMPLE_IMAGE_SIZE == synth_config(EXAMPLE_PRESET).image_size  # the frames the Mini trained on
    views = synthetic_scene(0).views
    assert len(views) == EXAMPLE_FRAMES and {view.size for view in views} == {EXAMPLE_IMAGE_SIZE[::-1]}


# ------------------------------------------------------------------ misspelt options, inputs left out


@pytest.mark.parametrize("argv, meant", [
    (["predict", "--taks", "detection", *EXAMPLE], "the following arguments are required: --task (--taks: did you mean --task?)"),
    (["predict", "--exampel", "synthetic room A", "--task", "detection"],
     "one of the arguments --images --example is required (--exampel: did you mean --example?)"),
    (["evaluate", "--task", "grounding", "--daat", "data", "--model", "mini", "--out", "runs/x"],
     "the following arguments are required: --data (--daat: did you mean --data?)"),
])
def test_a_required_option_misspelt_is_named_as_the_option_meant(argv, meant):
    one_line_before_torch(argv, meant)


@pytest.mark.parametrize("task, option", [
    ("grounding", "give --query TEXT"),
    ("captioning", "give --box CX CY CZ SX SY SZ [YAW PITCH ROLL]"),
    ("reconstruction", "give --marker VIEW X Y"),
])
def test_a_task_input_left_out_is_named_by_its_option(frame, task, option):
    one_line_before_torch(["predict", "--images", str(frame), "--task", task], option)


# ------------------------------ mistakes before torch is imported; options the command would ignore


def test_command_mistakes_are_one_line_before_torch_is_imported(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a frame")
    frame = tmp_path / "frame.png"
    frame.write_bytes(b"")  # only its name is read before the model
    one_line_before_torch(["predict", "--images", str(tmp_path / "missing.png"), "--task", "detection"],
                          "missing.png: no such file or folder")
    one_line_before_torch(["predict", "--images", str(notes), "--task", "detection"], "unsupported file type .txt")
    one_line_before_torch(["predict", "--model", str(tmp_path / "no-model"), "--example", "synthetic room A",
                           "--task", "detection"], "no such folder")
    one_line_before_torch(["predict", "--images", str(frame), "--task", "grounding"], "grounding needs a text query")
    one_line_before_torch(["train", "--config", "training/recipes/stage1_pretrian.yaml"],
                          "not found", "did you mean training/recipes/stage1_pretrain.yaml?")


def test_a_misspelt_option_gets_a_suggestion_and_abbreviations_still_work():
    line = one_line_before_torch(["predict", "--example", "synthetic room A", "--task", "grounding", "--querry", "x"])
    assert "unrecognized arguments: --querry x (did you mean --query?)" in line
    # an unambiguous prefix is still the option (argparse's allow_abbrev): the mistake found is the missing image
    one_line_before_torch(["predict", "--images", "missing.png", "--task", "grounding", "--que", "the chair"],
                          "missing.png: no such file or folder")


def test_options_the_command_would_ignore_are_refused():
    one_line_before_torch(["predict", "--example", "synthetic room A", "--task", "detection", "--formats", "png"],
                          "--formats", "--out")
    one_line_before_torch(["predict", "--example", "synthetic room A", "--task", "detection", "--query", "a chair"],
                          "--query is not read by --task detection")
