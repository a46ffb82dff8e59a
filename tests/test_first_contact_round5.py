"""First contact, round 5 (issue 84, item 5): a README a newcomer reads in five minutes. At most 150 lines of at most
120 characters; its table gives the figures the demo prints (the constrained row of mini/RESULTS.md), each metric
glossed; the install line names the torch a plain pip install gets and the one command for the CPU build, the same
requirement and index as `make install`'s. Item 6: docs/usage.md's photo example of a grammar proving the shape and
not the meaning is what the Mini answers there: the caption of a box its own detection answer holds."""

from __future__ import annotations

import json
import re
import shlex
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


def test_lora_on_a_gap_mllm_warns_of_no_deprecation():
    """peft reads `is_gradient_checkpointing` (transformers 5.x's deprecated name) in `PeftModel.__init__`: the model
    answers under that name without a FutureWarning (notebook 02's stored output showed one), with the new name's
    value, on and off."""
    import warnings

    from peft import LoraConfig, get_peft_model

    from gap_mllm.tiny.tiny_model import build_tiny_model

    model, _ = build_tiny_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        assert model.is_gradient_checkpointing is model.is_activation_checkpointing is False
        model.activation_checkpointing_enable()
        assert model.is_gradient_checkpointing is model.is_activation_checkpointing is True
        get_peft_model(model, LoraConfig(r=2, target_modules=r".*language_model.*\.q_proj"))
