"""The READMEs a newcomer reads. The repository's README reads in five minutes: at most 150 lines of at most 120
characters; its table gives the figures the demo prints (the constrained row of mini/RESULTS.md), each metric
glossed; the install line names the torch a plain pip install gets and the one command for the CPU build, the same
requirement and index as `make install`'s. The Mini's README is a product page of at most 200 lines, and the docs
give the Mini's vocabulary as its tokenizer has it."""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
MAX_LINES, MAX_WIDTH = 150, 120


def readme_lines() -> list[str]:
    return README.read_text(encoding="utf-8").splitlines()


def makefile_value(name: str) -> str:
    """A Makefile variable's value as written (`NAME ?= value` or `NAME := value`)."""
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    return re.search(rf"^{name} [?:]?= (\S+)$", text, re.M).group(1)


def test_the_readme_is_short_and_narrow():
    lines = readme_lines()
    assert len(lines) <= MAX_LINES, len(lines)
    wide = [(number, len(line)) for number, line in enumerate(lines, 1) if len(line) > MAX_WIDTH]
    assert wide == [], wide


def test_the_readme_table_gives_the_constrained_figures_the_demo_prints_each_metric_glossed():
    """Each Mini figure of the table is a cell of RESULTS.md's constrained row (or the stage-0 depth figure, which no
    decoding touches), not of the free row where the two differ (grounding: 12.4 against 12.3)."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("\n## What the Mini can and cannot do\n"):]
    rows = [line for line in section.split("\n## ", 2)[1].splitlines() if line.startswith("| ")][1:]
    results = (REPO / "mini" / "RESULTS.md").read_text(encoding="utf-8")
    constrained = next(line for line in results.splitlines() if line.startswith("| gap_gated_s0_constrained |"))
    constrained_cells = {cell.strip() for cell in constrained.split("|")}
    assert len(rows) == 6
    for row in rows:
        task, metric, figure, baseline = (cell.strip() for cell in row.strip("|").split("|"))
        name, _, gloss = metric.partition(": ")
        assert len(gloss.split()) >= 3, f"{task}: the metric {name!r} is not glossed"
        number = re.sub(r"\s*(%|m)(?= \[|$)", "", figure)  # "12.4 % [10.5, 14.6]" -> "12.4 [10.5, 14.6]"
        if task.startswith("depth"):
            assert f"| depth AbsRel (lower is better) | {number} [" in results
        else:
            assert number in constrained_cells, (task, figure)
    assert "12.4 % [10.5, 14.6]" in text and "12.3 %" not in text


def test_the_readme_names_the_torch_a_plain_install_gets_and_the_cpu_command():
    text = " ".join(README.read_text(encoding="utf-8").split())
    assert "on Linux it gets PyPI's CUDA build of torch" in text
    cpu = f"pip install {makefile_value('TORCH_SPEC')} --index-url {makefile_value('TORCH_CPU_INDEX_URL')}"
    assert f"`{cpu}`" in text
    assert "git clone --filter=blob:none" in text and "A plain `git clone` works too" in text


# ------------------------------------------------------------------------------------- the Mini's README and vocabulary


def test_the_docs_give_the_minis_vocabulary_as_it_is():
    import re

    from transformers import AutoTokenizer

    from gap_mllm.mini import SHIPPED_DIR

    tokenizer = AutoTokenizer.from_pretrained(SHIPPED_DIR, trust_remote_code=True)
    config = json.loads((SHIPPED_DIR / "config.json").read_text(encoding="utf-8"))
    assert len(tokenizer) == config["text_config"]["vocab_size"] == 679
    usage = (REPO / "docs" / "usage.md").read_text(encoding="utf-8")
    assert re.findall(r"Mini's (\d+) ids", usage) == [str(len(tokenizer))]
    assert f"a {len(tokenizer)}-token BPE" in (REPO / "mini" / "README.md").read_text(encoding="utf-8")


def test_the_minis_readme_is_a_product_page():
    """At most 200 lines: what the Mini is, how to reproduce it, how a release is judged; the sessions' diary lives in
    reports/mini/."""
    readme = (REPO / "mini" / "README.md").read_text(encoding="utf-8")
    diary = REPO / "reports" / "mini" / "releases-five-and-six.md"
    assert len(readme.splitlines()) <= 200
    for heading in ("## What it can and cannot do", "## Reproduce", "## How a release is judged"):
        assert heading in readme
    for session_note in ("What the first session of it measured", "The second session (2026-11-26)",
                         "## A run longer than a session"):
        assert session_note not in readme and session_note.lstrip("# ") in diary.read_text(encoding="utf-8")
    assert "../reports/mini/releases-five-and-six.md" in readme
