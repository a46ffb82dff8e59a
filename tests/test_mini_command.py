"""`python -m lab.mini`, the Mini's research pipeline run from a checkout (`make mini`, `make mini-ablation`): its
`--help` and an argument mistake import neither torch nor transformers, a mistake or a stop is one line with the
exit status of the `gap-mllm` commands, and the command a stopped run prints to continue it is `python -m lab.mini`
as it was typed. The installed `gap-mllm` has no `mini` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gap_mllm.cli.main import COMMANDS
from gap_mllm.cli.main import main as gap_mllm
from gap_mllm.processing.errors import RUN_STOPPED_STATUS, RunStoppedEarly

import lab.mini.__main__ as entry
from lab.mini import pipeline

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers")


def run_module(argv: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("argv, status, stream, text", [
    (["--help"], 0, "stdout", "usage: python -m lab.mini [-h] [--out OUT]"),
    (["--out", "runs/x", "--budgt", "toy"], 2, "stderr",
     "python -m lab.mini: error: unrecognized arguments: --budgt toy (did you mean --budget?)"),
    (["--out", "runs/x", "--budget", "huge"], 2, "stderr", "argument --budget: invalid choice: 'huge'"),
])
def test_help_and_an_argument_mistake_import_neither_torch_nor_transformers(argv, status, stream, text):
    code = ("import json, runpy, sys\n"
            f"sys.argv = ['lab.mini', *{argv!r}]\n"
            "try:\n"
            "    runpy.run_module('lab.mini', run_name='__main__')\n"
            "    status = 0\n"
            "except SystemExit as stop:\n"
            "    status = stop.code\n"
            f"print(json.dumps({{'status': status, 'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}), "
            "file=sys.stderr)\n")
    done = run_module(["-c", code])
    report = json.loads(done.stderr.strip().splitlines()[-1])
    assert report == {"status": status, "heavy": []}, done.stderr[-2000:]
    assert text in getattr(done, stream)


def test_the_entry_runs_the_pipeline_with_the_parsed_options(monkeypatch):
    seen = {}
    monkeypatch.setattr(pipeline, "main", lambda args: seen.update(vars(args)) or 0)
    assert entry.main(["--out", "runs/m", "--budget", "toy", "--arms", "gap_gated_s0", "no_geometry_s0"]) == 0
    assert (seen["out"], seen["budget"], seen["arms"], seen["ablation"]) == ("runs/m", "toy",
                                                                              ["gap_gated_s0", "no_geometry_s0"], False)


def test_a_stop_and_a_mistake_are_one_line_with_the_commands_exit_status(monkeypatch, capsys):
    def stop(args):
        raise RunStoppedEarly("training stopped at its time limit; continue it with: python -m lab.mini --out runs/m")

    monkeypatch.setattr(pipeline, "main", stop)
    assert entry.main(["--out", "runs/m"]) == RUN_STOPPED_STATUS == 75
    assert capsys.readouterr().err == ("python -m lab.mini: training stopped at its time limit; continue it with: "
                                       "python -m lab.mini --out runs/m\n")

    def refuse(args):
        raise ValueError("--stage1 DIR gives the main arm's stage 1; --stage1-only would train nothing")

    monkeypatch.setattr(pipeline, "main", refuse)
    assert entry.main(["--out", "runs/m"]) == 2
    assert capsys.readouterr().err == ("python -m lab.mini: error: --stage1 DIR gives the main arm's stage 1; "
                                       "--stage1-only would train nothing\n")
    with pytest.raises(ValueError, match="--stage1-only would train nothing"):  # --debug: the traceback
        entry.main(["--out", "runs/m", "--debug"])


def test_a_run_started_as_a_module_is_continued_by_the_same_module(tmp_path):
    """training/run.py's `continuation_command` names the module `python -m` ran (as `python -m lab.mini` runs), with
    the arguments as typed."""
    package = tmp_path / "some_pipeline"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text("from gap_mllm.training.run import continuation_command\n"
                                         "print(continuation_command())\n")
    done = run_module(["-m", "some_pipeline", "--out", "runs/m", "--time-limit", "600"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "python -m some_pipeline --out runs/m --time-limit 600"


def test_the_installed_command_line_has_no_mini_command(capsys):
    assert "mini" not in COMMANDS
    assert gap_mllm(["mini", "--out", "runs/m"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "gap-mllm: error: unknown command 'mini'; the Mini's research pipeline runs from a repository checkout: make "
        "mini (python -m lab.mini); choose from demo, train, convert, evaluate, export-lmms, export-vsibench, predict, "
        "export-llm, push, space, synth")
