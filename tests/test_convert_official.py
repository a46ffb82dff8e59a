"""Official GAP-MLLM checkpoint → gap_mllm folder.

The real checkpoint cannot be downloaded here, so `write_official_checkpoint` (gap_mllm/tiny/official_layout.py) writes
a tiny one in the official layout (docs/method.md §1.8), from a tiny gap_mllm model with known weights.
"""

import argparse
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from gap_mllm.loading import load_model
from gap_mllm.cli import convert as convert_cli
from gap_mllm.convert_official_gap_mllm_to_hf import convert_official_checkpoint
from gap_mllm.convert_vggt_to_hf import ConversionError
from gap_mllm.tiny.official_layout import write_official_checkpoint
from gap_mllm.tiny.tiny_model import build_tiny_model

from .conftest import make_views


@pytest.fixture(scope="module")
def layer_norm_model():
    return build_tiny_model(geometry_fusion_config={"merger_norm": "layer"}, seed=1)


def logits_of(model, processor):
    inputs = processor(images=[make_views(2, 64, 96)], text=["Describe the room."], return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits, inputs


@pytest.mark.parametrize("merger_norm", ["rms", "layer"])
def test_every_tensor_lands_and_outputs_agree(tmp_path, merger_norm, tiny_processor):
    model, processor = build_tiny_model(processor=tiny_processor, geometry_fusion_config={"merger_norm": merger_norm}, seed=3)
    source = write_official_checkpoint(model, processor, tmp_path / "official")
    report = convert_official_checkpoint(source, tmp_path / "converted")
    duplicates = [k for k, why in report.skipped.items() if why.startswith("duplicate registration")]
    assert len(duplicates) == sum(1 for k in model.state_dict() if k.startswith("model.geometry_"))
    assert report.skipped["lm_head.weight"].startswith("tied to model.language_model.embed_tokens.weight")
    assert any(f"merger norm detected from the keys: '{merger_norm}'" in note for note in report.notes)

    converted = load_model(tmp_path / "converted").eval()
    assert converted.config.geometry_fusion_config.merger_norm == merger_norm
    assert converted.config.geometry_config.tapped_layers == model.config.geometry_config.tapped_layers
    assert converted.missing_weight_groups == []
    converted_state = converted.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(converted_state[key], value), key
    expected, _ = logits_of(model, processor)
    got, _ = logits_of(converted, processor)
    assert torch.equal(got, expected)


FRESH_PROCESS = textwrap.dedent(
    """
    import importlib.abc, sys

    class BlockGapMllm(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "gap_mllm" or name.startswith("gap_mllm."):
                raise ImportError("gap_mllm is blocked in this process")

    sys.meta_path.insert(0, BlockGapMllm())
    import torch
    from transformers import AutoModel, AutoProcessor

    folder, payload_path = sys.argv[1], sys.argv[2]
    payload = torch.load(payload_path, weights_only=False)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__name__ == "GapMllmForConditionalGeneration" and "transformers_modules" in type(model).__module__
    assert type(AutoProcessor.from_pretrained(folder, trust_remote_code=True)).__name__ == "GapMllmProcessor"
    with torch.no_grad():
        logits = model(**payload["inputs"]).logits
    assert torch.equal(logits, payload["logits"]), (logits - payload["logits"]).abs().max()
    print("REMOTE-CODE-OK")
    """
)


def test_converted_folder_loads_with_automodel_trust_remote_code(tmp_path, layer_norm_model):
    model, processor = layer_norm_model
    source = write_official_checkpoint(model, processor, tmp_path / "official")
    parser = argparse.ArgumentParser()
    convert_cli.add_arguments(parser)
    assert convert_cli.main(parser.parse_args(["official", str(source), str(tmp_path / "converted"), "--no-progress"])) == 0
    assert (tmp_path / "converted" / "model.safetensors.index.json").is_file()
    logits, inputs = logits_of(model, processor)
    torch.save({"inputs": dict(inputs), "logits": logits}, tmp_path / "payload.pt")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(tmp_path / "converted"), str(tmp_path / "payload.pt")],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert "REMOTE-CODE-OK" in result.stdout, result.stderr[-3000:]


@pytest.mark.parametrize("registration", ["outer", "inner"])
def test_either_registration_alone_is_accepted(tmp_path, registration, layer_norm_model):
    model, processor = layer_norm_model
    source = write_official_checkpoint(model, processor, tmp_path / "official", registration=registration)
    report = convert_official_checkpoint(source, tmp_path / "converted", write_processor=False)
    assert not any(why.startswith("duplicate") for why in report.skipped.values())
    assert report.mapped["model.geometry_fusion.mergers.2.ln_q.bias"] == (
        "geometry_deepstack_merger_list.1.ln_q.bias" if registration == "outer" else "model.geometry_deepstack_merger_list.1.ln_q.bias")
    assert report.mapped["model.geometry_encoder.aggregator.camera_token"].endswith("geometry_encoder.vggt.aggregator.camera_token")


def _expect_error(tmp_path, model, processor, edit, pattern):
    source = write_official_checkpoint(model, processor, tmp_path / "official", edit=edit)
    with pytest.raises(ConversionError, match=pattern):
        convert_official_checkpoint(source, tmp_path / "converted", write_processor=False)
    assert not (tmp_path / "converted").exists()  # nothing written on error


def test_disagreeing_duplicates_are_an_error_naming_the_key(tmp_path, layer_norm_model):
    def edit(tensors):
        tensors["model.feature_fusion.gate_projection.0.bias"] = tensors["model.feature_fusion.gate_projection.0.bias"] + 1
    _expect_error(tmp_path, *layer_norm_model, edit, r"model\.feature_fusion\.gate_projection\.0\.bias: differs from feature_fusion")


def test_missing_key_is_an_error_naming_it(tmp_path, layer_norm_model):
    def edit(tensors):
        for name in ("deepstack_feature_fusion_list.2.norm2.weight", "model.deepstack_feature_fusion_list.2.norm2.weight"):
            del tensors[name]
    _expect_error(tmp_path, *layer_norm_model, edit, r"missing .*\n  - model\.geometry_fusion\.fusions\.3\.norm2\.weight")


def test_extra_key_is_an_error_naming_it(tmp_path, layer_norm_model):
    def edit(tensors):
        tensors["geometry_deepstack_merger_list.5.mlp.0.bias"] = torch.zeros(3)
        tensors["model.rotary_helper.inv_freq"] = torch.zeros(3)
    _expect_error(tmp_path, *layer_norm_model, edit,
                  r"geometry_deepstack_merger_list\.5\.mlp\.0\.bias: no tensor of this name(.|\n)*model\.rotary_helper\.inv_freq: neither")


def test_mis_shaped_key_is_an_error_naming_it(tmp_path, layer_norm_model):
    def edit(tensors):
        for name in ("geometry_encoder.vggt.aggregator.frame_blocks.1.attn.proj.bias",
                     "model.geometry_encoder.vggt.aggregator.frame_blocks.1.attn.proj.bias"):
            tensors[name] = torch.zeros(7)
    _expect_error(tmp_path, *layer_norm_model, edit,
                  r"model\.geometry_encoder\.aggregator\.frame_blocks\.1\.attn\.proj\.bias <- geometry_encoder\.vggt\.aggregator\."
                  r"frame_blocks\.1\.attn\.proj\.bias: source shape \(7,\) vs expected \(32,\)")


def test_mixed_merger_norms_are_an_error(tmp_path, layer_norm_model):
    def edit(tensors):
        for name in ("geometry_merger.ln_q.bias", "model.geometry_merger.ln_q.bias"):
            del tensors[name]
    _expect_error(tmp_path, *layer_norm_model, edit, r"mergers disagree on their norm")
