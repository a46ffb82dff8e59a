"""Every count argument of every command line (batch sizes, workers, limits, frames, ...) is checked by argparse,
in the command line's words, before any work (processing/argument_types.py): `--batch-size 0` used to end in
`range() arg 3 must not be zero`, and `-1` in a run that answered nothing and said "rerun to resume"."""

from __future__ import annotations

import argparse
import importlib
import os

import pytest

from gap_mllm.cli.main import COMMANDS
from gap_mllm.cli.main import main as gap_mllm
from gap_mllm.evaluation import grounding_identification_cli
from gap_mllm.evaluation.runner import run_evaluation

from lab.mini import constrained_row, fresh_seeds, shipped_baselines
from lab.mini.__main__ import main as lab_mini
from lab.mini.pipeline_settings import add_arguments as add_mini_arguments

POSITIVE = "must be a positive number (at least 1)"
NON_NEGATIVE = "must be zero or a positive number"
EVALUATE = ["evaluate", "--task", "detection", "--data", "nowhere", "--model", "tiny", "--out", "nowhere"]
SYNTH = ["synth", "--scenes", "1", "--out", "nowhere"]
MINI = ["--out", "nowhere"]  # `python -m lab.mini`, the Mini's research pipeline

CASES = [
    (EVALUATE, "--batch-size", ["0", "-1"], POSITIVE),
    (EVALUATE, "--max-new-tokens", ["0", "-3"], POSITIVE),
    (EVALUATE, "--limit", ["0", "-1"], POSITIVE),
    (["predict", "--example", "synthetic room A", "--task", "detection"], "--max-frames", ["0", "-2"], POSITIVE),
    (["space"], "--concurrency", ["0", "-1"], POSITIVE),
    (["space"], "--max-queue", ["0", "-1"], POSITIVE),
    (["export-lmms", "--data", "nowhere", "--out", "nowhere"], "--limit", ["0", "-1"], POSITIVE),
    (["synth", "--out", "nowhere"], "--scenes", ["-1"], NON_NEGATIVE),
    (SYNTH, "--val-scenes", ["-2"], NON_NEGATIVE),
    (SYNTH, "--test-scenes", ["-2"], NON_NEGATIVE),
    (SYNTH, "--workers", ["0", "-1"], POSITIVE),
    (SYNTH, "--seed", ["-1"], NON_NEGATIVE),
    (SYNTH, "--frames", ["0"], POSITIVE),
    (SYNTH, "--min-objects", ["0"], POSITIVE),
    (SYNTH, "--max-objects", ["0"], POSITIVE),
    (SYNTH, "--clip-frames", ["0"], POSITIVE),
    (SYNTH, "--grounding-frames", ["0"], POSITIVE),
    (SYNTH, "--caption-frames", ["-4"], POSITIVE),
    (SYNTH, "--qa-frames", ["0"], POSITIVE),
]


@pytest.mark.parametrize("argv, flag, value, message",
                         [(argv, flag, value, message) for argv, flag, values, message in CASES for value in values],
                         ids=lambda item: item if isinstance(item, str) and item.startswith(("-", "0")) else None)
def test_a_count_out_of_range_is_an_argparse_error_naming_the_option(capsys, argv, flag, value, message):
    with pytest.raises(SystemExit) as exit_info:
        gap_mllm([*argv, flag, value])
    assert exit_info.value.code == 2
    assert f"gap-mllm {argv[0]}: error: argument {flag}: '{value}' {message}" in capsys.readouterr().err


MINI_CASES = [
    ("--workers", ["0"], POSITIVE),
    ("--parallel", ["0"], POSITIVE),
    ("--eval-max-new-tokens", ["0"], POSITIVE),
    ("--eval-batch-size", ["0", "-1"], POSITIVE),
    ("--eval-limit", ["0"], POSITIVE),
]


@pytest.mark.parametrize("flag, value, message",
                         [(flag, value, message) for flag, values, message in MINI_CASES for value in values])
def test_a_count_of_the_mini_pipeline_out_of_range_is_an_argparse_error_naming_the_option(capsys, flag, value, message):
    with pytest.raises(SystemExit) as exit_info:
        lab_mini([*MINI, flag, value])
    assert exit_info.value.code == 2
    assert f"python -m lab.mini: error: argument {flag}: '{value}' {message}" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["space"], ["demo", "--space"], ["demo"]])
@pytest.mark.parametrize("port", ["0", "99999", "-1"])
def test_a_port_outside_1_to_65535_is_an_argparse_error(capsys, argv, port):
    """`demo --port 99999` ran the console demo, and `space --port 99999` reached the server."""
    with pytest.raises(SystemExit) as exit_info:
        gap_mllm([*argv, "--port", port])
    assert exit_info.value.code == 2
    assert (f"gap-mllm {argv[0]}: error: argument --port: '{port}' is not a port: give a number from 1 to 65535"
            in capsys.readouterr().err)


@pytest.mark.parametrize("command, argv, program", [(gap_mllm, SYNTH, "gap-mllm synth"),
                                                   (lab_mini, MINI, "python -m lab.mini")])
def test_more_workers_than_cpus_is_an_argparse_error(capsys, monkeypatch, command, argv, program):
    """A fork-started process pool starts every worker at once: `--workers 100000` started 100,000 processes."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        command([*argv, "--workers", "3"])
    assert exit_info.value.code == 2
    assert (f"{program}: error: argument --workers: '3' is more processes than the 2 CPUs this machine gives "
            "the command; give at most 2") in capsys.readouterr().err


@pytest.mark.parametrize("tool, argv, flag, value, message", [
    (fresh_seeds, ["--data", "d", "--out", "o", "--model", "m"], "--scenes", "0", POSITIVE),
    (fresh_seeds, ["--data", "d", "--out", "o", "--model", "m"], "--batch-size", "0", POSITIVE),
    (fresh_seeds, ["--data", "d", "--out", "o", "--model", "m"], "--workers", "0", POSITIVE),
    (shipped_baselines, ["--model", "m", "--data", "d", "--out", "o"], "--eval-limit", "0", POSITIVE),
    (constrained_row, ["--model", "m", "--data", "d", "--out", "o"], "--eval-limit", "-1", POSITIVE),
    (constrained_row, ["--model", "m", "--data", "d", "--out", "o"], "--eval-batch-size", "0", POSITIVE),
])
def test_the_mini_tools_check_their_counts(capsys, tool, argv, flag, value, message):
    """The Mini's own command lines (python -m lab.mini.fresh_seeds, ...) took any integer: `--eval-limit 0` was
    read as no limit."""
    with pytest.raises(SystemExit) as exit_info:
        tool.main([*argv, flag, value])
    assert exit_info.value.code == 2
    assert f"error: argument {flag}: '{value}' {message}" in capsys.readouterr().err


@pytest.mark.parametrize("argv, flag", [(SYNTH, "--size"), (["train", "--config", "x.yaml"], "--time-limit-s")])
def test_sizes_and_durations(capsys, argv, flag):
    values = ["0", "64"] if flag == "--size" else ["0"]
    with pytest.raises(SystemExit):
        gap_mllm([*argv, flag, *values])
    expected = "'0' must be a positive number (at least 1)" if flag == "--size" else \
        "'0' must be a positive, finite number of seconds"
    assert f"error: argument {flag}: {expected}" in capsys.readouterr().err
    for bad in ("-5", "nan", "inf"):
        if flag == "--time-limit-s":
            with pytest.raises(SystemExit):
                gap_mllm([*argv, flag, bad])
            assert f"argument --time-limit-s: '{bad}' must be a positive, finite number of seconds" in capsys.readouterr().err


def test_a_word_is_not_a_count(capsys):
    with pytest.raises(SystemExit):
        gap_mllm([*EVALUATE, "--batch-size", "four"])
    assert "error: argument --batch-size: 'four' is not a whole number" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--token-grid", "--frame-grid", "--limit"])
def test_the_grounding_identification_tool_checks_its_counts(capsys, flag):
    argv = ["--data", "nowhere", *(["--samples", "x"] if flag == "--limit" else []), flag, "0"]
    with pytest.raises(SystemExit) as exit_info:
        grounding_identification_cli.main(argv)
    assert exit_info.value.code == 2
    assert f"error: argument {flag}: '0' {POSITIVE}" in capsys.readouterr().err


def test_min_objects_above_max_objects_is_named(tmp_path, capsys):
    assert gap_mllm(["synth", "--scenes", "1", "--out", str(tmp_path / "out"), "--min-objects", "5", "--max-objects", "2"]) == 2
    assert "gap-mllm synth: error: --min-objects (5) is above --max-objects (2)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("batch_size", [0, -1, 2.0, True])
def test_the_evaluation_api_refuses_a_batch_size_before_reading_anything(tmp_path, batch_size):
    with pytest.raises(ValueError, match=rf"^batch_size must be a positive number of samples per generate call, got {batch_size!r}$"):
        run_evaluation("detection", tmp_path / "no-data", tmp_path / "out", predictions_file=tmp_path / "none.jsonl",
                       batch_size=batch_size)
    assert not (tmp_path / "out").exists()


# Number arguments that are not counts (their range is checked where they are used, or any value is valid).
NOT_COUNTS = {("demo", "--seed"), ("predict", "--marker"), ("predict", "--box")}


def test_no_command_takes_a_bare_int_or_float():
    """Every `type=int` / `type=float` argument of the `gap-mllm` commands and of `python -m lab.mini` is either a
    count with a range type above or one of NOT_COUNTS: a new count argument cannot slip in unchecked."""
    bare = set()
    adders = {command: importlib.import_module(module_name).add_arguments for command, (module_name, _) in COMMANDS.items()}
    for command, add_arguments in {**adders, "lab.mini": add_mini_arguments}.items():
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        for action in parser._actions:
            if action.type in (int, float):
                bare.add((command, action.option_strings[0]))
    assert bare == NOT_COUNTS
