"""The ownership rule of an output folder (processing/output_folder.py `marker_problem`): a folder is a command's own
only when its marker (`.gap-mllm-output.json`) is a regular file, opened without following a link, that parses and
names the command; no other file name stands for it. A folder the command did not write is refused in one line
(exit status 2) and the user's files are kept.

Every writer reads its folder by this rule: `gap-mllm evaluate --out` (also `.`, or a folder holding the user's
summary.md beside a run_fingerprint.json or an empty evaluation.lock), `demo --out`, `predict --save-dir`,
`export-lmms` (which replaces the user's files only with `--overwrite`), `export-vsibench`, synth's
dataset_info.json and train's output folder; the command itself refuses as its command line does. An output folder
inside the data root is refused at the start in one line. The evaluations here score oracle answers (no model: the
folder rule runs before any answer); predict's refusal comes before the model's weights load.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest

from gap_mllm.cli import demo, predict
from gap_mllm.cli.command_arguments import add_demo_arguments, add_predict_arguments
from gap_mllm.cli.main import main as gap_mllm
from gap_mllm.evaluation.runner import run_evaluation, write_oracle_predictions
from gap_mllm.processing.dataset_identity import SYNTHROOMS_INFO, read_dataset_info
from gap_mllm.processing.output_folder import (MARKER, OutputFolderRefused, mark_output_folder, marker_problem,
                                               read_marker)
from gap_mllm.processing.synth.generator import SynthConfig, SynthRooms
from gap_mllm.processing.synth.writer import write_dataset_folder
from gap_mllm.training import run as training_run
from gap_mllm.training.config import load_recipe
from gap_mllm.training.run import check_training_output, run_training

from .test_cli_predict import save_frames

RECIPE = Path(__file__).resolve().parent.parent / "training" / "recipes" / "mini_stage2.yaml"
EVALUATE = "gap-mllm evaluate"
NO_MARKER = ("no marker .gap-mllm-output.json names it; an earlier version's folder has none: to use it, move its files "
             "elsewhere")


def contents(folder: Path) -> dict:
    """Every entry under `folder`: a file's bytes, a link's target (what must stay as it was)."""
    return {p.relative_to(folder).as_posix(): os.readlink(p) if p.is_symlink() else p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_symlink() or p.is_file()}


def users_folder(path: Path, files: dict[str, str] | None = None) -> Path:
    """A folder of the user's: their summary.md and `files` ({name: text})."""
    path.mkdir(parents=True)
    for name, text in {"summary.md": "my notes\n", **(files or {})}.items():
        (path / name).write_text(text)
    return path


@contextlib.contextmanager
def no_wait(seconds: int = 30):
    """A read that waits (a FIFO opened as a file waits for a writer forever) fails the test instead of hanging it."""
    def waited(signum, frame):
        raise AssertionError(f"still reading after {seconds} s: the reader waited on the file")

    previous = signal.signal(signal.SIGALRM, waited)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def evaluated(synth_data, tmp_path_factory):  # noqa: F811
    """One evaluation (oracle detection answers) shared by the tests: its folder holds a genuine marker."""
    root = tmp_path_factory.mktemp("evaluated")
    oracle = write_oracle_predictions("detection", synth_data, root / "oracle.jsonl")
    run_evaluation("detection", synth_data, root / "eval", predictions_file=oracle, plots=False, progress=False)
    return oracle, root / "eval"


def evaluate(synth_data, oracle, out) -> int:  # noqa: F811
    return gap_mllm(["evaluate", "--task", "detection", "--data", str(synth_data), "--predictions", str(oracle),
                     "--out", str(out), "--no-plots", "--quiet"])


@pytest.mark.parametrize("stand_in", ["run_fingerprint.json", "evaluation.lock"])
def test_evaluate_takes_no_other_file_name_for_its_marker(synth_data, evaluated, tmp_path, stand_in, capsys):  # noqa: F811
    """A run_fingerprint.json, or an empty evaluation.lock, beside the user's summary.md is no evaluation's marker."""
    oracle, _ = evaluated
    users = users_folder(tmp_path / "c", {stand_in: "notes\n" if stand_in.endswith(".json") else ""})
    before = contents(users)
    assert evaluate(synth_data, oracle, users) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"gap-mllm evaluate: error: --out {users} is not empty ({stand_in}, summary.md) and was not written by "
        f"{EVALUATE} ({NO_MARKER}); give an empty or new folder"]
    with pytest.raises(OutputFolderRefused, match=f"was not written by {EVALUATE}"):  # the library's rule too
        run_evaluation("detection", synth_data, users, predictions_file=oracle, plots=False)
    assert contents(users) == before


def test_a_marker_that_links_to_another_evaluations_marker_is_refused(synth_data, evaluated, tmp_path, capsys):  # noqa: F811
    """The link is not followed: the other evaluation's marker says nothing of this folder."""
    oracle, other = evaluated
    users = users_folder(tmp_path / "c")
    os.symlink(other / MARKER, users / MARKER)
    before, theirs = contents(users), contents(other)
    assert evaluate(synth_data, oracle, users) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"gap-mllm evaluate: error: --out {users} is not empty ({MARKER}, summary.md) and its marker {MARKER} is a "
        f"symbolic link (to {other / MARKER}), which says nothing of who wrote this folder; give an empty or new folder"]
    assert contents(users) == before and contents(other) == theirs
    assert read_marker(users) is None and read_marker(other)["command"] == EVALUATE
    # the evaluation's own folder (a regular marker naming the command) is still written again
    assert evaluate(synth_data, oracle, other) == 0


@pytest.mark.parametrize("marker", ["[]", '{"command": 1}', "not json", "folder", "fifo"])
def test_a_marker_that_does_not_parse_or_is_not_a_regular_file_says_nothing(tmp_path, marker):
    folder = users_folder(tmp_path / "c")
    if marker == "folder":
        (folder / MARKER).mkdir()
    elif marker == "fifo":
        os.mkfifo(folder / MARKER)  # read without waiting for a writer that never comes
    else:
        (folder / MARKER).write_text(marker)
    expected = {"folder": "is a folder, not a regular file", "fifo": "is a FIFO (named pipe), not a regular file"}
    with no_wait():
        problem = marker_problem(folder, EVALUATE)
    assert problem == f"its marker {MARKER} " + expected.get(marker, "is not a JSON object naming the command that "
                                                                      "wrote the folder")


def test_export_lmms_refuses_the_users_files_unless_overwrite(synth_data, tmp_path, capsys):  # noqa: F811
    """export-lmms writes its documents and YAMLs over the user's files only with --overwrite."""
    users = users_folder(tmp_path / "tasks", {"gap_det.yaml": "my task\n"})
    before = contents(users)
    argv = ["export-lmms", "--data", str(synth_data), "--out", str(users), "--tasks", "gap_det", "--limit", "1"]
    assert gap_mllm(argv) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"gap-mllm export-lmms: error: --out {users} is not empty (gap_det.yaml, summary.md) and was not written by "
        f"gap-mllm export-lmms ({NO_MARKER}); pass --overwrite to replace it, or give an empty or new folder"]
    assert contents(users) == before
    assert gap_mllm([*argv, "--overwrite"]) == 0
    assert sorted(p.name for p in users.iterdir()) == [MARKER, "gap_det.jsonl", "gap_det.yaml", "gap_mllm.yaml"]
    assert gap_mllm(argv) == 0 and read_marker(users)["command"] == "gap-mllm export-lmms"  # now its own


# command -> (what its marker names, its arguments before the folder)
LINKED_MARKER_WRITERS = {
    "demo": ("gap-mllm demo", ["demo", "--model", "tiny", "--out"]),
    "predict": ("gap-mllm predict", ["predict", "--model", "tiny", "--example", "synthetic room A", "--task", "detection",
                                     "--out"]),
    "export-vsibench": ("gap-mllm export-vsibench", ["export-vsibench", "--split", "val", "--out"]),
}


@pytest.mark.parametrize("command", LINKED_MARKER_WRITERS)
def test_every_writer_refuses_a_marker_that_links_to_its_own_kind(synth_data, tmp_path, command, capsys):  # noqa: F811
    """demo, predict --save-dir and export-vsibench read their folder's marker by the one rule."""
    writer, argv = LINKED_MARKER_WRITERS[command]
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    mark_output_folder(theirs, writer)
    users = users_folder(tmp_path / command)
    os.symlink(theirs / MARKER, users / MARKER)
    before = contents(users)
    data = ["--data", str(synth_data)] if command == "export-vsibench" else []
    assert gap_mllm([*argv[:1], *data, *argv[1:], str(users)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"gap-mllm {command}: error: {argv[-1]} {users} is not empty ({MARKER}, summary.md) and its marker {MARKER} is "
        f"a symbolic link (to {theirs / MARKER}), which says nothing of who wrote this folder; "
        + ("pass --overwrite to replace it, or " if command == "export-vsibench" else "") + "give an empty or new folder"]
    assert contents(users) == before


def test_synth_reads_its_dataset_info_by_the_one_rule(synth_data, tmp_path):  # noqa: F811
    """The same scenes' record, reached through a link, is no record of this folder."""
    info = read_dataset_info(synth_data)
    users = users_folder(tmp_path / "data")
    (users / SYNTHROOMS_INFO).parent.mkdir()
    os.symlink(synth_data / SYNTHROOMS_INFO, users / SYNTHROOMS_INFO)
    before = contents(users)
    splits = {split: len(scenes) for split, scenes in info["splits"].items()}
    with pytest.raises(OutputFolderRefused, match=f"its synthrooms/dataset_info.json is a symbolic link \\(to "
                                                  f"{synth_data / SYNTHROOMS_INFO}\\)"):
        write_dataset_folder(users, SynthRooms(SynthConfig(**info["config"])), splits, command="gap-mllm synth")
    assert contents(users) == before


def test_train_refuses_an_output_folder_without_its_marker(tmp_path):
    """Checkpoints and a training record without the marker (an earlier version's folder, or the user's copy of one)
    are no training run's by those names: refused, and not marked as one."""
    earlier = users_folder(tmp_path / "run", {"gap_mllm_training.json": "{}"})
    (earlier / "checkpoint-2").mkdir()
    before = contents(earlier)
    recipe = load_recipe(RECIPE, [f"training.output_dir={earlier}"])
    with pytest.raises(OutputFolderRefused) as refusal:
        check_training_output(recipe)  # what run_training checks before it builds anything
    assert str(refusal.value) == (f"training.output_dir {earlier} is not empty (checkpoint-2/, gap_mllm_training.json, "
                                  f"summary.md) and was not written by gap-mllm train ({NO_MARKER}); give an empty or "
                                  "new folder")
    assert contents(earlier) == before and read_marker(earlier) is None


def test_an_output_folder_inside_the_data_root_is_refused_at_the_start(synth_data, evaluated, tmp_path,  # noqa: F811
                                                                       monkeypatch, capsys):
    """Refused at the start: a training run there would read its own lock file as data, and its continuation fail."""
    oracle, _ = evaluated
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("data")
    monkeypatch.setattr(training_run, "_run_training", lambda *a, **k: pytest.fail("the run started"))
    for key, folder in (("training.output_dir", data / "out"), ("training.output_dir", data),
                        ("run_state.directory", data / "state")):
        overrides = [f"data.data_root={data}", f"training.output_dir={tmp_path / 'out'}", f"{key}={folder}"]
        with pytest.raises(OutputFolderRefused) as refusal:
            run_training(load_recipe(RECIPE, overrides))
        assert str(refusal.value) == (f"{key} {folder} is inside the data root data.data_root {data} (links "
                                      "followed), where every file is read as data; give an output folder outside "
                                      "the data root")
    link = tmp_path / "link"  # the same folder by a link
    os.symlink(data, link)
    with pytest.raises(OutputFolderRefused, match="is inside the data root"):
        run_training(load_recipe(RECIPE, [f"data.data_root={data}", f"training.output_dir={link / 'out'}"]))
    assert sorted(p.name for p in data.iterdir()) == ["notes.txt"] and not (tmp_path / "out").exists()

    inside = synth_data / "eval"
    assert evaluate(synth_data, oracle, inside) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"gap-mllm evaluate: error: --out {inside} is inside the data root --data {synth_data} (links followed), "
        "where every file is read as data; give an output folder outside the data root"]
    with pytest.raises(OutputFolderRefused, match="is inside the data root"):
        run_evaluation("detection", synth_data, inside, predictions_file=oracle, plots=False)
    assert not inside.exists()


# -------------------------------------------------------------------------- a folder without a marker: the user's files


def parse(add_arguments, argv: list[str]):
    """A command's arguments as `gap-mllm` parses them (for calling its `main` without the early checks)."""
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


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
            "--formats", "png", "--out"]
    refusal = (f"--out {users} is not empty (answer.json) and was not written by gap-mllm predict ({NO_MARKER}); "
               "give an empty or new folder")
    with monkeypatch.context() as patched:
        patched.setattr(predict, "load_model_and_processor", lambda *a, **k: pytest.fail("the model was loaded"))
        assert gap_mllm(["predict", *argv, str(users)]) == 2
        assert capsys.readouterr().err.splitlines()[0] == f"gap-mllm predict: error: {refusal}"
        assert predict.main(parse(add_predict_arguments, [*argv, str(users)])) == 2  # the command itself, unchecked
        assert capsys.readouterr().err == f"gap-mllm predict: error: {refusal}\n"
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
