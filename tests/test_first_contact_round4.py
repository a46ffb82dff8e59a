"""First contact, round 4: the default path runs on the package's declared requirements (constrained decoding
included); every figure a front end shows is the one of the decoding that ran, and the marker baseline is scored on
the model's samples; and the small things a newcomer hit (the real-photo note by the model's identity, the grounding
stages, a trailing comma, one-line errors, `demo --space` without gradio at once, `from_qwen3_vl` offline at once, the
README picture's caption, the Mini's vocabulary in the docs, no "Loading weights" bar, a short mini/README.md)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as normalised

REPO = Path(__file__).resolve().parent.parent


def setup_constant(name: str):
    """The value of a top-level constant of setup.py (read, not run: running it would call setup())."""
    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    names = {node.targets[0].id: node.value for node in tree.body
             if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
    value = names[name]
    if isinstance(value, ast.List):  # CORE names GRAMMAR_ENGINE: resolve the names it lists
        return [setup_constant(item.id) if isinstance(item, ast.Name) else ast.literal_eval(item) for item in value.elts]
    return ast.literal_eval(value)


# ------------------------------------------------------------------ 4. the default path on a plain install


def test_constrained_decoding_is_a_core_requirement_with_the_verified_pin():
    from gap_mllm.generation_gap_mllm import ENGINE_REQUIREMENT

    assert setup_constant("GRAMMAR_ENGINE") == ENGINE_REQUIREMENT
    assert ENGINE_REQUIREMENT in setup_constant("CORE")


def test_make_install_is_one_pip_install_of_the_package_with_its_requirements():
    """No install dance (issue 81): llguidance requires nothing, so `make install` installs the package with its
    requirements and the dev extra's in one pip call, no grammar engine `--no-deps` (lmms-eval's stays: setup.py)."""
    done = subprocess.run(["make", "-n", "-B", "install"], cwd=REPO, capture_output=True, text=True, check=True)
    assert 'install -e ".[dev]"' in done.stdout
    assert "xgrammar" not in done.stdout and "gap_mllm.cli.requirements" not in done.stdout
    assert [line for line in done.stdout.splitlines() if "--no-deps" in line and "lmms" not in line.lower()] == []


def declared_closure(roots: list[str]) -> set[str]:
    """The distributions `roots` (requirement strings) bring, recursively through the installed ones' metadata, with
    their markers evaluated here (no extras): what a plain `pip install gap-mllm` installs on this platform."""
    found, pending = {"gap-mllm"}, list(roots)
    while pending:
        requirement = Requirement(pending.pop())
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = normalised(requirement.name)
        if name in found:
            continue
        found.add(name)
        try:
            pending.extend(requires(requirement.name) or [])
        except PackageNotFoundError:  # required but not installed here (one for another platform): imports nothing
            continue
    return found


# Run `gap-mllm predict` with its defaults on a bundled room, recording every top-level module that the package's own
# code (gap_mllm.*, or its remote-code copies) imports, with the distributions that provide it.
IMPORT_RECORDER = """
import json, sys
from importlib.metadata import packages_distributions

DISTRIBUTIONS = packages_distributions()
imported = {}

class Recorder:
    def find_spec(self, name, path=None, target=None):
        if "." not in name and name not in sys.stdlib_module_names and name in DISTRIBUTIONS:
            frame = sys._getframe(1)
            while frame is not None and frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen_importlib")):
                frame = frame.f_back
            importer = frame.f_globals.get("__name__", "") if frame is not None else ""
            if importer.split(".")[0] in ("gap_mllm", "transformers_modules"):
                imported.setdefault(name, sorted(DISTRIBUTIONS[name]))
        return None  # only recording: the usual finders import it

sys.meta_path.insert(0, Recorder())
from gap_mllm.cli.main import main
status = main(json.loads(sys.argv[1]))
print(json.dumps({"status": status, "imported": imported}))
"""

# The README's commands with their defaults (issue 84): predict, predict writing its pictures, the demo (pictures too)
DEFAULT_COMMANDS = {
    "predict": ["predict", "--example", "synthetic room A", "--task", "grounding"],
    "predict --save-dir": ["predict", "--example", "synthetic room A", "--task", "detection", "--save-dir", "saved"],
    "demo": ["demo", "--out", "demo_output"],
}


@pytest.mark.parametrize("command", sorted(DEFAULT_COMMANDS))
def test_each_default_command_imports_only_declared_requirements(command, tmp_path):
    """What `pip install gap-mllm` (or the wheel) holds is enough for each README command's defaults: every package
    the package's code imports on that path (constrained decoding's llguidance, the pictures' matplotlib) is a
    requirement of setup.py's core list or of one of them. A package of an extra imported there would fail on a plain
    install, as xgrammar (the engine before llguidance) and matplotlib (the pictures, issue 84) once did."""
    done = subprocess.run([sys.executable, "-c", IMPORT_RECORDER, json.dumps(DEFAULT_COMMANDS[command])],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] in (0, 3), done.stderr[-2000:]  # 3: an answer that did not parse cleanly
    imported = result["imported"]
    assert "llguidance" in imported and "xgrammar" not in imported  # the default decodes inside the task's grammar
    if command != "predict":  # the pictures were drawn: matplotlib (the gate heat map) ran on this path
        assert "matplotlib" in imported and "trimesh" not in imported
    declared = declared_closure(setup_constant("CORE"))
    undeclared = {module: dists for module, dists in imported.items()
                  if not any(normalised(dist) in declared for dist in dists)}
    assert undeclared == {}, f"imported by the default {command}, required by no core requirement: {undeclared}"


# `gap-mllm predict --formats glb` where trimesh is not installed (a None entry in sys.modules: find_spec finds nothing)
GLB_WITHOUT_TRIMESH = """
import contextlib, io, json, runpy, sys
sys.modules["trimesh"] = None
sys.argv = ["gap-mllm", *json.loads(sys.argv[1])]
err = io.StringIO()
try:
    with contextlib.redirect_stderr(err):
        runpy.run_module("gap_mllm.cli.main", run_name="__main__")
    status = 0
except SystemExit as stop:
    status = stop.code
print(json.dumps({"status": status, "err": err.getvalue(), "torch": "torch" in sys.modules}))
"""


def test_formats_glb_without_trimesh_is_one_line_naming_the_extra_before_the_model(tmp_path):
    """The one format a plain install cannot write: refused in one line naming the `glb` extra, exit 2, before torch
    (so before the model) and with nothing written; a plain `--save-dir` does not ask for it."""
    from gap_mllm.cli.command_arguments import DEFAULT_SAVE_FORMATS

    assert "glb" not in DEFAULT_SAVE_FORMATS and '"glb": ["trimesh>=4"]' in (REPO / "setup.py").read_text()
    argv = ["predict", "--example", "synthetic room A", "--task", "detection", "--save-dir", "saved",
            "--formats", "png", "glb"]
    done = subprocess.run([sys.executable, "-c", GLB_WITHOUT_TRIMESH, json.dumps(argv)], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == 2 and result["torch"] is False, result
    assert result["err"].splitlines() == [
        "gap-mllm predict: error: --formats glb needs trimesh, which a plain install leaves out: pip install "
        "'gap-mllm[glb]' (or pip install trimesh), or leave glb out of --formats"], result["err"]
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ 5. every figure shown is for what ran


def shipped_results() -> dict:
    from gap_mllm.mini import SHIPPED_DIR

    return json.loads((SHIPPED_DIR / "evaluation_results.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("free", [False, True])
def test_predict_prints_the_figures_of_the_decoding_that_ran(free, capsys):
    """`predict --example` decodes inside the grammar by default and prints the constrained row's figures (the sixth
    release: 12.4 % [10.5, 14.6]); with --free, the free row's (12.3 % [10.4, 14.5])."""
    from gap_mllm.cli.main import main
    from gap_mllm.cli.model_scores import held_out_scores
    from gap_mllm.mini import SHIPPED_DIR

    status = main(["predict", "--example", "synthetic room A", "--task", "grounding", *(["--free"] if free else [])])
    printed = capsys.readouterr().out
    assert status in (0, 3), printed
    line = held_out_scores(SHIPPED_DIR, constrained=not free).line("grounding")
    row = shipped_results()["arms"]["gap_gated_s0" if free else "gap_gated_s0_constrained"]
    figure = (f"Acc@0.25 {100 * row['grounding_acc@0.25']:.1f} % [{100 * row['grounding_acc@0.25_ci95'][0]:.1f}, "
              f"{100 * row['grounding_acc@0.25_ci95'][1]:.1f}]")
    assert f"\n{line}\n" in printed and figure in line
    assert ("free decoding" if free else "constrained decoding") in line


def test_the_shipped_baselines_are_scored_on_the_models_samples():
    """The marker baseline of the test table on the 1,000 samples the model answered (not the split's 3,840), split by
    the marked frame as the model's are; on the fresh seeds, on the 3,000 the models answered; every other baseline on
    as many samples as its task's model row."""
    results = shipped_results()
    row, base = results["arms"]["gap_gated_s0"], results["baselines"]
    marker = base["marker"]["constant_point"]
    assert marker["num_samples"] == row["final_marker_num_samples"] == 1000
    assert marker["by_marked_frame"]["first"]["num_samples"] == row["final_marker_num_samples_first_frame"]
    assert marker["by_marked_frame"]["other"]["num_samples"] == row["final_marker_num_samples_other_frame"]
    assert base["grounding"]["best_constant_box"]["num_samples"] == row["grounding_num_samples"]
    assert base["detection"]["category_mean_boxes"]["num_samples"] == row["detection_num_samples"]
    assert base["captioning"]["constant_caption"]["num_samples"] == row["captioning_num_samples"]
    fresh = results["fresh_seeds"]
    for model in fresh["models"].values():
        assert fresh["baselines"]["marker"]["constant_point"]["num_samples"] == model["marker"]["num_samples"]
        assert fresh["baselines"]["grounding"]["num_samples"] == model["grounding"]["num_samples"]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """SynthRooms data of the mini preset: 2 training and 2 test scenes (32 test marker samples)."""
    from gap_mllm.processing.synth import SynthRooms, write_dataset
    from gap_mllm.processing.synth.presets import synth_config

    folder = tmp_path_factory.mktemp("round4") / "data"
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
    from gap_mllm.mini import pipeline

    seen = {}

    def scored(data, split, limit=None):
        seen.update(data=data, split=split, limit=limit)
        return {"limit": limit}

    monkeypatch.setattr(pipeline, "all_baselines", scored)
    run = pipeline.MiniRun(out=tmp_path / "run", data=small_data, budget="full", device="cpu", eval_limit=1000)
    assert pipeline.compute_baselines(run) == {"limit": 1000} and seen == {"data": small_data, "split": "test", "limit": 1000}
    assert run.results_dir("baselines_limit1000.json").is_file()  # a rerun with another limit scores anew


# ------------------------------------------------------------------ 6. the small things


def saved_views(folder: Path, count: int = 3) -> list[str]:
    """The first `count` views of a bundled room as PNG files: frames given as the user's own (no geometry)."""
    from gap_mllm.cli.scenes import synthetic_scene

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, view in enumerate(synthetic_scene(1, num_frames=count).views):
        paths.append(str(folder / f"frame_{index}.png"))
        view.save(paths[-1])
    return paths


def test_the_mini_is_known_by_its_card_wherever_its_folder_lies(tmp_path):
    """"mini", the shipped folder by its path, the folder default_model_path assembles and a copy elsewhere are all
    GAP-MLLM-Mini (their card says so); the tiny test model and a folder without a card are not."""
    import shutil

    from gap_mllm.cli.model_source import resolve_model_source
    from gap_mllm.mini import SHIPPED_DIR, default_model_path
    from gap_mllm.mini.identity import is_gap_mllm_mini
    from gap_mllm.tiny.tiny_model import save_tiny_checkpoint

    copy = tmp_path / "elsewhere" / "my-model"
    shutil.copytree(SHIPPED_DIR, copy)
    for source in (resolve_model_source("mini"), str(SHIPPED_DIR), str(default_model_path()), str(copy)):
        assert is_gap_mllm_mini(source), source
    (copy / "README.md").unlink()
    tiny = save_tiny_checkpoint(tmp_path / "tiny")
    for source in (copy, tiny, tmp_path / "missing", "org/not-cached-here"):
        assert not is_gap_mllm_mini(source), source


def test_predict_on_own_frames_notes_that_the_mini_knows_synthrooms_only_when_given_by_path(tmp_path, capsys):
    from gap_mllm.cli.main import main
    from gap_mllm.cli.predict import MINI_OWN_FRAMES_NOTE
    from gap_mllm.mini import SHIPPED_DIR

    frames = saved_views(tmp_path / "frames")
    status = main(["predict", "--model", str(SHIPPED_DIR), "--images", *frames, "--task", "detection",
                   "--max-new-tokens", "4"])
    assert status in (0, 3)
    assert capsys.readouterr().err.splitlines().count(MINI_OWN_FRAMES_NOTE) == 1
    assert "knows SynthRooms rooms only" in MINI_OWN_FRAMES_NOTE and "the default" not in MINI_OWN_FRAMES_NOTE


@pytest.mark.parametrize("stage", ["grounding_stage1", "grounding_stage2"])
def test_a_grounding_stage_given_to_predict_says_how_to_run_it(stage, capsys):
    """The README's snippet asks the stages one at a time; predict runs grounding whole: the refusal says so, and the
    README says how to run the stages."""
    from gap_mllm.cli.main import main

    with pytest.raises(SystemExit) as stop:
        main(["predict", "--example", "synthetic room A", "--task", stage])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert (f"'{stage}' is one stage of grounding, which this command runs as one call (the last stage's prompt on "
            f"every frame): --task grounding; one stage at a time: processor(images=frames, task='{stage}', ...)") in err
    assert "gap-mllm evaluate --task grounding" in err
    readme = " ".join((REPO / "README.md").read_text(encoding="utf-8").split())
    assert "grounding's two stages one at a time are the snippet's `ask(\"grounding_stage1\", ...)`" in readme


def test_a_trailing_comma_after_an_answer_is_named_as_such():
    from gap_mllm.tasks_gap_mllm import TRAILING_COMMA, parse_detection, parse_frame_selection, parse_grounding, parse_pointmap

    box = '{"bbox_3d": [0.1, 0.2, 1.5, 0.4, 0.5, 0.6, 0.0, 0.0, 0.0]}'
    grounded = parse_grounding(box + ",")
    assert grounded.box.to_list() == parse_grounding(box).box.to_list() and grounded.reason == TRAILING_COMMA
    assert parse_frame_selection('{"frame": 2},', num_frames=4).frame == 2
    assert parse_frame_selection('{"frame": 2},', num_frames=4).reason == TRAILING_COMMA
    assert parse_pointmap('{"pointmap": [1.0, 2.0, 3.0], "label": "wall"},').reason == TRAILING_COMMA
    listed = parse_detection(f'[{box[:-1]}, "label": "chair"}}],')  # the whole list, then a comma: every box kept
    assert len(listed.boxes) == 1 and listed.boxes[0].label == "chair" and listed.reason == TRAILING_COMMA
    # a dict ending with a comma is a line of detection's official one-dict-per-line list: nothing stray
    assert parse_detection(f'{box[:-1]}, "label": "chair"}},').reason is None
    assert "list of" in parse_grounding(f"[{box}, {box}]").reason  # a real list is still named a list


def test_a_plain_mistake_is_one_line(tmp_path, capsys):
    """docs/usage.md: a mistake in what a command is given is one line naming the input (no hint line after it)."""
    from gap_mllm.cli.main import main

    a_file = tmp_path / "taken"
    a_file.write_text("mine")
    status = main(["predict", "--example", "synthetic room A", "--task", "detection", "--save-dir", str(a_file)])
    assert status == 2
    assert capsys.readouterr().err.splitlines() == [f"gap-mllm predict: error: --save-dir {a_file}: this is a file; "
                                                    "give a folder"]


def test_demo_space_without_gradio_answers_at_once():
    """Before the demo's module (torch, transformers: seconds) is imported, as `gap-mllm space` does; gradio hidden, as
    in an environment installed without the space extra."""
    from .test_cli_startup import heavy_modules_after

    result = heavy_modules_after(["demo", "--space"], hidden=("gradio",))
    assert result["status"] == 2 and result["heavy"] == [], result
    assert result["err"].splitlines() == [
        "gap-mllm demo: error: the Space needs gradio, which a plain install leaves out: pip install 'gap-mllm[space]' "
        "(in a checkout: pip install -e '.[space]', or make install)"]


FROM_QWEN3_VL_OFFLINE = """
import json, sys, time
from pathlib import Path
from gap_mllm import GapMllmForConditionalGeneration
from gap_mllm.tiny.tiny_model import build_tiny_model

repo, cached = sys.argv[1], sys.argv[2] == "cached"
tiny, _ = build_tiny_model()
if cached:  # a Qwen3-VL in the Hub cache, as a download leaves it (refs/main -> its snapshot)
    import os
    from huggingface_hub import constants
    root = Path(constants.HF_HUB_CACHE) / ("models--" + repo.replace("/", "--"))
    commit = "0" * 40
    tiny.vlm.save_pretrained(root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
start = time.monotonic()
try:
    model = GapMllmForConditionalGeneration.from_qwen3_vl(
        repo, geometry_config=tiny.config.geometry_config.to_dict(),
        geometry_fusion_config=tiny.config.geometry_fusion_config.to_dict())
    found = {"loaded": type(model.vlm).__name__}
except OSError as error:
    found = {"error": str(error)}
found["seconds"] = time.monotonic() - start
print(json.dumps(found))
"""


@pytest.mark.parametrize("cached", [False, True])
def test_from_qwen3_vl_with_the_hub_unreachable_answers_at_once(cached, tmp_path):
    """A Hub that refuses connections (no retries for a minute): a checkpoint in the local Hub cache loads from it, one
    that is not there is one line naming it, both in seconds."""
    import os

    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}
    env.pop("HF_HUB_CACHE", None)
    repo = "org/tiny-qwen3-vl"
    done = subprocess.run([sys.executable, "-c", FROM_QWEN3_VL_OFFLINE, repo, "cached" if cached else "missing"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["seconds"] < 15, found  # the probe's 5 s timeout at most; refused connections answer at once
    if cached:
        assert found.get("loaded") == "Qwen3VLForConditionalGeneration", found
    else:
        assert found["error"].startswith(f"Qwen3-VL {repo}: the Hub (http://127.0.0.1:9) cannot be reached (")
        assert found["error"].endswith(f"and {repo} is not in the local Hub cache; connect to the network, or give a "
                                       "local folder of the checkpoint") and "\n" not in found["error"]


def test_the_readme_picture_caption_says_where_the_point_is_drawn():
    """The demo picture's marker panel (`gap-mllm demo` on "synthetic room A", constrained as the demo decodes): the
    predicted point lies beyond three of the four frames (a wedge each) and behind the camera of the second (nothing
    drawn), as the caption says."""
    from gap_mllm.cli.loading import load_model_and_processor
    from gap_mllm.cli.scenes import EXAMPLE_SEEDS, synthetic_scene
    from gap_mllm.cli.tasks import TaskRequest, run_task
    from gap_mllm.cli.visualize import point_marks

    model, processor, _ = load_model_and_processor("mini")
    scene = synthetic_scene(EXAMPLE_SEEDS["synthetic room A"])
    request = TaskRequest("reconstruction", marker=scene.example_inputs["reconstruction"]["marker"])
    result = run_task(model, processor, scene.views, request)
    assert [None if mark is None else mark[0] for mark in point_marks(scene, result.point)] == [
        "wedge", None, "wedge", "wedge"]
    caption = " ".join((REPO / "README.md").read_text(encoding="utf-8").split())
    assert "here it lies beyond three of the four frames and behind the camera of the second" in caption
    assert "beyond all four frames" not in caption


def test_the_docs_give_the_minis_vocabulary_as_it_is():
    import re

    from transformers import AutoTokenizer

    from gap_mllm.mini import SHIPPED_DIR

    tokenizer = AutoTokenizer.from_pretrained(SHIPPED_DIR, trust_remote_code=True)
    config = json.loads((SHIPPED_DIR / "config.json").read_text(encoding="utf-8"))
    assert len(tokenizer) == config["vlm_config"]["text_config"]["vocab_size"] == 679
    usage = (REPO / "docs" / "usage.md").read_text(encoding="utf-8")
    assert re.findall(r"Mini's (\d+) ids", usage) == [str(len(tokenizer))]
    assert f"a {len(tokenizer)}-token BPE" in (REPO / "mini" / "README.md").read_text(encoding="utf-8")


def test_loading_the_mini_as_the_readme_does_shows_no_progress_bar(tmp_path):
    """The package's own model loads quietly, through the Auto classes with trust_remote_code as every snippet does."""
    script = ("from transformers import AutoModel\nfrom gap_mllm.mini import default_model_path\n"
              "AutoModel.from_pretrained(default_model_path(), trust_remote_code=True)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Loading weights" not in done.stderr, done.stderr[-2000:]


def test_the_minis_readme_is_a_product_page():
    """At most 200 lines: what the Mini is, how to reproduce it, how a release is judged; the sessions' diary lives in
    reports/mini/."""
    readme = (REPO / "mini" / "README.md").read_text(encoding="utf-8")
    diary = REPO / "reports" / "mini" / "releases-five-and-six.md"
    assert len(readme.splitlines()) <= 200
    for heading in ("## What it can and cannot do", "## Reproduce", "## How a release is judged"):
        assert heading in readme
    for session_note in ("What the first session of it measured", "The second session (2026-11-26)",
                         "## A run longer than a session"):
        assert session_note not in readme and session_note.lstrip("# ") in diary.read_text(encoding="utf-8")
    assert "../reports/mini/releases-five-and-six.md" in readme
