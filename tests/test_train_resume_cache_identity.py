"""A resume keys the feature cache by the checkpoint's frozen towers, not by the model the recipe built (issue:
resumed with another `model.seed`, the steps after the resume trained on features of towers the checkpoint does not
hold, and the final weights differed from the correct resume by 4e-4 without a word)."""

from __future__ import annotations

import pytest
import torch

from gap_mllm.training.run import run_training
from gap_mllm.training.time_limit import TrainingStoppedAtTimeLimit

from .test_train_fixtures import recipe, tiny, train_data_root  # noqa: F401


def run(tmp_path, train_data_root, name, seed, resume=None, **top):
    model, processor = tiny(seed=seed)
    settings = recipe(tmp_path, train_data_root, cache={"enabled": "always", "directory": str(tmp_path / f"cache_{name}")},
                      data={"data_root": str(train_data_root), "cache_dir": str(tmp_path / "hf")},
                      training={"max_steps": 4, "save_strategy": "steps", "save_steps": 2, "train_sampling_strategy": "random",
                                "output_dir": str(tmp_path / name)}, **top)
    run_training(settings, resume_from_checkpoint=resume, model=model, processor=processor)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_a_resume_from_a_model_built_with_another_seed_trains_on_the_checkpoints_towers(tmp_path, train_data_root):
    reference = run(tmp_path, train_data_root, "straight", seed=0)
    with pytest.raises(TrainingStoppedAtTimeLimit):  # checkpoint-1 of the seed-0 model
        run(tmp_path, train_data_root, "split", seed=0, time_limit_s=1e-9)
    resumed = run(tmp_path, train_data_root, "split", seed=1, resume="auto")  # the recipe now builds other towers
    for name, value in reference.items():
        torch.testing.assert_close(resumed[name], value, atol=0, rtol=0, msg=name)


def test_a_cache_folder_under_the_home_is_named_with_a_tilde(tmp_path, train_data_root, monkeypatch):
    """`cache.directory: ~/...` (what a committed run state's command names: no machine path) is the user's home."""
    from gap_mllm.training.run import build_trainer

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    settings = recipe(tmp_path, train_data_root, cache={"enabled": "always", "directory": "~/.cache/features"},
                      data={"data_root": str(train_data_root), "cache_dir": str(tmp_path / "hf")})
    setup = build_trainer(settings)
    assert setup.cache.folder.parent == tmp_path / "home" / ".cache" / "features"
    assert any(setup.cache.folder.rglob("*.safetensors")) and not (tmp_path / "~").exists()
