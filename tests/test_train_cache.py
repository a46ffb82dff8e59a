"""Feature cache: built once and reused, the frozen towers run once per distinct input they see, invalidated by new
frozen weights, processing or content, a folder of an earlier layout refused by name, and training from it gives the
loss and gradients of training with the towers (float32 storage) while never running what it caches."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from gap_mllm import GapMllmForConditionalGeneration
from gap_mllm.training.config import recipe_from_dict
from gap_mllm.training.data import load_split, sample_collator, sample_collator_settings
from gap_mllm.training.feature_cache import (
    CachedCollator,
    CacheLayoutError,
    CacheUnusableError,
    FeatureCache,
    sample_key,
    undecoded_images,
    view_input_count,
)
from gap_mllm.training.frozen_towers import frozen_vision_features, geometry_fingerprint, vision_fingerprint
from gap_mllm.training.geometry_aligned_model import GeometryAlignedModel

from .test_train_fixtures import tiny, train_data_root  # noqa: F401

FP16_TOLERANCE = 2e-3  # relative error of float16 storage, through mergers and the LLM to the loss
MIXED_TASKS = ["reconstruction", "detection", "captioning", "grounding_stage1", "grounding_stage2"]


@pytest.fixture(scope="module")
def mixed(train_data_root, tmp_path_factory):
    """(recipe, undecoded dataset) of every task with training data: samples of different lengths and view counts."""
    settings = recipe_from_dict({"data": {"data_root": str(train_data_root), "tasks": MIXED_TASKS,
                                          "cache_dir": str(tmp_path_factory.mktemp("hf"))}})
    return settings, undecoded_images(load_split(settings.data, "train", settings.aux))


def spread(dataset, count: int = 6) -> list[int]:
    """Indices spread over the concatenated tasks (so a batch mixes them)."""
    return [round(i * (len(dataset) - 1) / (count - 1)) for i in range(count)]


def build(tmp_path, model, processor, settings, dataset, dtype="float32"):
    cache = FeatureCache(tmp_path / "cache", model, processor, sample_collator_settings(settings.data, settings.aux), dtype)
    stats = cache.build(model, dataset, sample_collator(processor, settings.data, settings.aux), batch_size=5,
                        skip_errors=settings.data.on_bad_sample == "skip")
    return cache, stats


def cached_batch(cache, processor, settings, examples, packing=False):
    tokenizer = processor.tokenizer
    collator = CachedCollator(sample_collator(processor, settings.data, settings.aux), cache, tokenizer.pad_token_id,
                              tokenizer.padding_side, packing=packing)
    batch = collator(examples)
    assert int(batch.pop("num_skipped_samples")) == 0
    return batch


def live_batch(processor, settings, examples):
    from gap_mllm.training.feature_cache import decoded_example

    batch = sample_collator(processor, settings.data, settings.aux)([decoded_example(e) for e in examples])
    batch.pop("num_skipped_samples")
    return batch


def loss_and_grads(model, batch):
    wrapped = GeometryAlignedModel(model)
    model.zero_grad()
    out = wrapped(**batch)
    out.lm_loss_sum.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out.lm_loss_sum.detach(), grads


def assert_same_training_signal(reference, other, rtol):
    (loss, grads), (other_loss, other_grads) = reference, other
    torch.testing.assert_close(other_loss, loss, rtol=rtol, atol=0)
    assert set(other_grads) == set(grads) and grads
    for name, grad in grads.items():
        scale = grad.abs().max().clamp(min=1e-12)
        assert (other_grads[name] - grad).abs().max() / scale <= rtol, name


@pytest.fixture
def towers_must_not_run(monkeypatch):
    """Call with a model: its ViT and VGGT raise if they run."""

    def arm(model, vision=True, geometry=True):
        def fail(*args, **kwargs):
            raise AssertionError("a cached tower ran")

        if vision:
            monkeypatch.setattr(model.model.visual.blocks[0], "forward", fail)
        if geometry:
            monkeypatch.setattr(model.geometry_encoder, "forward", fail)

    return arm


def test_entries_are_built_once_hold_the_towers_outputs_and_are_reused(tmp_path, mixed):
    settings, dataset = mixed
    model, processor = tiny()
    subset = dataset.select(range(8))
    cache, first = build(tmp_path, model, processor, settings, subset)
    _, again = build(tmp_path, model, processor, settings, subset)
    assert (first.computed, first.reused) == (8, 0) and (again.computed, again.reused) == (0, 8)
    batch = live_batch(processor, settings, [subset[0]])
    entry = cache.load(sample_key(subset[0]))
    with torch.no_grad():
        geometry = model.get_geometry_features(batch["geometry_pixel_values"], batch["image_grid_thw"], [4])
    vision = frozen_vision_features(model, batch["pixel_values"], batch["image_grid_thw"], "merged")
    assert [level.dtype for level in entry["geometry_features"]] == [torch.float32] * 4
    for stored, direct in zip(entry["geometry_features"], geometry):
        assert torch.equal(stored, direct[0])
    assert len(entry["vision_features"].levels) == 4  # main + three DeepStack levels
    for stored, direct in zip(entry["vision_features"].levels, vision.levels):
        assert torch.equal(stored, direct)
    assert torch.equal(entry["input_ids"], batch["input_ids"][0]) and torch.equal(entry["labels"], batch["labels"][0])


@pytest.fixture
def tower_forwards(monkeypatch):
    """Call with a model: returns a dict counting what its towers are run on, `geometry` (tower inputs: samples of
    a VGGT batch) and `vit` (views), as they run."""

    def arm(model):
        counts = {"geometry": 0, "vit": 0}
        geometry, visual = model.geometry_encoder, model.model.visual
        geometry_forward, visual_forward = geometry.forward, visual.forward

        def count_geometry(images, *args, **kwargs):
            counts["geometry"] += images.shape[0]
            return geometry_forward(images, *args, **kwargs)

        def count_views(hidden_states, grid_thw, **kwargs):
            counts["vit"] += grid_thw.shape[0]
            return visual_forward(hidden_states, grid_thw, **kwargs)

        monkeypatch.setattr(geometry, "forward", count_geometry)
        monkeypatch.setattr(visual, "forward", count_views)
        return counts

    return arm


def tower_input(example: dict) -> tuple:
    """What the towers receive of `example`, from its data: its views' bytes and where the marker is painted (the
    recipe paints it: data.marker)."""
    coords = example.get("pixel_coords")
    return tuple(view["bytes"] for view in example["images"]), None if coords is None else tuple(coords)


def test_the_towers_run_once_per_distinct_input_and_a_sample_on_encoded_views_runs_none(tmp_path, mixed, tower_forwards):
    settings, dataset = mixed
    model, processor = tiny()
    inputs = {tower_input(example): len(example["images"]) for example in dataset}
    view_lists = {views for views, _ in inputs}
    # the data share views (a scene's questions) and paint markers on shared views: both cases are exercised
    assert len(view_lists) < len(inputs) < len(dataset)
    assert view_input_count(dataset) == len(inputs)
    forwards = tower_forwards(model)
    cache, stats = build(tmp_path, model, processor, settings, dataset)
    assert (stats.computed, stats.reused, stats.encoded) == (len(dataset), 0, len(inputs))
    assert forwards == {"geometry": len(inputs), "vit": sum(inputs.values())}
    assert len(list(cache.folder.glob("towers/*.safetensors"))) == len(inputs)
    assert len(list(cache.folder.glob("samples/*.safetensors"))) == len(dataset)
    # samples that share an input are served the very same features
    shared = next(views for views in view_lists if sum(1 for e in dataset if tower_input(e) == (views, None)) > 1)
    first, second = [e for e in dataset if tower_input(e) == (shared, None)][:2]
    one, other = cache.load(sample_key(first)), cache.load(sample_key(second))
    assert not torch.equal(one["input_ids"], other["input_ids"])
    for a, b in zip(one["geometry_features"] + one["vision_features"].levels,
                    other["geometry_features"] + other["vision_features"].levels):
        assert torch.equal(a, b)
    # a new sample on encoded views costs no tower forward; the same views with the marker moved are a new input
    marker_sample = next(e for e in dataset if e.get("pixel_coords") is not None)
    view, x, y = marker_sample["pixel_coords"]
    import datasets

    rows = [{**marker_sample, "id": "new-answer", "answer": marker_sample["answer"] + " "},
            {**marker_sample, "id": "moved-marker", "pixel_coords": [view, x, y + 1]}]
    added = datasets.Dataset.from_list(rows, features=dataset.features)
    _, stats = build(tmp_path, model, processor, settings, added.select([0]))
    assert (stats.computed, stats.encoded) == (1, 0) and forwards == {"geometry": len(inputs), "vit": sum(inputs.values())}
    _, stats = build(tmp_path, model, processor, settings, added.select([1]))
    assert (stats.computed, stats.encoded) == (1, 1)
    assert forwards == {"geometry": len(inputs) + 1, "vit": sum(inputs.values()) + len(marker_sample["images"])}
    _, again = build(tmp_path, model, processor, settings, dataset)
    assert (again.computed, again.reused, again.encoded) == (0, len(dataset), 0)
    assert forwards["geometry"] == len(inputs) + 1


def test_a_folder_of_another_layout_is_refused_by_name_and_earlier_folders_are_named(tmp_path, caplog):
    import json
    import logging

    model, processor = tiny()
    folder = FeatureCache(tmp_path / "cache", model, processor).folder
    (folder / "layout.json").write_text(json.dumps({"layout": 1}))
    with pytest.raises(CacheLayoutError, match=f"the feature cache folder {folder} records layout 1 in layout.json, "
                                               "not this version's layout 2: it cannot be read. Delete that folder"):
        FeatureCache(tmp_path / "cache", model, processor)
    (folder / "layout.json").unlink()
    (folder / "0123abcd.safetensors").write_bytes(b"an entry of one file per sample")
    with pytest.raises(CacheLayoutError, match=f"{folder} holds cache entries of layout 1"):
        FeatureCache(tmp_path / "cache", model, processor)
    with caplog.at_level(logging.WARNING):
        fresh = FeatureCache(tmp_path / "cache", model, processor, dtype="float32")  # another folder beside it
    assert fresh.folder != folder and (fresh.folder / "layout.json").is_file()
    assert f"1 folder(s) of an earlier cache layout there are never read by this version ({folder.name})" in caplog.text


def test_the_folder_follows_frozen_weights_processing_and_settings_the_key_follows_content(tmp_path, mixed):
    settings, dataset = mixed
    model, processor = tiny()
    collate = sample_collator_settings(settings.data, settings.aux)

    def folder(**kwargs):
        return FeatureCache(tmp_path, kwargs.get("model", model), kwargs.get("processor", processor),
                            kwargs.get("collate", collate), kwargs.get("dtype", "float16")).folder

    reference = folder()
    model.geometry_fusion.mergers[0].mlp[0].weight.data.add_(1.0)  # trained modules do not matter
    model.model.language_model.layers[0].mlp.up_proj.weight.data.add_(1.0)
    assert folder() == reference
    with torch.no_grad():
        next(model.geometry_encoder.aggregator.parameters()).add_(1e-3)
    moved_geometry = folder()
    with torch.no_grad():
        model.model.visual.merger.linear_fc1.weight.add_(1e-3)  # frozen in this run: part of what is cached
    moved_vision = folder()
    assert len({reference, moved_geometry, moved_vision}) == 3
    assert folder(collate={**collate, "marker": False}) != moved_vision
    assert folder(dtype="float32") != moved_vision
    other_processor = tiny()[1]
    other_processor.image_processor.size = {"shortest_edge": 1024, "longest_edge": 4096}
    assert folder(processor=other_processor) != moved_vision

    marker_sample = next(e for e in dataset if e["pixel_coords"] is not None)
    keys = {sample_key(marker_sample)}
    coords = list(marker_sample["pixel_coords"])
    keys.add(sample_key({**marker_sample, "pixel_coords": [coords[0], coords[1] + 5, coords[2]]}))
    keys.add(sample_key({**marker_sample, "answer": marker_sample["answer"] + " "}))
    views = list(marker_sample["images"])
    views[1] = {"bytes": views[1]["bytes"] + b"\0", "path": None}
    keys.add(sample_key({**marker_sample, "images": views}))
    assert len(keys) == 4
    assert sample_key(dict(marker_sample)) == sample_key(marker_sample)  # batch-independent
    with pytest.raises(TypeError, match="undecoded_images"):
        from gap_mllm.training.feature_cache import decoded_example

        sample_key(decoded_example(marker_sample))


@pytest.mark.parametrize("packing", [False, True])
def test_training_from_the_cache_equals_training_with_the_towers_and_never_runs_them(tmp_path, mixed, packing, towers_must_not_run):
    settings, dataset = mixed
    model, processor = tiny()
    examples = [dataset[i] for i in spread(dataset)]
    reference = loss_and_grads(model, live_batch(processor, settings, examples))
    cache, _ = build(tmp_path, model, processor, settings, dataset.select(spread(dataset)))
    assert cache.complete
    batch = cached_batch(cache, processor, settings, examples, packing=packing)
    assert "pixel_values" not in batch and "geometry_pixel_values" not in batch
    towers_must_not_run(model)
    assert_same_training_signal(reference, loss_and_grads(model, batch), rtol=1e-5)


def test_trainable_vit_mergers_are_run_from_the_cached_block_outputs(tmp_path, mixed, towers_must_not_run):
    settings, dataset = mixed
    model, processor = tiny()
    visual = model.model.visual
    visual.merger.requires_grad_(True)
    visual.deepstack_merger_list.requires_grad_(True)
    examples = [dataset[i] for i in spread(dataset)]
    reference = loss_and_grads(model, live_batch(processor, settings, examples))
    assert "model.visual.merger.linear_fc1.weight" in reference[1]
    cache, _ = build(tmp_path, model, processor, settings, dataset.select(spread(dataset)))
    assert cache.vision_kind == "blocks"
    with torch.no_grad():  # the mergers train: new merger weights keep the folder (the blocks' output is cached)
        folder = cache.folder
        visual.merger.linear_fc1.weight.add_(0.0)
        assert FeatureCache(tmp_path / "cache", model, processor, sample_collator_settings(settings.data, settings.aux),
                            "float32").folder == folder
    batch = cached_batch(cache, processor, settings, examples)
    towers_must_not_run(model)
    assert_same_training_signal(reference, loss_and_grads(model, batch), rtol=1e-5)


def test_a_trainable_geometry_encoder_runs_on_processor_inputs_and_the_vit_comes_from_the_cache(tmp_path, mixed, towers_must_not_run):
    settings, dataset = mixed
    model, processor = tiny()
    model.geometry_encoder.requires_grad_(True)
    model.geometry_encoder.aggregator.patch_embed.mask_token.requires_grad_(False)  # never used in a forward
    examples = [dataset[i] for i in spread(dataset)]
    reference = loss_and_grads(model, live_batch(processor, settings, examples))
    cache, _ = build(tmp_path, model, processor, settings, dataset.select(spread(dataset)))
    assert not cache.caches_geometry and cache.vision_kind == "merged" and not cache.complete
    batch = cached_batch(cache, processor, settings, examples, packing=True)
    assert "geometry_pixel_values" in batch and "pixel_values" not in batch
    towers_must_not_run(model, geometry=False)
    signal = loss_and_grads(model, batch)
    assert any(name.startswith("model.geometry_encoder.") for name in signal[1])  # the encoder still trains
    assert_same_training_signal(reference, signal, rtol=1e-5)


def test_float16_storage_stays_within_its_rounding(tmp_path, mixed):
    settings, dataset = mixed
    model, processor = tiny()
    examples = [dataset[i] for i in spread(dataset)]
    reference = loss_and_grads(model, live_batch(processor, settings, examples))[0]
    cache, _ = build(tmp_path, model, processor, settings, dataset.select(spread(dataset)), dtype="float16")
    batch = cached_batch(cache, processor, settings, examples, packing=True)
    assert batch["vision_features"].levels[0].dtype == torch.float16
    torch.testing.assert_close(loss_and_grads(model, batch)[0], reference, rtol=FP16_TOLERANCE, atol=0)


def test_fingerprints_are_stable_across_save_and_reload(tmp_path):
    model, processor = tiny()
    model.save_pretrained(tmp_path / "saved")
    reloaded = GapMllmForConditionalGeneration.from_pretrained(tmp_path / "saved")
    assert geometry_fingerprint(reloaded) == geometry_fingerprint(model)
    assert vision_fingerprint(reloaded, "merged") == vision_fingerprint(model, "merged")
    assert FeatureCache(tmp_path / "cache", reloaded, processor).folder == FeatureCache(tmp_path / "cache", model, processor).folder


def test_the_cache_key_ignores_where_remote_code_lives_but_not_a_processing_setting(tmp_path):
    """A processor loaded from a saved folder carries `auto_map` (the Hub's trust_remote_code pointer), one built in
    memory does not: the same tokens and features, so the same cache folder. A setting that changes the pixels does
    change it."""
    model, processor = tiny()
    mapped = copy.deepcopy(processor)
    mapped.image_processor.auto_map = {"AutoProcessor": "processing_gap_mllm.GapMllmProcessor"}
    assert "auto_map" in mapped.to_dict()["image_processor"]
    assert FeatureCache(tmp_path / "cache", model, mapped).folder == FeatureCache(tmp_path / "cache", model, processor).folder
    resized = copy.deepcopy(processor)
    resized.image_processor.image_mean = (0.4, 0.5, 0.5)
    assert FeatureCache(tmp_path / "cache", model, resized).folder != FeatureCache(tmp_path / "cache", model, processor).folder


def test_nothing_to_cache_is_refused(tmp_path):
    model, processor = tiny()
    model.geometry_encoder.requires_grad_(True)
    model.model.visual.blocks[0].requires_grad_(True)
    with pytest.raises(CacheUnusableError, match="geometry encoder is trainable"):
        FeatureCache(tmp_path, model, processor)


def test_bad_samples_are_marked_while_building_and_skipped_and_counted_in_training(tmp_path, mixed):
    settings, dataset = mixed
    settings = dataclasses.replace(settings, data=dataclasses.replace(settings.data, on_bad_sample="skip"))
    model, processor = tiny()
    rows = [dataset[i] for i in spread(dataset, 4)]
    rows[1] = {**rows[1], "prompt": rows[1]["prompt"].replace("<image>", "", 1)}  # a view without its placeholder
    import datasets

    broken = datasets.Dataset.from_list(rows, features=dataset.features)
    cache, stats = build(tmp_path, model, processor, settings, broken)
    assert (stats.computed, stats.skipped) == (3, 1) and cache.is_bad(sample_key(rows[1]))
    tokenizer = processor.tokenizer
    batch = CachedCollator(sample_collator(processor, settings.data, settings.aux), cache, tokenizer.pad_token_id,
                           tokenizer.padding_side, packing=True)(rows)
    assert int(batch["num_skipped_samples"]) == 1 and int(batch["geometry_views_per_sample"].numel()) == 3


def test_unfrozen_encoder_with_the_cache_on_trains_it_and_caches_the_vit(tmp_path, train_data_root, caplog):
    import logging

    from gap_mllm.training.run import build_trainer

    from .test_train_fixtures import recipe, trainable_state

    settings = recipe(tmp_path, train_data_root, cache={"enabled": "always"},
                      freezing={"freeze_geometry_encoder": False}, data={"data_root": str(train_data_root),
                                                                         "cache_dir": str(tmp_path / "hf")})
    with caplog.at_level(logging.INFO, logger="gap_mllm.training.run"):
        setup = build_trainer(settings)
    assert setup.cache is not None and not setup.cache.caches_geometry
    assert "VGGT not cached (the geometry encoder is trainable" in caplog.text
    encoder = setup.model.gap_model.geometry_encoder
    before = trainable_state(encoder)
    setup.trainer.train()
    after = trainable_state(encoder)
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert len(changed) == len(before) > 0  # every encoder tensor trained (the DINO mask token is frozen)


def test_a_run_with_the_cache_and_packing_never_runs_the_frozen_towers(tmp_path, train_data_root, towers_must_not_run):
    from gap_mllm.training.run import build_trainer

    from .test_train_fixtures import recipe, trainable_state

    settings = recipe(tmp_path, train_data_root, cache={"enabled": "always", "dtype": "float32"},
                      data={"data_root": str(train_data_root), "cache_dir": str(tmp_path / "hf"), "tasks": MIXED_TASKS,
                            "packing": True}, training={"per_device_train_batch_size": 4})
    setup = build_trainer(settings)
    assert setup.cache.complete
    towers_must_not_run(setup.model.gap_model)
    llm = setup.model.gap_model.model.language_model
    before = trainable_state(llm)
    setup.trainer.train()
    assert any(not torch.equal(before[name], value) for name, value in trainable_state(llm).items())
