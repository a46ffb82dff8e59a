"""`gap-mllm export-vsibench`: a SynthRooms data root's spatial questions as a local VSI-Bench (rows in VSI-Bench's
schema with the records' exact answers, lossless videos of the records' frames, a task file that is VSI-Bench's own
lmms-eval definition pointed at the folder, the same questions as package annotation records)."""

import json
import shutil
from collections import Counter
from importlib.metadata import PackageNotFoundError

import av
import numpy as np
import pytest
from PIL import Image

from gap_mllm.evaluation.lmms_eval_plugin import vsibench_export
from gap_mllm.evaluation.lmms_eval_plugin.vsibench_export import (
    ANNOTATION_FILE,
    ROWS_FILE,
    TASK_NAME,
    export_vsibench,
    vsibench_prompt,
    vsibench_task_folder,
)
from gap_mllm.processing.annotation_files import find_annotation_file
from gap_mllm.processing.scannet_layout import posed_images_dir
from gap_mllm.processing.tasks.spatial_qa import DIRECTION_FORMS, direction_answers, vsibench_rows

from .conftest import write_small_synth

VSIBENCH_COLUMNS = ["id", "dataset", "scene_name", "question_type", "question", "options", "ground_truth"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("vsibench")
    data = write_small_synth(root / "data", {"test": 2})
    written = export_vsibench(data, root / "out")
    records = json.loads(find_annotation_file(data, "spatial_qa", "test").read_text())
    rows = [json.loads(line) for line in (root / "out" / ROWS_FILE).read_text().splitlines()]
    return {"data": data, "out": root / "out", "written": written, "records": records, "rows": rows}


def test_rows_are_vsibench_rows_with_the_records_answers(exported):
    rows, records = exported["rows"], {r["id"]: r for r in exported["records"]}
    assert exported["written"] == {"questions": 14, "videos": 2, "skipped": {},
                                   "question_types": dict.fromkeys(sorted(["object_abs_distance", "object_counting",
                                                                           "object_size_estimation", "room_size_estimation",
                                                                           *DIRECTION_FORMS]), 2),
                                   # lmms-eval's table rows of types not asked read 0.0: named, not scores
                                   "not_asked": ["obj_appearance_order_accuracy", "object_rel_distance_accuracy",
                                                 "route_planning_accuracy"]}
    assert [row["id"] for row in rows] == list(range(14))
    for row in rows:
        assert [key for key in row if key != "record_id"] == VSIBENCH_COLUMNS and row["dataset"] == "synthrooms"
        record = records[row["record_id"]]
        assert row["scene_name"] == record["scene_id"]
        if row["question_type"] in ("object_rel_direction_easy", "object_rel_direction_medium"):
            continue  # derived from the hard question's objects: the next test
        prompt = record["conversations"][0]["value"]
        assert prompt == "<image>" * len(record["images"]) + row["question"] + (
            "\n" + "\n".join(row["options"]) + "\nAnswer with the option's letter from the given choices directly."
            if row["options"] else "\nPlease answer the question using a single word or phrase.")
        assert row["ground_truth"] == record["ground_truth"] and row["options"] == (record["options"] or None)
        assert row["question_type"] == ("object_rel_direction_hard" if record["question_type"] == "object_rel_direction"
                                        else record["question_type"])


@pytest.mark.parametrize(("degrees", "easy", "medium", "hard"), [
    (30, "left", "left", "front-left"), (-100, "right", "right", "back-right"), (150, "left", "back", "back-left"),
    (-170, "right", "back", "back-right"), (120, "left", "left", "back-left"),  # 15 degrees from 135: still asked
    (130, "left", None, "back-left"), (-140, "right", None, "back-right"),  # within 15 degrees of 135: not asked
])
def test_direction_forms_of_an_angle(degrees, easy, medium, hard):
    assert direction_answers(np.deg2rad(degrees)) == {"object_rel_direction_easy": easy,
                                                       "object_rel_direction_medium": medium,
                                                       "object_rel_direction_hard": hard}


def test_the_three_direction_forms_ask_the_same_objects_and_agree(exported):
    by_record: dict[str, dict] = {}
    for row in exported["rows"]:
        if row["question_type"] in DIRECTION_FORMS:
            by_record.setdefault(row["record_id"], {})[row["question_type"]] = row
    assert len(by_record) == 2
    for forms in by_record.values():
        answer = {kind: row["options"][ord(row["ground_truth"]) - ord("A")].split(". ", 1)[1] for kind, row in forms.items()}
        hard = answer["object_rel_direction_hard"]
        assert hard.endswith(answer["object_rel_direction_easy"])  # front-left -> left
        if "object_rel_direction_medium" in answer:
            assert answer["object_rel_direction_medium"] in (answer["object_rel_direction_easy"], "back")
            assert answer["object_rel_direction_medium"] != "back" or hard.startswith("back")
        easy = forms["object_rel_direction_easy"]["question"]
        assert easy.split(", is the")[0] == forms["object_rel_direction_hard"]["question"].split(", is the")[0]
        assert easy.endswith("to the left or the right of the " + easy.split("facing the ")[1].split(",")[0] + "?")


def test_videos_hold_the_records_frames_losslessly(exported):
    clips = {r["scene_id"]: r["images"] for r in exported["records"]}
    for scene, images in clips.items():
        with av.open(str(exported["out"] / "vsibench" / "synthrooms" / f"{scene}.mp4")) as container:
            decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        expected = [np.asarray(Image.open(posed_images_dir(exported["data"]) / image).convert("RGB")) for image in images]
        assert len(decoded) == len(expected) == 4
        assert all(np.array_equal(a, b) for a, b in zip(decoded, expected))


def test_the_task_file_is_vsibench_own_definition_on_this_folder(exported):
    from lmms_eval.utils import load_yaml_config

    out = exported["out"]
    config = load_yaml_config(str(out / f"{TASK_NAME}.yaml"))
    official = load_yaml_config(str(vsibench_task_folder() / "vsibench.yaml"))
    assert config["task"] == TASK_NAME and config["dataset_path"] == str(out.resolve())
    assert {key: value for key, value in config.items() if key not in ("task", "dataset_path")}.keys() == \
        {key for key in official if key not in ("task", "dataset_path")}
    for key in ("process_results", "doc_to_text", "doc_to_visual"):  # VSI-Bench's utils.py, not ours
        assert config[key].__code__.co_filename == str(vsibench_task_folder() / "utils.py")
    def metrics(task):  # (name, aggregation function: its name and file) of each metric
        return [(m["metric"], m["aggregation"].__name__, m["aggregation"].__code__.co_filename) for m in task["metric_list"]]

    assert metrics(config) == metrics(official) and len(metrics(config)) == 9
    assert config["dataset_kwargs"] == official["dataset_kwargs"] == {"token": True, "cache_dir": "vsibench", "video": True}
    card = (out / "README.md").read_text()
    assert "config_name: full" in card and f"path: {ROWS_FILE}" in card and "not VSI-Bench" in card


def test_annotation_records_are_the_rows_with_vsibench_prompt(exported):
    annotations = json.loads((exported["out"] / ANNOTATION_FILE).read_text())
    clips = {r["scene_id"]: r["images"] for r in exported["records"]}
    assert [a["id"] for a in annotations] == [str(row["id"]) for row in exported["rows"]]
    for record, row in zip(annotations, exported["rows"]):
        assert record["images"] == clips[row["scene_name"]]
        assert record["conversations"][0]["value"] == "<image>" * 4 + vsibench_prompt(row)
        assert record["ground_truth"] == row["ground_truth"] and record["question_type"] == row["question_type"]
    assert vsibench_prompt(exported["rows"][0]).startswith("These are frames of a video.\n")


def test_a_split_without_a_direction_subtype_is_refused(exported, tmp_path):
    annotations = tmp_path / "data" / "annotations"
    annotations.mkdir(parents=True)
    source = find_annotation_file(exported["data"], "spatial_qa", "test")
    kept = [r for r in json.loads(source.read_text()) if r["question_type"] != "object_rel_direction"]
    (annotations / source.name).write_text(json.dumps(kept))
    with pytest.raises(ValueError, match="no object_rel_direction_easy, object_rel_direction_medium, "
                                         "object_rel_direction_hard question.*KeyError"):
        export_vsibench(tmp_path / "data", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_zero_numerical_truth_is_left_out(exported):
    records = [dict(r) for r in exported["records"] if r["question_type"] != "object_rel_direction"]
    distance = next(r for r in records if r["question_type"] == "object_abs_distance")
    distance["ground_truth"] = "0.00"
    rows, skipped = vsibench_rows(records, scene_centres=None)
    assert skipped == Counter({"numerical question with a zero truth": 1}) and len(rows) == len(records) - 1
    assert distance["id"] not in {row["record_id"] for row in rows}


@pytest.mark.parametrize("installed", ["0.7.2", None])
def test_export_needs_lmms_eval_0_7_3(exported, tmp_path, monkeypatch, installed):
    def fake_version(name):
        if installed is None:
            raise PackageNotFoundError(name)
        return installed

    monkeypatch.setattr(vsibench_export, "version", fake_version)
    with pytest.raises(ImportError, match=r"pip install --no-deps lmms-eval==0\.7\.3"):
        export_vsibench(exported["data"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_reexport_replaces_the_videos(exported, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(exported["out"], out)
    stale = out / "vsibench" / "synthrooms" / "synth9999_00.mp4"
    stale.write_bytes(b"old")
    export_vsibench(exported["data"], out)
    assert not stale.exists() and len(list((out / "vsibench" / "synthrooms").iterdir())) == 2


def test_the_command_without_lmms_eval_says_what_to_install_in_one_line(exported, tmp_path, monkeypatch, capsys):
    from gap_mllm.cli.main import main as gap_mllm

    def not_installed(name):
        raise PackageNotFoundError(name)

    monkeypatch.setattr(vsibench_export, "version", not_installed)
    status = gap_mllm(["export-vsibench", "--data", str(exported["data"]), "--out", str(tmp_path / "out")])
    lines = capsys.readouterr().err.splitlines()
    assert status == 2 and lines == [
        "gap-mllm export-vsibench: error: export-vsibench writes a task for lmms-eval 0.7.3's vsibench and lmms-eval is "
        "not installed: pip install --no-deps lmms-eval==0.7.3 (with gap-mllm[lmms]; make install does both)"]


def test_a_missing_split_names_the_splits_there_and_the_option(exported, tmp_path, capsys):
    from gap_mllm.cli.main import main as gap_mllm

    status = gap_mllm(["export-vsibench", "--data", str(exported["data"]), "--out", str(tmp_path / "out"), "--split", "testing"])
    line = capsys.readouterr().err.splitlines()[0]
    assert status == 2 and line.startswith("gap-mllm export-vsibench: error: no spatial_qa annotation file for split "
                                           "'testing' in ")
    assert line.endswith("splits with spatial_qa files there: test. Choose one with --split")  # no --annotation-file here
    assert "annotation_file=" not in line and not (tmp_path / "out").exists()
