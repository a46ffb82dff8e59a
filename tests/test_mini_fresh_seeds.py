"""Fresh-seed evidence of a Mini release (lab/mini/fresh_seeds.py): the release rule on constructed figures with exact
outcomes, and the whole path (scenes of two fresh seeds written, the shipped Mini evaluated on them, figures pooled,
baselines on the same scenes) at a toy size."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from lab.mini.fresh_seeds import evaluate_fresh, fresh_results, paired, release_decision
from lab.mini.report import fresh_seed_lines

N = 40
ALL = np.ones(N)
NONE = np.zeros(N)


def _figures(label, hits, frame_hits, tp, cider, point_error, frame_0_hits=NONE):
    """Per-sample figures of one model on 20 samples per task (the shape `model_figures` returns)."""
    n = len(hits)
    answer = json.dumps({"pointmap": [0.0, 0.0, 0.0], "label": "chair"})
    return {"label": label,
            "grounding": {"num_samples": n, "acc@0.25": float(np.mean(hits)), "ids": [f"g{i}" for i in range(n)],
                          "hits": list(map(float, hits)), "frame_hits": list(map(float, frame_hits)),
                          "frame_0_hits": list(map(float, frame_0_hits))},
            "detection": {"ids": [f"d{i}" for i in range(n)],
                          "counts": [{"chair": [int(t), int(not t), int(not t)]} for t in tp]},
            "captioning": {"ids": [f"c{i}" for i in range(n)], "scores": list(cider)},
            "marker": {"ids": [f"m{i}" for i in range(n)], "answers": [answer] * n, "marked_frames": [0] * n,
                       "predictions": [json.dumps({"pointmap": [e, 0.0, 0.0], "label": "chair"}) for e in point_error]}}


def _base(constant_acc):
    return {"grounding": {"best_constant_box": {"acc@0.25": constant_acc}}}


def test_a_candidate_that_meets_every_check_ships():
    reference = _figures("fifth", [1] * 4 + [0] * 36, [1] * 10 + [0] * 30, [1] * 20 + [0] * 20, [1.0] * N, [1.0] * N)
    candidate = _figures("sixth", [1] * 8 + [0] * 32, ALL, [1] * 20 + [0] * 20, [1.0] * N, [1.0] * N)
    decision = release_decision(candidate, reference, _base(0.05))
    assert decision["ship"] is True
    assert all(check["passed"] for check in decision["checks"].values())
    # equal answers give a paired difference of exactly 0 with a degenerate interval
    assert decision["paired"]["detection_f1@0.25"] == {"difference": 0.0, "ci95": [0.0, 0.0]}
    assert decision["paired"]["grounding_acc@0.25"]["difference"] == pytest.approx(0.1)


@pytest.mark.parametrize("case, failing", [
    ("below 12 %", "grounding Acc@0.25 ≥ 12 %"),
    ("not twice the constant", "grounding Acc@0.25 ≥ 2 × best constant box"),
    ("frame at the prior", "frame selection above always-frame-0"),
    ("detection worse", "detection F1@0.25 not worse"),
    ("captions worse", "CIDEr@0.5 not worse"),
    ("points further", "marker point not worse"),
])
def test_each_check_of_the_rule_fails_alone(case, failing):
    hits = [1] * 8 + [0] * 32  # 20 %
    constant, frames, frame0 = 0.05, ALL, NONE
    tp_candidate, cider_candidate, error_candidate = [1] * 20 + [0] * 20, [1.0] * N, [1.0] * N
    if case == "below 12 %":
        hits = [1] * 4 + [0] * 36  # 10 %, and 2 × 0.05 = 10 %
    elif case == "not twice the constant":
        constant = 0.11
    elif case == "frame at the prior":
        frames, frame0 = [1] * 10 + [0] * 30, [1] * 10 + [0] * 30
    elif case == "detection worse":
        tp_candidate = [0] * N
    elif case == "captions worse":
        cider_candidate = [0.5] * N
    elif case == "points further":
        error_candidate = [2.0] * N
    reference = _figures("fifth", [0] * N, NONE, [1] * 20 + [0] * 20, [1.0] * N, [1.0] * N)
    candidate = _figures("sixth", hits, frames, tp_candidate, cider_candidate, error_candidate, frame0)
    decision = release_decision(candidate, reference, _base(constant))
    assert decision["ship"] is False
    assert [name for name, check in decision["checks"].items() if not check["passed"]] == [failing]


def test_models_that_answered_other_samples_are_not_paired():
    a = _figures("a", ALL, ALL, [1] * N, [1.0] * N, [1.0] * N)
    b = _figures("b", ALL, ALL, [1] * N, [1.0] * N, [1.0] * N)
    b["detection"]["ids"] = b["detection"]["ids"][::-1]
    with pytest.raises(ValueError, match="did not answer the same fresh-seed detection samples"):
        paired(a, b)


def test_the_shipped_mini_on_two_fresh_seeds(tmp_path):
    """Scenes of two fresh seeds (one scene each, two samples per task) and the shipped Mini's answers there: the
    fresh scenes are not refused as trained-on (their generator seed differs from the training data's), the pooled
    figures hold both seeds' samples, and a model paired with the same answers differs by exactly 0."""
    from gap_mllm.mini import default_model_path
    from tests.conftest import write_small_synth

    train = tmp_path / "train_data"
    write_small_synth(train, {"train": 2})  # the training statistics of the baselines (constant box, caption, point)
    run, seeds = tmp_path / "run", (5601, 5602)
    evaluate_fresh(run, default_model_path(), "sixth", seeds, scenes=1, batch_size=2, limit=2,
                   max_new_tokens={task: 12 for task in ("grounding", "detection", "captioning", "reconstruction")})
    for seed in seeds:  # the same answers under a second label: what the same model evaluated again writes
        results = run / "fresh" / f"seed-{seed}" / "results"
        shutil.copytree(results / "sixth", results / "fifth")
        info = json.loads((run / "fresh" / f"seed-{seed}" / "data" / "synthrooms" / "dataset_info.json").read_text())
        assert info["config"]["seed"] == seed and list(info["splits"]) == ["test"]
    found = fresh_results(run, train, {"sixth": None, "fifth": None}, seeds=seeds, scenes=1, candidate="sixth", reference="fifth")
    sixth = found["models"]["sixth"]
    assert sixth["grounding"]["num_samples"] == 4 and sixth["marker"]["num_samples"] == 4  # 2 per seed, pooled
    assert {**found["models"]["fifth"], "label": "sixth"} == sixth  # the same answers, the same figures
    pairs = found["decision"]["paired"]
    assert pairs["grounding_acc@0.25"]["difference"] == 0.0 and pairs["captioning_cider@0.5"]["ci95"] == [0.0, 0.0]
    assert found["baselines"]["grounding"]["num_samples"] >= 4
    text = "\n".join(fresh_seed_lines(found))
    assert "Fresh seeds (5601, 5602; 1 scenes each" in text and "Release rule (sixth against fifth" in text
