"""The geometry-encoder interface (configuration_gap_mllm.py): an encoder registered from this file alone (14-px
patches, one linear map per level) trains, answers through `gap-mllm predict` and round-trips through
`save_pretrained` / `AutoModel.from_pretrained`; an unknown encoder type is refused, and a config.json without the
type is VGGT's."""

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from transformers import AutoModel, PreTrainedConfig
from transformers import initialization as init

from gap_mllm import GapMllmConfig, GapMllmForConditionalGeneration, GapMllmGeometryConfig
from gap_mllm.checks import parameter_parts
from gap_mllm.configuration_gap_mllm import (
    GEOMETRY_ENCODER_CONFIGS,
    GEOMETRY_ENCODERS,
    GeometryEncoderOutput,
    register_geometry_encoder,
)
from gap_mllm.tiny.tiny_config import build_gap_config, build_vlm_config

from .conftest import make_views

ENCODER_TYPE = "test_patch_linear"


class PatchLinearConfig(PreTrainedConfig):
    """A geometry encoder's config (docs/layout.md): `num_hidden_layers` linear maps of `patch_size`-px RGB patches to `hidden_size`."""

    model_type = "gap_mllm_test_patch_linear"

    patch_size: int = 14
    hidden_size: int = 24
    num_hidden_layers: int = 4
    tapped_layers: list[int] | None = None
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        self.tapped_layers = [0, 1, 2, 3] if self.tapped_layers is None else [int(i) for i in self.tapped_layers]
        super().__post_init__(**kwargs)

    @property
    def feature_size(self) -> int:
        return self.hidden_size

    def parameter_parts(self) -> list[tuple[str, int]]:
        weights = self.num_hidden_layers * (3 * self.patch_size**2 + 1) * self.hidden_size
        return [("geometry_config.num_hidden_layers, patch_size, hidden_size", weights)]


class PatchLinearEncoder(nn.Module):
    """A `GeometryEncoder`: level `l` is `layers[tapped_layers[l]]` applied to the flattened patches."""

    def __init__(self, config: PatchLinearConfig):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(
            nn.Linear(3 * config.patch_size**2, config.hidden_size) for _ in range(config.num_hidden_layers)
        )

    def forward(self, images: torch.Tensor) -> GeometryEncoderOutput:
        batch, frames, channels, height, width = images.shape
        p = self.config.patch_size
        h, w = height // p, width // p
        patches = images.reshape(batch, frames, channels, h, p, w, p).permute(0, 1, 3, 5, 2, 4, 6)
        patches = patches.reshape(batch, frames, h * w, channels * p * p)  # row-major patches
        features = tuple(self.layers[layer](patches) for layer in self.config.tapped_layers)
        return GeometryEncoderOutput(layer_features=features, patch_grid=(h, w))

    def init_module_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, std=self.config.initializer_range)
            init.zeros_(module.bias)

    def set_trainable(self, trainable: bool) -> None:
        self.requires_grad_(trainable)


@pytest.fixture(scope="module", autouse=True)
def registered():
    register_geometry_encoder(ENCODER_TYPE, PatchLinearConfig, PatchLinearEncoder)
    yield
    GEOMETRY_ENCODER_CONFIGS.pop(ENCODER_TYPE)
    GEOMETRY_ENCODERS.pop(ENCODER_TYPE)


def build(processor, seed: int = 0) -> GapMllmForConditionalGeneration:
    """A tiny Qwen3-VL (tests' tiny sizes) with the patch-linear encoder (width 20: not its default)."""
    config = GapMllmConfig(
        vlm_config=build_vlm_config(processor.tokenizer),
        geometry_encoder_type=ENCODER_TYPE,
        geometry_config={"hidden_size": 20},
        geometry_fusion_config={"merger_hidden_size": 64},
    )
    torch.manual_seed(seed)
    model = GapMllmForConditionalGeneration(config)
    model.generation_config.eos_token_id = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return model.eval()


def test_the_model_builds_the_registered_encoder_and_prices_it(tiny_processor):
    model = build(tiny_processor)
    assert type(model.geometry_encoder) is PatchLinearEncoder
    assert type(model.config.geometry_config) is PatchLinearConfig and model.config.geometry_config.hidden_size == 20
    assert [merger.input_size for merger in model.geometry_fusion.mergers] == [20] * 4
    # the estimate prices the encoder through its parameter_parts, and the mergers at its feature_size
    encoder_count = sum(p.numel() for p in model.geometry_encoder.parameters())
    parts = dict(parameter_parts(model.config))
    assert parts["geometry_config.num_hidden_layers, patch_size, hidden_size"] == encoder_count == 4 * (3 * 14**2 + 1) * 20
    width = model.config.vision_config.out_hidden_size
    assert parts["geometry_fusion_config.merger_hidden_size=64 (4 levels)"] == 4 * (20 * 2**2 * 64 + 64 * width)


def test_one_training_step_follows_the_freezing_policy(tiny_processor):
    model = build(tiny_processor).train()
    inputs = tiny_processor(images=[make_views(2, seed=1)], text=["Describe the room."], return_tensors="pt")
    encoder = model.geometry_encoder
    assert not any(p.requires_grad for p in encoder.parameters())  # frozen by default, as VGGT is
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    output = model(**inputs, labels=inputs["input_ids"], output_gates=True)
    assert torch.isfinite(output.loss) and len(output.fusion_gates) == 4
    output.loss.backward()
    assert all(p.grad is None for p in encoder.parameters())
    for name, parameter in model.geometry_fusion.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0, name
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    after = dict(model.named_parameters())
    assert not torch.equal(after["model.geometry_fusion.mergers.0.mlp.0.weight"], before["model.geometry_fusion.mergers.0.mlp.0.weight"])
    assert all(torch.equal(after[name], before[name]) for name in before if name.startswith("model.geometry_encoder."))

    model.zero_grad(set_to_none=True)
    model.apply_freezing_policy(freeze_geometry_encoder=False)
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    for name, parameter in encoder.named_parameters():  # every layer is tapped: each gets a gradient
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_predict_answers_with_the_registered_encoder(tiny_processor, tmp_path, monkeypatch, capsys):
    from gap_mllm.cli import predict

    folder = tmp_path / "model"
    build(tiny_processor).save_pretrained(folder)
    tiny_processor.save_pretrained(folder)
    frames = []
    for index in range(2):
        frames.append(tmp_path / f"f{index}.png")
        Image.fromarray(np.random.default_rng(index).integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(frames[-1])
    calls = []
    forward = PatchLinearEncoder.forward
    monkeypatch.setattr(PatchLinearEncoder, "forward", lambda self, images: calls.append(images.shape) or forward(self, images))
    parser = argparse.ArgumentParser()
    predict.add_arguments(parser)
    code = predict.main(parser.parse_args(["--model", str(folder), "--images", *map(str, frames), "--task",
                                           "detection", "--max-new-tokens", "8"]))
    printed = capsys.readouterr().out
    assert code in (0, predict.PARSE_FAILURE_STATUS)  # the untrained model's answer need not parse
    assert "task       : detection on 2 frame(s)" in printed and "mean gate  : level 0:" in printed
    # the load's probe forward (one view: gap_mllm.checks.refuse_weights_that_compute_nan), then one encoder pass over
    # the sample's two frames
    assert [shape[:3] for shape in calls] == [(1, 1, 3), (1, 2, 3)]

    # the model's own generate through the processor, as the task path runs it
    model = build(tiny_processor)
    inputs = tiny_processor(images=make_views(2, seed=3), task="detection", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, **tiny_processor.generation_kwargs("detection", inputs))
    result = tiny_processor.post_process(out, task="detection", input_ids=inputs["input_ids"])[0]
    assert out.shape[1] > inputs["input_ids"].shape[1] and type(result).__name__ == "DetectionResult"


def test_save_and_auto_model_round_trip_is_exact(tiny_processor, tmp_path):
    model = build(tiny_processor, seed=5)
    with torch.no_grad():
        for parameter in model.geometry_fusion.parameters():  # gates away from their init: fusion matters
            parameter.add_(0.05 * torch.randn_like(parameter))
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["geometry_encoder_type"] == ENCODER_TYPE
    assert config["geometry_config"]["model_type"] == PatchLinearConfig.model_type
    assert config["geometry_config"]["hidden_size"] == 20

    loaded, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    loaded.eval()
    assert type(loaded) is GapMllmForConditionalGeneration and type(loaded.geometry_encoder) is PatchLinearEncoder
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert loaded.config.geometry_encoder_type == ENCODER_TYPE and loaded.config.geometry_config.hidden_size == 20
    inputs = tiny_processor(images=[make_views(2, seed=1), make_views(3, 48, 80, seed=2)],
                            text=["Describe the room.", "Where is the chair?"], return_tensors="pt")
    with torch.no_grad():
        expected, found = model(**inputs).logits, loaded(**inputs).logits
        assert torch.equal(found, expected)
        loaded.geometry_encoder.layers[3].weight.zero_()  # the main level's layer: the loaded encoder is in the logits
        assert not torch.equal(loaded(**inputs).logits, expected)


def test_an_unknown_encoder_type_is_refused_naming_the_registered_ones(tiny_processor):
    vlm_config = build_vlm_config(tiny_processor.tokenizer)
    with pytest.raises(ValueError, match=r"geometry_encoder_type='pi3' is not registered: choose one of "
                                         r"\['test_patch_linear', 'vggt'\]"):
        GapMllmConfig(vlm_config=vlm_config, geometry_encoder_type="pi3")
    with pytest.raises(ValueError, match="geometry_config has model_type 'gap_mllm_geometry', but "
                                         "geometry_encoder_type='test_patch_linear' takes a PatchLinearConfig"):
        GapMllmConfig(vlm_config=vlm_config, geometry_encoder_type=ENCODER_TYPE,
                      geometry_config={"model_type": "gap_mllm_geometry"})
    GEOMETRY_ENCODERS.pop(ENCODER_TYPE)  # a config class without an encoder class: the model says so
    try:
        config = GapMllmConfig(vlm_config=vlm_config, geometry_encoder_type=ENCODER_TYPE)
        with pytest.raises(ValueError, match="geometry_encoder_type='test_patch_linear' has no encoder class"):
            GapMllmForConditionalGeneration(config)
    finally:
        GEOMETRY_ENCODERS[ENCODER_TYPE] = PatchLinearEncoder
    with pytest.raises(TypeError, match="must be a PreTrainedConfig subclass"):
        register_geometry_encoder("other", dict, PatchLinearEncoder)
    assert "other" not in GEOMETRY_ENCODER_CONFIGS


def test_a_config_without_the_encoder_type_is_vggt_as_before(tiny_processor):
    config = build_gap_config(tiny_processor.tokenizer)
    saved = config.to_diff_dict()
    assert saved["geometry_encoder_type"] == "vggt"  # written even at its default
    saved.pop("geometry_encoder_type")
    reloaded = GapMllmConfig.from_dict(saved)
    assert reloaded.geometry_encoder_type == "vggt" and type(reloaded.geometry_config) is GapMllmGeometryConfig
    assert reloaded.geometry_config.to_dict() == config.geometry_config.to_dict()
