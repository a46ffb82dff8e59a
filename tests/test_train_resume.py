"""Fault tolerance: a run killed mid-way and resumed from its last checkpoint ends with the same
weights (and auxiliary heads) as an uninterrupted run; bad samples are named, then stop or are skipped."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import TrainerCallback

from gap_mllm.processing.errors import DataError
from gap_mllm.training.run import build_trainer

from .test_train_fixtures import recipe, recon_dataset, tiny, train_data_root, trainable_state  # noqa: F401


class SimulatedKill(RuntimeError):
    pass


class KillAtStep(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise SimulatedKill(f"killed at step {state.global_step}")


def make(tmp_path, name, dataset, callbacks=None, **training):
    model, processor = tiny()
    settings = {"max_steps": 6, "save_strategy": "steps", "save_steps": 3, "train_sampling_strategy": "random",
                "output_dir": str(tmp_path / name), **training}
    return build_trainer(recipe(tmp_path, training=settings, aux={"feature_align_weight": 0.5}),
                         model=model, processor=processor, train_dataset=dataset, callbacks=callbacks)


def test_killed_and_resumed_run_ends_with_the_uninterrupted_weights(tmp_path, recon_dataset):
    reference = make(tmp_path, "full", recon_dataset)
    reference.trainer.train()

    killed = make(tmp_path, "killed", recon_dataset, callbacks=[KillAtStep(5)])
    with pytest.raises(SimulatedKill):
        killed.trainer.train()
    checkpoint = tmp_path / "killed" / "checkpoint-3"
    assert (checkpoint / "aux_heads.safetensors").is_file() and not (tmp_path / "killed" / "checkpoint-6").exists()

    resumed = make(tmp_path, "killed", recon_dataset)
    resumed.trainer.train(resume_from_checkpoint=str(checkpoint))
    expected, got = trainable_state(reference.model), trainable_state(resumed.model)
    assert expected.keys() == got.keys() and any(k.startswith("aux_heads.") for k in got)
    for name in expected:
        # same data order, RNG and optimizer state: bitwise equal on one CPU thread pool
        torch.testing.assert_close(got[name], expected[name], atol=0, rtol=0, msg=name)


def corrupt(dataset, index: int):
    """Sample `index` gets a prompt with one <image> placeholder too few (its 4 views stay)."""
    def edit(example, i):
        if i == index:
            example["prompt"] = example["prompt"].replace("<image>", "", 1)
        return example

    return dataset.map(edit, with_indices=True)


def test_a_bad_sample_stops_the_run_with_its_name(tmp_path, recon_dataset):
    dataset = corrupt(recon_dataset.select(range(8)), 3)
    bad_id = dataset[3]["id"]
    setup = make(tmp_path, "raise", dataset, max_steps=4, save_strategy="no")
    with pytest.raises(DataError, match=bad_id):
        setup.trainer.train()


def test_a_bad_sample_is_skipped_and_counted(tmp_path, recon_dataset):
    dataset = corrupt(recon_dataset.select(range(8)), 3)
    model, processor = tiny()
    setup = build_trainer(
        recipe(tmp_path, training={"max_steps": 4, "train_sampling_strategy": "sequential"},
               data={"on_bad_sample": "skip"}),
        model=model, processor=processor, train_dataset=dataset,
    )
    setup.trainer.train()
    assert setup.trainer.skipped_samples == 1
    logs = setup.trainer.state.log_history
    assert [h["skipped_samples"] for h in logs if "loss" in h] == [0, 1, 1, 1]  # batch 2 holds sample 3
    assert logs[-1]["skipped_samples"] == 1 and os.path.isdir(setup.trainer.args.output_dir)
