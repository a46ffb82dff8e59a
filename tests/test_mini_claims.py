"""The paper's claims in miniature (lab/mini/claims.py): the cluster bootstrap over scenes (evaluation/confidence.py),
each verdict on constructed figures with a known outcome, the table's rows for arms not evaluated yet, and the claims
section written into a RESULTS.md without touching the rest of it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from gap_mllm.evaluation.confidence import paired_difference, paired_statistic_difference, resample_rows

from lab.mini.claims import check_quote_block, claims_results, write_claims
from lab.mini.claims_table import (CLAIMS_SECTION, FIGURES, HELPS, HELPS_WITHIN_NOISE, HURTS, NO_DIFFERENCE,
                                       NO_EFFECT, NOT_COMPARABLE, QUOTE_BEGIN, QUOTE_END, SEEDS_DIFFER, claims_lines,
                                       claims_quote, claims_section)
from lab.mini.markdown_sections import block_between, document_section, with_section
from lab.mini.report import REFUSED_SECTION, results_document
from lab.mini.sample_rows import f1_of_counts

REPO = Path(__file__).resolve().parents[1]
SCENES, PER_SCENE = 12, 5
N = SCENES * PER_SCENE
SCENE_OF = [f"7/scene{i // PER_SCENE:02d}" for i in range(N)]


def test_a_cluster_resample_draws_whole_scenes():
    rng = np.random.default_rng(3)
    groups = ["a", "a", "b", "b", "b", "c"]
    members = {"a": [0, 1], "b": [2, 3, 4], "c": [5]}
    for rows in resample_rows(rng, len(groups), 50, groups):
        drawn = list(rows)
        while drawn:  # the resample is a sequence of complete scenes, each in its own order
            scene = groups[drawn[0]]
            assert drawn[:len(members[scene])] == members[scene]
            drawn = drawn[len(members[scene]):]
    with pytest.raises(ValueError, match="groups: 5 labels for 6 samples"):
        resample_rows(rng, 6, 1, groups[:5])


def test_scenes_that_move_together_widen_the_interval_and_a_constant_gap_gives_a_point():
    # each scene's samples all gain or all lose together (+1 / -1 by scene): the samples are 60, the evidence is 12
    sign = np.array([1.0 if (i // PER_SCENE) % 2 == 0 else -1.0 for i in range(N)])
    rng = np.random.default_rng(0)
    b = rng.random(N)
    a = b + 0.25 + 0.5 * sign
    by_sample = paired_difference(a, b, resamples=2000)
    by_scene = paired_difference(a, b, resamples=2000, groups=SCENE_OF)
    assert by_sample["difference"] == by_scene["difference"] == pytest.approx(0.25)
    assert by_scene["num_groups"] == SCENES and "num_groups" not in by_sample
    width = lambda found: found["ci95"][1] - found["ci95"][0]  # noqa: E731
    # sample-level: sd 0.5 / sqrt(60); scene-level: 0.5 / sqrt(12), about 2.2 times wider
    assert width(by_scene) > 1.8 * width(by_sample)
    # the same gain on every sample: every resample's difference is that gain
    assert paired_difference(b + 0.1, b, groups=SCENE_OF)["ci95"] == pytest.approx([0.1, 0.1])
    counts = [{"chair": [1, 0, 0]}] * N
    found = paired_statistic_difference(counts, counts, f1_of_counts, resamples=50, groups=SCENE_OF)
    assert found == {"difference": 0.0, "ci95": [0.0, 0.0], "num_groups": SCENES}


def _figures(label, hits, frame_hits, detected, cider, point_error):
    """The per-sample figures `figures_of` returns, N samples per task in SCENES scenes."""
    answer = json.dumps({"pointmap": [0.0, 0.0, 0.0], "label": "chair"})
    task = lambda prefix: {"num_samples": N, "ids": [f"{prefix}{i}" for i in range(N)], "scenes": SCENE_OF}  # noqa: E731
    return {"label": label,
            "grounding": {**task("g"), "hits": list(map(float, hits)), "frame_hits": list(map(float, frame_hits))},
            "detection": {**task("d"), "counts": [{"chair": [int(t), int(not t), int(not t)]} for t in detected]},
            "captioning": {**task("c"), "scores": list(map(float, cider))},
            "marker": {**task("m"), "answers": [answer] * N, "marked_frames": [0] * N,
                       "predictions": [json.dumps({"pointmap": [e, 0.0, 0.0], "label": "chair"}) for e in point_error]}}


def _half(first):
    """1 on the first `first` samples of every scene, 0 on the rest."""
    return [float(i % PER_SCENE < first) for i in range(N)]


def test_each_verdict_on_figures_with_a_known_outcome():
    without = _figures("without", _half(1), _half(2), _half(2), [0.5] * N, [1.0] * N)
    # with the ingredient: one more grounding hit and one more detection in every scene (helps), the same frames and
    # captions (no effect), every point 0.5 m further (hurts)
    arm = _figures("with", _half(2), _half(2), _half(3), [0.5] * N, [1.5] * N)
    found = claims_results({"gap_gated_s0": arm, "gap_add_s0": without}, "constructed scenes")
    gated = next(claim for claim in found["claims"] if claim["without"] == "gap_add_s0")
    assert gated["verdicts"] == {"grounding_acc@0.25": HELPS, "frame_accuracy": NO_EFFECT, "detection_f1@0.25": HELPS,
                                 "captioning_cider@0.5": NO_EFFECT, "marker_point_error_m_median": HURTS}
    assert gated["paired"]["grounding_acc@0.25"]["difference"] == pytest.approx(0.2)
    assert gated["paired"]["grounding_acc@0.25"]["ci95"] == pytest.approx([0.2, 0.2])  # the same gain in each scene
    assert gated["paired"]["marker_point_error_m_median"]["difference"] == pytest.approx(0.5)
    assert found["num_scenes"] == SCENES and found["num_samples"]["grounding"] == N
    lines = "\n".join(claims_lines(found))
    row = next(line for line in lines.splitlines() if "gap_gated_s0 − gap_add_s0" in line)
    assert row.endswith("| helps: grounding Acc@0.25, detection F1@0.25; hurts at this scale: marker point error m; "
                        "no measurable effect: frame selection, CIDEr@0.5 |")
    assert "| +20.0 [+20.0, +20.0] |" in row


def test_a_seed_pair_says_whether_its_seeds_differ_and_a_claim_no_larger_is_marked_so():
    """Two seeds of one arm: a difference whose interval excludes 0 is "the seeds differ" whichever its sign, one
    that holds 0 "no measurable difference". A claim's helps / hurts whose difference is no larger than the seed
    pair's on that figure is marked "but no more than seed to seed"; a larger one, or one on a figure where the seeds
    agree, keeps its verdict."""
    first = _figures("s0", _half(2), _half(2), _half(2), [0.5] * N, [1.5] * N)
    second = _figures("s1", _half(1), _half(2), _half(2), [0.5] * N, [1.5] * N)  # grounding 0.2 below, same points
    added = _figures("add", _half(0), _half(2), _half(2), [0.5] * N, [1.0] * N)  # grounding 0.4 below, points closer
    stage2_only = _figures("stage2", _half(1), _half(2), _half(2), [0.5] * N, [1.5] * N)  # grounding 0.2 below
    found = claims_results({"gap_gated_s0": first, "gap_gated_s1": second, "gap_add_s0": added,
                            "gap_gated_stage2_only_s0": stage2_only}, "constructed scenes")
    seeds = next(pair for pair in found["seed_to_seed"] if pair["without"] == "gap_gated_s1")
    assert seeds["verdicts"] == {"grounding_acc@0.25": SEEDS_DIFFER, "frame_accuracy": NO_DIFFERENCE,
                                 "detection_f1@0.25": NO_DIFFERENCE, "captioning_cider@0.5": NO_DIFFERENCE,
                                 "marker_point_error_m_median": NO_DIFFERENCE}
    assert found["seed_noise"]["grounding_acc@0.25"] == pytest.approx(0.2)
    assert found["seed_noise"]["marker_point_error_m_median"] == pytest.approx(0.0)
    claim_of = {claim["without"]: claim for claim in found["claims"]}
    gated, pretraining = claim_of["gap_add_s0"], claim_of["gap_gated_stage2_only_s0"]
    assert gated["verdicts"]["grounding_acc@0.25"] == HELPS  # 0.4 > 0.2
    assert gated["verdicts"]["marker_point_error_m_median"] == HURTS  # the seeds agree on the points
    assert pretraining["verdicts"]["grounding_acc@0.25"] == HELPS_WITHIN_NOISE  # 0.2, as the seeds' own gap
    rows = claims_lines(found)
    seed_row = next(line for line in rows if "seed to seed (noise): gap_gated_s0 − gap_gated_s1" in line)
    assert seed_row.endswith("| the seeds differ: grounding Acc@0.25; no measurable difference: frame selection, "
                             "detection F1@0.25, CIDEr@0.5, marker point error m |")
    claim_row = next(line for line in rows if "gap_gated_s0 − gap_gated_stage2_only_s0" in line)
    assert claim_row.endswith("| helps, but no more than seed to seed: grounding Acc@0.25; no measurable effect: "
                              "frame selection, detection F1@0.25, CIDEr@0.5, marker point error m |")
    # without a measured seed pair, nothing is marked
    alone = claims_results({"gap_gated_s0": first, "gap_gated_stage2_only_s0": stage2_only}, "constructed scenes")
    assert alone["seed_noise"] == {} and alone["claims"][1]["verdicts"]["grounding_acc@0.25"] == HELPS


def test_the_marker_figure_of_a_pair_with_the_arm_that_never_trained_the_marker_task_is_not_compared():
    """gap_gated_no_gap_s0 never learned the marker answer: its point error says nothing of geometry, so the two
    claims with it leave that figure out by name, and judge the four others as every claim does."""
    main = _figures("main", _half(2), _half(2), _half(2), [0.5] * N, [1.0] * N)
    stage2_only = _figures("stage2", _half(2), _half(2), _half(2), [0.5] * N, [1.0] * N)
    never = _figures("never", _half(1), _half(2), _half(2), [0.5] * N, [9.0] * N)  # one hit fewer, points far off
    found = claims_results({"gap_gated_s0": main, "gap_gated_stage2_only_s0": stage2_only,
                            "gap_gated_no_gap_s0": never}, "constructed scenes")
    objective, inside_stage2 = (claim for claim in found["claims"] if claim["without"] == "gap_gated_no_gap_s0")
    for claim in (objective, inside_stage2):
        assert claim["paired"]["marker_point_error_m_median"] is None
        assert claim["verdicts"] == {"grounding_acc@0.25": HELPS, "frame_accuracy": NO_EFFECT,
                                     "detection_f1@0.25": NO_EFFECT, "captioning_cider@0.5": NO_EFFECT,
                                     "marker_point_error_m_median": NOT_COMPARABLE}
    row = next(line for line in claims_lines(found) if "gap_gated_s0 − gap_gated_no_gap_s0" in line)
    assert row.endswith(f"| helps: grounding Acc@0.25; no measurable effect: frame selection, detection F1@0.25, "
                        f"CIDEr@0.5; {NOT_COMPARABLE}: marker point error m |")
    assert "| — |" in row  # the marker cell
    # the other claims still compare the marker figure
    stage1 = next(claim for claim in found["claims"] if claim["without"] == "gap_gated_stage2_only_s0")
    assert stage1["verdicts"]["marker_point_error_m_median"] == NO_EFFECT


def test_claims_whose_arms_are_not_evaluated_say_which_and_samples_must_match():
    arm = _figures("a", _half(2), _half(2), _half(2), [0.5] * N, [1.0] * N)
    found = claims_results({"gap_gated_s0": arm}, "constructed scenes")
    assert [claim["missing"] for claim in found["claims"]] == [
        ["no_geometry_s0"], ["gap_gated_stage2_only_s0"], ["gap_add_s0"], ["gap_gated_no_gap_s0"],
        ["gap_gated_stage2_only_s0", "gap_gated_no_gap_s0"]]
    assert found["claims"][0]["second"]["missing"] == ["gap_gated_s1", "no_geometry_s1"]
    lines = claims_lines(found)
    assert sum("not evaluated yet" in line for line in lines) == 5 + 1 + 2
    assert lines[-1] == ("| seed to seed (noise): no_geometry_s0 − no_geometry_s1 | " + " | ".join("—" for _ in FIGURES)
                         + " | not evaluated yet: no_geometry_s0, no_geometry_s1 |")
    other = _figures("b", _half(2), _half(2), _half(2), [0.5] * N, [1.0] * N)
    other["captioning"]["ids"] = other["captioning"]["ids"][::-1]
    with pytest.raises(ValueError, match="did not answer the same captioning samples"):
        claims_results({"gap_gated_s0": arm, "no_geometry_s0": other}, "constructed scenes")


def test_every_repository_file_the_claims_section_and_quote_point_to_exists():
    """The section and the quote send the reader to files for what a verdict does not say (the report, the cost in
    bench/, the design, the test split's table): each named file is in the repository, so a rename breaks this test,
    not the pointer."""
    arm = _figures("a", _half(2), _half(2), _half(2), [0.5] * N, [1.0] * N)
    found = claims_results({"gap_gated_s0": arm}, "constructed scenes")
    stage = {"recipe": "mini_stage2.yaml", "steps": 1, "seed": 0, "device": "cpu", "data": 1, "last_digit_files": 0}
    claims = {"fresh_seeds": found, "test": found,
              "arms": {"gap_gated_s0": {"model": None, "stages": {"stage2": stage}, "final": None, "run_state": None}}}
    named = set()
    for text in (claims_section({"claims": claims}), claims_quote(claims)):
        named |= set(re.findall(r"\b(?:lab/mini|mini|reports|bench|training)/[\w/.-]+\.(?:md|py)\b", text))
    assert {"reports/mini/claims-in-miniature.md", "bench/README.md", "lab/mini/ablation.py", "mini/RESULTS.md",
            "training/data_sketch.py"} <= named
    assert sorted(path for path in named if not (REPO / path).is_file()) == []


RELEASE = "# GAP-MLLM-Mini results (budget: full)\n\nThe release's table.\n\n| model | Acc |\n|---|---|\n| m | 1 |\n"


class _Run:
    """The parts of lab/mini/pipeline.py's MiniRun that `write_claims` uses."""

    def __init__(self, out: Path):
        self.out, self.data = out, out / "data"

    def results_dir(self, *parts):
        return self.out / "results" / Path(*parts)


def _two_arms(monkeypatch) -> None:
    """`write_claims` over two constructed arms "a" and "b" (b hits grounding half as often), compared as one seed pair."""
    arm = _figures("a", _half(2), _half(2), _half(2), [0.5] * N, [1.0] * N)
    without = _figures("b", _half(1), _half(2), _half(2), [0.5] * N, [1.0] * N)
    monkeypatch.setattr("lab.mini.claims.model_figures", lambda out, label, seeds: {"a": arm, "b": without}[label])
    monkeypatch.setattr("lab.mini.claims.figures_of", lambda label, parts: {"a": arm, "b": without}[label])
    monkeypatch.setattr("lab.mini.claims.CLAIMS", ())
    monkeypatch.setattr("lab.mini.claims.SEED_PAIRS", (("a", "b"),))


def test_the_claims_section_is_written_into_the_release_table_and_replaced_there(tmp_path, monkeypatch):
    _two_arms(monkeypatch)
    table = tmp_path / "RESULTS.md"
    refused = f"{REFUSED_SECTION}\n\nA refused candidate's rows.\n"
    table.write_text(RELEASE + "\n" + refused)
    claims = write_claims(_Run(tmp_path), ["a", "b"], table)
    written = table.read_text()
    assert written.startswith(RELEASE) and document_section(written, REFUSED_SECTION) == refused
    assert document_section(written, CLAIMS_SECTION) == claims_section({"claims": claims})
    assert (tmp_path / "results" / "CLAIMS.md").read_text() == claims_section({"claims": claims})
    assert json.loads((tmp_path / "results" / "claims.json").read_text())["test"]["where"] == "the test split"
    # a second arm's pass replaces the section, leaving the rest byte-identical
    write_claims(_Run(tmp_path), ["a"], table)
    again = table.read_text()
    assert again.count(CLAIMS_SECTION) == 1 and again.startswith(RELEASE) and refused in again
    assert "not evaluated yet: b" in document_section(again, CLAIMS_SECTION)
    # the release's own table, rewritten by `python -m lab.mini --table`, keeps both sections
    results = {"budget": "full", "arms": {}, "baselines": {}}
    monkeypatch.setattr("lab.mini.report.results_markdown", lambda results: "The next release's table.\n")
    kept = results_document(results, again)
    assert document_section(kept, CLAIMS_SECTION) == document_section(again, CLAIMS_SECTION)
    assert document_section(kept, REFUSED_SECTION) == refused


def test_the_quote_block_of_each_quoted_file_is_rewritten_and_nothing_else(tmp_path, monkeypatch):
    """`--quote README.md model_card.md`: the fresh-seed table of the claims, word for word as in RESULTS.md's section,
    between the two comment lines of each file; the text around them byte-identical; a file without them refused by
    name."""
    _two_arms(monkeypatch)
    before, after = "# README\n\n## What it can do\n\nsome text\n\n", "\nWhat a row says.\n\n## Next\n"
    readme = tmp_path / "README.md"
    readme.write_text(before + QUOTE_BEGIN + "\nan older quote\n" + QUOTE_END + "\n" + after)
    table = tmp_path / "RESULTS.md"
    table.write_text(RELEASE)
    claims = write_claims(_Run(tmp_path), ["a", "b"], table, [readme])
    written = readme.read_text()
    quote = block_between(written, QUOTE_BEGIN, QUOTE_END, readme)
    assert quote == claims_quote(claims) and written == before + QUOTE_BEGIN + "\n" + quote + QUOTE_END + "\n" + after
    fresh_table = "\n".join(claims_lines(claims["fresh_seeds"])).strip("\n")
    assert fresh_table in quote and fresh_table in table.read_text() and "| seed to seed (noise): a − b | +" in quote
    assert quote.endswith("|\n\n")  # a blank line between the table and the closing comment, which is no table row
    write_claims(_Run(tmp_path), ["a", "b"], table, [readme])
    assert readme.read_text() == written
    plain = tmp_path / "plain.md"
    plain.write_text("# no block here\n")
    with pytest.raises(ValueError, match=f"--quote {plain} has no block to rewrite: it needs the line"):
        write_claims(_Run(tmp_path), ["a"], table, [plain])
    with pytest.raises(ValueError, match=f"--quote {plain} has no block"):
        check_quote_block(plain)
    with pytest.raises(FileNotFoundError, match="--quote .*missing.md: no such file"):
        check_quote_block(tmp_path / "missing.md")
    assert plain.read_text() == "# no block here\n"


def test_with_section_replaces_only_its_own_section():
    document = "# T\n\nintro\n\n## A\n\nold a\n\n## B\n\nb\n"
    assert with_section(document, "## A", "## A\n\nnew a\n") == "# T\n\nintro\n\n## A\n\nnew a\n\n## B\n\nb\n"
    assert with_section("# T\n", "## C", "## C\n\nc\n") == "# T\n\n## C\n\nc\n"
