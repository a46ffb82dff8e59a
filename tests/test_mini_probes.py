"""The diagnostic probes of mini/probes.py: the ridge read-out is exact on linear data, and both probes run
on SynthRooms frames and marker samples with the shapes and ranges they document (tiny model, seconds)."""

from __future__ import annotations

import numpy as np
import pytest

from gap_mllm.mini.probes import fit_ridge, marker_readout_probe, r_squared, vit_position_probe
from gap_mllm.tiny.tiny_model import build_tiny_model

from .test_train_fixtures import train_data_root  # noqa: F401


def test_ridge_recovers_a_linear_map_and_r_squared_reads_it():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(400, 6)) * [1, 5, 0.1, 2, 3, 1] + 7
    weights, bias = rng.normal(size=(6, 2)), np.array([3.0, -1.0])
    targets = features @ weights + bias
    predicted = fit_ridge(features, targets, lam=1e-6)(features[:50])
    np.testing.assert_allclose(predicted, targets[:50], atol=1e-4)
    assert r_squared(targets[:, 0], np.full(len(targets), targets[:, 0].mean())) == 0.0
    assert abs(r_squared(targets[:50, 1], predicted[:, 1]) - 1.0) < 1e-8


def test_probes_run_on_synthrooms_with_documented_outputs(train_data_root):
    model, processor = build_tiny_model(seed=0)
    model.eval()
    vit = vit_position_probe(model, processor, train_data_root, fit_scenes=2, eval_scenes=1)
    assert vit["num_fit"] > 0 and vit["num_eval"] > 0
    assert all(np.isfinite(vit[f"{name}_r2"]) and vit[f"{name}_r2"] <= 1.0 for name in ("column", "row", "depth", "camera_x"))
    readout = marker_readout_probe(model, processor, train_data_root, fit_samples=12, eval_samples=4, eval_split="val")
    assert 0 < readout["num_fit"] <= 12 and 0 < readout["num_eval"] <= 4
    assert readout["readout_error_m_median"] >= 0 and readout["constant_error_m_median"] > 0
    assert len(readout["axis_correlation"]) == 3


def test_grounding_readout_targets_and_probe(train_data_root):
    """Each cell's category shares sum to 1 (every pixel is floor, wall, ceiling or an object); a cell mostly
    covered by the target carries the target's centre in the first frame's camera, which is the centre of the
    record's answer box (the fixture's frames have 4 tokens, so any coverage counts here); the probe scores its
    boxes like the model's answers."""
    from gap_mllm.mini.probes import grounding_readout_probe, reference_frame_tokens
    from gap_mllm.output_parsing import parse_grounding

    model, processor = build_tiny_model(seed=0)
    model.eval()
    samples = reference_frame_tokens(model, processor, train_data_root, "train", 8, min_cover=0.0)
    assert samples
    matched = 0
    for record, tokens, shares, owners in samples:
        assert tokens.shape[0] == shares.shape[0] == owners.shape[0]
        np.testing.assert_allclose(shares.sum(1), 1.0, atol=1e-9)
        answer = np.asarray(parse_grounding(record["conversations"][1]["value"]).box.to_list()[:3])
        distances = np.linalg.norm(owners[~np.isnan(owners[:, 0])] - answer, axis=1)
        matched += bool(distances.size and distances.min() < 0.006)  # the answer keeps two decimals
    assert matched >= 1
    with pytest.raises(ValueError, match="nothing to fit the centre probe on"):
        grounding_readout_probe(model, processor, train_data_root, fit_samples=8, eval_samples=3, eval_split="val", min_cover=1.01)
    found = grounding_readout_probe(model, processor, train_data_root, fit_samples=8, eval_samples=3, eval_split="val", min_cover=0.0)
    assert 0 < found["num_fit_object_tokens"] <= found["num_fit_tokens"] and found["num_samples"] <= 3
    assert 0.0 <= found["identification"] <= 1.0 and 0.0 <= found["acc@0.25_true_size_and_orientation"] <= 1.0
    assert found["num_without_box"] == 0 and np.isfinite(found["median_centre_error_m"])


def test_grounding_readout_reads_the_llm_input_of_the_first_frame(train_data_root):
    """`llm_input` probes the LLM's input at the first frame's tokens of the stage-2 request: one token per cell,
    the model's hidden size, and the same targets as the ViT variant."""
    from gap_mllm.mini.probes import reference_frame_tokens

    model, processor = build_tiny_model(seed=0)
    model.eval()
    vit = reference_frame_tokens(model, processor, train_data_root, "train", 2)
    fused = reference_frame_tokens(model, processor, train_data_root, "train", 2, features="llm_input")
    for (record, tokens, shares, owners), (same, fused_tokens, fused_shares, fused_owners) in zip(vit, fused):
        assert record["id"] == same["id"] and fused_tokens.shape == (tokens.shape[0], model.config.vlm_config.text_config.hidden_size)
        np.testing.assert_array_equal(shares, fused_shares)
        np.testing.assert_array_equal(owners, fused_owners)
    with pytest.raises(ValueError, match="unknown read-out features 'pixels'"):
        reference_frame_tokens(model, processor, train_data_root, "train", 1, features="pixels")


def test_answer_state_probe_reads_every_layer_before_the_answer(train_data_root):
    """One state per layer (and the input embedding) at the last prompt token, the answer boxes' centres as
    targets, and one error per layer next to the constant's."""
    from gap_mllm.mini.probes import answer_start_states, answer_state_probe
    from gap_mllm.output_parsing import parse_grounding
    from gap_mllm.processing.annotation_files import find_annotation_file
    from gap_mllm.processing.builders import load_annotation_file

    model, processor = build_tiny_model(seed=0)
    model.eval()
    states, centres = answer_start_states(model, processor, train_data_root, "train", 3)
    layers = model.config.vlm_config.text_config.num_hidden_layers
    assert states.shape == (3, layers + 1, model.config.vlm_config.text_config.hidden_size)
    records = load_annotation_file(find_annotation_file(train_data_root, "grounding_stage2", "train"))[:3]
    np.testing.assert_allclose(centres, [parse_grounding(r["conversations"][1]["value"]).box.to_list()[:3] for r in records])
    found = answer_state_probe(model, processor, train_data_root, fit_samples=6, eval_samples=2, eval_split="val")
    assert len(found["readout_error_m_median_by_layer"]) == len(found["readout_error_m_median_by_layer_ci95"]) == layers + 1
    assert found["constant_error_m_median"] > 0
    low, high = found["constant_error_m_median_ci95"]
    assert low <= found["constant_error_m_median"] <= high
