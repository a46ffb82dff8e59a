"""`gap-mllm demo` runs one of two things: the console demo, or with `--space` the Gradio Space (as `gap-mllm space`).
An option the path taken does not read is refused in one line before anything loads (cli/early_checks.py
`check_demo`), such as `--port`, which the console demo does not read. The address the Space listens on is
checked the same way (`listen_problem`), and a port outside 1-65535 is argparse's error (tests/test_cli_count_arguments.py).
`demo --space` without gradio answers at once, naming the extra.

Every case here ends before a model or gradio is loaded (the model named is a folder that is not there, which the
later model check would name instead)."""

from __future__ import annotations

import socket

import pytest

from gap_mllm.cli.early_checks import listen_problem
from gap_mllm.cli.main import main as gap_mllm

MISSING_MODEL = ["--model", "no-such-model-folder"]


@pytest.fixture(autouse=True)
def scratch_folder(tmp_path, monkeypatch):
    """Each command runs in an empty folder, so that a demo_output/ it wrote would show."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("argv, expected", [
    (["--port", "1"], "--port 1 is the Space's port, read only with --space (without it the demo runs in the console): "
                      "add --space, or leave --port out"),
    (["--host", "bad host", "--port", "1"], "--host 'bad host' is the Space's interface, read only with --space "
                                            "(without it the demo runs in the console): add --space, or leave --host out"),
    (["--space", "--out", "pictures"], "--out pictures is where the console demo writes its pictures, which --space does "
                                       "not run: leave --out out, or drop --space"),
    (["--space", "--example", "synthetic room B"], "--example 'synthetic room B' is the console demo's room (the Space's "
                                                   "page offers every room), which --space does not run: leave "
                                                   "--example out, or drop --space"),
    (["--seed", "3"], "--seed 3 sets the weights of --model tiny, and --model no-such-model-folder has its own: leave "
                      "--seed out, or add --model tiny"),
])
def test_an_option_the_demo_does_not_read_is_refused(capsys, scratch_folder, argv, expected):
    assert gap_mllm(["demo", *MISSING_MODEL, *argv]) == 2
    assert capsys.readouterr().err.splitlines() == [f"gap-mllm demo: error: {expected}"]
    assert list(scratch_folder.iterdir()) == []


def test_the_space_refuses_a_host_that_is_no_address_of_this_machine(capsys):
    for argv in (["space", "--host", "bad host"], ["demo", "--space", "--host", "bad host", "--port", "7861"]):
        assert gap_mllm(argv) == 2
        (line,) = capsys.readouterr().err.splitlines()
        port = argv[-1] if argv[0] == "demo" else "7860"
        assert line.startswith(f"gap-mllm {argv[0]}: error: --host 'bad host' --port {port} names no address of this "
                               "machine (")
        assert line.endswith("); give another --host or --port")


def test_the_space_refuses_a_port_in_use():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert listen_problem("127.0.0.1", port) == "cannot be listened on (Address already in use)"
    assert listen_problem("127.0.0.1", port) is None  # free again: the check holds nothing


def test_demo_space_without_gradio_answers_at_once():
    """Before the demo's module (torch, transformers: seconds) is imported, as `gap-mllm space` does; gradio hidden, as
    in an environment installed without the space extra."""
    from .test_cli_startup import heavy_modules_after

    result = heavy_modules_after(["demo", "--space"], hidden=("gradio",))
    assert result["status"] == 2 and result["heavy"] == [], result
    assert result["err"].splitlines() == [
        "gap-mllm demo: error: the Space needs gradio, which a plain install leaves out: pip install 'gap-mllm[space]' "
        "(in a checkout: pip install -e '.[space]', or make install)"]
