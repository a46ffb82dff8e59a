"""One writer per evaluation folder (evaluation/folder_lock.py): a run holds `<out>/evaluation.lock` from before the
run-fingerprint check to its end; a second run into the folder is refused in one line naming the folder and the
holder, before it reads or writes anything; a lock left by a killed run is taken over with a log line; the holder is
seen across process-id namespaces (the lock is an OS file lock, not a pid on a host); a lock file that is a symbolic
link is refused, never written through. Also: a missing split names the splits there and the options to use."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from gap_mllm.cli.main import main as gap_mllm
from gap_mllm.evaluation import runner
from gap_mllm.evaluation.folder_lock import LOCK_FILE, EvaluationFolderBusy, evaluation_folder_lock
from gap_mllm.evaluation.runner import run_evaluation, write_oracle_predictions
from gap_mllm.processing.folder_lock import LockFileIsALink
from gap_mllm.processing.output_folder import MARKER, mark_output_folder



def dead_pid() -> int:
    """The pid of a process that has ended (a killed run's)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_lock(folder, pid, host=None, started=None) -> dict:
    """A lock file as a run writes it, held by no process, in a folder marked as an evaluation's (what a killed run
    leaves: a run marks its folder right after taking the lock, and a folder without the marker is not its own)."""
    folder.mkdir(parents=True, exist_ok=True)
    mark_output_folder(folder, "gap-mllm evaluate")
    holder = {"pid": pid, "host": host or socket.gethostname(), "started": time.time() if started is None else started}
    (folder / LOCK_FILE).write_text(json.dumps(holder))
    return holder


@contextlib.contextmanager
def held_by_another_process(folder, holder: dict):
    """A live process that holds the lock of `folder` (an OS file lock on its lock file, as a run takes it), with
    `holder` as the file's record, the folder marked as an evaluation's (as that run marks it)."""
    folder.mkdir(parents=True, exist_ok=True)
    mark_output_folder(folder, "gap-mllm evaluate")
    path = folder / LOCK_FILE
    path.write_text(json.dumps(holder))
    code = ("import fcntl, os, sys, time; d = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(d, fcntl.LOCK_EX); "
            "print('held', flush=True); time.sleep(120)")
    process = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "held"
        yield process
    finally:
        process.kill()
        process.wait()


@pytest.fixture
def oracle(synth_data, tmp_path):  # noqa: F811
    return write_oracle_predictions("detection", synth_data, tmp_path / "oracle.jsonl")


def test_a_second_run_into_a_held_folder_is_refused_naming_folder_and_holder(synth_data, oracle, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "eval"
    holder = {"pid": os.getppid(), "host": socket.gethostname(), "started": time.time()}
    with held_by_another_process(out, holder):
        with pytest.raises(EvaluationFolderBusy) as error:
            run_evaluation("detection", synth_data, out, predictions_file=oracle, plots=False)
        assert str(out) in str(error.value) and f"pid {holder['pid']} on {holder['host']}" in str(error.value)
        assert sorted(p.name for p in out.iterdir()) == [MARKER, LOCK_FILE]  # nothing read into or written
        assert json.loads((out / LOCK_FILE).read_text()) == holder
        status = gap_mllm(["evaluate", "--task", "detection", "--data", str(synth_data), "--predictions", str(oracle),
                           "--out", str(out), "--no-plots", "--quiet"])
    lines = capsys.readouterr().err.splitlines()
    assert status == 2 and lines[0].startswith(f"gap-mllm evaluate: error: {out} is being written by another evaluation")
    assert "Traceback" not in "\n".join(lines)


def test_a_holder_in_another_pid_namespace_with_the_same_hostname_is_refused_not_taken_over(synth_data, oracle,  # noqa: F811
                                                                                           tmp_path):
    """Item 15: a run in another container (its own pid namespace, the same hostname) records a pid that is no live
    process here; judged by pid it was taken over (32 rows for 16 samples). The lock is the kernel's: refused."""
    out = tmp_path / "eval"
    holder = {"pid": dead_pid(), "host": socket.gethostname(), "started": time.time()}  # no such process in this namespace
    with held_by_another_process(out, holder):
        with pytest.raises(EvaluationFolderBusy, match=f"pid {holder['pid']} on {holder['host']}"):
            run_evaluation("detection", synth_data, out, predictions_file=oracle, plots=False)
        assert sorted(p.name for p in out.iterdir()) == [MARKER, LOCK_FILE]
    # its holder gone (the kernel released its lock), the folder is free again
    assert run_evaluation("detection", synth_data, out, predictions_file=oracle, plots=False)["headline"]["value"] == 1.0


def test_a_model_run_holds_the_lock_from_before_the_fingerprint_check_to_its_end(synth_data, tiny_checkpoint,  # noqa: F811
                                                                                  tmp_path, monkeypatch):
    out = tmp_path / "eval"
    seen = []
    real_check = runner.check_resume

    def check_resume(folder, fingerprint):
        seen.append(json.loads((folder / LOCK_FILE).read_text())["pid"])
        return real_check(folder, fingerprint)

    monkeypatch.setattr(runner, "check_resume", check_resume)
    run_evaluation("detection", synth_data, out, model_dir=tiny_checkpoint, limit=2, batch_size=2, max_new_tokens=4,
                   progress=False, plots=False)
    assert seen == [os.getpid()] and not (out / LOCK_FILE).exists()
    rows = (out / "raw_outputs.rank0.jsonl").read_text().splitlines()
    assert len(rows) == 2


def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_log_line(synth_data, oracle, tmp_path, caplog):  # noqa: F811
    out = tmp_path / "eval"
    killed = write_lock(out, dead_pid())
    with caplog.at_level(logging.WARNING, logger="gap_mllm.evaluation.folder_lock"):
        summary = run_evaluation("detection", synth_data, out, predictions_file=oracle, plots=False)
    assert summary["headline"]["value"] == 1.0 and not (out / LOCK_FILE).exists()
    assert f"taking over the lock left by a run that is no longer running (pid {killed['pid']}" in caplog.text


def test_a_missing_split_names_the_splits_there_and_the_options(synth_data, oracle, tmp_path, capsys):  # noqa: F811
    status = gap_mllm(["evaluate", "--task", "detection", "--data", str(synth_data), "--predictions", str(oracle),
                       "--out", str(tmp_path / "out"), "--split", "testing", "--quiet"])
    lines = capsys.readouterr().err.splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("gap-mllm evaluate: error: no detection annotation "
                                                                   "file for split 'testing' in ")
    assert lines[0].endswith("splits with detection files there: val. Choose one with --split (or give the file with "
                             "--annotation-file FILE)")
    assert "annotation_file=" not in lines[0]


def test_an_evaluation_lock_file_that_is_a_link_is_refused_not_written_through(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("mine")
    folder = tmp_path / "eval"
    folder.mkdir()
    os.symlink(precious, folder / "evaluation.lock")
    with pytest.raises(LockFileIsALink, match=rf"^{re.escape(str(folder / 'evaluation.lock'))}: the lock file of .* is "
                                              rf"a symbolic link \(to {re.escape(str(precious))}\); a lock file is never "
                                              "written through a link: remove the link"):
        with evaluation_folder_lock(folder):
            pass
    assert precious.read_text() == "mine"
