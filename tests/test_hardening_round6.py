"""Issue 57, sections 3 and 4: a user's files are never overwritten by evaluate, demo or predict; wrong results and
the rest (the marker's pixels, a query too long for the model, a FIFO for a frame, Ctrl-C, a setting at its default,
the continue line, refusals before the model loads, a refusal's wording).

Each test names its case. The refusals run the command line (`gap-mllm ...`) with the model's weights loading
replaced by a failure, so a refusal that came after the load fails the test; the training cases share one run
interrupted by Ctrl-C after step 1 of 4, with its run state.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import TrainerCallback

from gap_mllm.cli import demo, predict
from gap_mllm.cli.command_arguments import add_demo_arguments, add_predict_arguments
from gap_mllm.cli.errors import run_command
from gap_mllm.cli.main import main as gap_mllm
from gap_mllm.evaluation.runner import read_predictions_file, run_evaluation, write_oracle_predictions
from gap_mllm.image_utils_gap_mllm import NotARegularFile
from gap_mllm.processing.builder_fingerprint import file_content_digest
from gap_mllm.processing.builders import load_annotation_file
from gap_mllm.processing.errors import INTERRUPTED_STATUS, DataError
from gap_mllm.processing.output_folder import MARKER, OutputFolderRefused, read_marker
from gap_mllm.processing_gap_mllm import load_image
from gap_mllm.training.config import load_recipe
from gap_mllm.training.run import continuation_command, run_definition, run_training
from gap_mllm.training.run_state import STATE_FILE, RunStateError, check_same_run, check_state_folder, restore_if_newer
from gap_mllm.training.time_limit import TrainingStoppedAtTimeLimit

from .test_run_state import source_model, write_recipe  # noqa: F401  (module fixture)
from .test_train_fixtures import train_data_root  # noqa: F401  (session fixture)


def parse(add_arguments, argv: list[str]):
    """A command's arguments as `gap-mllm` parses them (for calling its `main` without the early checks)."""
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture
def no_model_load(monkeypatch):
    """`gap-mllm predict` fails the test if it loads the model's weights."""
    monkeypatch.setattr(predict, "load_model_and_processor", lambda *a, **k: pytest.fail("the model was loaded"))


# why a folder without the marker is not the command's, and how to proceed (issue 83: no other file stands for it)
NO_MARKER = (f"no marker {MARKER} names it; an earlier version's folder has none: to use it, move its files "
             "elsewhere")


def contents(folder: Path) -> dict:
    """Every file under `folder` with its bytes (what must stay as it was)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def save_frames(folder: Path, count: int, width: int, height: int) -> list[Path]:
    """`count` smooth frames of `width`x`height` (small PNGs, whatever their size)."""
    folder.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None].repeat(height, 0).repeat(3, 2)
    paths = []
    for index in range(count):
        paths.append(folder / f"f{index}.png")
        Image.fromarray(np.roll(ramp, 7 * index, axis=1)).save(paths[-1])
    return paths


# ------------------------------------------------------------------------------ section 3: a user's files


def test_evaluate_out_holding_the_users_summary_and_samples_is_refused_and_their_files_kept(synth_data, tmp_path,  # noqa: F811
                                                                                           capsys):
    oracle = write_oracle_predictions("detection", synth_data, tmp_path / "oracle.jsonl")
    users = tmp_path / "userdir"
    users.mkdir()
    (users / "summary.md").write_text("my summary")
    (users / "samples.jsonl").write_text("my samples\n")
    before = contents(users)
    status = gap_mllm(["evaluate", "--task", "detection", "--data", str(synth_data), "--predictions", str(oracle),
                       "--out", str(users), "--no-plots", "--quiet"])
    assert status == 2 and capsys.readouterr().err.splitlines()[0] == (
        f"gap-mllm evaluate: error: --out {users} is not empty (samples.jsonl, summary.md) and was not written by "
        f"gap-mllm evaluate ({NO_MARKER}); give an empty or new folder")
    with pytest.raises(OutputFolderRefused, match="was not written by gap-mllm evaluate"):  # the library's rule too
        run_evaluation("detection", synth_data, users, predictions_file=oracle, plots=False)
    assert contents(users) == before
    # an evaluation's own folder is written again (and resumed): its marker names the command
    out = tmp_path / "eval"
    for _ in range(2):
        assert run_evaluation("detection", synth_data, out, predictions_file=oracle, plots=False)["headline"]["value"] == 1.0
    assert read_marker(out)["command"] == "gap-mllm evaluate" and (out / "summary.md").is_file()


def test_demo_out_holding_the_users_geometry_exact_ply_is_refused_and_their_files_kept(tmp_path, capsys):
    users = tmp_path / "u5"
    (users / "geometry").mkdir(parents=True)
    (users / "geometry" / "exact.ply").write_text("my ply")
    before = contents(users)
    assert gap_mllm(["demo", "--model", "tiny", "--out", str(users)]) == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        f"gap-mllm demo: error: --out {users} is not empty (geometry/) and was not written by gap-mllm demo "
        f"({NO_MARKER}); give an empty or new folder")
    with pytest.raises(OutputFolderRefused, match="was not written by gap-mllm demo"):  # the command itself, unchecked
        demo.main(parse(add_demo_arguments, ["--model", "tiny", "--out", str(users)]))
    assert contents(users) == before


def test_predict_save_dir_holding_the_users_answer_json_is_refused_and_their_file_kept(tiny_checkpoint, tmp_path,  # noqa: F811
                                                                                      monkeypatch, capsys):
    frame = save_frames(tmp_path / "frames", 1, 96, 64)[0]
    users = tmp_path / "u6"
    users.mkdir()
    (users / "answer.json").write_text("my answer")
    argv = ["--model", str(tiny_checkpoint), "--images", str(frame), "--task", "detection", "--max-new-tokens", "4",
            "--formats", "png", "--save-dir"]
    refusal = (f"--save-dir {users} is not empty (answer.json) and was not written by gap-mllm predict ({NO_MARKER}); "
               "give an empty or new folder")
    with monkeypatch.context() as patched:
        patched.setattr(predict, "load_model_and_processor", lambda *a, **k: pytest.fail("the model was loaded"))
        assert gap_mllm(["predict", *argv, str(users)]) == 2
        assert capsys.readouterr().err.splitlines()[0] == f"gap-mllm predict: error: {refusal}"
        assert predict.main(parse(add_predict_arguments, [*argv, str(users)])) == 2  # the command itself, unchecked
        assert capsys.readouterr().err == f"gap-mllm predict: {refusal}\n"
    assert contents(users) == {"answer.json": b"my answer"}
    # predict's own folder is written again
    mine = tmp_path / "mine"
    for _ in range(2):
        assert gap_mllm(["predict", *argv, str(mine)]) in (0, 3)
    assert read_marker(mine)["command"] == "gap-mllm predict" and (mine / "answer.json").is_file()


def test_evaluate_out_dot_is_refused_like_synth_and_nothing_is_written(synth_data, tmp_path, monkeypatch, capsys):  # noqa: F811
    oracle = write_oracle_predictions("detection", synth_data, tmp_path / "oracle.jsonl")
    here = tmp_path / "work"
    here.mkdir()
    monkeypatch.chdir(here)
    status = gap_mllm(["evaluate", "--task", "detection", "--data", str(synth_data), "--predictions", str(oracle),
                       "--out", ".", "--no-plots", "--quiet"])
    assert status == 2 and capsys.readouterr().err.splitlines()[0] == (
        "gap-mllm evaluate: error: --out . is the working folder or holds it; give a new folder for the output")
    with pytest.raises(OutputFolderRefused, match=r"--out \. is the working folder"):
        run_evaluation("detection", synth_data, ".", predictions_file=oracle, plots=False)
    assert list(here.iterdir()) == []


# ------------------------------------------------------------------------------ section 4: predict --marker


def test_predict_marker_takes_original_pixels_on_a_frame_the_model_gets_resized(tiny_checkpoint, tmp_path,  # noqa: F811
                                                                                monkeypatch, capsys):
    frames = [str(p) for p in save_frames(tmp_path / "frames", 3, 1280, 1024)]
    asked = []

    def answered(model, processor, views, request, **kwargs):  # the call the model gets, then the real answer
        asked.append(([view.size for view in views], request.marker))
        return run_task(model, processor, views, request, **kwargs)

    run_task = predict.run_task
    monkeypatch.setattr(predict, "run_task", answered)
    argv = ["predict", "--model", str(tiny_checkpoint), "--images", *frames, "--task", "reconstruction",
            "--max-new-tokens", "4", "--marker"]
    for given, on_model_frame in (("568 600", (2, 284, 300)), ("284 300", (2, 142, 150)), ("1279 1023", (2, 639, 511))):
        assert gap_mllm([*argv, "2", *given.split()]) in (0, 3)  # the untrained model's answer may not parse
        assert asked.pop() == ([(640, 512)] * 3, on_model_frame)  # the original pixel, on the 640x512 frame
    capsys.readouterr()
    assert gap_mllm([*argv, "2", "1280", "600"]) == 2
    assert capsys.readouterr().err == ("gap-mllm predict: marker view 2: marker pixel (x=1280, y=600) is outside the "
                                       "1280x1024 view (x must be in [0, 1279], y in [0, 1023], in the view's original "
                                       "pixel grid)\n")
    assert asked == []


# ------------------------------------------------------------------------------ section 4: a query too long


def test_a_query_that_does_not_fit_the_models_context_or_leaves_no_room_for_the_answer_is_refused_before_loading(
        tiny_checkpoint, tmp_path, no_model_load, capsys):  # noqa: F811
    frame = str(save_frames(tmp_path / "frames", 1, 96, 64)[0])
    argv = ["predict", "--model", str(tiny_checkpoint), "--images", frame, "--task", "grounding", "--query"]
    refusal = re.compile(r"gap-mllm predict: the query is too long for the model: ([\d,]+) characters, ([\d,]+) tokens, "
                         r"do not fit in the model's context of 4,096 positions \(text_config\.max_position_embeddings\): "
                         r"the prompt with its 1 frame\(s\) ends at position ([\d,]+), and the grounding answer needs "
                         r"up to 192 more; shorten it by at least ([\d,]+) tokens\n")

    def refused(query: str) -> tuple[int, int, int, int]:
        assert gap_mllm([*argv, query]) == 2
        found = refusal.fullmatch(capsys.readouterr().err)
        assert found, "not the refusal"
        return tuple(int(value.replace(",", "")) for value in found.groups())

    # 10,000 characters (one token each for the tiny tokenizer): past the context itself
    characters, tokens, ends, shorten = refused("x" * 10_000)
    assert (characters, tokens) == (10_000, 10_000) and ends > 4095 and shorten == ends + 192 - 4095
    # a query that fits but leaves the answer 100 positions of its 192: the last position is 4,095
    query = "x" * (4095 - 100 - (ends - tokens))
    assert refused(query) == (len(query), len(query), 4095 - 100, 92)


# ------------------------------------------------------------------------------ section 4: FIFOs


def test_a_fifo_in_place_of_a_frame_is_refused_by_train_and_predict_and_every_reader_of_media(
        train_data_root, tmp_path, capsys):  # noqa: F811
    data = tmp_path / "data"
    shutil.copytree(train_data_root, data)
    frame = data / "scannet" / "posed_images" / "synth0000_00" / "00010.jpg"  # a frame of the reconstruction samples
    frame.unlink()
    os.mkfifo(frame)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps({"model": {"tiny": "tiny"}, "data": {"data_root": str(data), "cache_dir": str(tmp_path / "hf")},
                                  "training": {"output_dir": str(tmp_path / "out"), "use_cpu": True, "report_to": "none",
                                               "max_steps": 1, "per_device_train_batch_size": 2, "save_strategy": "no",
                                               "disable_tqdm": True}}))
    def hung(*_):  # pytest's failure is no Exception: the command line cannot take it for a user's mistake
        pytest.fail("gap-mllm train waited 120 s on the FIFO")

    earlier = signal.signal(signal.SIGALRM, hung)  # a hang fails this test (the blocked open is interrupted)
    signal.alarm(120)
    try:
        assert gap_mllm(["train", "--config", str(recipe)]) == 2
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, earlier)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("gap-mllm train: error: ")]
    assert len(errors) == 1 and re.fullmatch(rf"gap-mllm train: error: sample '\w+'; file {re.escape(str(frame))}: colour "
                                             r"image is a FIFO \(named pipe\), not a regular file", errors[0])
    assert gap_mllm(["predict", "--model", "tiny", "--images", str(frame), "--task", "detection"]) == 2
    assert capsys.readouterr().err == (f"gap-mllm predict: {frame.resolve()}: not a regular file (give image files, a "
                                       "folder of images, or one video)\n")
    # the readers behind them: the data's cache key, the processor's images, annotation and predictions files
    assert file_content_digest(frame) == "unreadable:22"
    with pytest.raises(ValueError, match=rf"view 0: image file '{frame}' is a FIFO \(named pipe\), not a regular file"):
        load_image(str(frame), name="view 0")
    with pytest.raises(DataError, match="annotation file is a FIFO"):
        load_annotation_file(frame)
    with pytest.raises(NotARegularFile, match=rf"^predictions file {frame} is a FIFO \(named pipe\), not a regular file"):
        read_predictions_file(frame, 1)


# ------------------------------------------------------------------------------ section 4: Ctrl-C, settings, continue line


class Signal(TrainerCallback):
    """Sends this process `signum` at the start of step `step` (a person pressing Ctrl-C)."""

    def __init__(self, signum, step):
        self.signum, self.step = signum, step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            os.kill(os.getpid(), self.signum)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, source_model, train_data_root):  # noqa: F811
    """A run with a run state stopped by Ctrl-C at step 1 of 4: `(recipe path, output, state, the exception, the
    SIGINT handler after the run)`."""
    tmp = tmp_path_factory.mktemp("interrupted")
    recipe_path = write_recipe(tmp, source_model, train_data_root, tmp / "out")
    recipe = load_recipe(recipe_path, [f"run_state.directory={tmp / 'state'}"])
    outside = signal.signal(signal.SIGINT, lambda *_: None)  # a Ctrl-C the run did not take must not end the tests
    try:
        with pytest.raises(TrainingStoppedAtTimeLimit) as stop:
            run_training(recipe, callbacks=[Signal(signal.SIGINT, step=1)])
        after = signal.getsignal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, outside)
    return recipe_path, tmp / "out", tmp / "state", stop.value, after


def test_ctrl_c_saves_a_checkpoint_and_the_state_and_exits_130_with_the_continue_line(interrupted, capsys):
    _, out, state, stop, after = interrupted
    assert after is not stop and callable(after) and after.__name__ == "<lambda>"  # the run's handler gave it back
    assert stop.status == INTERRUPTED_STATUS == 130
    assert re.fullmatch(rf"training stopped on SIGINT \(Ctrl-C\) after step 1 of 4; the checkpoint in {out} and the run "
                        rf"state {state} holds the full state; continue it with: .+", str(stop))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    assert json.loads((state / STATE_FILE).read_text())["global_step"] == 1 and not (out / "model.safetensors").exists()

    def stopped(args):
        raise stop

    assert run_command("train", stopped, None) == 130
    assert capsys.readouterr().err == f"gap-mllm train: {stop}\n"


def test_a_setting_given_at_its_default_value_continues_the_run(interrupted, tmp_path):
    recipe_path, _, state, _, _ = interrupted
    copy = tmp_path / "state"
    shutil.copytree(state, copy)

    def resume(*settings):
        recipe = load_recipe(recipe_path, [f"run_state.directory={copy}", f"training.output_dir={tmp_path / 'out'}",
                                           *settings])
        return restore_if_newer(copy, tmp_path / "out", source=recipe.model.name_or_path, run=run_definition(recipe))

    assert resume("training.weight_decay=0.0", "training.adam_beta1=0.9").endswith("checkpoint-1")  # defaults: the same run
    with pytest.raises(RunStateError, match=r"its settings differ \(training.weight_decay: '\(unset\)' then, 0.01 now\)"):
        resume("training.weight_decay=0.01")
    # a state that recorded the default written out continues a run that leaves it out
    record = json.loads((copy / STATE_FILE).read_text())
    recorded = {**record, "run": {**record["run"], "training.weight_decay": 0.0}}
    check_same_run(recorded, run_definition(load_recipe(recipe_path)), copy)


def test_accept_other_data_is_left_out_of_every_later_continuation_command():
    assert continuation_command(["/venv/bin/gap-mllm", "train", "--config", "r.yaml", "--set",
                                 "run_state.accept_other_data=true", "--run-state", "s", "--resume", "auto"]) == \
        "gap-mllm train --config r.yaml --run-state s --resume auto"
    assert continuation_command(["/venv/bin/gap-mllm", "train", "--set=run_state.accept_other_data=true", "--config",
                                 "r.yaml", "--set", "training.max_steps=8"]) == \
        "gap-mllm train --config r.yaml --set training.max_steps=8 --resume auto"
    assert continuation_command(["/venv/bin/gap-mllm", "mini", "--out", "runs/m", "--set",
                                 "run_state.accept_other_data=true"]) == "gap-mllm mini --out runs/m"


# ------------------------------------------------------------------------------ section 4: refusals before the load


def read_only(folder: Path, monkeypatch) -> None:
    """`folder` made read-only; for root, whom the kernel lets write anyway, `os.access` says what it says to a user."""
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:
        access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: (not mode & os.W_OK and access(path, mode, **kw))
                            if Path(path).resolve() == folder.resolve() else access(path, mode, **kw))


@pytest.mark.parametrize("case", ["a query holding <image>", "a 20000x4 frame", "a read-only --save-dir"])
def test_refusals_that_came_after_the_model_loaded_come_before_it(case, tiny_checkpoint, tmp_path, monkeypatch,  # noqa: F811
                                                                  no_model_load, capsys):
    frame = str(save_frames(tmp_path / "frames", 1, 96, 64)[0])
    argv = ["predict", "--model", str(tiny_checkpoint), "--images", frame, "--task", "grounding", "--query", "the chair"]
    if case == "a query holding <image>":
        argv[-1] = "the <image> chair"
        refusal = ("gap-mllm predict: the query must not contain '<image>' (the placeholder of a view in the prompt); "
                   "remove it from the text")
    elif case == "a 20000x4 frame":
        argv[4] = str(save_frames(tmp_path / "thin", 1, 20000, 4)[0])
        refusal = (f"gap-mllm predict: {argv[4]}: 20000x4 px, 640x1 px as the model gets it: the model's processor "
                   "cannot read it (absolute aspect ratio must be smaller than 200, got 640.0); crop or resize the "
                   "frames")
    else:
        read_only(tmp_path / "ro", monkeypatch)
        argv += ["--save-dir", str(tmp_path / "ro" / "out")]
        refusal = (f"gap-mllm predict: error: --save-dir {tmp_path / 'ro' / 'out'} cannot be written: "
                   f"{tmp_path / 'ro'} grants no write permission; give a folder you can write to")
    assert gap_mllm(argv) == 2
    assert capsys.readouterr().err.splitlines()[0] == refusal  # the one line (a hint to --debug may follow)


# ------------------------------------------------------------------------------ section 4: wording


def test_a_state_folder_with_the_users_files_is_refused_in_words_that_read(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / STATE_FILE).write_text("{}")
    (state / "NOTES.md").write_text("mine")
    with pytest.raises(OutputFolderRefused) as refused:
        check_state_folder(state)
    assert str(refused.value) == (f"run_state.directory {state} is not empty (NOTES.md, run_state.json) and holds files a "
                                  "run state does not write (NOTES.md): the folder is the run state's alone (move them "
                                  "out); give an empty or new folder")
    assert ", or;" not in str(refused.value) and (state / "NOTES.md").read_text() == "mine"
    assert MARKER not in [p.name for p in state.iterdir()]
