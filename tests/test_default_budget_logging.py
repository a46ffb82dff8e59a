"""A token budget lowered to the model's context: when it is the task's own (the caller set none: `DefaultBudget`)
that is the documented behaviour, logged once at INFO; when the caller set `max_new_tokens`, it is still a warning
addressed to them. Every path that lowers a budget: `gap_mllm.generation.generate` (full prompt and scene reuse), the
processor's `generation_kwargs` (predict, demo, Space), and `gap-mllm evaluate` / notebook 03 (`run_evaluation`)."""

import logging

import pytest

from gap_mllm import checks
from gap_mllm.generation import generate
from gap_mllm.processing.synth import SynthRooms, write_dataset
from gap_mllm.processing.synth.presets import synth_config
from gap_mllm.tasks_gap_mllm import DefaultBudget, resolve_task

from .test_generation import short_context  # noqa: F401 - the fixture: a tiny model with 40 positions
from .test_scene_reuse import encode

LOGGER = "gap_mllm.checks"
INFO_LINE = ("the task's token budget of {budget} is lowered to the model's context of {limit} positions: {what} ends at "
             "position {end}, so at most {room} new tokens are generated (answers longer than that stop at the context's "
             "end).")


def budget_records(caplog) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER]


def test_the_task_budget_is_an_int_marked_as_a_default():
    kwargs = resolve_task("grounding").generation_kwargs(tokenizer=None, prompt_length=1)
    assert type(kwargs["max_new_tokens"]) is DefaultBudget and kwargs["max_new_tokens"] == 192
    chosen = resolve_task("grounding").generation_kwargs(tokenizer=None, prompt_length=1, max_new_tokens=192)
    assert type(chosen["max_new_tokens"]) is int
    assert checks.budget_chosen_by_caller(chosen) and not checks.budget_chosen_by_caller(kwargs)
    assert not checks.budget_chosen_by_caller({}) and checks.budget_chosen_by_caller({"max_length": 9})


def test_generate_logs_a_lowered_task_budget_once_at_info_and_warns_for_a_chosen_one(tiny_processor, short_context,
                                                                                     caplog):
    model, frames, full = short_context
    # spatial QA: 64 tokens, 5 positions left after the prompt, which hold its shortest answer (a grounding answer
    # they cannot hold is refused: tests/test_generation.py)
    defaults = tiny_processor.generation_kwargs("spatial_qa", full)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        first = generate(model, **full, **defaults)
        generate(model, **full, **tiny_processor.generation_kwargs("spatial_qa", full))
        prefix, suffix = tiny_processor.split_scene_prompt("Where is the chair?", num_views=2)
        scene = encode(model, tiny_processor, frames, prefix)
        question = tiny_processor(text=suffix, return_tensors="pt")
        generate(model, scene=scene, **question, **tiny_processor.generation_kwargs("spatial_qa", question["input_ids"]))
    assert first.shape[1] <= 41 + 5
    assert budget_records(caplog) == [(logging.INFO, INFO_LINE.format(budget=64, limit=40, what="the prompt", end=34,
                                                                      room=5))]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        generate(model, **full, **tiny_processor.generation_kwargs("spatial_qa", full, max_new_tokens=192))
    assert budget_records(caplog) == [(logging.WARNING, (
        "max_new_tokens=192 would pass the model's context of 40 positions: the prompt ends at position 34, so at most 5 "
        "new tokens are generated (answers longer than that stop at the context's end). Lower max_new_tokens to "
        "silence this."))]


@pytest.fixture(scope="module")
def held_out_room(tmp_path_factory):
    """One validation room of the Mini's data preset, drawn with a seed none of its splits uses (as notebook 03)."""
    root = tmp_path_factory.mktemp("budget") / "data"
    config = synth_config("mini", seed=9100, num_frames=12, detection_clips_per_scene=1, recon_samples_per_scene=1,
                          captions_per_scene=1)
    write_dataset(root, SynthRooms(config), {"val": 1})
    return root


def test_evaluate_logs_the_official_budget_at_info_and_warns_for_a_chosen_cap(held_out_room, tmp_path, monkeypatch,
                                                                              caplog):
    """Grounding's official budget (4,096 tokens) on the Mini's 4,096 positions: notebook 03's call logs it at INFO;
    `--max-new-tokens 4000` (the user's) is warned about."""
    from gap_mllm.evaluation.runner import run_evaluation
    from gap_mllm.mini import default_model_path

    monkeypatch.setattr(checks, "_WARNED_BUDGETS", set())
    with caplog.at_level(logging.INFO, logger=LOGGER):
        run_evaluation("grounding", held_out_room, tmp_path / "default", model_dir=default_model_path(), limit=1,
                       progress=False, plots=False)
    (level, text), = budget_records(caplog)  # once for both stages (the same budget and context)
    assert level == logging.INFO and text.startswith(
        "the task's token budget of 4096 is lowered to the model's context of 4096 positions: the prompt ends at position ")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        run_evaluation("grounding", held_out_room, tmp_path / "capped", model_dir=default_model_path(), limit=1,
                       max_new_tokens=4000, progress=False, plots=False)
    (level, text), = budget_records(caplog)
    assert level == logging.WARNING and text.startswith("max_new_tokens=4000 would pass the model's context of 4096 positions")
