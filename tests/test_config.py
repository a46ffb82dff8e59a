"""GapMllmConfig: validation of bad values (in the package and in a remote-code copy alike), sub-config round trip,
level pairing."""

import json

import pytest
from transformers.dynamic_module_utils import get_class_from_dynamic_module

from gap_mllm import GapMllmConfig
from gap_mllm.tiny.tiny_config import build_gap_config


def test_defaults_are_the_official_recipe():
    config = GapMllmConfig()
    assert config.model_type == "gap_mllm"
    assert config.geometry_config.tapped_layers == [4, 11, 17, 23]
    assert config.level_geometry_layers == [23, 4, 11, 17]  # main tokens ← block 23, DeepStack 0/1/2 ← 4/11/17
    assert config.geometry_fusion_config.method == "gated"
    assert config.geometry_fusion_config.merger_hidden_size == 4096
    assert config.geometry_config.num_special_tokens == 5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"geometry_config": {"tapped_layers": [4, 11, 17, 24]}}, "beyond the encoder depth"),
        ({"geometry_config": {"tapped_layers": [4, 11, -1, 23]}}, "beyond the encoder depth"),
        ({"geometry_config": {"tapped_layers": [4, 4, 17, 23]}}, "duplicates"),
        ({"geometry_config": {"tapped_layers": [11, 17, 23]}}, "must name 4 layers"),
        ({"geometry_config": {"reference_frame": "middle"}}, "reference_frame"),
        ({"geometry_config": {"hidden_size": 1000}}, "divisible"),
        ({"geometry_fusion_config": {"method": "film"}}, "does not exist"),
        ({"geometry_fusion_config": {"merger_norm": "batch"}}, "does not exist"),
        ({"vlm_config": {"model_type": "llama"}}, "Qwen3-VL"),
    ],
)
def test_bad_values_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GapMllmConfig(**kwargs)


@pytest.mark.parametrize("section, field, value", [
    ("geometry_config", "hidden_size", 0),
    ("geometry_fusion_config", "cross_attention_num_heads", 0),
    ("text_config", "num_hidden_layers", -1),
])
def test_a_remote_code_copy_refuses_a_bad_size_as_the_package_does(tmp_path, tiny_processor, section, field, value):
    build_gap_config(tiny_processor.tokenizer).save_pretrained(tmp_path)  # config.json and configuration_gap_mllm.py
    settings = json.loads((tmp_path / "config.json").read_text())
    # the class AutoConfig.from_pretrained(..., trust_remote_code=True) takes where gap_mllm is not registered
    remote_class = get_class_from_dynamic_module(settings["auto_map"]["AutoConfig"], tmp_path)
    assert remote_class.__module__.startswith("transformers_modules."), remote_class.__module__
    settings.setdefault(section, {})[field] = value
    (tmp_path / "config.json").write_text(json.dumps(settings))
    expected = f"{section}.{field} must be an integer >= 1, got {value}."
    with pytest.raises(ValueError) as refused_by_the_copy:
        remote_class.from_pretrained(tmp_path)
    with pytest.raises(ValueError) as refused_by_the_package:
        GapMllmConfig.from_pretrained(tmp_path)
    assert str(refused_by_the_copy.value) == str(refused_by_the_package.value) == expected


def test_fusion_off_does_not_check_levels():
    config = GapMllmConfig(use_geometry=False, geometry_config={"tapped_layers": [23]})
    assert config.use_geometry is False


def test_save_load_round_trip(tmp_path, tiny_processor):
    config = build_gap_config(tiny_processor.tokenizer, fusion_method="cross_attention",
                              geometry_fusion_config={"merger_norm": "layer"})
    config.save_pretrained(tmp_path)
    loaded = GapMllmConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert type(loaded.geometry_config).__name__ == "GapMllmGeometryConfig"
    assert loaded.geometry_fusion_config.merger_norm == "layer"
    assert loaded.get_text_config().hidden_size == config.text_config.hidden_size
