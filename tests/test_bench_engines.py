"""bench/bench_engines.py (vLLM vs the package, awaits a GPU) stays runnable: its dry run builds every input and runs the
package arms on the CPU, and without a GPU or vLLM it refuses, saying which is missing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import bench_engines  # noqa: E402
from engine_bench_model import padded_tokenizer  # noqa: E402

MEASUREMENTS = ["setup", "agreement", "throughput_c1", "throughput_c2", "grounding_stage1"]


def test_dry_run_builds_every_input_and_runs_the_package_arms(tmp_path, capsys):
    out = tmp_path / "dry.json"
    assert bench_engines.main(["--dry-run", "--out", str(out), "--workdir", str(tmp_path / "work")]) == 0
    assert "done; results in" in capsys.readouterr().out
    measured = json.loads(out.read_text())["measurements"]
    assert list(measured) == [f"tiny_float32/{name}" for name in MEASUREMENTS]
    failed = {name: value for name, value in measured.items() if "error" in value}
    assert not failed, failed
    assert measured["tiny_float32/setup"]["export_files"] == 10
    assert all(len(row["package"]) <= 2 for row in measured["tiny_float32/agreement"]["rows"])
    assert measured["tiny_float32/throughput_c2"]["package_tokens_per_s"] > 0
    stage1 = measured["tiny_float32/grounding_stage1"]
    assert stage1["queries"] >= 1 and stage1["scene_reuse_equal_to_full"] == stage1["queries"]  # fp32: scene reuse is exact


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_refuses_without_a_gpu(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        bench_engines.main(["--out", str(tmp_path / "x.json")])
    assert done.value.code == 2 and capsys.readouterr().err == (
        "bench_engines.py: the engine comparison needs a CUDA device; run on a GPU machine after `make vllm-venv` "
        f"(torch {torch.__version__} sees none); --dry-run builds the inputs on the CPU\n")
    assert not (tmp_path / "x.json").exists()


def test_refuses_without_the_vllm_environment(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        bench_engines.vllm_version(tmp_path / "missing" / "python")
    assert done.value.code == 2 and "make vllm-venv" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_engines.vllm_version(Path(sys.executable))  # this environment has no vllm
    assert "cannot import vllm" in capsys.readouterr().err


def test_padded_tokenizer_decodes_every_id():
    tokenizer = padded_tokenizer(1000)
    assert len(tokenizer) == 1000 and tokenizer.decode([999]) == "<|filler_999|>"
    from gap_mllm.tiny.tiny_tokenizer import build_tiny_tokenizer

    tiny = build_tiny_tokenizer()
    assert all(tokenizer.convert_tokens_to_ids(t) == tiny.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|im_end|>"))
    # the fillers are vocabulary, as Qwen's ids are, not added tokens: every prompt path scans the added tokens
    # (tasks_gap_mllm.py), and 150,000 added fillers made that 0.5 s a call in the real-size benches
    assert tokenizer.added_tokens_decoder == tiny.added_tokens_decoder
    text = "the chair <|filler_999|> by the door"
    assert tokenizer(text)["input_ids"] == tiny(text)["input_ids"]  # no text encodes to a filler
