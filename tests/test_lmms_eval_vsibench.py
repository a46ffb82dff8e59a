"""lmms-eval 0.7.3's own VSI-Bench task definition, run end to end with the `gap_mllm` model on a local VSI-Bench
written by `gap-mllm export-vsibench` from SynthRooms (2 test scenes, 13 questions, 3-frame videos): every document
answered from frames decoded from its video, each video decoded and encoded once for its questions; lmms-eval's
vsibench scores and `gap-mllm evaluate --official-compat --predictions` give the same numbers on the same answers
(the Mini's, and a stand-in model's mix of right, wrong and differently written answers)."""

import json

import pytest
import torch
from lmms_eval import evaluator
from lmms_eval.api.model import lmms
from lmms_eval.tasks import TaskManager

from gap_mllm.cli.main import main as gap_mllm
from gap_mllm.evaluation.lmms_eval_plugin.models.gap_mllm import GapMllm
from gap_mllm.evaluation.lmms_eval_plugin.vsibench_export import ANNOTATION_FILE, TASK_NAME, export_vsibench
from gap_mllm.mini import default_model_path

from gap_mllm.processing.synth.generator import SynthConfig, SynthRooms
from gap_mllm.processing.synth.writer import write_dataset

# lmms-eval's vsibench metric -> the key of `gap-mllm evaluate`'s spatial-QA summary (per_type, or overall)
SUMMARY_KEYS = {"vsibench_overall": "overall", "obj_appearance_order_accuracy": "obj_appearance_order",
                "object_abs_distance_mra": "object_abs_distance", "object_counting_mra": "object_counting",
                "object_rel_distance_accuracy": "object_rel_distance", "object_size_estimation_mra": "object_size_estimation",
                "room_size_estimation_mra": "room_size_estimation", "route_planning_accuracy": "route_planning",
                "object_rel_direction_accuracy": "object_rel_direction"}


# tests/conftest.py's small SynthRooms with 3-frame question clips: its 2 scenes still ask every direction subtype
SMALL_QA = SynthConfig(seed=0, image_size=(48, 64), num_frames=12, min_objects=3, max_objects=4, grounding_frames=8,
                       caption_frames=4, qa_frames=3, recon_samples_per_scene=3, detection_clips_per_scene=1,
                       captions_per_scene=2)


@pytest.fixture(scope="module")
def local_vsibench(tmp_path_factory):
    root = tmp_path_factory.mktemp("local_vsibench")
    write_dataset(root / "data", SynthRooms(SMALL_QA), {"test": 2})
    assert export_vsibench(root / "data", root / "vsibench")["questions"] == 13
    return root / "data", root / "vsibench"


def _run_vsibench(model, folder, tmp_path, monkeypatch) -> dict:
    """lmms-eval's evaluator on the exported task, as `HF_HOME=FOLDER python -m lmms_eval ...` runs it, offline."""
    monkeypatch.setenv("HF_HOME", str(folder))  # VSI-Bench's utils.py reads its videos under $HF_HOME/vsibench
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("LMMS_EVAL_DATASETS_CACHE", str(tmp_path / "datasets"))
    manager = TaskManager("WARNING", include_path=str(folder), include_defaults=False)
    threads = torch.get_num_threads()
    try:
        return evaluator.simple_evaluate(model=model, tasks=[TASK_NAME], task_manager=manager, log_samples=True,
                                         bootstrap_iters=0, verbosity="WARNING")
    finally:
        torch.set_num_threads(threads)


def _gap_mllm_evaluate(answers: dict, data, folder, out, official_compat: bool = True) -> dict:
    """`gap-mllm evaluate --task spatial_qa --predictions` on the exported questions; its summary."""
    predictions = out / "answers.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    predictions.write_text("".join(json.dumps({"id": str(doc_id), "text": text}) + "\n" for doc_id, text in answers.items()))
    argv = ["evaluate", "--task", "spatial_qa", "--data", str(data), "--annotation-file", str(folder / ANNOTATION_FILE),
            "--predictions", str(predictions), "--out", str(out / "scores"), "--no-plots", "--quiet"]
    assert gap_mllm(argv + (["--official-compat"] if official_compat else [])) == 0
    return json.loads((out / "scores" / "summary.json").read_text())["metrics"]


def _assert_same_numbers(results: dict, summary: dict) -> None:
    scores = results["results"][TASK_NAME]
    for metric, key in SUMMARY_KEYS.items():
        ours = summary["overall"] if key == "overall" else summary["per_type"].get(key)
        if ours is None:  # a type the data does not ask: VSI-Bench reports 0.0
            assert scores[f"{metric},none"] == 0.0 and key in ("obj_appearance_order", "object_rel_distance", "route_planning")
            continue
        assert scores[f"{metric},none"] == round(ours, 6), metric  # lmms-eval rounds its aggregates to 6 decimals


def _answers(results: dict) -> dict:
    return {sample["doc"]["id"]: sample["filtered_resps"][0] for sample in results["samples"][TASK_NAME]}


def test_the_mini_answers_vsibench_through_lmms_eval_and_both_scorers_agree(local_vsibench, tmp_path, monkeypatch):
    data, folder = local_vsibench
    model = GapMllm(pretrained=str(default_model_path()), device="cpu", max_new_tokens=4, batch_size=8)
    results = _run_vsibench(model, folder, tmp_path, monkeypatch)
    answers = _answers(results)
    assert sorted(answers) == list(range(13)) and all(isinstance(text, str) and text for text in answers.values())
    # each video decoded once and encoded once for its questions (scene reuse: 7 and 6), not once per question
    assert model.frames.reads == 2 and model.generator.scenes_encoded == 2
    _assert_same_numbers(results, _gap_mllm_evaluate(answers, data, folder, tmp_path / "evaluate"))


class MixedAnswers(lmms):
    """A stand-in model: per document, by its id, the truth written as a model might (" B", "about 3 m", "three") or a
    wrong answer, so every score lies strictly between its extremes and the two readings of an answer differ."""

    def __init__(self):
        super().__init__()

    def generate_until(self, requests):
        texts = []
        for request in requests:
            doc_id, task, split = request.args[-3:]
            doc = self.task_dict[task][split][doc_id]
            truth, right = doc["ground_truth"], doc["id"] % 2 == 0
            if doc["options"]:
                wrong = "B" if truth == "A" else "A"
                texts.append(f" {truth}. {doc['options'][0]}" if right else wrong)
            elif right:
                texts.append(f"about {truth} m")  # lmms-eval reads 3 in "about 3 m"; the first word is no number
            else:
                texts.append(str(round(float(truth) * 1.3, 2)))  # 30 % off: MRA 0.4
        return texts

    def loglikelihood(self, requests):
        raise NotImplementedError

    def generate_until_multi_round(self, requests):
        raise NotImplementedError


def test_lmms_eval_and_gap_mllm_evaluate_agree_on_mixed_answers(local_vsibench, tmp_path, monkeypatch):
    data, folder = local_vsibench
    results = _run_vsibench(MixedAnswers(), folder, tmp_path, monkeypatch)
    answers = _answers(results)
    official = _gap_mllm_evaluate(answers, data, folder, tmp_path / "official")
    _assert_same_numbers(results, official)
    overall = results["results"][TASK_NAME]["vsibench_overall,none"]
    assert 0.2 < overall < 0.8
    # the default reading ("about" is no number) scores these answers lower: the test tells the two readings apart
    assert _gap_mllm_evaluate(answers, data, folder, tmp_path / "default", official_compat=False)["overall"] < overall
