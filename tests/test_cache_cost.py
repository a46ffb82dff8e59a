"""Feature cache cost model: the real-size figures, the exact size of a stored entry, the log line,
and the refusal (nothing written) when the disk lacks the room."""

from __future__ import annotations

import logging
import shutil
from types import SimpleNamespace

import pytest
import torch

from gap_mllm import GapMllmConfig
from gap_mllm.processing.collator import GapMllmDataCollator
from gap_mllm.training import cache_cost
from gap_mllm.training.cache_cost import CacheDiskError, cache_cost as cost_for, cost_of_sample, format_bytes
from gap_mllm.training.feature_cache import FeatureCache, undecoded_images

from .test_train_fixtures import recon_dataset, tiny, train_data_root  # noqa: F401


def test_real_size_figures():
    config = GapMllmConfig()  # Qwen3-VL defaults, VGGT-1B geometry: 4 levels of 2 × 1024 channels
    geometry = cost_for(config, views_per_sample=4, patch_grid=(24, 32), vision=None)  # 336×448 frames, VGGT taps only
    assert geometry.bytes_per_view == 4 * 2048 * 768 * 2 == 12_582_912
    assert geometry.bytes_per_sample == 4 * 12_582_912
    assert format_bytes(geometry.bytes_for(100_000)) == "5.0 TB"
    # + the frozen ViT's output: the main and each DeepStack level, 768 / 4 merged tokens × the ViT's output width
    vision = config.vision_config
    both = cost_for(config, views_per_sample=4, patch_grid=(24, 32))
    levels = 1 + len(vision.deepstack_visual_indexes)
    assert both.bytes_per_view == 12_582_912 + levels * 192 * vision.out_hidden_size * 2
    inference = cost_for(config, views_per_sample=32, patch_grid=(26, 34), vision=None)  # 364×476 frames
    assert format_bytes(inference.bytes_per_view) == "14.5 MB" and format_bytes(inference.bytes_per_sample) == "463.5 MB"


def _feature_bytes(sample: dict) -> int:
    vision = sample["vision_features"]
    levels = list(sample["geometry_features"]) + list(vision.levels)
    return sum(level.numel() * level.element_size() for level in levels)


def test_stored_entries_have_the_predicted_size_and_the_build_logs_it(tmp_path, recon_dataset, caplog):
    model, processor = tiny()
    cache = FeatureCache(tmp_path, model, processor)
    with caplog.at_level(logging.INFO, logger=cache_cost.__name__):
        cache.build(model, undecoded_images(recon_dataset.select(range(2))), GapMllmDataCollator(processor, train=True))
    entries = sorted(cache.folder.glob("samples/*.safetensors"))
    assert len(entries) == 2
    for entry in entries:
        sample = cache.load(entry.stem)
        expected = cost_of_sample(sample, torch.float16)
        assert _feature_bytes(sample) == expected.views_per_sample * expected.bytes_per_view
        # its two files (a marker sample: a tower input of its own): the features, the tokens and two safetensors
        # headers of a few hundred bytes each
        size = entry.stat().st_size + cache.tower_path(cache.towers_of(entry.stem)).stat().st_size
        assert expected.bytes_per_sample - 2048 < size < expected.bytes_per_sample
    assert "per view" in caplog.text and "for 2 samples on at most 2 distinct tower inputs" in caplog.text


def test_a_disk_without_room_is_refused_before_anything_is_written(tmp_path, recon_dataset, monkeypatch):
    model, processor = tiny()
    cache = FeatureCache(tmp_path, model, processor)
    collator = GapMllmDataCollator(processor, train=True)
    dataset = undecoded_images(recon_dataset.select(range(4)))
    cache.build(model, dataset.select(range(1)), collator)  # one entry from an earlier run
    before = sorted(cache.folder.rglob("*"))
    real = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(cache_cost.shutil, "disk_usage",
                        lambda path: SimpleNamespace(total=real.total, used=real.total - 1000, free=1000))
    with pytest.raises(CacheDiskError, match="needs about .* for 3 more samples .*cache.enabled: false"):
        cache.build(model, dataset, collator)
    assert sorted(cache.folder.rglob("*")) == before  # the old entries are kept, nothing new (no temporary file)
