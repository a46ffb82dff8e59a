"""Commands that write a whole output folder never delete or overwrite the user's files, and never leave half a
folder (processing/output_folder.py is the one rule they share):

* a non-empty folder they did not write is refused in one line naming it, a few of its entries and `--overwrite`;
* their own earlier output (its marker) is replaced; `--overwrite` replaces anything else;
* they write into a hidden sibling renamed into place, so a kill leaves the last result or nothing, and the next
  run removes the leftover;
* the documents give each set of SynthRooms scenes a data folder of its own.

Every data set here is tiny (48x64 frames, 1-2 scenes), every model the tiny one: seconds each.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from gap_mllm.cli.main import main as gap_mllm
from gap_mllm.evaluation.runner import write_oracle_predictions
from gap_mllm.processing.output_folder import (MARKER, PARTIAL_SUFFIX, REPLACED_SUFFIX, OutputFolderRefused,
                                               check_output_folder, claim_output_folder, read_marker, sibling,
                                               writing_output_folder)

from .conftest import write_small_synth

REPO = Path(__file__).resolve().parent.parent
BUNDLE = REPO / "examples" / "space" / "bundle_space.py"
TINY_SYNTH = ["--size", "48", "64", "--frames", "4", "--min-objects", "2", "--max-objects", "2"]


def users_folder(path: Path) -> Path:
    """A folder of the user's own files (what no command may delete)."""
    path.mkdir(parents=True)
    (path / "README.md").write_text("my notes\n")
    (path / "test.jsonl").write_text('{"mine": 1}\n')
    return path


def assert_untouched(path: Path) -> None:
    assert (path / "README.md").read_text() == "my notes\n" and (path / "test.jsonl").read_text() == '{"mine": 1}\n'


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("gap-mllm ") or "error:" in line]


# ------------------------------------------------------------------------------------------ the mechanism


class _DiskFillsUp:
    """`open` whose files named like the marker (or its partial file) are created, then refuse their first write
    with ENOSPC: a full disk in the middle of writing a marker (pathlib's `write_text` opens through `io.open`)."""

    def __init__(self, real_open):
        self.real_open = real_open

    def __call__(self, file, mode="r", *args, **kwargs):
        handle = self.real_open(file, mode, *args, **kwargs)
        written = not isinstance(file, int) and any(c in mode for c in "wax")
        if not written or MARKER not in os.path.basename(os.fspath(file)):
            return handle

        class Full:
            def __getattr__(self, name):
                return getattr(handle, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                handle.close()

            def write(self, data):
                raise OSError(errno.ENOSPC, "No space left on device")

        return Full()


def test_a_marker_write_stopped_by_a_full_disk_leaves_no_marker_and_the_rerun_works(synth_data, tmp_path,  # noqa: F811
                                                                                   monkeypatch, capsys):
    """The marker is written beside, then renamed: a failed write leaves no 0-byte marker, so the rerun the full-disk
    line asks for is not refused ("its marker is not a JSON object naming the command")."""
    oracle = write_oracle_predictions("detection", synth_data, tmp_path / "oracle.jsonl")
    out = tmp_path / "eval"
    command = ["evaluate", "--task", "detection", "--data", str(synth_data), "--predictions", str(oracle), "--out",
               str(out), "--no-plots", "--quiet"]
    with monkeypatch.context() as disk:
        full = _DiskFillsUp(io.open)
        disk.setattr(io, "open", full)
        disk.setattr(builtins, "open", full)
        assert gap_mllm(command) == 2
    assert "gap-mllm evaluate: error: no space left on" in capsys.readouterr().err
    assert list(out.iterdir()) == []  # no marker, no partial marker, no lock: as new
    assert gap_mllm(command) == 0
    assert read_marker(out)["command"] == "gap-mllm evaluate"


def test_an_empty_marker_alone_is_taken_as_an_empty_folder_and_beside_the_users_files_is_refused(tmp_path):
    """An empty marker (what a full disk left when markers were written in place) says nothing of who wrote the
    folder: with nothing else there, the folder is empty and its command writes it; beside the user's files the
    folder is still refused (the ownership rule: a marker is a regular file that parses and names the command)."""
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / MARKER).write_bytes(b"")
    assert claim_output_folder(alone, "gap-mllm evaluate") == alone
    assert read_marker(alone)["command"] == "gap-mllm evaluate"
    users = users_folder(tmp_path / "users")
    (users / MARKER).write_bytes(b"")
    with pytest.raises(OutputFolderRefused, match="its marker .gap-mllm-output.json is not a JSON object naming"):
        claim_output_folder(users, "gap-mllm evaluate")
    assert (users / MARKER).read_bytes() == b"" and assert_untouched(users) is None


def test_a_foreign_folder_is_refused_in_one_line_and_kept(tmp_path):
    mine = users_folder(tmp_path / "mine")
    with pytest.raises(OutputFolderRefused) as refused:
        with writing_output_folder(mine, "gap-mllm x"):
            pytest.fail("nothing may be written")
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"--out {mine} is not empty (README.md, test.jsonl)")
    assert "pass --overwrite to replace it" in message
    assert_untouched(mine)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no sibling left either


def test_own_output_is_replaced_and_overwrite_replaces_anything(tmp_path):
    out = tmp_path / "out"
    with writing_output_folder(out, "gap-mllm x") as staging:
        (staging / "a.txt").write_text("1")
    assert json.loads((out / MARKER).read_text())["command"] == "gap-mllm x"
    with writing_output_folder(out, "gap-mllm x") as staging:  # its own: replaced whole
        (staging / "b.txt").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "b.txt"])
    with pytest.raises(OutputFolderRefused, match="holds the output of gap-mllm x"):
        check_output_folder(out, "gap-mllm y")  # another command's output is not its own
    mine = users_folder(tmp_path / "mine")
    with writing_output_folder(mine, "gap-mllm y", overwrite=True) as staging:
        (staging / "c.txt").write_text("3")
    assert sorted(p.name for p in mine.iterdir()) == sorted([MARKER, "c.txt"])


def test_a_failed_write_keeps_the_last_result_and_a_killed_one_is_cleaned_up(tmp_path):
    out = tmp_path / "out"
    with writing_output_folder(out, "gap-mllm x") as staging:
        (staging / "good.txt").write_text("complete")
    with pytest.raises(RuntimeError):
        with writing_output_folder(out, "gap-mllm x") as staging:
            (staging / "half.txt").write_text("half")
            raise RuntimeError("killed")
    assert (out / "good.txt").read_text() == "complete" and not (out / "half.txt").exists()
    assert not sibling(out, PARTIAL_SUFFIX).exists()
    # a SIGKILL runs no cleanup: it leaves the partial sibling, which the next run deletes
    leftover = sibling(out, PARTIAL_SUFFIX)
    leftover.mkdir()
    (leftover / "half.txt").write_text("half")
    with writing_output_folder(out, "gap-mllm x") as staging:
        assert not any(p.name == "half.txt" for p in staging.iterdir())
        (staging / "new.txt").write_text("new")
    assert not leftover.exists() and (out / "new.txt").is_file()
    # killed between the two renames: the folder moved aside comes back
    os.rename(out, sibling(out, REPLACED_SUFFIX))
    with writing_output_folder(out, "gap-mllm x") as staging:
        assert not out.exists() or (out / "new.txt").is_file()
        (staging / "newer.txt").write_text("newer")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_working_folder_is_never_replaced(tmp_path, monkeypatch):
    users_folder(tmp_path / "work")
    monkeypatch.chdir(tmp_path / "work")
    for target in (Path("."), Path(".."), Path("../work")):
        with pytest.raises(OutputFolderRefused, match="is the working folder or holds it"):
            with writing_output_folder(target, "gap-mllm x", overwrite=True):
                pass
    assert_untouched(tmp_path / "work")


def test_a_folder_given_as_a_link_is_written_through_and_the_link_kept(tmp_path):
    """`--out LINK` replaced the user's link with a folder (empty target or the command's earlier output)."""
    target = tmp_path / "disk" / "out"
    target.mkdir(parents=True)
    link = tmp_path / "out"
    link.symlink_to(target)
    for text in ("first", "second"):  # into the empty folder, then over the command's own output
        with writing_output_folder(link, "gap-mllm x") as staging:
            (staging / "result.txt").write_text(text)
        assert link.is_symlink() and os.readlink(link) == str(target)
        assert (target / "result.txt").read_text() == text and (target / MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk", "out"]
    assert sorted(p.name for p in (tmp_path / "disk").iterdir()) == ["out"]  # no sibling left beside the target


def test_synth_writes_through_a_link_and_refuses_one_that_leads_nowhere(tmp_path, capsys):
    target = tmp_path / "disk" / "data"
    target.mkdir(parents=True)
    link = tmp_path / "data"
    link.symlink_to(target)
    assert synth(link, 1) == 0
    assert link.is_symlink() and (target / "synthrooms" / "dataset_info.json").is_file()
    assert synth(link, 1) == 0  # the same scenes again, through the link
    assert link.is_symlink() and sorted(p.name for p in (tmp_path / "disk").iterdir()) == ["data"]
    capsys.readouterr()
    dangling = tmp_path / "gone"
    dangling.symlink_to(tmp_path / "nowhere")
    assert synth(dangling, 1) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"gap-mllm synth: error: --out {dangling} is a symbolic link to {tmp_path / 'nowhere'}, which does not exist; "
        "give a folder (a new name, or a link to a real one)"]
    assert dangling.is_symlink() and not (tmp_path / "nowhere").exists()


# ------------------------------------------------------------------------------------------ 1: bundle_space.py


def run_bundle(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BUNDLE), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_bundle_space_refuses_a_folder_of_the_users_files_and_the_working_folder(tmp_path):
    mine = users_folder(tmp_path / "mine")
    done = run_bundle("--out", "mine", cwd=tmp_path)
    assert done.returncode == 2 and "mine is not empty (README.md, test.jsonl)" in done.stderr, done.stderr
    assert "--overwrite" in done.stderr and len(error_lines(done.stderr)) == 1, done.stderr
    assert_untouched(mine)
    done = run_bundle("--out", ".", "--overwrite", cwd=mine)  # it deleted the working folder
    assert done.returncode == 2 and "is the working folder" in done.stderr, done.stderr
    assert_untouched(mine)


@pytest.fixture()
def bundle_space(monkeypatch):
    """bundle_space.py as a module, its `pip wheel` replaced by a stand-in wheel (the real one takes a minute)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bundle_space_under_test", BUNDLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def fake_wheel(command, check):
        Path(command[command.index("-w") + 1], "gap_mllm-0.0.0-py3-none-any.whl").write_bytes(b"wheel")

    monkeypatch.setattr(module.subprocess, "run", fake_wheel)
    return module


def test_bundle_space_replaces_its_own_bundle_and_a_killed_one_leaves_none(bundle_space, tmp_path):
    out = bundle_space.bundle(tmp_path / "space")
    assert (out / "requirements.txt").is_file() and (out / MARKER).is_file()
    (out / "stale.txt").write_text("from the earlier bundle")
    bundle_space.bundle(out, hardware="zero-a10g")
    assert not (out / "stale.txt").exists() and "zero-a10g" in (out / "README.md").read_text()
    mine = users_folder(tmp_path / "mine")
    bundle_space.bundle(mine, overwrite=True)
    assert not (mine / "test.jsonl").exists() and (mine / "app.py").is_file()


# -------------------------------------------------------------------------------------- 2 and 11: python -m lab.mini


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from gap_mllm.tiny.tiny_model import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model")


def mini_args(*argv: str):
    import argparse

    from lab.mini import pipeline

    parser = argparse.ArgumentParser()
    pipeline.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_mini_export_refuses_the_users_folder_before_anything_runs(tmp_path):
    from lab.mini import pipeline

    mine = users_folder(tmp_path / "mine")
    with pytest.raises(OutputFolderRefused, match=rf"^--export {mine} is not empty \(README.md, test.jsonl\).*--overwrite"):
        pipeline.main(mini_args("--out", str(tmp_path / "run"), "--budget", "toy", "--device", "cpu", "--export", str(mine)))
    assert_untouched(mine)
    assert not (tmp_path / "run").exists()  # refused before the data and hours of training, not at the end


def test_mini_export_replaces_its_own_export_only(tiny_model, tmp_path):
    from lab.mini.export import export_default

    mine = users_folder(tmp_path / "mine")
    with pytest.raises(OutputFolderRefused):
        export_default(tiny_model, mine)  # it deleted the folder whole
    assert_untouched(mine)
    out = export_default(tiny_model, tmp_path / "export")
    (out / "model-99999-of-99999.safetensors").write_bytes(b"an earlier export's shard")
    export_default(tiny_model, out)
    assert not (out / "model-99999-of-99999.safetensors").exists() and (out / "processor_config.json").is_file()
    export_default(tiny_model, mine, overwrite=True)
    assert not (mine / "test.jsonl").exists() and (mine / "config.json").is_file()


def finished_stages(run, tiny_model: Path) -> None:
    """The main arm's stages 1 and 2 marked done, stage 2 holding the tiny model (what a run killed in its final
    export has)."""
    import shutil

    from lab.mini import pipeline
    from lab.mini.arms import MAIN_ARM

    for stage in ("stage1", "stage2"):
        folder = run.stage_dir(MAIN_ARM.name, stage)
        shutil.copytree(tiny_model, folder)
        (folder / pipeline.DONE_MARKER).write_text(json.dumps({"recipe": "test", "global_step": 1}))


def test_a_kill_in_the_final_export_is_redone_on_the_rerun(tiny_model, tmp_path):
    from lab.mini import pipeline
    from lab.mini.arms import MAIN_ARM

    run = pipeline.MiniRun(out=tmp_path / "run", data=tmp_path / "run" / "data", budget="toy", device="cpu")
    finished_stages(run, tiny_model)
    final = run.stage_dir(MAIN_ARM.name, "final")
    # what today's kill leaves: final/ with config and weights, no processor (every rerun failed on it)
    final.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (final / name).write_bytes((tiny_model / name).read_bytes())
    # and what a kill of the staged export leaves beside it
    (sibling(final, PARTIAL_SUFFIX) / "config.json").parent.mkdir()
    (sibling(final, PARTIAL_SUFFIX) / "config.json").write_text("{}")
    assert pipeline.run_arm(run, MAIN_ARM, run.stage_dir("stage0")) == final
    assert (final / "processor_config.json").is_file() and (final / "README.md").is_file() and (final / MARKER).is_file()
    assert not sibling(final, PARTIAL_SUFFIX).exists()


def test_a_kill_while_mini_writes_its_data_is_resumed_not_refused(tmp_path, monkeypatch):
    from lab.mini import pipeline
    from lab.mini.pipeline_settings import Budget

    monkeypatch.setitem(pipeline.BUDGETS, "one_scene", Budget(scenes=(1, 0, 0)))  # the mini preset, one scene
    run = pipeline.MiniRun(out=tmp_path / "run", data=tmp_path / "run" / "data", budget="one_scene", device="cpu",
                           data_given=False)
    # a kill while the data were written leaves only the hidden sibling (it left a half `data/` that every rerun
    # refused, naming a --data the user never gave)
    leftover = sibling(run.data, PARTIAL_SUFFIX)
    (leftover / "scannet").mkdir(parents=True)
    info = pipeline.make_data(run)
    assert len(info["splits"]["train"]) == 1 and not leftover.exists()
    assert (run.data / "synthrooms" / "dataset_info.json").is_file()
    assert not (run.data / MARKER).exists()  # a data root carries no extra file: run_state digests every file
    assert pipeline.make_data(run)["splits"] == info["splits"]  # complete: up to date, not written again


def test_the_mini_data_refusal_names_the_folder_as_the_user_gave_it(tmp_path):
    from lab.mini import pipeline

    run = pipeline.MiniRun(out=tmp_path / "run", data=tmp_path / "run" / "data", budget="toy", device="cpu",
                           data_given=False)
    users_folder(run.data)
    with pytest.raises(ValueError) as refused:
        pipeline.make_data(run)
    message = str(refused.value)
    assert message.startswith(f"the data folder {run.data} (of --out {run.out}) is not empty") and "--data" not in message
    assert_untouched(run.data)


# ------------------------------------------------------------------------------------------ 3: export-vsibench


@pytest.fixture(scope="module")
def vsibench_data(tmp_path_factory):
    return write_small_synth(tmp_path_factory.mktemp("vsibench") / "data", {"test": 2})


def test_export_vsibench_keeps_the_users_readme_and_rows(vsibench_data, tmp_path, capsys):
    mine = users_folder(tmp_path / "mine")
    assert gap_mllm(["export-vsibench", "--data", str(vsibench_data), "--out", str(mine)]) == 2
    err = capsys.readouterr().err
    assert f"--out {mine} is not empty (README.md, test.jsonl)" in err and "--overwrite" in err
    assert_untouched(mine)
    assert gap_mllm(["export-vsibench", "--data", str(vsibench_data), "--out", str(mine), "--overwrite"]) == 0
    assert "SynthRooms spatial questions" in (mine / "README.md").read_text()
    assert f"dataset_path: {mine.resolve()}" in (mine / "vsibench_synthrooms.yaml").read_text()  # not the staging one
    assert gap_mllm(["export-vsibench", "--data", str(vsibench_data), "--out", str(mine)]) == 0  # now its own


# ------------------------------------------------------------------------------------------ 4: gap-mllm synth


def synth(out: Path, scenes: int, *extra: str) -> int:
    return gap_mllm(["synth", "--scenes", str(scenes), "--out", str(out), *TINY_SYNTH, *extra])


def test_synth_into_a_folder_of_other_scenes_is_refused(tmp_path, capsys):
    data = tmp_path / "data"
    assert synth(data, 1) == 0
    annotations = {p.name: p.read_bytes() for p in (data / "annotations").iterdir()}
    capsys.readouterr()
    assert synth(data, 2) == 2  # other scenes: it replaced their annotation files
    err = capsys.readouterr().err
    assert f"--out {data} is not empty" in err and "--overwrite" in err
    assert "holds other SynthRooms scenes (scenes {'train': 1} there, {'train': 2} here)" in err
    assert {p.name: p.read_bytes() for p in (data / "annotations").iterdir()} == annotations
    assert synth(data, 1) == 0  # the same scenes again: written again, the same files
    assert {p.name: p.read_bytes() for p in (data / "annotations").iterdir()} == annotations
    assert synth(data, 2, "--overwrite") == 0
    assert len(json.loads((data / "synthrooms" / "dataset_info.json").read_text())["splits"]["train"]) == 2
    mine = users_folder(tmp_path / "mine")
    assert synth(mine, 1) == 2
    assert_untouched(mine)


SYNTH_COMMAND = re.compile(r"(?m)^\s*gap-mllm synth (.*?)--out (\S+)(.*)$")
DOCUMENTS = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")), "mini/README.md",
             "examples/space/README.md"]


def test_each_documented_set_of_scenes_has_a_data_folder_of_its_own():
    """docs/vsibench.md wrote 1,500 scenes into data/mini, the 45-scene folder of README.md and docs/publish.md."""
    settings = defaultdict(set)
    for document in DOCUMENTS:
        path = REPO / document
        for match in SYNTH_COMMAND.finditer(path.read_text(encoding="utf-8") if path.is_file() else ""):
            arguments = (match.group(1) + match.group(3).split("#")[0]).split()
            settings[match.group(2)].add((" ".join(sorted(arguments)), document))
    assert settings, "no gap-mllm synth command found in the documents"
    for folder, uses in settings.items():
        assert len({arguments for arguments, _ in uses}) == 1, f"{folder}: {sorted(uses)}"
