"""Shared tiny SynthRooms fixtures for the data tests (generated at test time, never committed).

Imported by the test_data_* modules; 60x80 frames and 16 frames per scene keep every scene < 0.5 s.
"""

from __future__ import annotations

import pytest

from gap_mllm.processing.synth.generator import SynthConfig, SynthRooms
from gap_mllm.processing.synth.writer import generate_samples, write_dataset

TINY_CONFIG = SynthConfig(
    seed=3,
    image_size=(60, 80),
    num_frames=16,
    min_objects=8,
    max_objects=12,
    grounding_frames=8,
    caption_frames=8,
    qa_frames=8,
    recon_samples_per_scene=4,
    captions_per_scene=2,
)
TINY_SPLITS = {"train": 2, "val": 1}


def tiny_generator() -> SynthRooms:
    return SynthRooms(TINY_CONFIG)


@pytest.fixture(scope="session")
def tiny_scene():
    """(scene, records) of scene 0 of the tiny generator."""
    return generate_samples(tiny_generator(), 0)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A written tiny dataset (ScanNet layout + annotation JSONs): its root folder."""
    root = tmp_path_factory.mktemp("synthrooms")
    write_dataset(root, tiny_generator(), TINY_SPLITS)
    return root
