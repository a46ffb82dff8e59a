"""bench_eval_scale.py's random-weight path with Qwen's vocabulary, on the CPU: a random model emits ids anywhere in its
151,936-id vocabulary and its tokenizer (the tiny one padded with fillers, as bench_engines.py's) decodes every one, so
the evaluation runs through instead of ending in "token id ..., outside the tokenizer's 720 ids" at its first batch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from .conftest import write_small_synth

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import bench_eval_scale  # noqa: E402


def test_the_small_padded_model_decodes_every_id_it_can_emit(tmp_path):
    folder = bench_eval_scale.model_folder("small", "cpu", tmp_path, padded_vocab=True)
    config = json.loads((folder / "config.json").read_text())
    vocabulary = config["text_config"]["vocab_size"]
    assert vocabulary == 151_936  # Qwen's, as the real size
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    ids = {token["id"] for token in tokenizer["added_tokens"]} | set(tokenizer["model"]["vocab"].values())
    assert ids == set(range(vocabulary))  # every id the random head can emit decodes
    assert config["image_token_id"] == tokenizer["model"]["vocab"].get("<|image_pad|>", next(
        t["id"] for t in tokenizer["added_tokens"] if t["content"] == "<|image_pad|>"))


@pytest.mark.slow  # ~100 s of CPU (three loads of a 151,936-token tokenizer); the test above covers the tokenizer
def test_the_padded_vocabulary_path_runs_at_a_small_width(tmp_path, capsys):
    data = write_small_synth(tmp_path / "data")
    out = tmp_path / "figures.json"
    threads = torch.get_num_threads()
    try:
        code = bench_eval_scale.main(["--data", str(data), "--model-size", "small", "--padded-vocab", "--queries", "2",
                                      "--batch-size", "2", "--max-new-tokens", "6", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    figures = json.loads(out.read_text())
    assert figures["padded_vocab"] is True and figures["model"] == "small"
    grounding = figures["tasks"]["grounding"]
    assert grounding["samples"] == 2 and grounding["batched_reuse"]["seconds"] > 0
    # the answers were decoded (the bench compares the arms' raw answers before printing any figure)
    assert "| grounding | 2 (" in capsys.readouterr().out


def test_every_timed_run_encodes_its_scenes_and_random_weights_follow_the_annotated_frames(tmp_path):
    """An untimed run before a timed one (compiled decoding's warm-up) left the scenes encoded in the generator, and
    the timed run counted no geometry encoder at all; and a random model's stage 2 always took frame 0,
    so its queries shared one stage-2 scene as a trained model's do not. Each run now encodes its own scenes, and with
    `stage2_frames="annotated"` stage 2 takes the annotated frame and its neighbours."""
    from gap_mllm.evaluation.scene_generation import SceneGenerator
    from gap_mllm.processing.tasks.grounding import selected_frame, stage2_images
    from gap_mllm.tiny.tiny_model import build_tiny_model

    data = write_small_synth(tmp_path / "data")
    model, processor = build_tiny_model()
    generator = SceneGenerator.from_model(model, processor, max_new_tokens=4)
    slice_ = bench_eval_scale.load_slice(data, "val", "grounding", 4)
    task, records, _, media_root = slice_
    first_answers, _, first = bench_eval_scale.run_arm(generator, slice_, 4, True)
    again_answers, again_stages, again = bench_eval_scale.run_arm(generator, slice_, 4, True)
    assert again_answers == first_answers
    assert again["scenes_encoded"] == first["scenes_encoded"] >= 1 and again_stages["vggt"] > 0
    # the figures split by the task's stage: every request counted at its stage, the stage-1 scenes encoded once each
    stages = again["task_stages"]
    assert [len(stage["views_requested"]) for stage in stages] == [len(records)] * 2
    scenes = {tuple(record["images"]) for record in records}
    assert stages[0]["views_encoded"] == sum(len(images) for images in scenes)
    for name, seconds in again_stages.items():
        if name in stages[0]["seconds"]:
            assert seconds == pytest.approx(sum(stage["seconds"][name] for stage in stages), rel=1e-9, abs=1e-12)

    from gap_mllm.evaluation.runner import sample_requests

    request_for = bench_eval_scale.annotated_stage2_frames(sample_requests(task, records, slice_[2], media_root), task,
                                                           records, media_root)
    for i, record in enumerate(records):
        k = selected_frame(record, task.oracle(record, media_root)[0], task.official_compat)[0]
        request = request_for(i, 1, ["not a frame"])  # a random model's stage-1 answer
        assert [Path(p).relative_to(media_root).as_posix() for p in request.images] == stage2_images(
            record["images"][k], media_root)
    answers, _, counts = bench_eval_scale.run_arm(generator, slice_, 4, True, stage2_frames="annotated")
    assert len(answers) == len(records) and counts["generate_calls"] >= 2  # stage 1, then stage 2


def test_a_run_counts_the_graphs_it_compiled_and_the_timed_run_after_an_untimed_one_compiles_none(tmp_path):
    """Compiled decoding's graphs are made in the untimed run (`graphs_compiled`); the timed run replays them."""
    from transformers import CompileConfig

    from gap_mllm.evaluation.scene_generation import SceneGenerator
    from gap_mllm.generation import DECODE_COMPILE_CONFIG
    from gap_mllm.tiny.tiny_model import build_tiny_model

    data = write_small_synth(tmp_path / "data")
    model, processor = build_tiny_model()
    generator = SceneGenerator.from_model(model, processor, max_new_tokens=4)
    generator.compile_decoding = CompileConfig(**{**DECODE_COMPILE_CONFIG, "backend": "eager", "mode": None})
    slice_ = bench_eval_scale.load_slice(data, "val", "grounding", 4)
    torch._dynamo.reset()
    try:
        untimed_answers, _, untimed = bench_eval_scale.run_arm(generator, slice_, 4, True, stage2_frames="annotated")
        timed_answers, _, timed = bench_eval_scale.run_arm(generator, slice_, 4, True, stage2_frames="annotated")
    finally:
        torch._dynamo.reset()
    assert timed_answers == untimed_answers
    assert 1 <= untimed["graphs_compiled"] <= 5 and timed["graphs_compiled"] == 0
    # the timed run decodes in the static-cache buffers the untimed one left: on a GPU, at the addresses its CUDA
    # graphs were recorded with (speedups.py); CUDA graphs are counted on CUDA only
    assert untimed["static_cache_allocations"] >= 1 and timed["static_cache_allocations"] == 0
    assert "cuda_graphs_recorded" not in timed


def scanrefer_shaped_arm(stage1_views, stage2_views) -> dict:
    """A batched arm's figures on 4 queries of one scene: 10 s of views at stage 1, 6 s at stage 2, 2 s of the rest."""
    return {"stages_s": {"total": 18.5, "scoring": 0.5},
            "task_stages": [{"views_requested": [stage1_views] * 4, "views_encoded": stage1_views,
                             "seconds": {"data_processor": 1.0, "vggt": 6.0, "vit": 1.0, "prefill_llm": 2.0, "decode": 0.5}},
                            {"views_requested": stage2_views, "views_encoded": sum(stage2_views),
                             "seconds": {"data_processor": 0.5, "vggt": 4.0, "vit": 0.5, "prefill_llm": 1.0, "decode": 1.0}}]}


def test_scanrefer_minutes_count_the_views_scanrefer_encodes_and_its_queries():
    """The views of a stage are paid per view ScanRefer val encodes there (stage 1: 141 scenes × 32; stage 2: 19 per
    object, or per frame stage 1 can select: 141 × 32, fewer than the 9,508 queries, since a scene's stage-2 scenes
    are encoded once each; one at a time, per query), the rest per query (9,508)."""
    estimate = bench_eval_scale.scanrefer_estimate(scanrefer_shaped_arm(32, [19, 19, 12, 10]), 4, scene_reuse=True)
    per_view = [10.0 / 32, 6.0 / 60]
    per_query = (18.5 - 16.0 - 0.5) / 4
    assert estimate["seconds_per_view_encoded"] == pytest.approx(per_view)
    assert estimate["seconds_per_query_rest"] == pytest.approx(per_query)
    assert estimate["minutes_low"] == pytest.approx((per_view[0] * 141 * 32 + per_view[1] * 2068 * 19 + per_query * 9508) / 60)
    assert estimate["minutes_high"] == pytest.approx(
        (per_view[0] * 141 * 32 + per_view[1] * 141 * 32 * 19 + per_query * 9508) / 60)
    alone = bench_eval_scale.scanrefer_estimate(scanrefer_shaped_arm(32, [19, 19, 12, 10]), 4, scene_reuse=False)
    assert alone["minutes_low"] == alone["minutes_high"] == pytest.approx(
        (per_view[0] * 9508 * 32 + per_view[1] * 9508 * 19 + per_query * 9508) / 60)


def test_a_slice_not_shaped_as_scanrefer_gets_no_minutes():
    """The H200 run extrapolated ScanRefer from the Mini's 8-frame stage 1 and 7-frame stage 2 of 160×128 frames; the
    geometry encoder's cost per view grows with a scene's views, so such a slice is refused by name."""
    estimate = bench_eval_scale.scanrefer_estimate(scanrefer_shaped_arm(8, [7, 7, 5, 4]), 4, scene_reuse=True)
    assert set(estimate) == {"refused"}
    assert "stage 1 8-8 and stage 2 4-7 views, ScanRefer's 32 and up to 19" in estimate["refused"]
    assert set(bench_eval_scale.scanrefer_estimate(scanrefer_shaped_arm(32, [12, 10, 10, 9]), 4, True)) == {"refused"}


def test_the_gpu_calls_table_gives_scanrefers_minutes_or_says_why_not(tmp_path):
    from gpu_figures_table import key_figure

    arm = {**scanrefer_shaped_arm(32, [19, 19, 12, 10]), "per_sample_s": 4.625, "slowest_stage": "vggt"}
    arm["scanrefer_val"] = bench_eval_scale.scanrefer_estimate(arm, 4, scene_reuse=True)
    path = tmp_path / "eval_scale.json"
    path.write_text(json.dumps({"tasks": {"grounding": {"samples": 4, "batched_reuse": arm}}}))
    low, high = arm["scanrefer_val"]["minutes_low"], arm["scanrefer_val"]["minutes_high"]
    assert key_figure("eval_scale", path) == (f"grounding batched_reuse 4.62 s/sample (slowest: vggt); "
                                              f"ScanRefer val {low:.0f}-{high:.0f} min")
    # stopped at its budget during the timed run: the untimed run's figures, said so
    path.write_text(json.dumps({"tasks": {"grounding": {"samples": 4, "batched_reuse": {"untimed_run": arm}}}}))
    assert key_figure("eval_scale", path) == (f"grounding batched_reuse (untimed run only, compiling included) 4.62 "
                                              f"s/sample (slowest: vggt); ScanRefer val {low:.0f}-{high:.0f} min")
    timed = {**arm, "untimed_run": {**arm, "graphs_compiled": 3}}  # compiled decoding's graphs, made untimed
    path.write_text(json.dumps({"tasks": {"grounding": {"samples": 4, "batched_reuse": timed}}}))
    assert key_figure("eval_scale", path).endswith(f"{high:.0f} min; 3 graphs compiled in the untimed run")
    timed["cuda_graphs_recorded"] = 0  # on CUDA: the timed run replayed the graphs its untimed run recorded
    path.write_text(json.dumps({"tasks": {"grounding": {"samples": 4, "batched_reuse": timed}}}))
    assert key_figure("eval_scale", path).endswith("3 graphs compiled in the untimed run, 0 CUDA graphs recorded in "
                                                   "the timed run")
    arm["scanrefer_val"] = {"refused": "not a ScanRefer-shaped slice"}
    path.write_text(json.dumps({"tasks": {"grounding": {"batched_reuse": arm}}}))
    assert key_figure("eval_scale", path).endswith("; ScanRefer val: no estimate (not a ScanRefer-shaped slice)")


def test_a_run_stopped_during_its_timed_run_keeps_the_untimed_runs_figures(tmp_path, monkeypatch):
    """A GPU call kills an arm at its budget; the untimed (compiling) run's figures are written before the timed run
    starts, so a kill there still leaves what was measured."""
    data = write_small_synth(tmp_path / "data")
    out = tmp_path / "figures.json"
    monkeypatch.setattr(bench_eval_scale, "decode_compile_config", lambda *args: "compiled")  # an untimed run first
    runs, run_arm = [], bench_eval_scale.run_arm

    def stopped_at_the_second(*args, **kwargs):
        runs.append(1)
        if len(runs) == 2:
            raise TimeoutError("the arm's budget")
        return run_arm(*args, **kwargs)

    monkeypatch.setattr(bench_eval_scale, "run_arm", stopped_at_the_second)
    with pytest.raises(TimeoutError):
        bench_eval_scale.main(["--data", str(data), "--model-size", "small", "--queries", "2", "--batch-size", "2",
                               "--max-new-tokens", "2", "--compile-decoding", "off", "--arms", "batched_reuse",
                               "--out", str(out)])
    kept = json.loads(out.read_text())["tasks"]["grounding"]["batched_reuse"]
    assert set(kept) == {"untimed_run"}
    untimed = kept["untimed_run"]
    assert untimed["seconds"] > 0 and len(untimed["task_stages"]) == 2 and "refused" in untimed["scanrefer_val"]


def test_the_cuda_graph_count_wraps_torchs_recording(monkeypatch):
    """`cuda_graphs_recorded` counts each call of torch's (private) `CUDAGraphTreeManager.record_function` and passes
    it through; where torch lacks the method the count is None rather than a 0 that would read as "none recorded"."""
    from torch._inductor import cudagraph_trees

    calls = []
    monkeypatch.setattr(cudagraph_trees.CUDAGraphTreeManager, "record_function",
                        lambda self, *args: calls.append(args) or "recorded", raising=False)
    monkeypatch.setattr(bench_eval_scale, "_RECORDED", {"counting": False, "count": 0})
    assert bench_eval_scale.cuda_graphs_recorded() == 0
    assert cudagraph_trees.CUDAGraphTreeManager.record_function(object(), "inputs", 3) == "recorded"
    assert (bench_eval_scale.cuda_graphs_recorded(), calls) == (1, [("inputs", 3)])

    monkeypatch.delattr(cudagraph_trees.CUDAGraphTreeManager, "record_function")
    monkeypatch.setattr(bench_eval_scale, "_RECORDED", {"counting": False, "count": 0})
    assert bench_eval_scale.cuda_graphs_recorded() is None
