"""A task defined in one place: a toy task registered from this file alone (its `TaskSpec` with the model folder's
`register_task`, its package side with `register_package_task`) runs through `gap-mllm predict` on the tiny model,
`gap-mllm evaluate`, the lmms-eval export and its scoring functions, and the Space's task list, and is gone from all
of them once unregistered. No other module names it."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import datasets
import pytest
from PIL import Image

from gap_mllm import tasks_gap_mllm
from gap_mllm.cli.main import main as gap_mllm
from gap_mllm.cli.space_backend import TASK_LABELS
from gap_mllm.cli.task_names import front_end_task_names
from gap_mllm.evaluation.benchmark_names import benchmark_tasks
from gap_mllm.evaluation.lmms_eval_plugin import LMMS_TASKS, task_functions, task_yaml
from gap_mllm.evaluation.lmms_eval_plugin.export import export_tasks
from gap_mllm.processing.annotation_files import annotation_file_name
from gap_mllm.processing.builders import builder_for_task
from gap_mllm.processing.record_schema import ANSWER_TEXT, RecordField, read_fields
from gap_mllm.processing.tasks import (
    PackageTask,
    package_task_names,
    register_package_task,
    register_task,
    unregister_package_task,
    unregister_task,
)
from gap_mllm.tasks_gap_mllm import SPATIAL_QA, resolve_task

TOY = "toy_view_count"
TOY_LABEL = "count the views (toy)"
# model side: spatial QA's answer format (parser, grammar, stop rule) with a prompt of its own and no input
TOY_SPEC = replace(SPATIAL_QA, name=TOY, title="how many views the scene has (toy)", parameters=(),
                   template="How many images are there? Answer with a number.", grammar_reads_prompt=False,
                   aliases=())
ANSWER = RecordField("ground_truth", ANSWER_TEXT)


def toy_evaluate(records, outputs, ids, official_compat=False, **_):
    """Exact match of the first word with the record's count."""
    scores = [float(raw[0].strip().split(" ")[0] == read_fields(record, (ANSWER,), sid)["ground_truth"])
              for sid, record, raw in zip(ids, records, outputs)]
    rows = [{"id": sid, "index": index, "raw": raw, "parsed": raw[0].strip(), "score": score}
            for index, (sid, raw, score) in enumerate(zip(ids, outputs, scores))]
    return rows, {"accuracy": sum(scores) / len(scores), "num_samples": len(scores)}


TOY_TASK = PackageTask(
    name=TOY,
    annotation_file=TOY + "_{split}_{frames}frames.json",
    features=lambda class_names: {"ground_truth": datasets.Value("string")},
    fields=lambda record, answer, num_images, key, builder: {"ground_truth": str(num_images)},
    headline=("accuracy", "share of exact counts"),
    logged_metrics={"accuracy": "accuracy"},
    oracle=lambda record, media_root: [str(record["ground_truth"])],
    evaluate=toy_evaluate,
    lmms_title="GAP-MLLM toy view counting (exact match).",
    card=("visual-question-answering", "view counts", "view counting"),
    answer_fields=("answer",),
    space_label=TOY_LABEL,
)


@pytest.fixture
def toy_task():
    """The toy task, registered on both sides for the test, then unregistered."""
    register_task(TOY_SPEC)
    register_package_task(TOY_TASK)
    yield TOY_TASK
    unregister_package_task(TOY)
    unregister_task(TOY)


@pytest.fixture
def toy_data(tmp_path):
    """A data root with one scene of 2 frames and 3 toy samples of split "val" (answers: 2, 2, 1)."""
    root = tmp_path / "data"
    scene = root / "scannet" / "posed_images" / "scene0000_00"
    scene.mkdir(parents=True)
    for index, colour in enumerate(("red", "blue")):
        Image.new("RGB", (64, 48), colour).save(scene / f"{index * 10:05d}.jpg")
    frames = ["scene0000_00/00000.jpg", "scene0000_00/00010.jpg"]
    records = []
    for index, images in enumerate((frames, frames, frames[:1])):
        prompt = TOY_SPEC.annotation_prompt(len(images))
        turns = [{"from": "human", "value": prompt}, {"from": "gpt", "value": str(len(images))}]
        records.append({"id": f"toy{index}", "images": images, "ground_truth": str(len(images)),
                        "conversations": turns})
    (root / "annotations").mkdir()
    (root / "annotations" / annotation_file_name(TOY, "val", 2)).write_text(json.dumps(records), encoding="utf-8")
    return root


def test_a_registered_task_runs_through_predict_on_the_tiny_model(toy_task, toy_data, capsys):
    assert TOY in front_end_task_names() and resolve_task(TOY) is TOY_SPEC and TOY in tasks_gap_mllm.TASK_NAMES
    frames = sorted(str(path) for path in (toy_data / "scannet" / "posed_images" / "scene0000_00").glob("*.jpg"))
    code = gap_mllm(["predict", "--model", "tiny", "--images", *frames, "--task", TOY, "--max-new-tokens", "4",
                     "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code in (0, 3) and result["task"] == TOY and set(result) >= {"raw", "answer", "boxes", "reason"}
    assert result["boxes"] == [] and result["caption"] is None and result["label"] is None


def test_a_registered_task_is_built_and_scored_by_evaluate(toy_task, toy_data, tmp_path, capsys):
    dataset = builder_for_task(TOY)(data_root=str(toy_data), cache_dir=str(tmp_path / "cache"), splits=("val",))
    dataset.download_and_prepare()
    assert [row["ground_truth"] for row in dataset.as_dataset(split="val")] == ["2", "2", "1"]

    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"id": f"toy{index}", "text": text}) + "\n"
                               for index, text in enumerate(("2", "3", "1"))), encoding="utf-8")
    assert TOY in benchmark_tasks()
    code = gap_mllm(["evaluate", "--task", TOY, "--predictions", str(answers), "--data", str(toy_data),
                     "--out", str(tmp_path / "scores"), "--no-plots"])
    summary = json.loads((tmp_path / "scores" / "summary.json").read_text())
    assert code == 0 and summary["task"] == TOY and summary["metrics"]["accuracy"] == pytest.approx(2 / 3)
    assert summary["metrics"]["num_samples"] == 3 and "accuracy = 0.666" in capsys.readouterr().out


def test_a_registered_task_is_exported_and_scored_for_lmms_eval(toy_task, toy_data, tmp_path):
    lmms_task = "gap_" + TOY
    assert LMMS_TASKS[lmms_task] == TOY
    counts = export_tasks(toy_data, tmp_path / "lmms", split="val", tasks=[lmms_task])
    assert counts == {lmms_task: 3}
    written = (tmp_path / "lmms" / f"{lmms_task}.yaml").read_text()
    assert written.startswith(task_yaml(lmms_task)) and f"task: {lmms_task}\n" in written
    assert '  - metric: "accuracy"' in written and "task_functions.aggregate_accuracy\n" in written

    documents = [json.loads(line) for line in (tmp_path / "lmms" / f"{lmms_task}.jsonl").read_text().splitlines()]
    assert [len(task_functions.doc_to_visual(doc)) for doc in documents] == [2, 2, 1]
    assert task_functions.doc_to_text(documents[0]) == TOY_SPEC.annotation_prompt(2)
    items = [task_functions.process_results(doc, [text])["accuracy"] for doc, text in zip(documents, ("2", "3", "1"))]
    assert task_functions.aggregate_accuracy(items) == pytest.approx(2 / 3)  # the value `evaluate` reports


def test_a_registered_task_is_in_the_space_task_list_and_gone_once_unregistered(toy_task):
    assert TASK_LABELS[TOY_LABEL] is TOY_SPEC and list(TASK_LABELS)[-1] == TOY_LABEL
    unregister_package_task(TOY)
    unregister_task(TOY)
    try:
        assert TOY_LABEL not in TASK_LABELS and TOY not in package_task_names()
        assert TOY not in front_end_task_names() and TOY not in benchmark_tasks() and "gap_" + TOY not in LMMS_TASKS
        assert TOY not in tasks_gap_mllm.TASK_NAMES
        with pytest.raises(ValueError, match=f"^unknown task {TOY!r}"):
            resolve_task(TOY)
    finally:
        register_task(TOY_SPEC)  # the fixture unregisters both
        register_package_task(TOY_TASK)


# ---- what the registries refuse: the shipped tasks' names, labels and files, and names and grammars that break later
@pytest.mark.parametrize("name", ["", "a\nb", "../../x", "toy\x00", "1toy", "toy-view", "tâche", "toy view"])
def test_a_name_that_is_not_a_word_is_refused_at_registration(name):
    with pytest.raises(ValueError, match="is not a task name: one word of ASCII letters, digits and '_'"):
        register_task(replace(TOY_SPEC, name=name))
    with pytest.raises(ValueError, match="is not a task name"):
        register_task(replace(TOY_SPEC, aliases=(name,)))
    assert name not in tasks_gap_mllm.TASKS and TOY not in tasks_gap_mllm.TASKS
    assert name not in tasks_gap_mllm.DEPRECATED_TASK_NAMES


@pytest.mark.parametrize("grammar", ['root ::= "a" [', "root ::= missing_rule\n", "not a grammar"])
def test_a_grammar_that_does_not_compile_is_refused_by_name_at_registration(grammar):
    spec = replace(TOY_SPEC, grammar=lambda max_tokens, num_frames=None, prompt=None: grammar)
    refusals = ("its answer grammar does not compile in llguidance: ",
                "its answer grammar is refused: ValueError: Failed to convert the grammar from GBNF to Lark: ")
    with pytest.raises(ValueError, match=f"^task {TOY!r}: ({'|'.join(map(re.escape, refusals))})"):
        register_task(spec)
    assert TOY not in tasks_gap_mllm.TASKS


def test_a_grammar_function_that_fails_is_refused_by_name_at_registration():
    spec = replace(TOY_SPEC, grammar=lambda max_tokens, num_frames=None, prompt=None: 1 / 0)
    with pytest.raises(ValueError, match=f"^task {TOY!r}: its answer grammar is refused: ZeroDivisionError"):
        register_task(spec)
    assert TOY not in tasks_gap_mllm.TASKS


def test_a_grammar_that_does_not_parse_is_named_by_the_matcher_not_an_index_error(tiny_processor):
    tokenizer = tiny_processor.tokenizer
    with pytest.raises(ValueError, match="^the answer grammar does not compile in llguidance: "):
        tasks_gap_mllm.grammar_matcher(tokenizer, len(tokenizer), 'root ::= "a" [')


@pytest.mark.parametrize("name", ["detection", "grounding", "grounding_stage1", "captioning", "det"])
def test_a_shipped_task_cannot_be_unregistered(name):
    with pytest.raises(ValueError, match=f"^task {name!r} is a shipped task"):
        unregister_task(name)
    with pytest.raises(ValueError, match=f"^task {name!r} is a shipped task"):
        unregister_package_task(name)
    assert set(tasks_gap_mllm.TASK_NAMES) >= {"detection", "grounding", "grounding_stage1", "captioning"}
    assert resolve_task("detection").name == "detection" and "detection" in package_task_names()


DETECTION_LABEL = "3D object detection"


@pytest.mark.parametrize(("name", "changes", "refusal"), [
    (TOY, {"lmms_task": "gap_det"}, "its lmms-eval task 'gap_det' is taken by the task 'detection'"),
    ("scanrefer", {}, "its lmms-eval task 'gap_scanrefer' is taken by the task 'grounding'"),
    (TOY, {"space_label": DETECTION_LABEL}, f"its Space label {DETECTION_LABEL!r} is taken by the task 'detection'"),
    (TOY, {"annotation_file": "scannet_det_{split}_{frames}frames.json"},
     "its annotation file 'scannet_det_{split}_{frames}frames.json' is taken by the task 'detection'"),
    (TOY, {"annotation_file": "scanrefer_{split}_{frames}frames_stage1.json"},
     "its annotation file 'scanrefer_{split}_{frames}frames_stage1.json' is taken by the task 'grounding'"),
    (TOY, {"lmms_task": "../{name}"}, "lmms_task '../{name}' gives the lmms-eval task '../toy_view_count', which is"),
    (TOY, {"lmms_task": "gap_{task}"}, "lmms_task 'gap_{task}' gives the lmms-eval task \"(KeyError: 'task')\""),
    (TOY, {"annotation_file": "../toy_{split}.json"}, "annotation_file '../toy_{split}.json': it must be one file"),
    (TOY, {"annotation_file": "toy_{split}_{scene}.json"}, "annotation_file 'toy_{split}_{scene}.json': its fields"),
])
def test_the_package_registry_refuses_what_a_shipped_task_owns(name, changes, refusal):
    spec = register_task(replace(TOY_SPEC, name=name))
    try:
        with pytest.raises(ValueError, match=f"^task {name!r}: {re.escape(refusal)}"):
            register_package_task(replace(TOY_TASK, name=name, **changes))
        assert name not in package_task_names()
        assert LMMS_TASKS["gap_det"] == "detection" and LMMS_TASKS["gap_scanrefer"] == "grounding"
        assert TASK_LABELS[DETECTION_LABEL] is resolve_task("detection")
        assert annotation_file_name("detection", "val", 4) == "scannet_det_val_4frames.json"
    finally:
        unregister_task(spec.name)


def test_a_title_that_is_a_shipped_tasks_space_label_is_refused_for_a_task_without_one():
    """The Space labels a task without a `space_label` by its title (cli/space_backend.py `TASK_LABELS`)."""
    spec = register_task(replace(TOY_SPEC, title=SPATIAL_QA.title))
    try:
        with pytest.raises(ValueError, match=f"^task {TOY!r}: its Space label {SPATIAL_QA.title!r} is taken by the "
                                             "task 'spatial_qa'$"):
            register_package_task(replace(TOY_TASK, space_label=None))
        assert TASK_LABELS[SPATIAL_QA.title] is SPATIAL_QA and TOY not in package_task_names()
    finally:
        unregister_task(spec.name)
