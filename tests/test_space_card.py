"""The Space's own page (examples/space/README.md, its Hub card) says what GAP-MLLM-Mini can do in lines written from
the Mini's results file, the lines the Space, the demo and `predict` print (cli/model_scores.py):
the card in the repository must agree with mini/gap-mllm-mini/evaluation_results.json, and a bundle writes them anew."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from gap_mllm.cli.model_scores import RESULTS_FILE, held_out_scores
from gap_mllm.mini.default_model import SHIPPED_DIR

REPO = Path(__file__).resolve().parents[1]
CARD = REPO / "examples" / "space" / "README.md"


@pytest.fixture(scope="module")
def bundle_space():
    spec = importlib.util.spec_from_file_location("bundle_space_card", REPO / "examples" / "space" / "bundle_space.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_space_card_says_what_the_results_file_says(bundle_space):
    card = CARD.read_text(encoding="utf-8")
    assert card == bundle_space.with_mini_scores(card), (
        "examples/space/README.md disagrees with mini/gap-mllm-mini/evaluation_results.json: run "
        "python examples/space/bundle_space.py --update-card")
    scores = held_out_scores(SHIPPED_DIR, constrained=True)
    for task in ("grounding", "detection", "captioning", "reconstruction"):
        assert scores.line(task) in card
    assert "do not beat trivial baselines" not in card


def test_the_cards_lines_follow_the_results_file(bundle_space, tmp_path):
    """A results file whose grounding interval reaches below its baseline makes the card say so: nothing is typed in."""
    folder = tmp_path / "mini"
    folder.mkdir()
    results = json.loads((SHIPPED_DIR / RESULTS_FILE).read_text(encoding="utf-8"))
    row = results["arms"][held_out_scores(SHIPPED_DIR, constrained=True).arm]
    row["grounding_acc@0.25"], row["grounding_acc@0.25_ci95"] = 0.02, [0.01, 0.03]
    (folder / RESULTS_FILE).write_text(json.dumps(results), encoding="utf-8")
    card = bundle_space.with_mini_scores(CARD.read_text(encoding="utf-8"), folder)
    assert ("3D visual grounding: held-out (991 test samples, constrained decoding): Acc@0.25 2.0 % [1.0, 3.0]; best "
            "constant box 2.1 %: "
            "this miniature does not ground yet") in card
    with pytest.raises(ValueError, match="no block"):
        bundle_space.with_mini_scores("# a card without the block\n", folder)
    shutil.rmtree(folder)
    with pytest.raises(ValueError, match="no evaluation_results.json"):
        bundle_space.with_mini_scores(CARD.read_text(encoding="utf-8"), folder)


def test_a_bundled_card_is_written_from_the_results_file(bundle_space, monkeypatch, tmp_path):
    stale = CARD.read_text(encoding="utf-8").replace("beats the trivial baseline", "does not beat it")
    monkeypatch.setattr(bundle_space, "HERE", tmp_path)
    (tmp_path / "README.md").write_text(stale, encoding="utf-8")
    card = bundle_space.space_card("mini", "cpu-basic")
    assert held_out_scores(SHIPPED_DIR, constrained=True).markdown() in card and "does not beat it" not in card
    assert "suggested_hardware: cpu-basic" in card
