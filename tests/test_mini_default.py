"""The committed GAP-MLLM-Mini (mini/gap-mllm-mini) is a Hub folder that loads through the Auto classes
with trust_remote_code and answers a bundled held-out room with parsable results. Its scores are in
mini/RESULTS.md, not here: this checks the artefact, not its quality."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModel, AutoProcessor

from gap_mllm.cli.scenes import synthetic_scene
from gap_mllm.mini import default_model_path
from gap_mllm.mini.export import MAX_FOLDER_BYTES


@pytest.fixture(scope="module")
def mini():
    folder = default_model_path()
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    # (loading with gap_mllm blocked, from the folder's remote code alone, is tests/test_remote_code.py's)
    assert type(model).__name__ == "GapMllmForConditionalGeneration"
    return folder, model.eval(), processor


def test_the_folder_is_small_and_carries_its_card_and_results(mini):
    folder, model, _ = mini
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) <= MAX_FOLDER_BYTES
    card = (folder / "README.md").read_text(encoding="utf-8")
    results = json.loads((folder / "evaluation_results.json").read_text(encoding="utf-8"))
    assert "gap_gated_s0" in results["arms"] and "| gap_gated_s0 |" in card
    assert model.config.use_geometry and model.config.geometry_fusion_config.method == "gated"


@pytest.mark.parametrize("task", ["grounding_stage1", "grounding_stage2"])
def test_it_answers_a_bundled_room_with_a_parsable_result(mini, task):
    _, model, processor = mini
    scene = synthetic_scene(seed=0)
    request = scene.example_inputs
    task_inputs = {"query": request["grounding"]["query"]}
    inputs = processor(images=scene.views, task=task, return_tensors="pt", **task_inputs)
    out = model.generate(**inputs, **processor.generation_kwargs(task, inputs))
    result = processor.post_process(out, task=task, input_ids=inputs["input_ids"])[0]
    if task == "grounding_stage2":
        assert result.box is not None and len(result.box.to_list()) == 9, result
    else:  # stage 1 of grounding: the index of a frame of this scene
        assert result.frame is not None and 0 <= result.frame < len(scene.views), result
