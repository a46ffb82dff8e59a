"""The Python snippets of docs/usage.md run as written (the README's are run by tests/test_user_output.py).

They continue the README's "Use" snippet (`model`, `processor`, `frames`): its loading part runs first. A snippet
that downloads from the Hub sits under a heading that says "(needs the Hub)"; it runs only in the slow suite
(`make test-all`) on a machine that reaches the Hub, and is skipped with that reason otherwise.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
USAGE = REPO / "docs" / "usage.md"
README = REPO / "README.md"
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


def readme_loading_part() -> str:
    """The README's "Use" snippet up to its helper `ask`: imports, model, processor, the scene and its frames."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("\n## Use\n"):]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    return code[: code.index("\ndef ask(")]


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


def test_offline_snippets_run_as_written():
    offline = [code for heading, code in snippets_by_heading(USAGE) if HUB_LABEL not in heading]
    assert offline
    namespace = {"__name__": "usage_snippet"}
    exec(compile(readme_loading_part(), str(README), "exec"), namespace)
    for code in offline:
        exec(compile(code, str(USAGE), "exec"), namespace)
    answers = namespace["answers"]  # the scene-reuse snippet: one answer per question
    assert isinstance(answers, list) and len(answers) == len(namespace["questions"]) == 2
    assert all(isinstance(answer, str) for answer in answers)


@pytest.mark.slow
def test_hub_snippets_run_as_written():
    if not hub_reachable():
        pytest.skip("needs the Hub: downloads Qwen/Qwen3-VL-2B-Instruct (offline here)")
    for heading, code in snippets_by_heading(USAGE):
        if HUB_LABEL in heading:
            namespace = {"__name__": "usage_snippet"}
            exec(compile(code, str(USAGE), "exec"), namespace)
            assert type(namespace["model"]).__name__ == "GapMllmForConditionalGeneration"
