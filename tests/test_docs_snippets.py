"""The snippets of the README and docs/ run as written.

- The Python snippets of docs/usage.md and docs/serving.md (the README's "Use" snippet and its `gap-mllm demo` line are
  run by tests/test_user_output.py). They continue the README's "Use" snippet (`MODEL`, `model`, `processor`,
  `frames`, `query`): its loading part runs first. docs/serving.md's client asks the engine stand-in
  (tests/engine_stand_in.py, a server doing what vLLM does) on GAP-MLLM-Mini's export instead of localhost:8000.
- A snippet that downloads from the Hub sits under a heading that says "(needs the Hub)"; it runs only in the slow
  suite (`make test-all`) on a machine that reaches the Hub, and is skipped with that reason otherwise.
- Every `gap-mllm` command line of the README parses with that command's arguments (no torch imported: a renamed
  option fails here at once); the README's "Evaluate" commands also run as written, in a scratch folder, in the slow
  suite.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
USAGE = REPO / "docs" / "usage.md"
SERVING = REPO / "docs" / "serving.md"
README = REPO / "README.md"
SERVED_URL = "http://localhost:8000"  # the URL docs/serving.md's client asks: the stand-in's URL in the test
HUB_LABEL = "(needs the Hub)"


def snippets_by_heading(path: Path) -> list[tuple[str, str]]:
    """`(heading, code)` for every ```python block of a markdown file, with the `##` heading it sits under."""
    found, heading = [], ""
    for part in re.split(r"(?m)^(##+ .*)$", path.read_text(encoding="utf-8")):
        if part.startswith("#"):
            heading = part
            continue
        found += [(heading, code) for code in re.findall(r"```python\n(.*?)```", part, re.S)]
    return found


def readme_use_snippet() -> str:
    """The first ```python block of the README's "Use" section."""
    text = README.read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text[text.index("\n## Use\n"):], re.S)[0]


def readme_loading_part() -> str:
    """The README's "Use" snippet up to its helper `ask`: imports, model, processor, the scene and its frames."""
    code = readme_use_snippet()
    return code[: code.index("\ndef ask(")]


def readme_query_line() -> str:
    """The README "Use" snippet's line that names the grounding query (after its helper `ask`)."""
    return next(line for line in readme_use_snippet().splitlines() if line.startswith("query = "))


def readme_commands(section: str | None = None) -> list[list[str]]:
    """The `gap-mllm ...` command lines of the README's ```bash blocks (of one `## section`, or all), as argv lists
    without their comments (continued lines joined)."""
    text = README.read_text(encoding="utf-8")
    if section is not None:
        text = text[text.index(f"\n## {section}\n"):]
        text = text[: text.index("\n## ", 1)]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith("gap-mllm "):  # (other lines are not shell-split: "repository's URL")
                commands.append(shlex.split(line, comments=True))
    return commands


def hub_reachable(host: str = "huggingface.co") -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


def test_every_hub_snippet_is_labelled():
    """A snippet that names a Hub model by id is under a "(needs the Hub)" heading, and only such snippets are."""
    for heading, code in snippets_by_heading(USAGE):
        downloads = "Qwen/" in code or "facebook/" in code
        assert downloads == (HUB_LABEL in heading), f"{heading!r}: {code[:80]!r}"
    assert any(HUB_LABEL in heading for heading, _ in snippets_by_heading(USAGE))


def stored_output(heading: str) -> str:
    """The ```text block under `heading` of docs/usage.md: what its snippet prints, as the doc stores it."""
    text = USAGE.read_text(encoding="utf-8")
    section = text[text.index(f"\n## {heading}\n"):]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```text\n(.*?)```", section, re.S)[0]


def test_offline_snippets_run_as_written():
    """Each offline snippet of docs/usage.md runs after the README's loading part; the scene-reuse snippet answers
    each question inside its task's grammar (issue 84) and prints what the doc stores, with GAP-MLLM-Mini."""
    import contextlib
    import io

    offline = [(heading, code) for heading, code in snippets_by_heading(USAGE) if HUB_LABEL not in heading]
    assert offline
    namespace = {"__name__": "usage_snippet"}
    exec(compile(readme_loading_part(), str(README), "exec"), namespace)
    for heading, code in offline:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, str(USAGE), "exec"), namespace)
        if heading == "## Many questions about one scene":
            assert printed.getvalue() == stored_output("Many questions about one scene")
    answers = namespace["answers"]  # the scene-reuse snippet: one answer per question
    assert isinstance(answers, list) and len(answers) == len(namespace["questions"]) == 2
    assert all(isinstance(answer, str) for answer in answers)
    # inside each task's grammar: each answer parses cleanly as its task's answer
    for (task, _), answer in zip(namespace["questions"], answers, strict=True):
        assert namespace["processor"].post_process([answer], task=task)[0].reason is None, (task, answer)


@pytest.mark.slow
def test_hub_snippets_run_as_written():
    if not hub_reachable():
        pytest.skip("needs the Hub: downloads Qwen/Qwen3-VL-2B-Instruct (offline here)")
    for heading, code in snippets_by_heading(USAGE):
        if HUB_LABEL in heading:
            namespace = {"__name__": "usage_snippet"}
            exec(compile(code, str(USAGE), "exec"), namespace)
            assert type(namespace["model"]).__name__ == "GapMllmForConditionalGeneration"


def test_readme_gap_mllm_commands_parse_as_written():
    """Each command's own arguments (cli/main.py `argument_adder`, what `gap-mllm COMMAND` parses) accept the README's
    command lines: an option renamed or removed fails here."""
    from gap_mllm.cli.main import COMMANDS, argument_adder

    commands = readme_commands()
    assert {argv[1] for argv in commands} >= {"demo", "synth", "evaluate"}, commands  # export-llm: docs/serving.md
    for argv in commands:
        assert argv[1] in COMMANDS, argv
        parser = argparse.ArgumentParser(prog=f"gap-mllm {argv[1]}", exit_on_error=False)
        argument_adder(argv[1])(parser)
        try:
            parser.parse_args(argv[2:])
        except (argparse.ArgumentError, SystemExit) as error:
            pytest.fail(f"README: {shlex.join(argv)}: {error}")


@pytest.mark.slow
def test_readme_evaluate_commands_run_as_written(tmp_path):
    """The README's "Evaluate" block, command by command, in a scratch folder (its data/ and runs/ land there)."""
    commands = readme_commands("Evaluate")
    assert [argv[1] for argv in commands] == ["synth", "evaluate"]
    for argv in commands:
        done = subprocess.run([sys.executable, "-m", "gap_mllm.cli.main", *argv[1:]], cwd=tmp_path, capture_output=True,
                              text=True, timeout=1800)
        assert done.returncode == 0, f"{shlex.join(argv)}: {done.stderr[-2000:]}"
    out = commands[-1][commands[-1].index("--out") + 1]
    assert (tmp_path / out / "summary.json").is_file() and f"-> {out}" in done.stdout


def test_serving_client_snippet_runs_against_the_engine_stand_in(tmp_path):
    """docs/serving.md's client, as written but for the server's URL: the stand-in serves GAP-MLLM-Mini's export, and
    the snippet prints the parsed answer of the task it asks."""
    import contextlib
    import io

    from gap_mllm.serving import export_llm_folder

    from .engine_stand_in import EngineStandIn

    (code,) = [code for _, code in snippets_by_heading(SERVING)]
    assert code.count(SERVED_URL) == 1
    namespace = {"__name__": "serving_snippet"}
    exec(compile(readme_loading_part() + "\n" + readme_query_line(), str(README), "exec"), namespace)
    folder = export_llm_folder(namespace["MODEL"], tmp_path / "gap-mllm-mini-llm").path
    printed = io.StringIO()
    with EngineStandIn(folder) as server, contextlib.redirect_stdout(printed):
        exec(compile(code.replace(SERVED_URL, server.url), str(SERVING), "exec"), namespace)
    (completion,) = server.completions
    assert completion["token_ids"] and namespace["request"].task == "grounding_stage2"
    assert printed.getvalue().startswith("GroundingResult(")
