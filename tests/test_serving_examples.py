"""examples/serving runs as written, on the CPU, where it does not need vLLM (the vLLM steps await a GPU)."""

import json
import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "serving"


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


def test_offline_batch_encode_then_parse(tmp_path, monkeypatch, capsys):
    requests = tmp_path / "requests.pt"
    assert run_example("offline_batch.py", ["encode", "--out", str(requests), "--views", "4"], monkeypatch) == 0
    meta = json.loads(Path(str(requests) + ".json").read_text())
    assert meta and all(item["task"] == "grounding_stage1" for item in meta)
    answers = tmp_path / "answers.json"  # what offline_vllm_generate.py writes: one text per request
    answers.write_text(json.dumps(['{"frame": 2}'] + ["not json"] * (len(meta) - 1)))
    capsys.readouterr()
    assert run_example("offline_batch.py", ["parse", str(answers), "--requests", str(requests)], monkeypatch) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(meta) and "frame=2" in lines[0]


def test_vllm_step_says_it_needs_vllm(tmp_path, monkeypatch):
    code = run_example("offline_vllm_generate.py", ["folder", "requests.pt", "--out", str(tmp_path / "a.json")], monkeypatch)
    assert "vLLM environment" in str(code) and "vllm" in str(code)
