"""bench_eval_scale.py's random-weight path with Qwen's vocabulary, on the CPU: a random model emits ids anywhere in its
151,936-id vocabulary and its tokenizer (the tiny one padded with fillers, as bench_engines.py's) decodes every one, so
the evaluation runs through instead of ending in "token id ..., outside the tokenizer's 720 ids" (issue 53: the real
size crashed so on its first batch on a GPU)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from .conftest import write_small_synth

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import bench_eval_scale  # noqa: E402


def test_the_small_padded_model_decodes_every_id_it_can_emit(tmp_path):
    folder = bench_eval_scale.model_folder("small", "cpu", tmp_path, padded_vocab=True)
    config = json.loads((folder / "config.json").read_text())
    vocabulary = config["vlm_config"]["text_config"]["vocab_size"]
    assert vocabulary == 151_936  # Qwen's, as the real size
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    ids = {token["id"] for token in tokenizer["added_tokens"]} | set(tokenizer["model"]["vocab"].values())
    assert ids == set(range(vocabulary))  # every id the random head can emit decodes
    assert config["vlm_config"]["image_token_id"] == tokenizer["model"]["vocab"].get("<|image_pad|>", next(
        t["id"] for t in tokenizer["added_tokens"] if t["content"] == "<|image_pad|>"))


@pytest.mark.slow  # ~100 s of CPU (three loads of a 151,936-token tokenizer); the test above covers the tokenizer
def test_the_padded_vocabulary_path_runs_at_a_small_width(tmp_path, capsys):
    data = write_small_synth(tmp_path / "data")
    out = tmp_path / "figures.json"
    threads = torch.get_num_threads()
    try:
        code = bench_eval_scale.main(["--data", str(data), "--model-size", "small", "--padded-vocab", "--queries", "2",
                                      "--batch-size", "2", "--max-new-tokens", "6", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    figures = json.loads(out.read_text())
    assert figures["padded_vocab"] is True and figures["model"] == "small"
    grounding = figures["tasks"]["grounding"]
    assert grounding["samples"] == 2 and grounding["batched_reuse"]["seconds"] > 0
    # the answers were decoded (the bench compares the arms' raw answers before printing any figure)
    assert "| grounding | 2 (" in capsys.readouterr().out
