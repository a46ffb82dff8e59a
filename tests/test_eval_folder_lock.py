"""One writer per evaluation folder (evaluation/folder_lock.py): a run holds `<out>/evaluation.lock` from before the
run-fingerprint check to its end; a second run into the folder is refused in one line naming the folder and the
holder, before it reads or writes anything; a lock left by a killed run is taken over with a log line. Also: a
missing split names the splits there and the options to use (issue 47, item 12)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

from gap_mllm.cli.main import main as gap_mllm
from gap_mllm.evaluation import runner
from gap_mllm.evaluation.folder_lock import LOCK_FILE, EvaluationFolderBusy, holder_is_gone
from gap_mllm.evaluation.runner import run_evaluation, write_oracle_predictions

from .test_eval_runner import synth_data, tiny_checkpoint  # noqa: F401  (module fixtures)


def dead_pid() -> int:
    """The pid of a process that has ended (a killed run's)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_lock(folder, pid, host=None, started=None) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    holder = {"pid": pid, "host": host or socket.gethostname(), "started": time.time() if started is None else started}
    (folder / LOCK_FILE).write_text(json.dumps(holder))
    return holder


@pytest.fixture
def oracle(synth_data, tmp_path):  # noqa: F811
    return write_oracle_predictions("detection", synth_data, tmp_path / "oracle.jsonl")


def test_a_second_run_into_a_held_folder_is_refused_naming_folder_and_holder(synth_data, oracle, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "eval"
    holder = write_lock(out, os.getppid())  # a live process on this host: a run in progress
    with pytest.raises(EvaluationFolderBusy) as error:
        run_evaluation("detection", synth_data, out, predictions_file=oracle, plots=False)
    assert str(out) in str(error.value) and f"pid {holder['pid']} on {holder['host']}" in str(error.value)
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing read into or written
    assert json.loads((out / LOCK_FILE).read_text()) == holder
    status = gap_mllm(["evaluate", "--task", "detection", "--data", str(synth_data), "--predictions", str(oracle),
                       "--out", str(out), "--no-plots", "--quiet"])
    lines = capsys.readouterr().err.splitlines()
    assert status == 2 and lines[0].startswith(f"gap-mllm evaluate: error: {out} is being written by another evaluation")
    assert "Traceback" not in "\n".join(lines)


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


def test_a_reused_pid_or_another_host_is_judged_as_such():
    now = time.time()
    assert not holder_is_gone({"pid": os.getpid(), "host": socket.gethostname(), "started": now})
    # this pid, but the lock is older than this process: the pid was reused after the holder died
    assert holder_is_gone({"pid": os.getpid(), "host": socket.gethostname(), "started": now - 10 * 365 * 86400})
    assert holder_is_gone({"pid": dead_pid(), "host": socket.gethostname(), "started": now})
    assert not holder_is_gone({"pid": dead_pid(), "host": "another-host", "started": now})  # cannot be checked


def test_a_missing_split_names_the_splits_there_and_the_options(synth_data, oracle, tmp_path, capsys):  # noqa: F811
    status = gap_mllm(["evaluate", "--task", "detection", "--data", str(synth_data), "--predictions", str(oracle),
                       "--out", str(tmp_path / "out"), "--split", "testing", "--quiet"])
    lines = capsys.readouterr().err.splitlines()
    assert status == 2 and len(lines) == 2 and lines[0].startswith("gap-mllm evaluate: error: no detection annotation "
                                                                   "file for split 'testing' in ")
    assert lines[0].endswith("splits with detection files there: val. Choose one with --split (or give the file with "
                             "--annotation-file FILE)")
    assert "annotation_file=" not in lines[0]
