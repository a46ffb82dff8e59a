"""Feature-cache entries are checked when they are served, not trusted:

- a `.bad` entry follows the policy of the run that reads it: under `raise` it stops the run naming the sample and
  the reason (even when an earlier `skip` run marked it), under `skip` it is skipped and counted by name, and the
  end-of-run warning names the skipped samples;
- a damaged entry (empty, truncated, a tensor missing), a sample's or a tower's, is recomputed by the next build (the
  towers run only for a damaged tower entry), or, read while training, removed and named once in a warning with the
  cache folder, never a raw safetensors error or KeyError; a damaged tower entry skips every sample that shares it;
- a full disk while writing an entry names the cache's device and folder, not the run's output folder;
- an entry of NaN or infinite features is named as a damaged entry (the finite check flags NaN and infinities, not
  large finite values).
"""

from __future__ import annotations

import argparse
import errno
import logging
from types import SimpleNamespace

import datasets
import pytest
import safetensors.torch
import torch

from gap_mllm.cli.errors import user_message
from gap_mllm.processing.collator import GapMllmDataCollator
from gap_mllm.processing.errors import DataError, DiskFullError, device_of
from gap_mllm.training import cache_cost, feature_cache
from gap_mllm.training.bad_samples import BadSampleGuard, skipped_samples_warning
from gap_mllm.training.cache_cost import CacheDiskError, CacheCost, ensure_disk_room
from gap_mllm.training.feature_cache import CachedCollator, DamagedEntryError, FeatureCache, sample_key, undecoded_images
from gap_mllm.training.trainer import GeometryAlignedTrainer

from .test_train_fixtures import recon_dataset, tiny, train_data_root  # noqa: F401


@pytest.fixture(scope="module")
def model_and_processor():
    return tiny()


@pytest.fixture
def rows(recon_dataset):  # noqa: F811
    """Three undecoded samples; the second one bad (a view without its `<image>` placeholder)."""
    dataset = undecoded_images(recon_dataset.select(range(3)))
    rows = [dataset[i] for i in range(3)]
    rows[1] = {**rows[1], "prompt": rows[1]["prompt"].replace("<image>", "", 1)}
    return datasets.Dataset.from_list(rows, features=dataset.features), rows


def guarded(processor, policy: str):
    return BadSampleGuard(GapMllmDataCollator(processor, train=True), policy=policy)


def cached_collator(cache, processor, policy: str) -> CachedCollator:
    tokenizer = processor.tokenizer
    return CachedCollator(guarded(processor, policy), cache, tokenizer.pad_token_id, tokenizer.padding_side)


def test_a_bad_entry_of_an_earlier_skip_run_raises_under_raise_and_is_named_under_skip(tmp_path, model_and_processor,
                                                                                       rows, caplog):
    model, processor = model_and_processor
    dataset, examples = rows
    bad = examples[1]["id"]
    cache = FeatureCache(tmp_path, model, processor)
    first = cache.build(model, dataset, guarded(processor, "skip"), skip_errors=True)
    assert (first.computed, first.skipped, first.skipped_names) == (2, 1, [bad])
    # a later run under `raise`: the mark of the skip run is not served as a skip
    with pytest.raises(DataError) as error:
        FeatureCache(tmp_path, model, processor).build(model, dataset, guarded(processor, "raise"))
    message = str(error.value)
    reason = cache.bad_reason(sample_key(examples[1]))
    assert message.startswith(f"sample {bad!r}: marked bad in the feature cache {cache.folder}") and reason in message
    with pytest.raises(DataError, match=f"sample {bad!r}: marked bad"):
        cached_collator(FeatureCache(tmp_path, model, processor), processor, "raise")(examples)
    # under `skip`: skipped and counted by name, in the build's summary, the batch and the end-of-run warning
    cache = FeatureCache(tmp_path, model, processor)
    again = cache.build(model, dataset, guarded(processor, "skip"), skip_errors=True)
    assert (again.reused, again.skipped, again.skipped_names) == (2, 1, [bad]) and repr(bad) in str(again)
    collator = cached_collator(cache, processor, "skip")
    with caplog.at_level(logging.WARNING):
        batch = collator(examples)
    assert int(batch["num_skipped_samples"]) == 1 and f"skipping bad sample {bad!r}" in caplog.text
    trainer = SimpleNamespace(data_collator=collator)
    names = GeometryAlignedTrainer.skipped_sample_names.fget(trainer)
    assert names == [bad] and skipped_samples_warning(3, names) == f"skipped 3 bad sample(s) on this process: {bad!r}"


def damage(path, how: str) -> None:
    data = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # a tensor missing
        tensors = safetensors.torch.load(data)
        del tensors["geometry.0"]
        path.write_bytes(safetensors.torch.save(tensors, metadata={"vision": "merged"}))


def test_damaged_entries_are_set_aside_when_read_and_recomputed_by_the_next_build(tmp_path, model_and_processor,
                                                                                  recon_dataset, caplog):  # noqa: F811
    model, processor = model_and_processor
    dataset = undecoded_images(recon_dataset.select(range(4)))  # four tower inputs (each its own marker)
    examples = [dataset[i] for i in range(4)]
    cache = FeatureCache(tmp_path, model, processor, dtype="float32")
    cache.build(model, dataset, guarded(processor, "raise"))
    keys = [sample_key(example) for example in examples]
    sound = {key: cache.load(key) for key in keys}
    towers = cache.towers_of(keys[2])
    for path, how in zip((cache.path(keys[0]), cache.path(keys[1]), cache.tower_path(towers)), ("empty", "truncated", "missing")):
        damage(path, how)
    with caplog.at_level(logging.WARNING, logger=feature_cache.__name__):
        for key in keys[:2]:
            with pytest.raises(DamagedEntryError, match=f"feature cache entry {key} in {cache.folder} is damaged"):
                cache.load(key)
        with pytest.raises(DamagedEntryError, match=f"feature cache tower entry {towers} in {cache.folder} is damaged"):
            cache.load(keys[2])
        batch = cached_collator(cache, processor, "raise")(examples)  # read again: skipped, not named again
    assert int(batch["num_skipped_samples"]) == 3 and batch["input_ids"].shape[0] == 1
    # warnings only: an earlier test of the same process may have left the package's loggers at INFO (the cache's
    # size report of `build` is an INFO line)
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 3 and all(str(cache.folder) in warning for warning in warnings)
    assert "empty" in warnings[0] and "cut short" in warnings[1] and "geometry.0 missing" in warnings[2]
    assert f"tower entry {towers} is damaged" in warnings[2] and "the samples that share it are skipped" in warnings[2]
    stats = cache.build(model, dataset, guarded(processor, "raise"))
    # the towers run again for the damaged tower entry only: the two damaged sample entries' inputs were sound
    assert (stats.computed, stats.recomputed, stats.reused, stats.encoded) == (3, 3, 1, 1)
    assert not list(cache.folder.rglob("*.damaged"))
    for key in keys:
        assert torch.equal(cache.load(key)["geometry_features"][0], sound[key]["geometry_features"][0])


def test_a_damaged_tower_entry_skips_every_sample_that_shares_it_named_once(tmp_path, model_and_processor,
                                                                            recon_dataset, caplog):  # noqa: F811
    model, processor = model_and_processor
    row = undecoded_images(recon_dataset.select(range(1)))[0]
    rows = [{**row, "id": f"question-{index}", "answer": row["answer"] + " " * index} for index in range(3)]
    dataset = datasets.Dataset.from_list(rows, features=undecoded_images(recon_dataset).features)
    cache = FeatureCache(tmp_path, model, processor, dtype="float32")
    stats = cache.build(model, dataset, guarded(processor, "raise"))
    assert (stats.computed, stats.encoded) == (3, 1)
    towers = {cache.towers_of(sample_key(example)) for example in rows}
    assert len(towers) == 1
    (towers,) = towers
    damage(cache.tower_path(towers), "truncated")
    with caplog.at_level(logging.WARNING, logger=feature_cache.__name__):
        with pytest.raises(DataError, match="no sample of a batch can be served"):
            cached_collator(cache, processor, "raise")(rows)
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1 and f"tower entry {towers} (sample 'question-0') is damaged" in warnings[0]
    assert "the samples that share it are skipped" in warnings[0]
    with caplog.at_level(logging.WARNING, logger=feature_cache.__name__):
        stats = cache.build(model, dataset, guarded(processor, "raise"))
    assert (stats.computed, stats.recomputed, stats.encoded) == (3, 3, 1)
    assert cache.load(sample_key(rows[2]))["geometry_features"][0].numel() > 0


def test_a_build_recomputes_a_damaged_entry_naming_it_and_the_folder(tmp_path, model_and_processor, recon_dataset,  # noqa: F811
                                                                    caplog):
    model, processor = model_and_processor
    dataset = undecoded_images(recon_dataset.select(range(2)))
    cache = FeatureCache(tmp_path, model, processor)
    cache.build(model, dataset, guarded(processor, "raise"))
    key = sample_key(dataset[0])
    damage(cache.path(key), "truncated")
    with caplog.at_level(logging.WARNING, logger=feature_cache.__name__):
        stats = cache.build(model, dataset, guarded(processor, "raise"))
    assert (stats.computed, stats.recomputed, stats.reused) == (1, 1, 1)
    assert f"feature cache {cache.folder}: entry {key} (sample {dataset[0]['id']!r}) is damaged" in caplog.text
    assert cache.load(key)["input_ids"].numel() > 0


def test_a_full_disk_while_writing_names_the_cache_device_and_folder(tmp_path, model_and_processor, recon_dataset,  # noqa: F811
                                                                    monkeypatch):
    model, processor = model_and_processor
    cache = FeatureCache(tmp_path / "cache", model, processor)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(feature_cache.safetensors.torch, "save", full)
    with pytest.raises(DiskFullError) as error:
        cache.build(model, undecoded_images(recon_dataset.select(range(1))), guarded(processor, "raise"))
    expected = f"no space left on {device_of(cache.folder)} while writing the feature cache in {cache.folder}"
    assert str(error.value).startswith(expected) and not list(cache.folder.rglob("*.tmp"))
    # the command line shows it as it is, not the output folder's disk
    assert user_message(error.value, argparse.Namespace(output_dir=str(tmp_path / "out"))).startswith(expected)


def test_a_disk_without_room_names_the_cache_device(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_cost.shutil, "disk_usage", lambda path: SimpleNamespace(total=10**9, used=10**9 - 10, free=10))
    with pytest.raises(CacheDiskError) as error:
        ensure_disk_room(tmp_path, CacheCost(bytes_per_view=1000, views_per_sample=4), 10)
    assert f"the feature cache in {tmp_path} needs" in str(error.value) and f"its disk, {device_of(tmp_path)}, has" in str(error.value)
    assert user_message(error.value, argparse.Namespace(output_dir="elsewhere")) == str(error.value)


def test_the_spare_room_of_a_large_disk_is_capped(tmp_path, monkeypatch):
    """5 % of a 252 GB disk would be 12.6 GB kept spare: a small cache on that disk goes with the cap (2 GiB) plus
    its size free, and not with a byte less."""
    cost = CacheCost(bytes_per_view=1000, views_per_sample=4)
    needed = cost.bytes_for(10)
    total = 252 * 10**9
    free = cache_cost.DISK_MARGIN_CAP_BYTES + needed
    monkeypatch.setattr(cache_cost.shutil, "disk_usage", lambda path: SimpleNamespace(total=total, used=total - free, free=free))
    ensure_disk_room(tmp_path, cost, 10)
    free -= 1
    with pytest.raises(CacheDiskError, match="keeping 2.1 GB spare"):
        ensure_disk_room(tmp_path, cost, 10)
    # a small disk keeps its 5 %: 10 GB total, 500 MB spare
    total, free = 10 * 10**9, 5 * 10**8 + needed
    ensure_disk_room(tmp_path, cost, 10)
    free -= 1
    with pytest.raises(CacheDiskError, match="keeping 500.0 MB spare"):
        ensure_disk_room(tmp_path, cost, 10)


# ---------------------------------------------------------------------------------- entries of NaN or infinite features


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_the_finite_check_of_an_entry_flags_nan_and_infinities_and_not_large_finite_values(dtype):
    from gap_mllm.training.feature_cache import _all_finite

    largest = torch.finfo(dtype).max
    assert _all_finite(torch.full((4096,), largest, dtype=dtype))  # a sum that would overflow in the same type
    for value in (float("nan"), float("inf"), -float("inf")):
        values = torch.zeros(4096, dtype=dtype)
        values[1234] = value
        assert not _all_finite(values), value
    assert not _all_finite(torch.tensor([float("inf"), -float("inf")], dtype=dtype))  # inf - inf: NaN


def test_a_cache_entry_of_nan_features_is_named_as_an_entry(tmp_path, recon_dataset, caplog):  # noqa: F811
    model, processor = tiny()
    dataset = undecoded_images(recon_dataset.select(range(1)))
    cache = FeatureCache(tmp_path, model, processor, dtype="float32")
    cache.build(model, dataset, guarded(processor, "raise"))
    key = sample_key(dataset[0])
    towers = cache.towers_of(key)
    tensors = safetensors.torch.load_file(cache.tower_path(towers))
    tensors["geometry.0"][0, 0] = torch.nan
    safetensors.torch.save_file(tensors, cache.tower_path(towers), metadata={"vision": "merged"})
    with caplog.at_level(logging.WARNING):
        with pytest.raises(DamagedEntryError, match=rf"feature cache tower entry {towers} in {cache.folder} is damaged "
                                                    r"\(its features geometry.0 hold NaN or infinite values\)"):
            cache.load(key, "scene0000_00")
    assert f"tower entry {towers} (sample 'scene0000_00') is damaged" in caplog.text and "learning_rate" not in caplog.text
