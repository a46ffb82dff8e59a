"""First contact, round 3 (issue 48): an answer in another task's format is not the task's answer (exit status 3);
mistakes in a command are one line before torch is imported; misspelt options get a suggestion; options that would be
ignored are refused; a small checkpoint loads without a progress bar; the Space's example request carries the example's
own inputs; `make install` prints torch's version after numpy is installed; the rehearsal folder is ignored."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from gap_mllm.tasks_gap_mllm import (
    CaptionResult,
    DetectionResult,
    SpatialAnswerResult,
    answer_format,
    parse_caption,
    parse_detection,
    parse_spatial_answer,
)

from .test_cli_startup import heavy_modules_after

REPO = Path(__file__).resolve().parent.parent
GROUNDING_ANSWER = '{"bbox_3d": [0.1, 0.2, 1.5, 0.4, 0.5, 0.6, 0.0, 0.0, 0.0]}'


# ------------------------------------------------------------------ 1. an answer in another task's format


@pytest.mark.parametrize("task, raw, parser, found", [
    ("detection", GROUNDING_ANSWER, parse_detection, "grounding"),
    ("captioning", GROUNDING_ANSWER, parse_caption, "grounding"),
    ("spatial_qa", '{"pointmap": "couch', parse_spatial_answer, "reconstruction"),  # truncated: read by its keys
])
def test_an_answer_in_another_tasks_format_is_not_the_tasks_answer(task, raw, parser, found):
    from gap_mllm.cli.predict import PARSE_FAILURE_STATUS, _exit_status
    from gap_mllm.cli.tasks import TaskResult, task_answer

    assert getattr(parser(raw), "reason") is None  # the tolerant parser alone takes it (evaluate keeps that)
    parsed = task_answer(task, raw, parser(raw))
    assert type(parsed) in (DetectionResult, CaptionResult, SpatialAnswerResult)
    assert parsed.reason.startswith(f"answer in {found}'s format") and parsed.reason.endswith(f"not {task}'s")
    result = TaskResult(task=task, raw=raw, parsed=parsed)
    assert "box(es)\n  (no label)" not in result.summary() and f"{found}'s format" in result.summary()
    assert result.to_dict()["caption"] is None and result.to_dict()["answer"] is None
    assert _exit_status(result) == PARSE_FAILURE_STATUS


def test_an_answer_in_the_tasks_own_format_is_kept():
    from gap_mllm.cli.tasks import task_answer

    detection = '```json\n[{"label": "desk", "bbox_3d": [0, 0, 1, 1, 1, 1, 0, 0, 0]}]\n```'
    assert answer_format(detection) == "detection"
    assert task_answer("detection", detection, parse_detection(detection)).boxes
    assert answer_format("a pink dresser against the wall.") is None and answer_format("3.5") is None
    assert answer_format(GROUNDING_ANSWER) == "grounding"


# ------------------------------------------------------------------ 2, 3. mistakes before torch; ignored options


def one_line_before_torch(argv: list[str], *fragments: str) -> str:
    result = heavy_modules_after(argv)
    assert result["status"] == 2 and result["heavy"] == [], result
    lines = [line for line in result["err"].splitlines() if line.startswith("gap-mllm ")]
    assert len(lines) == 1 and "Traceback" not in result["err"], result["err"]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def test_command_mistakes_are_one_line_before_torch_is_imported(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a frame")
    frame = tmp_path / "frame.png"
    frame.write_bytes(b"")  # only its name is read before the model
    one_line_before_torch(["predict", "--images", str(tmp_path / "missing.png"), "--task", "detection"],
                          "missing.png: no such file or folder")
    one_line_before_torch(["predict", "--images", str(notes), "--task", "detection"], "unsupported file type .txt")
    one_line_before_torch(["predict", "--model", str(tmp_path / "no-model"), "--example", "synthetic room A",
                           "--task", "detection"], "no such folder")
    one_line_before_torch(["predict", "--images", str(frame), "--task", "grounding"], "grounding needs a text query")
    one_line_before_torch(["train", "--config", "training/recipes/stage1_pretrian.yaml"],
                          "not found", "did you mean training/recipes/stage1_pretrain.yaml?")


def test_a_misspelt_option_gets_a_suggestion_and_abbreviations_still_work():
    line = one_line_before_torch(["predict", "--example", "synthetic room A", "--task", "grounding", "--querry", "x"])
    assert "unrecognized arguments: --querry x (did you mean --query?)" in line
    # an unambiguous prefix is still the option (argparse's allow_abbrev): the mistake found is the missing image
    one_line_before_torch(["predict", "--images", "missing.png", "--task", "grounding", "--que", "the chair"],
                          "missing.png: no such file or folder")


def test_options_the_command_would_ignore_are_refused():
    one_line_before_torch(["predict", "--example", "synthetic room A", "--task", "detection", "--formats", "png"],
                          "--formats", "--save-dir")
    one_line_before_torch(["predict", "--example", "synthetic room A", "--task", "detection", "--query", "a chair"],
                          "--query is not read by --task detection")


# ------------------------------------------------------------------ 5. noise


def test_a_small_local_checkpoint_loads_without_a_progress_bar(tmp_path):
    from transformers.utils import logging as transformers_logging

    from gap_mllm.processing.model_paths import loading_bar_for

    (tmp_path / "model.safetensors").write_bytes(b"\0" * 1024)
    assert transformers_logging.is_progress_bar_enabled()
    with loading_bar_for(tmp_path):
        assert not transformers_logging.is_progress_bar_enabled()
    assert transformers_logging.is_progress_bar_enabled()
    with loading_bar_for("org/a-hub-model"):  # a download keeps its bars
        assert transformers_logging.is_progress_bar_enabled()


def test_make_install_imports_torch_only_after_the_requirements_are_installed():
    done = subprocess.run(["make", "-n", "-B", "install"], cwd=REPO, capture_output=True, text=True, check=True)
    lines = done.stdout.splitlines()
    requirements = next(i for i, line in enumerate(lines) if 'install -e ".[dev]"' in line)
    printed = next(i for i, line in enumerate(lines) if "import torch; print" in line)
    assert requirements < printed


# ------------------------------------------------------------------ 6. small truths


def test_the_publish_rehearsal_folder_is_ignored():
    assert subprocess.run(["git", "check-ignore", "-q", "official/tiny-gapmllm"], cwd=REPO).returncode == 0
    assert "<this repository's URL>" not in (REPO / "README.md").read_text()
    assert "trains for seconds" not in (REPO / "examples/training/train_stage1_tiny.sh").read_text()


# ------------------------------------------------------------------ 7. the Space's example request


def test_a_space_request_on_an_example_without_its_query_asks_the_examples_query():
    """The page sends the request before the example's query fills its field in: the backend asks the example's own
    query (and its own object and marker), not an empty one."""
    from gap_mllm.cli.space_backend import NO_EXAMPLE, TASK_LABELS, SpaceBackend

    backend = SpaceBackend.__new__(SpaceBackend)  # no model: only the request is built
    backend.processor, backend._examples = SimpleNamespace(tokenizer=None), {}
    scene = backend.example("synthetic room A")
    labels = {spec.name: label for label, spec in TASK_LABELS.items()}
    own = scene.example_inputs
    assert backend._request(labels["grounding"], "", None, "", "", scene).query == own["grounding"]["query"]
    assert backend._request(labels["grounding"], "the red lamp", None, "", "", scene).query == "the red lamp"
    marker = backend._request(labels["reconstruction"], None, None, "", "", scene).marker
    assert marker == tuple(own["reconstruction"]["marker"])
    assert list(backend._request(labels["captioning"], None, None, "", "", scene).box) == own["captioning"]["box"]
    assert NO_EXAMPLE not in own
