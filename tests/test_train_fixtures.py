"""Shared fixtures of the training tests: a tiny SynthRooms dataset (generated at test time) and helpers.

60x80 frames, 4 views per reconstruction sample, 16 train samples: a batch of the tiny model runs in
tens of milliseconds, so every training test stays a few seconds.
"""

from __future__ import annotations

import pytest
import torch

from gap_mllm.processing.synth.generator import SynthConfig, SynthRooms
from gap_mllm.processing.synth.writer import write_dataset
from gap_mllm.tiny.tiny_model import build_tiny_model
from gap_mllm.training.config import recipe_from_dict
from gap_mllm.training.data import load_split

TRAIN_CONFIG = SynthConfig(
    seed=3, image_size=(60, 80), num_frames=8, min_objects=4, max_objects=6, clip_frames=4,
    grounding_frames=4, caption_frames=4, qa_frames=4, recon_samples_per_scene=8,
    detection_clips_per_scene=1, captions_per_scene=1,
)


@pytest.fixture(scope="session")
def train_data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_synthrooms")
    write_dataset(root, SynthRooms(TRAIN_CONFIG), {"train": 2, "val": 1})
    return root


@pytest.fixture(scope="session")
def recon_dataset(train_data_root, tmp_path_factory):
    """16 reconstruction samples with depth and poses (for the auxiliary targets)."""
    recipe = recipe_from_dict({"data": {"data_root": str(train_data_root), "cache_dir": str(tmp_path_factory.mktemp("hf"))},
                               "aux": {"camera_weight": 1.0, "depth_weight": 1.0}})
    return load_split(recipe.data, "train", recipe.aux)


def tiny(seed: int = 0):
    model, processor = build_tiny_model(seed=seed)
    return model.train(), processor


def recipe(tmp_path, data_root=None, **sections):
    """A CPU recipe for the tiny model; `sections` override whole sections (`training` is merged)."""
    training = {"output_dir": str(tmp_path / "out"), "use_cpu": True, "report_to": "none", "max_steps": 4,
                "per_device_train_batch_size": 2, "learning_rate": 1e-3, "logging_steps": 1, "save_strategy": "no",
                "disable_tqdm": True, "train_sampling_strategy": "sequential", "seed": 0}
    training.update(sections.pop("training", {}))
    values = {"model": {"tiny": "tiny"}, "data": {"data_root": str(data_root) if data_root else None}, "training": training}
    values.update(sections)
    return recipe_from_dict(values)


def trainable_state(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
