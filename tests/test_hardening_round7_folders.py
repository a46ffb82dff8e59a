"""Issue 83, item 1: one ownership rule that reads what a file says; and item 7's folder part.

A folder is a command's own only when its marker (`.gap-mllm-output.json`) is a regular file, opened without
following a link, that parses and names the command (processing/output_folder.py `marker_problem`); no other file
name stands for it. Each repro below replaced the user's files with exit 0 before:

* `gap-mllm evaluate --out c` where c holds the user's summary.md and a run_fingerprint.json, or an empty
  evaluation.lock: both names were taken for an evaluation's;
* a marker that is a symbolic link to another evaluation's marker was followed;
* `gap-mllm export-lmms` wrote into any folder (now refused unless `--overwrite`);
* and every other writer (demo, predict --save-dir, export-vsibench, synth's dataset_info.json, train's output
  folder) reads its folder's record by the same reader.

Item 7: an output folder inside the data root was accepted (its lock file then read as data); now refused at the
start in one line. The evaluations here score oracle answers (no model: the folder rule runs before any answer).
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest

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
    """Was: data-lost (exit 0, summary.md and run_fingerprint.json replaced; an empty evaluation.lock alike)."""
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
    """Was: data-lost (the link was followed, the other evaluation's marker named the command)."""
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
    """Was: data-lost (export-lmms wrote its documents and YAMLs over the user's files, exit 0)."""
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
                                     "--save-dir"]),
    "export-vsibench": ("gap-mllm export-vsibench", ["export-vsibench", "--split", "val", "--out"]),
}


@pytest.mark.parametrize("command", LINKED_MARKER_WRITERS)
def test_every_writer_refuses_a_marker_that_links_to_its_own_kind(synth_data, tmp_path, command, capsys):  # noqa: F811
    """demo, predict --save-dir and export-vsibench read their folder's marker by the one rule. Was: data-lost."""
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
    """The same scenes' record, reached through a link, is no record of this folder. Was: data-lost."""
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
    """Checkpoints and a training record without the marker: an earlier version's folder, or the user's copy of one.
    Was: taken for a training run's by those names (and marked as one)."""
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
    """Item 7. Was: accepted; the training run read its own lock file as data and its continuation then failed."""
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
