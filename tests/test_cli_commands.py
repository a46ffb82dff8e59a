"""`gap-mllm --help` lists every command, and each new command module parses its own `--help`."""

import argparse
import importlib
import subprocess
import sys

import pytest

from gap_mllm.cli import main as cli_main

NEW_COMMANDS = {"predict": "gap_mllm.cli.predict", "push": "gap_mllm.cli.push", "space": "gap_mllm.cli.space"}
ALL_COMMANDS = ("train", "evaluate", "convert", "synth", "demo", "push", "predict", "space")


def test_help_lists_every_registered_command():
    help_text = cli_main.build_parser().format_help()
    for name in cli_main.COMMANDS:
        assert name in help_text


def test_new_commands_are_registered():
    for name, module in NEW_COMMANDS.items():
        assert cli_main.COMMANDS.get(name, (None,))[0] == module, f"wire {name!r} -> {module} in cli/main.py"


def test_all_user_facing_commands_are_registered():
    missing = [name for name in ALL_COMMANDS if name not in cli_main.COMMANDS]
    assert not missing, f"gap-mllm --help does not list: {missing}"


@pytest.mark.parametrize("name", sorted(NEW_COMMANDS))
def test_command_module_has_the_dispatcher_interface(name, capsys):
    module = importlib.import_module(NEW_COMMANDS[name])
    parser = argparse.ArgumentParser(prog=f"gap-mllm {name}")
    module.add_arguments(parser)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--help"])
    assert exit_info.value.code == 0 and "--model" in capsys.readouterr().out


def test_space_without_gradio_names_the_extra_that_installs_it():
    """An environment installed without the space extra (gradio hidden here): one line naming the extra, exit 2, no
    traceback. The tests' own environment has gradio, and there `gap-mllm space` serves the page
    (tests/test_space_queue.py)."""
    code = ("import argparse, sys; sys.modules['gradio'] = None; from gap_mllm.cli import space; "
            "p = argparse.ArgumentParser(); space.add_arguments(p); sys.exit(space.main(p.parse_args([])))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.splitlines() == [
        "gap-mllm space: error: the Space needs gradio, which a plain install leaves out: pip install "
        "'gap-mllm[space]' (in a checkout: pip install -e '.[space]', or make install)"]
