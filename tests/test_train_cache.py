"""Geometry-feature cache: computed once, reused, invalidated by new encoder weights or a new input,
and training from it matches training with the encoder while never running the encoder."""

from __future__ import annotations

import torch

from gap_mllm.processing.collator import GapMllmDataCollator
from gap_mllm.training.feature_cache import CachedGeometryCollator, GeometryFeatureCache, encoder_fingerprint
from gap_mllm.training.geometry_aligned_model import GeometryAlignedModel

from .test_train_fixtures import recon_dataset, tiny, train_data_root  # noqa: F401

FP16_TOLERANCE = 2e-3  # relative error of float16 storage, through mergers and the LLM to the loss


def test_cache_is_built_once_and_reused(tmp_path, recon_dataset):
    model, processor = tiny()
    subset = recon_dataset.select(range(6))
    collator = GapMllmDataCollator(processor)
    cache = GeometryFeatureCache(tmp_path, model)
    first = cache.build(model, subset, collator, batch_size=4)
    again = GeometryFeatureCache(tmp_path, model).build(model, subset, collator, batch_size=3)
    assert (first.computed, first.reused) == (6, 0)
    assert (again.computed, again.reused) == (0, 6)
    # stored features are the encoder's, in float16, one [S, h, w, 2C] per level
    batch = collator([subset[0]])
    with torch.no_grad():
        direct = model.get_geometry_features(batch["geometry_pixel_values"], batch["image_grid_thw"], [4])
    stored = cache.load(cache.batch_keys(batch)[0])
    assert len(stored) == len(direct) == 4
    for level, features in zip(stored, direct):
        assert level.dtype == torch.float16 and level.shape == features[0].shape
        torch.testing.assert_close(level.float(), features[0], atol=1e-2, rtol=1e-3)


def test_cache_is_invalidated_by_encoder_weights_and_by_inputs(tmp_path, recon_dataset):
    model, processor = tiny()
    fingerprint = encoder_fingerprint(model)
    other, _ = tiny(seed=1)
    assert encoder_fingerprint(other) != fingerprint
    with torch.no_grad():
        model.geometry_encoder.aggregator.parameters().__next__().add_(1e-3)
    assert encoder_fingerprint(model) != fingerprint  # new weights, new folder
    model.geometry_fusion.mergers[0].mlp[0].weight.data.add_(1.0)
    assert encoder_fingerprint(model) == encoder_fingerprint(model)  # trained modules do not matter
    cache = GeometryFeatureCache(tmp_path, model)
    example = dict(recon_dataset[0])
    marked = cache.batch_keys(GapMllmDataCollator(processor)([example]))
    unmarked = cache.batch_keys(GapMllmDataCollator(processor, marker=False)([example]))
    moved = dict(example, pixel_coords=[example["pixel_coords"][0], example["pixel_coords"][1] + 5, example["pixel_coords"][2]])
    assert len({marked[0], unmarked[0], cache.batch_keys(GapMllmDataCollator(processor)([moved]))[0]}) == 3
    # the key ignores batch padding: the same sample alone or in a batch gives the same key
    pair = cache.batch_keys(GapMllmDataCollator(processor)([example, recon_dataset[1]]))
    assert pair[0] == marked[0]


def test_training_from_the_cache_never_runs_the_encoder(tmp_path, recon_dataset):
    model, processor = tiny()
    examples = [recon_dataset[i] for i in range(3)]
    collator = GapMllmDataCollator(processor)
    cache = GeometryFeatureCache(tmp_path, model)
    cache.build(model, recon_dataset.select(range(3)), collator)
    cached_batch = CachedGeometryCollator(collator, cache)(examples)
    assert "geometry_pixel_values" not in cached_batch
    wrapped = GeometryAlignedModel(model)
    reference = wrapped(**collator(examples)).loss

    def fail(*args, **kwargs):
        raise AssertionError("the geometry encoder ran although its features are cached")

    model.geometry_encoder.forward = fail
    cached = wrapped(**cached_batch)
    torch.testing.assert_close(cached.loss, reference, rtol=FP16_TOLERANCE, atol=0)
    cached.loss.backward()
    assert model.geometry_fusion.mergers[0].mlp[0].weight.grad.abs().sum() > 0


def test_fingerprint_is_stable_across_save_and_reload(tmp_path):
    from gap_mllm import GapMllmForConditionalGeneration

    model, processor = tiny()
    model.save_pretrained(tmp_path / "saved")
    reloaded = GapMllmForConditionalGeneration.from_pretrained(tmp_path / "saved")
    assert encoder_fingerprint(reloaded) == encoder_fingerprint(model)
    assert GeometryFeatureCache(tmp_path / "cache", reloaded).folder == GeometryFeatureCache(tmp_path / "cache", model).folder


def test_cache_refuses_a_trainable_encoder(tmp_path):
    import pytest

    model, _ = tiny()
    model.geometry_encoder.requires_grad_(True)
    with pytest.raises(ValueError, match="geometry encoder is trainable"):
        GeometryFeatureCache(tmp_path, model)


def test_unfrozen_encoder_with_the_cache_on_trains_without_the_cache(tmp_path, train_data_root, caplog):
    import logging

    from gap_mllm.training.run import build_trainer

    from .test_train_fixtures import recipe, trainable_state

    settings = recipe(tmp_path, train_data_root, cache={"enabled": True},
                      freezing={"freeze_geometry_encoder": False}, data={"data_root": str(train_data_root),
                                                                         "cache_dir": str(tmp_path / "hf")})
    with caplog.at_level(logging.WARNING, logger="gap_mllm.training.run"):
        setup = build_trainer(settings)
    assert setup.cache is None
    assert "geometry-feature cache DISABLED" in caplog.text and "geometry encoder is trainable" in caplog.text
    encoder = setup.model.gap_model.geometry_encoder
    before = trainable_state(encoder)
    setup.trainer.train()
    after = trainable_state(encoder)
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert len(changed) == len(before) > 0  # every encoder tensor trained (the DINO mask token is frozen)
