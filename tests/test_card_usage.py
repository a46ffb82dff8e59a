"""The usage snippet of every model card decodes as the README's does: inside the task's answer grammar
(`processor.generation_kwargs(..., constrained=True)`). The cards: the template (model_card.md), the one `gap-mllm
push` writes (cli/model_card.py), GAP-MLLM-Mini's shipped card and the one its export writes (lab/mini/card.py). The
snippet runs as written on GAP-MLLM-Mini; without llguidance, the Python error names the Python switch, not the
command line's flags."""

from __future__ import annotations

import ast
import contextlib
import io
import re
from pathlib import Path

import pytest

from gap_mllm.cli.model_card import TEMPLATE_MODEL_ID, build_model_card, default_template_path, section_text
from gap_mllm.mini import default_model_path

from .test_docs_snippets import README, snippets_by_heading

REPO = Path(__file__).resolve().parent.parent
SHIPPED_CARD = REPO / "mini" / "gap-mllm-mini" / "README.md"


def usage_code(card_text: str) -> str:
    """The ```python block of a card's "## Use" section."""
    (code,) = re.findall(r"```python\n(.*?)```", section_text(card_text, "Use"), re.S)
    return code


def decoding_keywords(code: str) -> list[dict]:
    """The keywords of every `processor.generation_kwargs(...)` call of `code`, as literals."""
    calls = [node for node in ast.walk(ast.parse(code)) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Attribute) and node.func.attr == "generation_kwargs"]
    return [{word.arg: ast.literal_eval(word.value) for word in call.keywords} for call in calls]


def every_card_code() -> dict[str, str]:
    from lab.mini.card import FOLDER_ID, mini_usage

    written = str(build_model_card(default_model_path(), repo_id="someone/gap-mllm-ft"))
    return {
        "model_card.md": usage_code(default_template_path().read_text(encoding="utf-8")),
        "the card push writes": usage_code(written).replace('"someone/gap-mllm-ft"', f'"{TEMPLATE_MODEL_ID}"'),
        "GAP-MLLM-Mini's card": usage_code(SHIPPED_CARD.read_text(encoding="utf-8")).replace(
            f'"{FOLDER_ID}"', f'"{TEMPLATE_MODEL_ID}"'),
        "the Mini export's card": usage_code("## Use\n\n" + mini_usage()).replace(
            f'"{FOLDER_ID}"', f'"{TEMPLATE_MODEL_ID}"'),
    }


def test_every_card_snippet_decodes_in_the_grammar_as_the_readme_does():
    (readme,) = [code for heading, code in snippets_by_heading(README) if heading == "## Use"]
    assert decoding_keywords(readme) == [{"constrained": True}]
    cards = every_card_code()
    assert len(set(cards.values())) == 1, cards  # one snippet, the model id aside
    assert decoding_keywords(cards["model_card.md"]) == [{"constrained": True}]
    # the Mini's card says where its frames come from (it knows SynthRooms rooms only)
    assert "synthetic_scene(seed=0).views" in section_text(SHIPPED_CARD.read_text(encoding="utf-8"), "Use")


def test_the_card_snippet_runs_as_written_on_the_mini():
    """The template's snippet, its model id the Mini's folder and `frames` a bundled room's views: a detection result
    whose answer parses without a problem (decoded inside the grammar)."""
    from gap_mllm.cli.scenes import synthetic_scene

    code = usage_code(default_template_path().read_text(encoding="utf-8"))
    code = code.replace(f'"{TEMPLATE_MODEL_ID}"', repr(str(default_model_path())))
    namespace = {"__name__": "card_snippet", "frames": synthetic_scene(seed=0).views}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, "model_card.md", "exec"), namespace)
    result = namespace["result"]
    assert type(result).__name__ == "DetectionResult" and result.reason is None, result


def test_without_the_grammar_engine_the_python_error_names_the_python_switch(tiny_processor, monkeypatch):
    """`processor.generation_kwargs(..., constrained=True)` without llguidance: an ImportError with the install command
    and `constrained=False`, not the command line's `--free` / `--constrained`; the command line keeps its flags."""
    import importlib.util

    from gap_mllm import tasks_gap_mllm
    from gap_mllm.cli.early_checks import check_grammar_engine
    from gap_mllm.processing.errors import MissingDependency

    from .conftest import make_views

    processor = tiny_processor
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llguidance" else find_spec(name, *a))
    monkeypatch.setattr(tasks_gap_mllm, "grammar_engine", lambda: None)
    inputs = processor(images=make_views(2), task="detection", return_tensors="pt")
    with pytest.raises(ImportError) as raised:
        processor.generation_kwargs("detection", inputs, constrained=True)
    message = str(raised.value)
    assert f"pip install '{tasks_gap_mllm.ENGINE_REQUIREMENT}'" in message
    assert "decode freely (constrained=False in processor.generation_kwargs)" in message
    assert "--free" not in message and "--constrained" not in message
    with pytest.raises(MissingDependency, match=r"decode freely \(--free; evaluate: leave out --constrained\)"):
        check_grammar_engine(type("Args", (), {"constrained": True, "predictions": None})())
