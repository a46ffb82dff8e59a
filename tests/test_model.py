"""GapMllmForConditionalGeneration: equivalence with stock Qwen3-VL, every level wired, gradients,
batching, attention implementations, initialisation and loud reports of missing weights."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Qwen3VLForConditionalGeneration
from transformers.utils import is_flash_attn_2_available

from gap_mllm import GapMllmConfig, GapMllmForConditionalGeneration
from gap_mllm.checks import MissingWeightsWarning, first_non_finite_tensor
from gap_mllm.configuration_gap_mllm import FUSION_METHODS
from gap_mllm.loading import load_model


def _logits(model, inputs, **kwargs):
    with torch.no_grad():
        return model(**inputs, **kwargs).logits


def _without_geometry(inputs):
    return {k: v for k, v in inputs.items() if not k.startswith("geometry_")}


def test_fusion_off_reproduces_stock_qwen3_vl_exactly(build_model, make_inputs):
    model = build_model(use_geometry=False)
    assert not hasattr(model, "geometry_encoder") and not hasattr(model, "geometry_fusion")
    stock = Qwen3VLForConditionalGeneration(model.config.to_qwen3_vl_config()).eval()
    stock.load_state_dict(model.state_dict(), strict=True)  # the same names: Qwen3-VL's
    inputs = make_inputs((3,))
    assert torch.equal(_logits(model, inputs), _logits(stock, _without_geometry(inputs)))


def test_missing_geometry_inputs_run_the_plain_qwen_path(build_model, make_inputs):
    model = build_model()
    inputs = make_inputs((2,))
    plain = _logits(model, _without_geometry(inputs))
    stock = Qwen3VLForConditionalGeneration(model.config.to_qwen3_vl_config()).eval()
    stock.load_state_dict(model.qwen3_vl_state_dict(), strict=True)
    assert torch.equal(plain, _logits(stock, _without_geometry(inputs)))
    assert not torch.allclose(plain, _logits(model, inputs)), "geometry must change the logits"


def test_every_fusion_level_reaches_the_logits(build_model, make_inputs):
    """Level 0 replaces the image-pad embeddings, levels 1-3 ride on DeepStack: perturbing each
    level's merger must move the logits, and only the visual tokens' fused features."""
    model = build_model()
    inputs = make_inputs((2,))
    reference = _logits(model, inputs)
    for level in range(model.config.num_fusion_levels):
        with torch.no_grad():
            weight = model.geometry_fusion.mergers[level].mlp[2].weight
            saved = weight.clone()
            weight.add_(torch.randn_like(weight))
            changed = _logits(model, inputs)
            weight.copy_(saved)
        assert (changed - reference).abs().max() > 1e-4, f"level {level} has no effect"
    torch.testing.assert_close(_logits(model, inputs), reference, atol=0, rtol=0)


@pytest.mark.parametrize("method", FUSION_METHODS)
def test_every_variant_trains_end_to_end(build_model, make_inputs, method):
    model = build_model(fusion_method=method).train()
    inputs = make_inputs((2,))
    labels = inputs["input_ids"].clone()
    output = model(**inputs, labels=labels, output_gates=True)
    assert torch.isfinite(output.loss)
    assert (output.fusion_gates is not None) == (method == "gated")
    output.loss.backward()
    for name, parameter in model.geometry_fusion.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


def test_gradients_reach_exactly_the_trainable_groups(build_model, make_inputs):
    model = build_model().train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert trainable and all(n.startswith(("model.language_model.", "model.geometry_fusion.")) for n in trainable)
    assert all(n.startswith(("model.visual.", "model.geometry_encoder.")) for n in frozen)
    assert any(n.startswith("model.visual.") for n in frozen) and any(n.startswith("model.geometry_encoder.") for n in frozen)
    inputs = make_inputs((2,))
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    for name, parameter in model.named_parameters():
        if name in trainable:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, f"{name} got no gradient"
        else:
            assert parameter.grad is None, f"frozen {name} got a gradient"


def test_fusion_gates_are_per_level_token_shares(build_model, make_inputs):
    model = build_model()
    inputs = make_inputs((3,))
    gates = model(**inputs, output_gates=True).fusion_gates
    visual_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert len(gates) == 4
    for gate in gates:
        assert gate.shape == (visual_tokens,) and ((gate > 0) & (gate < 1)).all()


def _valid_logits(logits, attention_mask):
    return logits[attention_mask.bool()]


def test_batch_with_different_view_counts_equals_single_samples(build_model, make_inputs):
    model = build_model()
    batch = make_inputs((2, 3), seed=0)
    assert batch["geometry_views_per_sample"].tolist() == [2, 3]
    batched = _logits(model, batch)
    for index, count in enumerate((2, 3)):
        single = make_inputs((count,), seed=index)
        expected = _valid_logits(_logits(model, single)[0], single["attention_mask"][0])
        got = _valid_logits(batched[index], batch["attention_mask"][index])
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_views_per_sample_is_inferred_from_input_ids(build_model, make_inputs):
    model = build_model()
    batch = make_inputs((1, 2))
    explicit = _logits(model, batch)
    inferred = _logits(model, {k: v for k, v in batch.items() if k != "geometry_views_per_sample"})
    assert torch.equal(explicit, inferred)


def test_misshaped_geometry_pixels_raise_a_clear_error(build_model, make_inputs):
    model = build_model()
    inputs = make_inputs((2,))
    inputs["geometry_pixel_values"] = torch.nn.functional.pad(inputs["geometry_pixel_values"], (0, 14))
    with pytest.raises(ValueError, match="geometry_pixel_values has shape"):
        model(**inputs)


@pytest.mark.parametrize("method", ["gated", "cross_attention"])
def test_eager_matches_sdpa_everywhere(tmp_path, build_model, make_inputs, method):
    build_model(fusion_method=method).save_pretrained(tmp_path)
    inputs = make_inputs((2,))
    results = {}
    for implementation in ("eager", "sdpa"):
        model = GapMllmForConditionalGeneration.from_pretrained(tmp_path, attn_implementation=implementation).eval()
        assert model.config.geometry_config._attn_implementation == implementation
        assert model.config.geometry_fusion_config._attn_implementation == implementation
        results[implementation] = _logits(model, inputs)
    torch.testing.assert_close(results["eager"], results["sdpa"], atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(is_flash_attn_2_available(), reason="flash-attn is installed")
def test_flash_attention_2_without_the_package_is_a_clear_error(tmp_path, build_model):
    build_model().save_pretrained(tmp_path)
    with pytest.raises(ImportError, match="(?i)flash"):
        GapMllmForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="flash_attention_2")


def test_init_weights_covers_every_parameter(build_model):
    model = build_model(fusion_method="weighted")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(float("nan"))
            parameter._is_hf_initialized = False
    model.apply(model._init_weights)
    for name, parameter in model.named_parameters():
        assert torch.isfinite(parameter).all() and parameter.abs().max() < 10, f"{name} left uninitialised"
    assert model.geometry_fusion.fusions[0].weight_2d.item() == 0.5


def test_missing_geometry_weights_are_reported_by_group(tmp_path, build_model, make_inputs):
    build_model().save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    kept = {k: v for k, v in weights.items() if not k.startswith(("model.geometry_encoder.", "model.geometry_fusion.fusions."))}
    save_file(kept, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.warns(MissingWeightsWarning, match="geometry encoder") as record:
        model = load_model(tmp_path)
    message = str(record[0].message)
    assert "fusion modules (gates)" in message and "geometry mergers" not in message
    assert model.missing_weight_groups == ["fusion modules (gates)", "geometry encoder (VGGT aggregator)"]
    for name, parameter in model.named_parameters():
        assert torch.isfinite(parameter).all() and parameter.abs().max() < 10, name
    assert torch.isfinite(_logits(model.eval(), make_inputs((2,)))).all()
    with pytest.raises(ValueError, match="lacks GAP geometry weights"), pytest.warns(MissingWeightsWarning):
        load_model(tmp_path, require_geometry_weights=True)


def test_weights_holding_nan_or_an_infinity_are_refused_naming_the_folder_and_the_first_tensor(tmp_path, build_model):
    model = build_model()
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    first, later = "model.language_model.layers.0.mlp.down_proj.weight", "model.geometry_fusion.mergers.0.mlp.0.weight"
    assert list(model.state_dict()).index(first) < list(model.state_dict()).index(later)
    weights[later][0, 0] = float("nan")
    weights[first][1, 2] = float("-inf")  # the model's order, not the file's (alphabetical), decides which is first
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError) as refused:
        load_model(tmp_path)
    assert str(refused.value) == (f"{tmp_path}: the weights hold NaN or infinite values (first: {first}); the "
                                  "checkpoint is damaged or was saved from a diverged run: load another one")
    loaded = load_model(tmp_path, allow_non_finite_weights=True)
    assert torch.isinf(loaded.state_dict()[first][1, 2]) and torch.isnan(loaded.state_dict()[later][0, 0])


def test_finite_weights_that_compute_nan_are_refused_naming_the_largest_weight_or_the_first_module(tmp_path,
                                                                                                   build_model):
    """A weight past 2**64 (its square overflows) is named at once; weights under that bound that still compute NaN
    (all scaled by 1e6) are found by one forward of a probe input, which names the first module whose output is not
    finite. Both used to load and answer "0 box(es)" from all-NaN logits."""
    model = build_model()
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    name = "model.language_model.layers.0.mlp.down_proj.weight"
    save_file({**weights, name: weights[name].index_fill(1, torch.tensor([0]), 3e38)}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ValueError) as refused:
        load_model(tmp_path)
    assert str(refused.value) == (f"{tmp_path}: the weights hold a value too large to compute with ({name} holds "
                                  "3e+38; its square overflows, a trained weight stays far below 2**64 = 1.84e+19); the "
                                  "checkpoint is damaged or was saved from a diverged run: load another one")
    save_file({key: value * 1e6 for key, value in weights.items()}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ValueError) as refused:
        load_model(tmp_path)
    assert str(refused.value) == (
        f"{tmp_path}: the weights are finite but compute NaN or infinite values on a probe input (first in the output "
        "of model.geometry_encoder.aggregator.patch_embed.blocks.0.norm2; the largest weight is "
        "model.visual.blocks.0.norm1.weight, 1e+06); the checkpoint is damaged or was saved from a diverged run: "
        "load another one")
    loaded = load_model(tmp_path, allow_non_finite_weights=True)
    assert loaded.state_dict()[name].abs().max().item() == pytest.approx(weights[name].abs().max().item() * 1e6)


def test_the_probe_forward_leaves_the_model_and_the_random_state_as_they_were(tmp_path, build_model, make_inputs):
    model = build_model().eval()
    model.save_pretrained(tmp_path)
    inputs = make_inputs((2,))
    expected = _logits(model, inputs)
    state = torch.random.get_rng_state()
    loaded = load_model(tmp_path)  # the probe ran
    assert torch.equal(torch.random.get_rng_state(), state) and loaded.model.rope_deltas is None
    assert torch.equal(_logits(loaded, inputs), expected)


def test_tensors_the_config_has_no_place_for_are_refused_by_name(tmp_path, build_model):
    """A config.json with one text layer fewer than the weights used to load with transformers' report that the
    extra layer's tensors "can be ignored", and answer without them."""
    model = build_model()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["text_config"]["num_hidden_layers"] -= 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    last = config["text_config"]["num_hidden_layers"]
    extra = sorted(key for key in model.state_dict() if key.startswith(f"model.language_model.layers.{last}."))
    with pytest.raises(ValueError) as refused:
        load_model(tmp_path)
    assert str(refused.value) == (
        f"{tmp_path}: the weights hold {len(extra)} tensor(s) that the model built from config.json has no place for "
        f"(Qwen3-VL language model: {len(extra)} (e.g. {extra[0]})); the config does not belong to these weights "
        "(fewer layers than they hold?): restore the config.json saved with them")


def test_the_non_finite_check_reads_each_tensor_in_order_and_is_not_fooled_by_a_large_sum():
    large = {"big": torch.full((10,), 3e38), "half": torch.full((10_000,), 60_000.0, dtype=torch.float16),
             "double": torch.tensor([1e300], dtype=torch.float64), "ids": torch.tensor([1, 2]),
             "unloaded": torch.empty(3, device="meta")}
    assert first_non_finite_tensor(large) is None  # their float32 sums overflow; every value is finite
    broken = {"a": torch.zeros(2), "b": torch.tensor([0.0, float("inf")]), "c": torch.tensor([float("nan")])}
    assert first_non_finite_tensor(broken) == "b"
    assert first_non_finite_tensor({**large, "d": torch.tensor([float("-inf")], dtype=torch.float16)}) == "d"


def test_complete_checkpoint_loads_silently(tmp_path, build_model, recwarn):
    build_model().save_pretrained(tmp_path)
    model = load_model(tmp_path)
    assert model.missing_weight_groups == []
    assert not [w for w in recwarn if issubclass(w.category, MissingWeightsWarning)]


def _stock_qwen3_vl_folder(build_model, folder):
    """A stock Qwen3-VL checkpoint (`Qwen3VLForConditionalGeneration.save_pretrained`) of the tiny sizes."""
    gap = build_model(use_geometry=False)
    stock = Qwen3VLForConditionalGeneration(gap.config.to_qwen3_vl_config())
    stock.load_state_dict(gap.state_dict(), strict=True)
    stock.save_pretrained(folder)
    return stock


def test_builder_from_a_stock_qwen3_vl_checkpoint(tmp_path, build_model, make_inputs):
    stock = _stock_qwen3_vl_folder(build_model, tmp_path)
    with pytest.warns(MissingWeightsWarning, match="geometry encoder"):
        model = GapMllmForConditionalGeneration.from_qwen3_vl(tmp_path, geometry_config=build_model().config.geometry_config.to_dict())
    for name, tensor in stock.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert not any(p.requires_grad for p in model.model.visual.parameters())
    assert not any(p.requires_grad for p in model.geometry_encoder.parameters())
    logits = _logits(model.eval(), make_inputs((2,)))
    assert torch.isfinite(logits).all()
    assert type(model.model).__name__ == "GapMllmModel"  # a converter builds with transformers' paths (gap_mllm.loading adds the batch-wide ones)


def test_from_pretrained_of_a_qwen3_vl_folder_reports_only_the_geometry_weights_new(tmp_path, build_model):
    """A Qwen3-VL folder loads as LLaVA starts from its language model: every Qwen3-VL weight from the folder, the
    geometry encoder, mergers and fusions newly initialised and reported, nothing else missing or unexpected."""
    stock = _stock_qwen3_vl_folder(build_model, tmp_path)
    geometry = build_model().config.geometry_config.to_dict()
    with pytest.warns(MissingWeightsWarning) as caught:
        model, info = load_model(tmp_path, geometry_config=geometry, output_loading_info=True)
    assert isinstance(model.config, GapMllmConfig) and model.config.model_type == "gap_mllm"
    assert model.config.geometry_config.hidden_size == geometry["hidden_size"]  # the settings given, not VGGT-1B's
    assert info["unexpected_keys"] == set() or not info["unexpected_keys"]
    assert info["missing_keys"] and all(key.startswith("model.geometry_") for key in info["missing_keys"])
    assert set(model.missing_weight_groups) == {"geometry encoder (VGGT aggregator)", "geometry mergers",
                                                "fusion modules (gates)"}
    assert "geometry encoder" in str(caught[0].message)
    state = model.state_dict()
    assert all(torch.equal(state[name], tensor) for name, tensor in stock.state_dict().items())


def test_a_folder_of_the_earlier_layout_loads_with_equal_logits(tmp_path, build_model, make_inputs):
    """Weights named as the earlier layout held them (`vlm.model.*`, `vlm.lm_head.weight`, `geometry_encoder.*`,
    `geometry_fusion.*`) and its config.json (`vlm_config` nested) load through transformers' key renaming."""
    model = build_model().eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    qwen_part = {name: config.pop(name) for name in ("text_config", "vision_config", "image_token_id", "video_token_id",
                                                     "vision_start_token_id", "vision_end_token_id")}
    config["vlm_config"] = {**qwen_part, "model_type": "qwen3_vl", "tie_word_embeddings": config["tie_word_embeddings"]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    saved = load_file(tmp_path / "model.safetensors")  # this layout's names (a tied lm_head is not saved)
    earlier = {("vlm." + name if not name.startswith("model.geometry_") else name[len("model."):]): tensor
               for name, tensor in saved.items()}
    assert any(name.startswith("vlm.model.") for name in earlier) and "model.geometry_encoder" not in str(list(earlier))
    save_file(earlier, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = load_model(tmp_path).eval()
    assert loaded.missing_weight_groups == []
    inputs = make_inputs((2,))
    assert torch.equal(_logits(loaded, inputs), _logits(model, inputs))
    # saved again: in this layout, whatever it was read from (a reverted renaming would write `vlm.model.geometry_*`)
    loaded.save_pretrained(tmp_path / "again")
    assert set(load_file(tmp_path / "again" / "model.safetensors")) == set(saved)
    from gap_mllm.training.checkpoints import load_model_weights
    assert set(load_model_weights(tmp_path)) == set(saved)  # the package's readers rename alike


def test_bfloat16_forward_and_activation_checkpointing(build_model, make_inputs):
    model = build_model().to(torch.bfloat16)
    inputs = make_inputs((2,))
    logits = _logits(model, inputs)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
    reference = build_model().train()
    checkpointed = build_model().train()
    checkpointed.activation_checkpointing_enable()
    losses = []
    for model in (reference, checkpointed):
        loss = model(**inputs, labels=inputs["input_ids"]).loss
        loss.backward()
        losses.append((loss.detach(), model.geometry_fusion.mergers[0].mlp[0].weight.grad.clone()))
    torch.testing.assert_close(losses[0][0], losses[1][0])
    torch.testing.assert_close(losses[0][1], losses[1][1], atol=1e-6, rtol=1e-4)


def test_precomputed_geometry_features_replace_the_encoder(build_model, make_inputs):
    """The feature-cache path: features from get_geometry_features give the same logits, encoder unused."""
    model = build_model()
    inputs = make_inputs((2, 1))
    reference = _logits(model, inputs)
    with torch.no_grad():
        features = model.get_geometry_features(
            inputs["geometry_pixel_values"], inputs["image_grid_thw"], inputs["geometry_views_per_sample"].tolist()
        )
    calls = []
    model.geometry_encoder.register_forward_hook(lambda *args: calls.append(1))
    cached = _logits(model, {k: v for k, v in inputs.items() if k != "geometry_pixel_values"}, geometry_features=features)
    assert calls == [] and torch.equal(cached, reference)


def test_from_pretrained_names_the_checked_load_for_its_options(tmp_path):
    """The package's loading options given to the class's own `from_pretrained` (which would store them in the config,
    unread) are refused by name, pointing to `gap_mllm.loading.load_model`."""
    with pytest.raises(TypeError, match=r"^from_pretrained got require_geometry_weights: options of the gap-mllm "
                                        r"package's checked load, gap_mllm\.loading\.load_model\(\.\.\.\)$"):
        GapMllmForConditionalGeneration.from_pretrained(tmp_path, require_geometry_weights=True)
