"""bench/eval_stage_timer.py: the stages of an evaluation add up to its time, each in its place (per-stage
time so the slowest stage is named), and the timer leaves the generator as it found it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gap_mllm.evaluation.generation import Request
from gap_mllm.evaluation.scene_generation import SceneGenerator

from .conftest import make_views

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from eval_stage_timer import StageTimer  # noqa: E402


@pytest.fixture(scope="module")
def generator():
    from gap_mllm.tiny.tiny_model import build_tiny_model

    model, processor = build_tiny_model()
    return SceneGenerator.from_model(model, processor, max_new_tokens=4)


def requests(views, count):
    return [Request(images=views, prompt="<image>" * len(views) + f"Where is object {i}?", max_new_tokens=4, sample=str(i))
            for i in range(count)]


@pytest.mark.parametrize("scene_reuse", [False, True], ids=["full calls", "scene reuse"])
def test_the_stages_are_timed_where_they_happen_and_the_generator_is_restored(generator, scene_reuse):
    views = make_views(2)
    collator, processor, generate = generator.collator, generator.processor, generator.model.generate
    timer = StageTimer(generator)
    try:
        answers = (generator.generate_on_scenes if scene_reuse else generator.generate)(requests(views, 3))
        stages = timer.seconds()
    finally:
        timer.remove()
    assert len(answers) == 3
    assert set(stages) == {"data_processor", "vggt", "vit", "prefill_llm", "decode"}
    for name in ("data_processor", "vggt", "vit", "prefill_llm"):
        assert stages[name] > 0, name  # every stage ran and was seen
    assert generator.collator is collator and generator.processor is processor
    assert generator.model.generate == generate and "generate" not in vars(generator.model)  # the model's own again
