"""One option name per concept on the `gap-mllm` command line: every command's parser (cli/main.py
`build_command_parser`, from the `ARGUMENTS` table) shows `--out`, `--data`, `--time-limit`, `--model` and `--device`
for those concepts, gives every option a help text and `--debug`; the old names stay as hidden aliases that parse to
the same value with one deprecation line; `gap-mllm --version` prints the package's version without torch."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import subprocess
import sys

import pytest

from gap_mllm.cli.command_arguments import PositionalAlternative
from gap_mllm.cli.main import COMMANDS, build_command_parser, main, parse_command_arguments
from gap_mllm.processing.argument_types import DeprecatedAlias

# old option name -> the name shown for its concept
OLD_NAMES = {"--output-dir": "--out", "--save-dir": "--out", "--data-root": "--data", "--time-limit-s": "--time-limit"}
# (command, old name): every deprecated alias of the command line
ALIASES = {("train", "--output-dir"), ("train", "--data-root"), ("train", "--time-limit-s"), ("predict", "--save-dir")}
# shown names that would be another name for a concept of the vocabulary: output folder, data folder, time limit,
# model, device
OFF_VOCABULARY = re.compile(r"^--(out.+|output.*|save[-_]?dir|data[-_].*|time[-_]?limit.+|checkpoint.*|ckpt.*|"
                            r"model[-_](path|dir|name|id)|gpu.*|cuda.*|accelerator|device.+)$")
# what each command needs besides the option under test
REQUIRED = {"train": ["--config", "recipe.yaml"], "predict": ["--example", "synthetic room A", "--task", "detection"]}
# a value each option under test accepts
VALUES = {"--out": "folder", "--data": "data", "--time-limit": "60"}


def parsers(parser: argparse.ArgumentParser, name: str):
    """`(name, parser)` of `parser` and of each of its sub-parsers (`convert vggt`, `convert official`)."""
    yield name, parser
    for action in parser._actions:  # argparse keeps no public list of them
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from parsers(sub, f"{name} {sub_name}")


def every_parser():
    for command in COMMANDS:
        yield from parsers(build_command_parser(command), command)


def arguments(parser: argparse.ArgumentParser):
    """The parser's arguments but -h and the sub-parser choice."""
    return [action for action in parser._actions
            if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))]


def test_every_shown_argument_has_help_and_every_hidden_one_is_an_old_form():
    missing, hidden = [], []
    for name, parser in every_parser():
        for action in arguments(parser):
            label = f"{name} {'/'.join(action.option_strings) or action.dest}"
            if action.help is argparse.SUPPRESS:
                if not isinstance(action, (DeprecatedAlias, PositionalAlternative)):
                    hidden.append(label)
            elif not (action.help or "").strip():
                missing.append(label)
    assert missing == [] and hidden == []


def test_shown_option_names_are_the_vocabulary():
    off = [(name, option) for name, parser in every_parser() for action in arguments(parser)
           if action.help is not argparse.SUPPRESS for option in action.option_strings
           if option in OLD_NAMES or OFF_VOCABULARY.match(option)]
    assert off == []
    # an output folder is never a shown positional argument either
    positional = [(name, action.dest) for name, parser in every_parser() for action in arguments(parser)
                  if not action.option_strings and action.help is not argparse.SUPPRESS
                  and action.dest in ("output_dir", "out", "save_dir")]
    assert positional == []


def test_every_command_has_a_documented_debug_option():
    for name, parser in every_parser():
        action = parser._option_string_actions.get("--debug")
        assert action is not None and action.help and "traceback" in action.help, name


def test_the_deprecated_aliases_are_the_old_names():
    found = {(name, option): action for name, parser in every_parser() for action in arguments(parser)
             if isinstance(action, DeprecatedAlias) for option in action.option_strings}
    assert set(found) == ALIASES
    for (name, option), action in found.items():
        shown = build_command_parser(name)._option_string_actions[action.use]
        assert action.use == OLD_NAMES[option] and action.dest == shown.dest
        assert shown.help is not argparse.SUPPRESS and not isinstance(shown, DeprecatedAlias)


@pytest.mark.parametrize("command, old", sorted(ALIASES))
def test_an_old_name_parses_as_the_new_one_with_one_deprecation_line(command, old, capsys):
    new = OLD_NAMES[old]
    value = VALUES[new]
    with_new = parse_command_arguments(build_command_parser(command), [*REQUIRED[command], new, value])
    assert capsys.readouterr().err == ""
    with_old = parse_command_arguments(build_command_parser(command), [*REQUIRED[command], old, value])
    assert capsys.readouterr().err == f"gap-mllm {command}: {old} is deprecated; use {new}\n"
    assert with_old == with_new


@pytest.mark.parametrize("misspelt, new", [("--output-dri", "--out"), ("--data-rot", "--data"),
                                           ("--time-limit-ss", "--time-limit")])
def test_a_misspelt_old_name_is_answered_with_the_new_one(misspelt, new, capsys):
    with pytest.raises(SystemExit) as stop:
        parse_command_arguments(build_command_parser("train"), [*REQUIRED["train"], misspelt, "1"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"gap-mllm train: error: unrecognized arguments: {misspelt} 1 (did you mean {new}?)")


@pytest.mark.parametrize("command, positional, options", [
    (["convert", "vggt"], ["src", "dst"], ["src", "--out", "dst"]),
    (["convert", "official"], ["src", "dst"], ["--out", "dst", "src"]),
    (["export-llm"], ["mini", "dst"], ["--model", "mini", "--out", "dst"]),
])
def test_the_positional_form_parses_as_the_options(command, positional, options, capsys):
    def parse(argv):
        return parse_command_arguments(build_command_parser(command[0]), [*command[1:], *argv])

    by_position, by_option = parse(positional), parse(options)
    assert by_position == by_option and by_option.output_dir == "dst"
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("argv, message", [
    (["export-llm", "--model", "mini"], "gap-mllm export-llm: error: one of the arguments --out is required"),
    (["convert", "vggt", "src", "a", "--out", "b"],
     "gap-mllm convert vggt: error: argument --out: not allowed with argument OUTPUT_DIR"),
])
def test_an_output_folder_is_given_once(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        parse_command_arguments(build_command_parser(argv[0]), argv[1:])
    assert stop.value.code == 2 and capsys.readouterr().err.splitlines()[-1] == message


def test_an_unknown_command_is_an_error_line_in_argparse_s_form(capsys):
    assert main(["nope"]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("gap-mllm: error: unknown command 'nope'; choose from ")


def test_version_prints_the_package_version_and_imports_no_torch():
    code = ("import contextlib, io, json, sys\n"
            "from gap_mllm.cli.main import main\n"
            "out = io.StringIO()\n"
            "with contextlib.redirect_stdout(out):\n"
            "    status = main(['--version'])\n"
            "print(json.dumps({'status': status, 'out': out.getvalue(),\n"
            "                  'heavy': [name for name in ('torch', 'transformers') if name in sys.modules]}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "status": 0, "out": f"gap-mllm {importlib.metadata.version('gap-mllm')}\n", "heavy": []}
