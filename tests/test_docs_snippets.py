"""The snippets of the README and docs/ run as written.

- Every ```python block of README.md and docs/*.md runs by itself in a fresh namespace, or says in its first line
  which block it continues (`# continues FILE's "HEADING" snippet`, FILE relative to the repository, HEADING the `##`
  heading it sits under): that block's chain runs first, in the same namespace. Every block is checked so without
  running it (the names it reads are defined by it or by its chain, `undefined_names`); the offline blocks of
  docs/usage.md and docs/serving.md, and docs/model_doc/gap_mllm.md's example, also run here (the README's "Use" snippet and its `gap-mllm demo` line are run
  by tests/test_user_output.py). docs/serving.md's client asks the engine stand-in (tests/engine_stand_in.py, a
  server doing what vLLM does) on GAP-MLLM-Mini's export instead of localhost:8000.
- A snippet that downloads from the Hub sits under a heading that says "(needs the Hub)"; it runs only in the slow
  suite (`make test-all`) on a machine that reaches the Hub, and is skipped with that reason otherwise.
- Every `gap-mllm` command line of the README parses with that command's arguments (no torch imported: a renamed
  option fails here at once); the README's "Evaluate" commands also run as written, in a scratch folder, in the slow
  suite.
- docs/usage.md's photograph example of a grammar proving the shape and not the meaning is what the Mini answers
  there: the caption of a box its own detection answer holds.
"""

from __future__ import annotations

import argparse
import builtins
import json
import os
import re
import shlex
import socket
import subprocess
import symtable
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
USAGE = REPO / "docs" / "usage.md"
README = REPO / "README.md"
SERVED_URL = "http://localhost:8000"  # the URL docs/serving.md's client asks: the stand-in's URL in the test
HUB_LABEL = "(needs the Hub)"
SPACE_CLIENT_HEADING = "## The Space from a script"  # docs/usage.md's gradio_client call, run against a Space
SPACE_URL = "http://127.0.0.1:7860/"  # the address that snippet asks: the test Space's in the test


def snippets_by_heading(path: Path) -> list[tuple[str, str]]:
    """`(heading, code)` for every ```python block of a markdown file, with the `##` heading it sits under."""
    found, heading = [], ""
    for part in re.split(r"(?m)^(##+ .*)$", path.read_text(encoding="utf-8")):
        if part.startswith("#"):
            heading = part
            continue
        found += [(heading, code) for code in re.findall(r"```python\n(.*?)```", part, re.S)]
    return found


@dataclass(frozen=True)
class Snippet:
    """A ```python block: its markdown file (relative to `root`), the `##` heading it sits under, its code."""

    path: str
    heading: str
    code: str

    @property
    def name(self) -> str:
        return f"{self.path}'s \"{self.heading.lstrip('#').strip()}\" snippet"


CONTINUES = re.compile(r"^# continues (?P<path>\S+)'s \"(?P<heading>[^\"]+)\" snippet")


def doc_snippets(root: Path = REPO) -> list[Snippet]:
    """Every ```python block of `root`'s README.md, docs/*.md and docs/model_doc/*.md, in file order."""
    files = [root / "README.md", *sorted((root / "docs").glob("*.md")), *sorted((root / "docs" / "model_doc").glob("*.md"))]
    return [Snippet(path.relative_to(root).as_posix(), heading, code)
            for path in files if path.is_file() for heading, code in snippets_by_heading(path)]


def snippet_chain(snippet: Snippet, snippets: list[Snippet]) -> list[Snippet]:
    """The blocks that run for `snippet`, in order: the block its first line says it continues (and that one's
    chain), then itself. A continued block that is missing, ambiguous (two blocks under its heading) or part of a
    loop is an AssertionError naming the snippet."""
    chain = [snippet]
    while match := CONTINUES.match(chain[0].code):
        heading = match["heading"]
        found = [other for other in snippets if other.path == match["path"]
                 and other.heading.lstrip("#").strip() == heading]
        assert len(found) == 1, f"{chain[0].name} continues {match['path']}'s \"{heading}\" snippet: {len(found)} found"
        assert found[0] not in chain, f"{snippet.name}: its chain of continued snippets is a loop"
        chain.insert(0, found[0])
    return chain


def undefined_names(code: str, defined=frozenset()) -> set[str]:
    """The global names `code` reads that neither it (an assignment, an import, a `def`), nor `defined` (the names of
    the blocks it continues), nor the builtins define: what a fresh interpreter would raise NameError on."""
    top = symtable.symtable(code, "<snippet>", "exec")
    own = {symbol.get_name() for symbol in top.get_symbols() if symbol.is_local()}
    read, tables = set(), [top]
    while tables:
        table = tables.pop()
        read |= {symbol.get_name() for symbol in table.get_symbols()
                 if symbol.is_referenced() and (symbol.is_global() if table is not top else not symbol.is_local())}
        tables += table.get_children()
    return read - own - set(defined) - set(dir(builtins))


def chain_names(chain: list[Snippet]) -> set[str]:
    """The module-level names the blocks of `chain` define."""
    return {symbol.get_name() for snippet in chain
            for symbol in symtable.symtable(snippet.code, "<snippet>", "exec").get_symbols() if symbol.is_local()}


def run_alone(snippet: Snippet, snippets: list[Snippet], replace: tuple[str, str] | None = None) -> dict:
    """Run `snippet`'s chain (`snippet_chain`) in a fresh namespace, `replace` = (old, new) applied to its code;
    returns the namespace."""
    namespace = {"__name__": "doc_snippet"}
    for block in snippet_chain(snippet, snippets):
        code = block.code.replace(*replace) if replace is not None and block is snippet else block.code
        exec(compile(code, str(REPO / block.path), "exec"), namespace)
    return namespace


def test_every_python_block_runs_alone_or_says_which_block_it_continues():
    """No block of the README or docs/ reads a name that only another block defines (`NameError: name 'MODEL' is not
    defined`), unless its first line says which block it continues."""
    snippets = doc_snippets()
    assert {snippet.path for snippet in snippets} >= {"README.md", "docs/usage.md", "docs/serving.md"}
    for snippet in snippets:
        chain = snippet_chain(snippet, snippets)
        missing = undefined_names(snippet.code, chain_names(chain[:-1]))
        assert not missing, (f"{snippet.name} reads {', '.join(sorted(missing))} without defining it: define it there, "
                             "or say in its first line which snippet it continues (# continues FILE's \"HEADING\" "
                             "snippet)")


def test_a_block_that_names_the_block_it_continues_runs_after_it(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text('## Use\n\n```python\nMODEL = "mini"\n```\n', encoding="utf-8")
    (tmp_path / "docs" / "usage.md").write_text(
        '## Loaded\n\n```python\n# continues README.md\'s "Use" snippet\nmodel = MODEL.upper()\n```\n\n'
        '## Alone\n\n```python\nprint(model)\n```\n\n'
        '## Elsewhere\n\n```python\n# continues README.md\'s "Install" snippet\nprint(MODEL)\n```\n', encoding="utf-8")
    readme, loaded, alone, elsewhere = doc_snippets(tmp_path)
    assert snippet_chain(loaded, [readme, loaded, alone, elsewhere]) == [readme, loaded]
    assert undefined_names(loaded.code, chain_names([readme])) == set() and undefined_names(loaded.code) == {"MODEL"}
    assert undefined_names(alone.code) == {"model"}
    with pytest.raises(AssertionError, match="docs/usage.md's \"Elsewhere\" snippet continues README.md's \"Install\" "
                                             "snippet: 0 found"):
        snippet_chain(elsewhere, [readme, loaded, alone, elsewhere])
    assert run_alone(loaded, [readme, loaded], replace=('"mini"', '"tiny"'))["model"] == "MINI"  # only its own code


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
    """Each offline snippet of docs/usage.md runs alone (`run_alone`); the scene-reuse snippet answers each question
    inside its task's grammar and prints what the doc stores, with GAP-MLLM-Mini."""
    import contextlib
    import io

    snippets = doc_snippets()
    offline = [snippet for snippet in snippets if snippet.path == "docs/usage.md" and HUB_LABEL not in snippet.heading
               and snippet.heading != SPACE_CLIENT_HEADING]  # a running Space's: tests/test_space_queue.py runs it
    assert len(offline) == 3
    namespace = None
    for snippet in offline:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            ran = run_alone(snippet, snippets)
        if snippet.heading == "## Many questions about one scene":
            assert printed.getvalue() == stored_output("Many questions about one scene")
            namespace = ran
        if snippet.heading == "## One scene without the package":  # transformers' prefix cache: the same answer
            assert printed.getvalue() == stored_output("Many questions about one scene") + "True\n"
    if namespace is None:
        pytest.fail("docs/usage.md has no \"Many questions about one scene\" snippet")
    answers = namespace["answers"]  # the scene-reuse snippet: one answer per question
    assert isinstance(answers, list) and len(answers) == len(namespace["questions"]) == 2
    assert all(isinstance(answer, str) for answer in answers)
    # inside each task's grammar: each answer parses cleanly as its task's answer
    for (task, _), answer in zip(namespace["questions"], answers, strict=True):
        assert namespace["processor"].post_process([answer], task=task)[0].reason is None, (task, answer)


def test_the_model_doc_example_answers_with_the_mini(capsys):
    """docs/model_doc/gap_mllm.md's usage example runs as written (the classes through `AutoModel` with remote code):
    it prints the Mini's detection answer, a `DetectionResult` that parsed without a problem."""
    snippets = doc_snippets()
    (snippet,) = [snippet for snippet in snippets
                  if snippet.path == "docs/model_doc/gap_mllm.md" and snippet.heading == "## Usage example"]
    namespace = run_alone(snippet, snippets)
    assert capsys.readouterr().out.startswith("DetectionResult(")
    answer = namespace["processor"].post_process(namespace["generated"], task="detection",
                                                 input_ids=namespace["inputs"]["input_ids"])[0]
    assert answer.reason is None and answer.boxes, answer


@pytest.mark.slow
def test_hub_snippets_run_as_written():
    if not hub_reachable():
        pytest.skip("needs the Hub: downloads Qwen/Qwen3-VL-2B-Instruct (offline here)")
    snippets = doc_snippets()
    for snippet in snippets:
        if snippet.path == "docs/usage.md" and HUB_LABEL in snippet.heading:
            namespace = run_alone(snippet, snippets)
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

    from gap_mllm.mini import default_model_path
    from gap_mllm.serving import export_llm_folder

    from .engine_stand_in import EngineStandIn

    snippets = doc_snippets()
    (snippet,) = [snippet for snippet in snippets if snippet.path == "docs/serving.md"]
    assert snippet.code.count(SERVED_URL) == 1 and "MODEL = default_model_path()" in snippet.code
    folder = export_llm_folder(default_model_path(), tmp_path / "gap-mllm-mini-llm").path  # the snippet's MODEL
    printed = io.StringIO()
    with EngineStandIn(folder) as server, contextlib.redirect_stdout(printed):
        namespace = run_alone(snippet, snippets, replace=(SERVED_URL, server.url))
    (completion,) = server.completions
    assert completion["token_ids"] and namespace["request"].task == "grounding_stage2"
    assert printed.getvalue().startswith("GroundingResult(")


# ----------------------------------------------------------------------------------- docs/usage.md's photograph example


def _expanded(argument: str) -> list[str]:
    """A shell word with one `{a,b}` brace expansion, as bash expands it."""
    found = re.fullmatch(r"(.*)\{([^{}]*)\}(.*)", argument)
    return [found[1] + part + found[3] for part in found[2].split(",")] if found else [argument]


def test_the_usage_photo_example_is_the_minis_caption_of_a_box_its_detection_wrote(capsys):
    """The captioning command's box is the "desk" of the detection answer the doc shows (the model's own convention:
    no angle note for the Mini), and `gap-mllm predict` answers it on those photographs with the caption the doc
    stores, prose that parses."""
    from gap_mllm.cli.main import main as gap_mllm
    from gap_mllm.mini import SHIPPED_DIR
    from gap_mllm.processing.box_angles import read_box_angles, unseen_angles_note

    usage = (REPO / "docs" / "usage.md").read_text(encoding="utf-8")
    block = usage[usage.index("**What the grammar guarantees, and what it cannot.**"):]
    lines = re.findall(r"```bash\n(.*?)```", block, re.S)[0].replace("\\\n", " ").splitlines()
    detection, captioning = [[word for part in shlex.split(line) for word in _expanded(part)]
                             for line in lines if line.startswith("gap-mllm ")]
    desk = next(line for line in lines if line.lstrip("# ").startswith("desk: "))
    box = [float(v) for v in captioning[captioning.index("--box") + 1:]]
    assert box == json.loads(desk.split("desk: ")[1])
    assert detection[:2] == captioning[:2] == ["gap-mllm", "predict"] and "detection" in detection
    assert unseen_angles_note(box, read_box_angles(SHIPPED_DIR)) is None
    assert gap_mllm(captioning[1:]) == 0  # the answer parsed
    answer = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("answer     : "))
    assert f"# {answer}" == lines[-1]
