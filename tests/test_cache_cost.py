"""Geometry-feature cache cost model: the real-size figures, the exact size of a stored entry, the log line,
and the refusal (nothing written) when the disk lacks the room."""

from __future__ import annotations

import logging
import shutil
from types import SimpleNamespace

import pytest

from gap_mllm import GapMllmConfig
from gap_mllm.processing.collator import GapMllmDataCollator
from gap_mllm.training import cache_cost
from gap_mllm.training.cache_cost import CacheDiskError, cache_cost as cost_for, format_bytes
from gap_mllm.training.feature_cache import GeometryFeatureCache

from .test_train_fixtures import recon_dataset, tiny, train_data_root  # noqa: F401


def test_real_size_figures():
    config = GapMllmConfig()  # Qwen3-VL defaults, VGGT-1B geometry: 4 levels of 2 × 1024 channels
    training = cost_for(config, views_per_sample=4, patch_grid=(24, 32))  # 336×448 frames
    assert training.bytes_per_view == 4 * 2048 * 768 * 2 == 12_582_912
    assert training.bytes_per_sample == 4 * 12_582_912 + 128
    assert format_bytes(training.bytes_for(100_000)) == "5.0 TB"
    inference = cost_for(config, views_per_sample=32, patch_grid=(26, 34))  # 364×476 frames
    assert format_bytes(inference.bytes_per_view) == "14.5 MB" and format_bytes(inference.bytes_per_sample) == "463.5 MB"


def test_stored_entries_have_the_predicted_size_and_the_build_logs_it(tmp_path, recon_dataset, caplog):
    model, processor = tiny()
    cache = GeometryFeatureCache(tmp_path, model)
    with caplog.at_level(logging.INFO, logger=cache_cost.__name__):
        cache.build(model, recon_dataset.select(range(2)), GapMllmDataCollator(processor))
    entries = sorted(cache.folder.glob("*.npy"))
    assert len(entries) == 2
    grid = cache.load(entries[0].stem)[0].shape  # [S, h, w, 2C]
    expected = cost_for(model.config, views_per_sample=grid[0], patch_grid=(grid[1], grid[2]))
    assert all(entry.stat().st_size == expected.bytes_per_sample for entry in entries)
    assert f"{format_bytes(expected.bytes_per_view)} per view" in caplog.text
    assert f"{format_bytes(expected.bytes_for(2))} for 2 samples" in caplog.text


def test_a_disk_without_room_is_refused_before_anything_is_written(tmp_path, recon_dataset, monkeypatch):
    model, processor = tiny()
    cache = GeometryFeatureCache(tmp_path, model)
    collator = GapMllmDataCollator(processor)
    cache.build(model, recon_dataset.select(range(1)), collator)  # one entry from an earlier run
    before = sorted(cache.folder.iterdir())
    real = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(cache_cost.shutil, "disk_usage",
                        lambda path: SimpleNamespace(total=real.total, used=real.total - 1000, free=1000))
    with pytest.raises(CacheDiskError, match="needs about .* for 3 more samples .*cache.enabled: false"):
        cache.build(model, recon_dataset.select(range(4)), collator)
    assert sorted(cache.folder.iterdir()) == before  # the old entry is kept, nothing new (no temporary file)
