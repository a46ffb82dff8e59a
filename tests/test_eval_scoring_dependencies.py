"""A task whose scorer is not installed fails before anything is generated: at the start of an evaluation
run, and when a training run builds its generation evaluation (not at its first evaluation, hundreds of
steps in); the `train` extra installs what the shipped recipes' evaluations need."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from gap_mllm.evaluation import tasks as tasks_module
from gap_mllm.evaluation.in_memory import EvaluationSlice
from gap_mllm.evaluation.runner import run_evaluation
from gap_mllm.evaluation.tasks import get_task

from .setup_extras import setup_extras
from .test_train_fixtures import train_data_root  # noqa: F401

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def without_pycocoevalcap(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(tasks_module.importlib.util, "find_spec", lambda name, *a: None if name == "pycocoevalcap" else real(name, *a))


def test_captioning_names_its_missing_scorer_and_the_fix(without_pycocoevalcap):
    with pytest.raises(ImportError) as error:
        get_task("captioning").check_scoring_dependencies()
    message = str(error.value)
    assert "captioning task needs pycocoevalcap>=1.2" in message and "pip install 'gap-mllm[eval]'" in message
    assert "evaluation.tasks" in message
    get_task("grounding").check_scoring_dependencies()  # grounding scores without it


def test_a_training_evaluation_slice_fails_when_it_is_built(train_data_root, without_pycocoevalcap):
    with pytest.raises(ImportError, match="pycocoevalcap"):
        EvaluationSlice("captioning", train_data_root, "val", max_samples=2)
    assert EvaluationSlice("grounding", train_data_root, "val", max_samples=2).records


def test_an_evaluation_run_fails_before_it_writes_anything(train_data_root, tmp_path, without_pycocoevalcap):
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("")
    with pytest.raises(ImportError, match="pycocoevalcap"):
        run_evaluation("captioning", data_dir=train_data_root, out_dir=tmp_path / "out", predictions_file=predictions, split="val")
    assert not (tmp_path / "out").exists()


def _extras() -> dict:
    """`EXTRAS` of setup.py, read without running setup()."""
    return setup_extras()


def test_the_train_extra_scores_every_task_the_shipped_recipes_evaluate():
    train = set(_extras()["train"])
    for path in sorted((REPO / "training" / "recipes").glob("*.yaml")):
        for task in (yaml.safe_load(path.read_text(encoding="utf-8")).get("evaluation") or {}).get("tasks") or []:
            for _, requirement in get_task(task).scoring_packages:
                assert requirement in train, f"{path.name} evaluates {task}, which needs {requirement}"
