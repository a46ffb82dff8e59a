"""What a user reads: no noise on save, answers instead of blank lines, pictures that explain themselves."""

import argparse
import contextlib
import io
import logging
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import transformers
from PIL import Image

from gap_mllm.cli import demo
from gap_mllm.cli.demo import DEMO_TASKS
from gap_mllm.cli.model_scores import held_out_scores
from gap_mllm.cli.scenes import scene_from_frames, synthetic_scene
from gap_mllm.cli.tasks import TaskRequest, run_task
from gap_mllm.cli.visualize import LEGEND_ROW_HEIGHT, MARKER, REFERENCE, save_scene_ply, write_visualisations
from gap_mllm.image_utils_gap_mllm import MARKER_COLOR, marker_mask
from gap_mllm.mini import default_model_path
from gap_mllm.tasks_gap_mllm import TASKS
from gap_mllm.tiny.tiny_model import build_tiny_model

from .test_cli_predict import scripted_generate

README = Path(__file__).resolve().parent.parent / "README.md"


def test_saving_logs_no_default_sub_config_notices(tmp_path, build_model, tiny_processor):
    """transformers diffs a config against a throwaway default on every save; for the nested Qwen3-VL config
    that default used to log "`vision_config` is None, initializing ..." at INFO level (training runs log
    at INFO, so every checkpoint printed it)."""
    model = build_model()
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    library_logger = logging.getLogger("transformers")
    previous = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_info()
    library_logger.addHandler(handler)
    try:
        model.save_pretrained(tmp_path)
        tiny_processor.save_pretrained(tmp_path)
    finally:
        library_logger.removeHandler(handler)
        transformers.logging.set_verbosity(previous)
    messages = [record.getMessage() for record in records]
    assert any("Configuration saved" in m for m in messages)  # the handler did see the save's INFO records
    assert not [m for m in messages if "is None, initializing" in m]
    # A notice about a config the user really built without a sub-config still comes through.
    records.clear()
    transformers.logging.set_verbosity_info()
    library_logger.addHandler(handler)
    try:
        transformers.Qwen3VLConfig()
    finally:
        library_logger.removeHandler(handler)
        transformers.logging.set_verbosity(previous)
    assert any("`vision_config` is None" in record.getMessage() for record in records)


# --------------------------------------------------------------------------- demo, README, predict pictures


def readme_use_section() -> tuple[list[list[str]], str]:
    """The shell commands and the Python code of README.md's "## Use" section, as written there."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("\n## Use\n"):]
    section = section[: section.index("\n## ", 1)]
    shell = [shlex.split(line, comments=True) for block in re.findall(r"```bash\n(.*?)```", section, re.S)
             for line in block.splitlines() if line.strip()]
    python = re.findall(r"```python\n(.*?)```", section, re.S)
    return shell, python[0]  # the first Python block is the usage snippet


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """`gap-mllm demo --out <folder>` exactly as the README's Use section writes it, run in a scratch folder
    with stdout and stderr captured into one stream (their order as a terminal shows them)."""
    shell, _ = readme_use_section()
    assert shell and shell[0][:2] == ["gap-mllm", "demo"], shell
    work = tmp_path_factory.mktemp("readme")
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    args = parser.parse_args(shell[0][2:])
    args.out = str(work / args.out)
    merged = io.StringIO()
    with contextlib.redirect_stdout(merged), contextlib.redirect_stderr(merged):
        assert demo.main(args) == 0
    return work, merged.getvalue()


def test_demo_prints_answers_in_one_block_after_the_progress_bars(demo_run):
    _, printed = demo_run
    lines = printed.splitlines()
    banner = [i for i, line in enumerate(lines) if line == "=" * 78]
    assert len(banner) == 2
    block = lines[banner[0] : banner[1] + 1]
    assert not [line for line in block if "it/s]" in line or "Loading weights" in line or "Writing model" in line]
    assert "GAP-MLLM-Mini, trained by this package" in "\n".join(block)
    # every task the mini is trained on ran, each with its answer (or a note that there was none), its parsed
    # result, the exact answer and a saved picture
    for task in DEMO_TASKS:
        assert f"--- {task}: {TASKS[task].title}" in printed
    for field in ("answer : ", "parsed : ", "truth  : "):
        assert printed.count(field) == len(DEMO_TASKS), field
    for task in DEMO_TASKS:  # the frames with boxes of every task (and the fusion gates, a model with geometry)
        assert re.search(rf"saved  : \S+{task}[/\\]frames_with_boxes\.png", printed), task
    # each answer is followed by the mini's held-out score of its task against a trivial baseline (from its folder's
    # evaluation_results.json), and the geometry heads' point cloud of the room is written with their score
    scores = held_out_scores(default_model_path(), constrained=True)
    for task in DEMO_TASKS:
        line = scores.line(task)
        assert f"\n{line}\nsaved  : " in printed, task
    assert "captioning" in DEMO_TASKS and re.search(r"input  : box=\[-?\d+\.\d\d, ", printed)  # readable inputs
    assert re.search(r"saved  : \S+geometry[/\\]reconstructed\.ply", printed)
    assert scores.geometry_line() + "\n" in printed
    assert "\n\n\n" not in printed and "\\n\\n" not in printed  # no runs of blank lines, no escaped newlines


def test_readme_use_snippet_runs_as_written_and_covers_every_task(demo_run, monkeypatch):
    work, _ = demo_run
    _, code = readme_use_section()
    for task in TASKS:
        assert f'ask("{task}"' in code, f"the README snippet has no one-line call for {task}"
    monkeypatch.chdir(work)  # MODEL is the relative folder the README's demo command wrote
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, str(README), "exec"), {"__name__": "readme_snippet"})
    results = printed.getvalue().splitlines()
    calls = re.findall(r'ask\("(\w+)"', code)
    assert [line.split("(")[0] for line in results] == [TASKS[task].result_type.__name__ for task in calls]


def test_reconstruction_picture_shows_the_marker_the_point_and_a_legend(tmp_path):
    model, processor = build_tiny_model()
    scene = synthetic_scene(0, size=(96, 128))
    scripted_generate(model, processor, '{"pointmap": [0.2, 0.1, 2.5], "label": "floor"}')
    marker = (1, 60, 50)
    result = run_task(model, processor, scene.views, TaskRequest("reconstruction", marker=marker))
    assert result.marker == marker and result.point == (0.2, 0.1, 2.5)
    written = write_visualisations(scene, result, tmp_path, formats=("png",))
    sheet = np.asarray(Image.open(written["frames"]).convert("RGB"))
    width, height = scene.views[0].size
    frames_height = 2 * height  # 4 views on two columns
    assert sheet.shape[0] == frames_height + 3 * LEGEND_ROW_HEIGHT + 8  # legend: reference, point, marker
    # the marker as the model saw it: the official red "+" in view 1 (second column of the first row)
    view_1 = sheet[:height, width : 2 * width]
    painted = marker_mask(height, width, marker[1], marker[2])
    assert (view_1[painted] == MARKER_COLOR).all(axis=1).mean() > 0.9
    legend = sheet[frames_height:]
    for colour in (REFERENCE, MARKER, MARKER_COLOR):
        assert (legend == colour).all(axis=-1).any(), colour


def test_no_empty_3d_file_is_written_or_called_saved(tmp_path):
    model, processor = build_tiny_model()
    scene = scene_from_frames(synthetic_scene(0, size=(96, 128)).views)  # uncalibrated: no point cloud
    scripted_generate(model, processor, "```json\n[\n]```")  # a valid answer with no box
    result = run_task(model, processor, scene.views, TaskRequest("detection"))
    assert result.boxes == [] and result.parsed.reason is None
    written = write_visualisations(scene, result, tmp_path)
    assert set(written) == {"frames", "gates"} and set(written.skipped) == {"glb", "ply"}
    assert not list(tmp_path.glob("scene.*"))
    with pytest.raises(ValueError, match="nothing to write to a PLY"):
        save_scene_ply(tmp_path / "empty.ply", scene, [])
