"""examples/serving runs as written, on the CPU: the client against the engine stand-in (a server doing what vLLM
0.33.0 does), the offline batch through a stand-in for `vllm.LLM` (tests/engine_stand_in.py), on GAP-MLLM-Mini's
export. A detection answer of the Mini is a few hundred tokens: it parses only when the task's budget is used."""

import json
import runpy
import sys
from pathlib import Path

import pytest

from gap_mllm.cli.loading import load_model_and_processor
from gap_mllm.cli.scenes import synthetic_scene
from gap_mllm.cli.tasks import TaskRequest, run_task
from gap_mllm.mini import default_model_path
from gap_mllm.serving import GapMllmEncoder, answer_from_token_ids, eos_token_ids, export_llm_folder
from gap_mllm.tasks_gap_mllm import DETECTION

from .engine_stand_in import EngineStandIn, OfflineLLMStandIn, SamplingParamsStandIn

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "serving"
VIEWS = 4  # the client's default room: scene 0, 4 views
OLD_BUDGET = 64  # the offline example's former --max-tokens default, which cut detection answers


def run_example(name, argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(EXAMPLES / name), *argv])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    return done.value.code


def test_examples_are_all_covered():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == ["offline_batch.py", "offline_vllm_generate.py", "openai_client.py"]


def test_openai_client_dry_run_builds_the_request(monkeypatch, capsys):
    assert run_example("openai_client.py", ["--dry-run", "--task", "grounding_stage1", "--views", "3"], monkeypatch) == 0
    outline = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert outline["views"] == 3 and outline["content_parts"] == ["text", "image_embeds"] * 3 + ["text"]
    assert outline["embedding_shape"][1] == 4 * 256  # the mini: hidden 256, main + 3 DeepStack levels
    assert outline["structured_outputs"] == []  # free by default: the engine's own answer


def test_openai_client_constrained_request_carries_the_task_grammar(monkeypatch, capsys):
    assert run_example("openai_client.py", ["--dry-run", "--task", "grounding_stage1", "--views", "3", "--constrained"],
                       monkeypatch) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["structured_outputs"] == ["grammar"]


def test_offline_batch_encode_then_parse(tmp_path, monkeypatch, capsys):
    requests = tmp_path / "requests.pt"
    assert run_example("offline_batch.py", ["encode", "--out", str(requests), "--views", "4"], monkeypatch) == 0
    meta = json.loads(Path(str(requests) + ".json").read_text())
    assert meta and all(item["task"] == "grounding_stage1" and item["max_tokens"] == 64 and item["views"] == 4
                        for item in meta)
    tokenizer = GapMllmEncoder.from_pretrained(default_model_path()).processor.tokenizer
    # what offline_vllm_generate.py writes: the engine wrote on after the answer (it knows no answer-end rule)
    written_on = tokenizer('{"frame": 2} and then more', add_special_tokens=False)["input_ids"]
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps([{"text": "ignored", "token_ids": written_on}] +
                                  [{"text": "", "token_ids": tokenizer("not json")["input_ids"]}] * (len(meta) - 1)))
    capsys.readouterr()
    assert run_example("offline_batch.py", ["parse", str(answers), "--requests", str(requests)], monkeypatch) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(meta) + 1 and "'frame': 2" in lines[0]
    results = json.loads((tmp_path / "answers.parsed.json").read_text())
    assert results[0]["text"] == '{"frame": 2}'  # cut where generate stops, the parsed result next to it
    assert results[0]["parsed"] == {"type": "FrameSelectionResult", "frame": 2, "reason": None}
    assert [r["query"] for r in results] == [item["query"] for item in meta]
    answers.write_text(json.dumps(["a text without its token ids"] * len(meta)))  # an answers.json of another kind
    refusal = run_example("offline_batch.py", ["parse", str(answers), "--requests", str(requests)], monkeypatch)
    assert refusal.startswith(f"{answers}: answer 0: expected the generated token ids")  # one line, no traceback
    missing = run_example("offline_batch.py", ["parse", str(tmp_path / "no.json"), "--requests", str(requests)], monkeypatch)
    assert missing == f"offline_batch.py parse: [Errno 2] No such file or directory: '{tmp_path / 'no.json'}'"


def test_offline_batch_constrained_requests_carry_the_task_grammar_to_vllm(tmp_path, monkeypatch):
    """`encode --constrained`: each request's settings hold its task's answer grammar for its budget and views (the
    grammar `generate(..., constrained=True)` decodes inside), and the vLLM step puts it in each request's
    `SamplingParams(structured_outputs=StructuredOutputsParams(grammar=...))`; without --constrained there is none."""
    from gap_mllm.tasks_gap_mllm import GROUNDING_STAGE1

    requests = tmp_path / "requests.pt"
    assert run_example("offline_batch.py", ["encode", "--out", str(requests), "--views", "4", "--constrained"], monkeypatch) == 0
    settings = json.loads(Path(str(requests) + ".json").read_text())
    assert settings and all(item["grammar"] == GROUNDING_STAGE1.grammar_for(64, 4) for item in settings)
    step = runpy.run_path(str(EXAMPLES / "offline_vllm_generate.py"))

    def structured_outputs(grammar):  # vllm.sampling_params.StructuredOutputsParams
        return {"grammar": grammar}

    params = step["sampling_params"](settings, SamplingParamsStandIn, structured_outputs)
    assert [p.structured_outputs for p in params] == [{"grammar": item["grammar"]} for item in settings]
    assert all(p.temperature == 0.0 and p.max_tokens == 64 for p in params)
    with pytest.raises(SystemExit, match="request 0 carries an answer grammar"):
        step["sampling_params"](settings, SamplingParamsStandIn)
    free = [{k: v for k, v in item.items() if k != "grammar"} for item in settings]
    assert all(p.structured_outputs is None for p in step["sampling_params"](free, SamplingParamsStandIn, structured_outputs))


def test_offline_batch_encodes_as_many_views_as_it_says(tmp_path, monkeypatch, capsys):
    """`--views 32` (the documented command) wrote 24 views while saying 32: the example room's walk has 24 frames."""
    requests = tmp_path / "requests.pt"
    assert run_example("offline_batch.py", ["encode", "--out", str(requests), "--views", "32"], monkeypatch) == 0
    assert {item["views"] for item in json.loads(Path(str(requests) + ".json").read_text())} == {32}
    assert "requests (32 views each," in capsys.readouterr().out


def test_vllm_step_says_it_needs_vllm(tmp_path, monkeypatch):
    code = run_example("offline_vllm_generate.py", ["folder", "requests.pt", "--out", str(tmp_path / "a.json")], monkeypatch)
    assert "vLLM environment" in str(code) and "vllm" in str(code)


@pytest.fixture(scope="module")
def mini_export(tmp_path_factory):
    return export_llm_folder(default_model_path(), tmp_path_factory.mktemp("served") / "gap-mllm-mini-llm").path


@pytest.fixture(scope="module")
def detection_by_generate():
    """GAP-MLLM-Mini's own detection answer on the examples' room (`generate`, the task's budget and stop rule),
    decoded freely as the examples ask the engine to."""
    model, processor, _ = load_model_and_processor("mini")
    views = synthetic_scene(seed=0, num_frames=VIEWS).views
    return run_task(model, processor, views, TaskRequest("detection"), constrained=False).raw


def check_detection(saved: dict, detection_by_generate: str) -> None:
    """A whole detection answer, parsed cleanly, and the very text of the package's `generate`."""
    assert saved["task"] == "detection" and saved["text"] == detection_by_generate
    assert saved["parsed"]["type"] == "DetectionResult" and saved["parsed"]["reason"] is None
    assert len(saved["parsed"]["boxes"]) >= 1 and saved["parsed"]["skipped"] == 0


def test_offline_batch_detection_uses_the_task_budget_and_stop_rule(mini_export, detection_by_generate, tmp_path,
                                                                    monkeypatch, capsys):
    requests = tmp_path / "requests.pt"
    assert run_example("offline_batch.py", ["encode", "--out", str(requests), "--task", "detection", "--views",
                                            str(VIEWS)], monkeypatch) == 0
    settings = json.loads(Path(str(requests) + ".json").read_text())
    assert settings == [{"task": "detection", "max_tokens": DETECTION.max_new_tokens, "views": VIEWS, "query": None}]
    # the vLLM step, its functions run with stand-ins for vllm.LLM and vllm.SamplingParams
    step = runpy.run_path(str(EXAMPLES / "offline_vllm_generate.py"))
    made = []

    def llm_class(**options):
        made.append(OfflineLLMStandIn(**options))
        return made[-1]

    answers = tmp_path / "answers.json"
    step["run"](mini_export, requests, answers, llm_class, SamplingParamsStandIn)
    (prompt_tokens, max_tokens, generated), = made[0].calls
    assert max_tokens == DETECTION.max_new_tokens == 1280  # the task's budget reached the engine
    saved = json.loads(answers.read_text())
    assert saved == [{"text": saved[0]["text"], "token_ids": generated, "finish_reason": "stop"}]
    # the parse step: the ids cut by the task's stop rule, parsed, written next to the text
    capsys.readouterr()
    assert run_example("offline_batch.py", ["parse", str(answers), "--requests", str(requests), "--out",
                                            str(tmp_path / "results.json")], monkeypatch) == 0
    result, = json.loads((tmp_path / "results.json").read_text())
    check_detection(result, detection_by_generate)
    kept = answer_from_token_ids(generated, made[0].engine.tokenizer, "detection")
    assert result["text"] == kept and len(made[0].engine.tokenizer(kept)["input_ids"]) > OLD_BUDGET


def test_openai_client_detection_uses_the_task_budget_and_stop_rule(mini_export, detection_by_generate, tmp_path,
                                                                    monkeypatch, capsys):
    out = tmp_path / "answer.json"
    with EngineStandIn(mini_export) as server:
        code = run_example("openai_client.py", ["--url", server.url, "--task", "detection", "--views", str(VIEWS),
                                                "--device", "cpu", "--out", str(out)], monkeypatch)
        completion, = server.completions
    assert code == 0
    saved = json.loads(out.read_text())
    assert saved["max_tokens"] == DETECTION.max_new_tokens and saved["query"] is None
    room = server.max_model_len - completion["prompt_tokens"]
    assert completion["max_tokens"] == min(DETECTION.max_new_tokens, room)  # asked for the task's budget
    check_detection(saved, detection_by_generate)
    encoder = GapMllmEncoder.from_pretrained(default_model_path())
    assert saved["text"] == answer_from_token_ids(completion["token_ids"], encoder.processor.tokenizer, "detection",
                                                  eos_token_ids=eos_token_ids(encoder.model))
    assert len(completion["token_ids"]) > OLD_BUDGET
    printed = capsys.readouterr().out
    assert f"answer: {saved['text']}\n" in printed and f"wrote the answer and its parsed result to {out}" in printed
