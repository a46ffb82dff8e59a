"""What the results table says of the Mini: the provenance of a release that continues the last one
names each copy and each training once, with no "None steps"; random_same_category, which reads the true boxes, is an
upper reference, not a baseline; the shipped table and card are the writer's text of the shipped results file."""

from __future__ import annotations

import json
from pathlib import Path

from lab.mini import pipeline
from lab.mini.provenance import collapse_copies, made_by
from lab.mini.claims_table import CLAIMS_SECTION, QUOTE_BEGIN, QUOTE_END
from lab.mini.markdown_sections import block_between, document_section
from lab.mini.report import REFUSED_SECTION, results_document, results_markdown

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "mini" / "gap-mllm-mini"


def shipped_results() -> dict:
    return json.loads((SHIPPED / "evaluation_results.json").read_text(encoding="utf-8"))


def test_a_release_continuing_the_last_one_names_each_copy_and_training_once():
    """The next release takes this one as `--stage0` and `--stage1` (mini/README.md): its notes, from the shipped file."""
    source = Path("mini/gap-mllm-mini")
    stage1 = pipeline.exported_origin(shipped_results(), source, "--stage1", "stage1")
    # the sixth release continued the fifth, copied from a work tree of its commit (mini/README.md), itself a
    # continuation of the fourth: each copy named where it was made, each training once, in order
    fifth = "../gap-mllm-fifth/mini/gap-mllm-mini"
    assert stage1["note"] == ("copied from mini/gap-mllm-mini (--stage1); an exported final model, made by "
                              f"gap_gated_s0/stage1: copied from {fifth} (--stage1); an exported final model, made by "
                              "gap_gated_s0/stage1: copied from mini/gap-mllm-mini (--stage1); an exported final model, "
                              "made by gap_gated_s0/stage1: mini_stage1.yaml, 1000 steps, cpu; "
                              "gap_gated_s0/stage2: mini_stage2.yaml, 800 steps, cpu; "
                              "gap_gated_s0/stage2: mini_stage2.yaml, 7200 steps, cpu; "
                              "gap_gated_s0/stage2: mini_stage2.yaml, 3600 steps, cpu")
    stage0 = pipeline.exported_origin(shipped_results(), source, "--stage0", "stage0")
    assert stage0["note"].startswith(f"copied from mini/gap-mllm-mini (--stage0); its stage0: copied from {fifth} "
                                     "(--stage0); its stage0: copied from mini/gap-mllm-mini (--stage0); its stage0: "
                                     "copied from runs/stage0-cameras (--stage0): the geometry encoder of "
                                     "mini_stage0_cameras.yaml")
    assert stage0["note"].count("(--stage0)") == 4
    # and the release after it: the same folder copied once more is still named once
    again = {"stages": {"stage0": {**stage0, "recipe": "given (--stage0)"}}}
    assert pipeline.exported_origin(again, source, "--stage0", "stage0")["note"] == stage0["note"]


def test_a_stage_of_unknown_steps_says_no_none_steps():
    assert made_by({"recipe": "mini_stage2.yaml", "global_step": None, "device": "cpu"}) == "mini_stage2.yaml, cpu"
    assert made_by({"recipe": "mini_stage2.yaml", "global_step": 7200, "device": "cpu"}) == "mini_stage2.yaml, 7200 steps, cpu"
    given = {"stages": {"arm/stage1": {"recipe": "given (--stage1)", "global_step": None, "device": "cpu",
                                       "note": "copied from elsewhere/model (--stage1)"},
                        "arm/stage2": {"recipe": "mini_stage2.yaml", "global_step": None, "device": "cuda"}}}
    note = pipeline.exported_origin(given, Path("mini/gap-mllm-mini"), "--stage1", "stage1")["note"]
    assert "None" not in note and note.endswith(
        "made by arm/stage1: copied from elsewhere/model (--stage1); arm/stage2: mini_stage2.yaml, cuda")


def test_collapse_copies_keeps_distinct_sources():
    chain = ("copied from A (--stage0); its stage0: copied from A (--stage0); its stage 0: copied from A (--stage0); "
             "its stage0: copied from B (--stage0): trained")
    assert collapse_copies(chain) == "copied from A (--stage0); its stage0: copied from B (--stage0): trained"


def test_the_results_table_calls_random_same_category_an_upper_reference():
    table = results_markdown(shipped_results())
    assert "| upper reference: random_same_category (reads the true boxes) | 86.5 [84.2, 88.5] |" in table
    assert "baseline: random_same_category" not in table and "it is an upper reference" in table


def test_the_shipped_table_and_card_are_the_writers_text_of_the_shipped_results():
    results = shipped_results()
    table = results_markdown(results)
    shipped = (REPO / "mini" / "RESULTS.md").read_text(encoding="utf-8")
    # the ablation's claims (`python -m lab.mini --ablation --table`, lab/mini/claims.py) add a section after the
    # release's rows
    claims = document_section(shipped, CLAIMS_SECTION)
    if claims is not None:
        assert results_document(results, current=shipped) == shipped  # the release's writer keeps it as it is
        shipped = shipped.replace("\n" + claims, "", 1)
    # a candidate the release rule refused adds a section after the release's rows (lab/mini/pipeline.py)
    release_rows, refused, section = shipped.partition(f"\n\n{REFUSED_SECTION}\n")
    assert release_rows + ("\n" if refused else "") == f"# GAP-MLLM-Mini results (budget: {results['budget']})\n\n" + table
    assert not refused or "the candidate **does not ship**" in section
    card = (SHIPPED / "README.md").read_text(encoding="utf-8")
    assert table in card and "None steps" not in card + table


def test_the_model_card_quotes_the_claims_table_word_for_word_and_the_readme_its_figures():
    """`make mini-ablation --quote model_card.md`: the card quotes the fresh-seed table of mini/RESULTS.md's claims
    section, row for row. The README states the claims in three sentences: no quoted block, and each
    difference with its interval it gives is one of that table's cells."""
    import re

    readme, card = ((REPO / name).read_text(encoding="utf-8") for name in ("README.md", "model_card.md"))
    quote = block_between(card, QUOTE_BEGIN, QUOTE_END, "model_card.md")
    section = document_section((REPO / "mini" / "RESULTS.md").read_text(encoding="utf-8"), CLAIMS_SECTION)
    rows = [line for line in quote.splitlines() if line.startswith("|")]
    assert len(rows) == 8 and "\n".join(rows) in section  # header, rule, 6 rows
    assert QUOTE_BEGIN not in readme
    claims = " ".join(readme[readme.index("**The paper's claims in miniature**"):].split("\n## ")[0].split())
    cells = re.findall(r"([+-]\d+\.\d+) (?:points |CIDEr@0\.5 )?(\[[+-]\d+\.\d+, [+-]\d+\.\d+\])", claims)
    assert len(cells) == 4, claims
    table_cells = {cell.strip() for row in rows[2:] for cell in row.split("|")}
    assert {f"{value} {interval}" for value, interval in cells} <= table_cells
    assert "mini/RESULTS.md" in claims
