"""The lmms-eval plugin (evaluation/lmms_eval_plugin): lmms-eval's own evaluator, run in-process on tasks written by
`gap-mllm export-lmms`, gives the scores `gap-mllm evaluate --predictions` gives on the same answer texts, key for
key; its two-stage ScanRefer answers are the texts `gap-mllm evaluate` generates itself."""

import json

import pytest
import torch
from lmms_eval import evaluator
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.tasks import TaskManager
from lmms_eval.utils import load_yaml_config

from gap_mllm.evaluation.lmms_eval_plugin import LMMS_TASKS, task_yaml
from gap_mllm.evaluation.lmms_eval_plugin.documents import documents_for, media_root_of, record_of, request_for
from gap_mllm.evaluation.lmms_eval_plugin.export import data_files_block, export_tasks
from gap_mllm.evaluation.lmms_eval_plugin.models.gap_mllm import GapMllm
from gap_mllm.evaluation.lmms_eval_plugin.task_functions import METRICS, grounding_doc_to_text, process_results
from gap_mllm.evaluation.runner import run_evaluation
from gap_mllm.evaluation.tasks import get_task, headline_value
from gap_mllm.mini import default_model_path


DOCS_PER_TASK = 2
MAX_NEW_TOKENS = 6


@pytest.fixture(scope="module")
def exported(synth_data, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("lmms_tasks")
    counts = export_tasks(synth_data, out, limit=DOCS_PER_TASK + 2, meteor=False)
    assert counts == dict.fromkeys(LMMS_TASKS, DOCS_PER_TASK + 2) | {"gap_det": 2}  # the fixture has 2 detection clips
    return out


def _evaluate(model, tasks, exported, limit, tmp_path, monkeypatch, **kwargs):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("LMMS_EVAL_DATASETS_CACHE", str(tmp_path / "datasets"))
    manager = TaskManager("WARNING", include_path=str(exported), include_defaults=False)
    threads = torch.get_num_threads()
    try:
        return evaluator.simple_evaluate(model=model, tasks=tasks, limit=limit, task_manager=manager, log_samples=True,
                                         bootstrap_iters=0, verbosity="WARNING", **kwargs)
    finally:
        torch.set_num_threads(threads)


def _answers(results, task) -> dict[str, list[str]]:
    """{sample id: [text per stage]} from lmms-eval's logged samples."""
    answers = {}
    for sample in results["samples"][task]:
        answer = sample["filtered_resps"][0]
        answers[sample["doc"]["id"]] = [answer] if isinstance(answer, str) else list(answer)
    return answers


def _assert_same_scores(results, answers_by_task, synth_data, tmp_path):  # noqa: F811
    for task, answers in answers_by_task.items():
        benchmark = LMMS_TASKS[task]
        predictions = tmp_path / f"{task}.jsonl"
        predictions.write_text("".join(json.dumps({"id": sid, "raw": raw}) + "\n" for sid, raw in answers.items()))
        summary = run_evaluation(benchmark, synth_data, tmp_path / task, predictions_file=predictions, limit=len(answers),
                                 meteor=False, plots=False)
        assert summary["num_samples"] == len(answers)
        for metric, key in METRICS[benchmark].items():
            assert results["results"][task][f"{metric},none"] == headline_value(summary["metrics"], key), (task, metric)


def test_lmms_eval_scores_equal_gap_mllm_evaluate_on_the_model_answers(synth_data, exported, tmp_path, monkeypatch):  # noqa: F811
    # GAP-MLLM-Mini, by its registered name (the package's lmms_eval.models entry point), on both output types:
    # ScanRefer's two rounds and Scan2Cap's one (the four tasks' scoring: the stand-in model's test below)
    tasks = ["gap_scanrefer", "gap_scan2cap"]
    results = _evaluate("gap_mllm", tasks, exported, DOCS_PER_TASK, tmp_path, monkeypatch,
                        model_args=f"pretrained={default_model_path()},max_new_tokens={MAX_NEW_TOKENS},device=cpu", batch_size=2)
    answers = {task: _answers(results, task) for task in tasks}
    assert all(len(texts) == DOCS_PER_TASK for texts in answers.values())
    assert all(len(raw) == 2 for raw in answers["gap_scanrefer"].values())  # both ScanRefer stages, one document
    _assert_same_scores(results, answers, synth_data, tmp_path)
    # the Mini's captions share words with the references (ROUGE-L: on 2 documents CIDEr's idf is 0 for the words
    # both references hold, so CIDEr can be 0 for a caption that shares words)
    assert results["results"]["gap_scan2cap"]["rouge_l@0.5,none"] > 0

    # the two-stage protocol is the one of gap-mllm evaluate: same stage-1 and stage-2 texts for the same records
    out = tmp_path / "runner_grounding"
    run_evaluation("grounding", synth_data, out, model_dir=default_model_path(), batch_size=2, max_new_tokens=MAX_NEW_TOKENS,
                   limit=DOCS_PER_TASK, plots=False, progress=False)
    generated = {row["id"]: row["raw"] for row in map(json.loads, (out / "raw_outputs.rank0.jsonl").read_text().splitlines())}
    assert generated == answers["gap_scanrefer"]


class OracleOrWrong(lmms):
    """A stand-in model for the scoring path: even documents get the ground truth (every stage), odd ones the
    ground truth of the next document, so every score lies strictly between its extremes."""

    def __init__(self):
        super().__init__()

    def _texts(self, request):
        doc_id, task, split = request.args[-3:]
        docs = self.task_dict[task][split]
        doc = docs[doc_id if doc_id % 2 == 0 else (doc_id + 1) % len(docs)]
        return get_task(doc["task"]).oracle(record_of(doc), media_root_of(doc))

    def generate_until(self, requests):
        return [self._texts(request)[0] for request in requests]

    def generate_until_multi_round(self, requests):
        return [list(self._texts(request)) for request in requests]

    def loglikelihood(self, requests):
        raise NotImplementedError


def test_lmms_eval_scores_equal_gap_mllm_evaluate_on_mixed_answers(synth_data, exported, tmp_path, monkeypatch):  # noqa: F811
    results = _evaluate(OracleOrWrong(), list(LMMS_TASKS), exported, None, tmp_path, monkeypatch)
    answers = {task: _answers(results, task) for task in LMMS_TASKS}
    _assert_same_scores(results, answers, synth_data, tmp_path)
    scores = results["results"]
    assert 0 < scores["gap_scanrefer"]["acc@0.25,none"] < 1 and 0 < scores["gap_spatial_qa"]["overall,none"] < 1
    assert 0 < scores["gap_det"]["f1,none"] < 1 and scores["gap_scan2cap"]["cider@0.5,none"] > 0


def test_task_files_list_the_scored_metrics(exported):
    for task, benchmark in LMMS_TASKS.items():
        written = exported / f"{task}.yaml"
        assert written.read_text() == task_yaml(task) + data_files_block(f"{task}.jsonl")
        config = load_yaml_config(str(written), mode="simple")  # lmms-eval anchors the documents at the YAML's folder
        assert config["task"] == task and config["dataset_kwargs"] == {"data_files": {"test": str(exported / f"{task}.jsonl")}}
        assert [m["metric"] for m in config["metric_list"]] == list(METRICS[benchmark])
        multi_round = get_task(benchmark).stages > 1
        assert config["output_type"] == ("generate_until_multi_round" if multi_round else "generate_until")
    assert load_yaml_config(str(exported / "gap_mllm.yaml"), mode="simple") == {"group": "gap_mllm", "task": list(LMMS_TASKS)}


def test_scanrefer_rounds_take_the_frames_around_the_selected_frame(synth_data):  # noqa: F811
    doc = documents_for("grounding", synth_data, limit=1)[0]
    record = record_of(doc)
    assert grounding_doc_to_text(doc) == request_for(doc, 0, []).prompt
    frames, prompt, done, answers, _ = grounding_doc_to_text(doc, previous_output=['{"frame": 3}'], round_idx=1)
    selected = str(media_root_of(doc) / record["images"][3])
    assert not done and answers == ['{"frame": 3}'] and frames[0] == selected and selected not in frames[1:]
    assert prompt == request_for(doc, 1, ['{"frame": 3}']).prompt and prompt.count("<image>") == len(frames) > 1
    assert grounding_doc_to_text(doc, previous_output=["a", "b"], round_idx=2)[2] is True
    with pytest.raises(ValueError, match="need 2 answer"):
        process_results(doc, [["only stage 1"]])


def test_model_refuses_what_it_would_answer_wrongly():
    with pytest.raises(ValueError, match="backend=vllm needs base_url"):  # the vLLM backend: tests/test_lmms_eval_vllm.py
        GapMllm(backend="vllm")
    with pytest.raises(TypeError, match="temperature_schedule"):
        GapMllm(temperature_schedule="x")
    model = GapMllm.__new__(GapMllm)
    metadata = {"task": "gap_det", "doc_id": 0, "repeats": 1}
    stop_strings = Instance("generate_until", ("ctx", {"until": ["\n\n"]}, None, 0, "gap_det", "test"), idx=0, metadata=metadata)
    with pytest.raises(ValueError, match="until: \\[\\]"):
        model._budget_cap(stop_strings)
    sampling = Instance("generate_until", ("ctx", {"until": [], "do_sample": True}, None, 0, "gap_det", "test"), idx=0, metadata=metadata)
    with pytest.raises(ValueError, match="greedily"):
        model._budget_cap(sampling)


@pytest.mark.parametrize("limit", [0, -1, True])
def test_a_limit_that_is_not_a_positive_count_is_refused_not_sliced(synth_data, tmp_path, limit):  # noqa: F811
    # records[:-1] would drop the last document and records[:0] export none, both silently
    with pytest.raises(ValueError, match=rf"limit must be a positive number of samples .*got {limit!r}"):
        export_tasks(synth_data, tmp_path / "tasks", limit=limit, meteor=False)
    assert not (tmp_path / "tasks").exists() or not any((tmp_path / "tasks").iterdir())
