"""Shared fixtures: the tiny processor and model (built locally, no downloads) and synthetic views."""

import gc
import os

import numpy as np
import pytest
import torch
from hypothesis import settings
from PIL import Image

from gap_mllm.tiny.tiny_model import build_tiny_model
from gap_mllm.tiny.tiny_tokenizer import build_tiny_processor


# No per-example deadline (a loaded 2-core machine must not turn slowness into failures); on CI the
# examples are derandomized so a run is reproducible, while local runs keep exploring new inputs.
settings.register_profile("local", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "local")

# `make test` runs two pytest-xdist workers on a 2-core machine: each worker keeps to one torch thread, and so do the
# processes its tests start (OMP_NUM_THREADS is inherited), since two workers of two threads each doubled the CPU
# time of the suite instead of halving its wall time.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def pytest_collection_finish(session):
    """Every test module is imported now: what they and their imports (torch, transformers, datasets) made lives for
    the whole run, and moving it out of the garbage collector's view makes each full collection cheap. Every
    Trainer.train starts with one (accelerate's free_memory), which scanned these half a million objects each time
    (about 0.25 s of CPU); what tests make later (models, lazily imported modules) is still scanned and collected."""
    gc.freeze()


def write_small_synth(root, splits=None):
    """A small SynthRooms dataset (48×64 frames, 3-4 objects, every task) at `root`, two val scenes by default;
    returns `root`."""
    from gap_mllm.processing.synth.generator import SynthConfig, SynthRooms
    from gap_mllm.processing.synth.writer import write_dataset

    config = SynthConfig(seed=0, image_size=(48, 64), num_frames=12, min_objects=3, max_objects=4, grounding_frames=8,
                         caption_frames=4, qa_frames=4, recon_samples_per_scene=3, detection_clips_per_scene=1,
                         captions_per_scene=2)
    write_dataset(root, SynthRooms(config), splits or {"val": 2})
    return root


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    """`write_small_synth` once per test module that asks for it (a module may define its own `synth_data`)."""
    return write_small_synth(tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A saved tiny GAP-MLLM checkpoint folder, once per test module that asks for it."""
    from gap_mllm.tiny.tiny_model import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def no_model_load(monkeypatch):
    """`gap-mllm predict` fails the test if it loads the model's weights (a refusal must come before the load)."""
    from gap_mllm.cli import predict

    monkeypatch.setattr(predict, "load_model_and_processor", lambda *a, **k: pytest.fail("the model was loaded"))


def make_views(count: int, height: int = 64, width: int = 96, seed: int = 0) -> list[Image.Image]:
    """`count` random RGB views of one size (deterministic by seed)."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(count)]


@pytest.fixture(scope="session")
def tiny_processor():
    return build_tiny_processor()


@pytest.fixture
def build_model(tiny_processor):
    """Factory: `build_model(fusion_method="gated", use_geometry=True, seed=0, **config_overrides)`."""

    def build(**kwargs):
        model, _ = build_tiny_model(processor=tiny_processor, **kwargs)
        return model

    return build


@pytest.fixture
def make_inputs(tiny_processor):
    """Factory: processor inputs for samples with the given view counts (one text per sample)."""

    def make(view_counts=(2,), size=(64, 96), text="Describe the room.", seed=0, **kwargs):
        images = [make_views(n, *size, seed=seed + i) for i, n in enumerate(view_counts)]
        texts = [text] * len(view_counts)
        return tiny_processor(images=images, text=texts, return_tensors="pt", **kwargs)

    return make


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
