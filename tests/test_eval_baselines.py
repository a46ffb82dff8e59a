"""The trivial baselines (evaluation/baselines.py) with a limit score the first N records of each task, the samples
`run_evaluation(limit=N)` answers; the Mini's pipeline (lab/mini) scores its baselines with its --eval-limit."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """SynthRooms data of the mini preset: 2 training and 2 test scenes (32 test marker samples)."""
    from gap_mllm.processing.synth import SynthRooms, write_dataset
    from gap_mllm.processing.synth.presets import synth_config

    folder = tmp_path_factory.mktemp("baselines") / "data"
    write_dataset(folder, SynthRooms(synth_config("mini", seed=4)), {"train": 2, "test": 2})
    return folder


def test_the_baselines_take_the_first_limit_samples_as_the_runner_does(small_data):
    """`all_baselines(..., limit=N)` scores the first N records of each task, the samples `run_evaluation(limit=N)`
    answers; the pipeline passes its --eval-limit (`compute_baselines`)."""
    from gap_mllm.evaluation.baselines import _records, all_baselines, constant_marker_answer
    from gap_mllm.evaluation.marker_metrics import marker_scores

    limited, whole = all_baselines(small_data, "test", limit=5), all_baselines(small_data, "test")
    records = _records(small_data, "reconstruction", "test")
    assert whole["marker"]["constant_point"]["num_samples"] == len(records) > 5
    assert limited["marker"]["constant_point"]["num_samples"] == 5
    guess, _ = constant_marker_answer(small_data)
    first = records[:5]
    expected = marker_scores([guess] * 5, [r["conversations"][1]["value"] for r in first],
                             [r["pixel_coords"][0] for r in first])
    assert limited["marker"]["constant_point"]["point_error_m_median"] == pytest.approx(expected["point_error_m_median"],
                                                                                         abs=1e-12)
    for task, name in (("grounding", "best_constant_box"), ("detection", "category_mean_boxes"),
                       ("captioning", "constant_caption")):
        assert limited[task][name]["num_samples"] == min(5, whole[task][name]["num_samples"]), task


def test_the_pipeline_scores_its_baselines_with_its_eval_limit(small_data, tmp_path, monkeypatch):
    from lab.mini import pipeline

    seen = {}

    def scored(data, split, limit=None):
        seen.update(data=data, split=split, limit=limit)
        return {"limit": limit}

    monkeypatch.setattr(pipeline, "all_baselines", scored)
    run = pipeline.MiniRun(out=tmp_path / "run", data=small_data, budget="full", device="cpu", eval_limit=1000)
    assert pipeline.compute_baselines(run) == {"limit": 1000} and seen == {"data": small_data, "split": "test", "limit": 1000}
    assert run.results_dir("baselines_limit1000.json").is_file()  # a rerun with another limit scores anew
