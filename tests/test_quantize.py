"""Quantized loading through transformers' own quantizers (`--quantize`, processing/model_paths.py): the language
model's Linear layers are converted, the vision tower, the geometry encoder, the mergers and gates and `lm_head` stay as
saved (the class's `_keep_in_fp32_modules`, which transformers' quantizers skip), on the tiny model and on
GAP-MLLM-Mini; `gap-mllm predict --quantize` answers on the Mini; a missing quantizer package is one line, before
the model loads; evaluate records the choice in its run's fingerprint."""

import argparse
import importlib.util
import json

import pytest
from torch import nn

from gap_mllm import loading as gap_loading
from gap_mllm.cli import loading, predict
from gap_mllm.cli.main import main as gap_mllm
from gap_mllm.cli.loading import load_model_and_processor
from gap_mllm.evaluation.run_fingerprint import _FIELD_WORDS
from gap_mllm.modeling_gap_mllm import GapMllmForConditionalGeneration
from gap_mllm.processing.model_paths import QUANTIZE_CHOICES, quantization_kwargs, quantize_missing

from .test_eval_run_fingerprint import finished_run, refused, snapshot  # noqa: F401 - the fixture

KEPT = ("model.visual", "model.geometry_encoder", "model.geometry_fusion")
needs_quanto = pytest.mark.skipif(importlib.util.find_spec("optimum") is None
                                  or importlib.util.find_spec("optimum.quanto") is None,
                                  reason="optimum-quanto is not installed (pip install 'gap-mllm[quantize]')")


def linear_layers(model) -> dict[str, str]:
    """Every Linear layer's name -> its weight's quantized type ("" for a layer left as saved)."""
    from optimum.quanto import QModuleMixin

    return {name: (str(module.weight_qtype) if isinstance(module, QModuleMixin) else "")
            for name, module in model.named_modules() if isinstance(module, nn.Linear)}


def assert_language_model_only(model, qtype: str) -> None:
    """The language model's Linear layers all quantized to `qtype`; the towers', the fusion's and `lm_head` none."""
    layers = linear_layers(model)
    language = {name: kind for name, kind in layers.items() if name.startswith("model.language_model.")}
    kept = {name: kind for name, kind in layers.items() if name.startswith(KEPT) or name == "lm_head"}
    assert language and set(language.values()) == {qtype}
    assert {name.split(".")[1] for name in kept if name != "lm_head"} == {"visual", "geometry_encoder", "geometry_fusion"}
    assert "lm_head" in kept and set(kept.values()) == {""}
    assert set(language) | set(kept) == set(layers)  # nothing else holds a Linear layer


def test_the_class_declares_the_towers_and_the_fusion_unconverted():
    assert set(GapMllmForConditionalGeneration._keep_in_fp32_modules) == set(KEPT)


@needs_quanto
def test_tiny_model_loads_with_the_language_model_quantized(tiny_checkpoint):
    """int8 (int4's weights are packed by a kernel optimum-quanto compiles on its first use: a minute, once per
    machine; the real-size test below prepares int4 without weights)."""
    model, _, _ = load_model_and_processor(str(tiny_checkpoint), quantize="int8")
    assert_language_model_only(model, "quanto.qint8")
    assert model.config.quantization_config.quant_method == "quanto"


def rss_anon_mib() -> float:
    """The process's anonymous resident memory (RssAnon of /proc/self/status), MiB."""
    from pathlib import Path

    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("RssAnon:"))
    return int(line.split()[1]) / 1024


@pytest.mark.skipif(gap_loading._malloc_trim() is None, reason="the C library has no malloc_trim (glibc only)")
def test_a_load_gives_the_heap_it_freed_back_to_the_system(tiny_checkpoint, monkeypatch):
    """What a converting load leaves: pieces freed between live ones, which glibc keeps in its heap;
    `release_freed_memory` returns them (measured, not mocked), and `load_model` calls it."""
    import torch

    kept, blocks = [], []
    for _ in range(5000):  # 5,000 pieces of 64 KiB (below glibc's mmap threshold: in the heap), each followed by a
        blocks.append(torch.ones(64 << 10, dtype=torch.uint8))  # small tensor that stays
        kept.append(torch.ones(64, dtype=torch.uint8))
    del blocks
    before = rss_anon_mib()
    assert gap_loading.release_freed_memory() is True
    assert before - rss_anon_mib() > 200  # of the 312 MiB freed
    calls = []
    monkeypatch.setattr(gap_loading, "release_freed_memory", lambda: calls.append(1) or True)
    gap_loading.load_model(str(tiny_checkpoint))
    assert calls == [1]


@needs_quanto
def test_predict_quantize_answers_on_the_mini_with_its_towers_unquantized(monkeypatch, capsys):
    loaded = []
    load_model = loading.ModelSource.load_model
    monkeypatch.setattr(loading.ModelSource, "load_model",
                        lambda self, *args, **kwargs: loaded.append(load_model(self, *args, **kwargs)) or loaded[-1])
    parser = argparse.ArgumentParser()
    predict.add_arguments(parser)
    code = predict.main(parser.parse_args(["--example", "synthetic room A", "--task", "reconstruction",
                                           "--quantize", "int8", "--json"]))
    answer = json.loads(capsys.readouterr().out)
    assert code == 0 and answer.get("reason") is None and len(answer["point"]) == 3  # parsed cleanly
    assert_language_model_only(loaded[0], "quanto.qint8")


def test_a_missing_quantizer_is_one_line_before_the_model(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.startswith("optimum") else real(name, *a))
    message = quantize_missing("int4")
    assert message == ("--quantize int4 needs optimum-quanto, which is not installed: pip install "
                       "'gap-mllm[quantize]'")
    with pytest.raises(ImportError, match="needs optimum-quanto"):
        quantization_kwargs("int8")
    code = gap_mllm(["predict", "--model", "tiny", "--example", "synthetic room A", "--task", "detection",
                     "--quantize", "int8"])
    assert code == 2 and capsys.readouterr().err.strip().endswith(message.replace("int4", "int8"))


def test_evaluate_refuses_quantize_without_a_model(tmp_path, capsys):
    predictions = tmp_path / "answers.jsonl"
    predictions.write_text("")
    code = gap_mllm(["evaluate", "--task", "detection", "--data", str(tmp_path), "--predictions", str(predictions),
                     "--out", str(tmp_path / "out"), "--quantize", "int8"])
    assert code == 2
    assert "--quantize loads a model quantized, and --predictions" in capsys.readouterr().err


def test_quantize_choices_and_their_fingerprint_words():
    assert QUANTIZE_CHOICES == ("int8", "int4", "bnb-int8", "bnb-nf4")
    assert quantization_kwargs(None) == {}
    assert "task.quantize" in _FIELD_WORDS
    with pytest.raises(ValueError, match="one of int8, int4, bnb-int8, bnb-nf4"):
        quantize_missing("int3")


@needs_quanto
def test_evaluate_does_not_resume_answers_of_another_quantization(synth_data, tiny_checkpoint, finished_run,  # noqa: F811
                                                                   monkeypatch):
    out, before = finished_run
    message = refused(synth_data, out, monkeypatch, model_dir=tiny_checkpoint, quantize="int8")
    assert ": the quantization of the weights (--quantize) (recorded " in message and 'now "int8")' in message
    assert snapshot(out) == before


@needs_quanto
def test_the_real_size_architecture_quantizes_its_language_model_only():
    """Qwen3-VL-2B + VGGT-1B built on the meta device (no weights), prepared by the quantizer as `from_pretrained`
    prepares it before the weights load: the field's skip lists by the real model's module names."""
    from transformers.quantizers import AutoHfQuantizer

    from gap_mllm.cli.real_size import build_on_meta_device

    model = build_on_meta_device()
    AutoHfQuantizer.from_config(quantization_kwargs("int4")["quantization_config"]).preprocess_model(model)
    assert_language_model_only(model, "quanto.qint4")
    assert sum(name.startswith("model.language_model.") for name in linear_layers(model)) == 28 * 7
