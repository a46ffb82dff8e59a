"""Checkpoints are written under a temporary name and renamed when complete; `--resume auto` takes the
newest COMPLETE checkpoint, skipping (and naming) half-written ones."""

from __future__ import annotations

import errno
import json
import logging
import shutil

import pytest
import safetensors.torch
import torch

from gap_mllm.training import checkpoints
from gap_mllm.training.checkpoints import CheckpointDiskFull, checkpoint_problem, find_resumable_checkpoint, is_disk_full
from gap_mllm.training.run import resolve_resume
from gap_mllm.training.trainer import GeometryAlignedTrainer

from gap_mllm.training.run import build_trainer

from .test_train_fixtures import recipe, recon_dataset, tiny, train_data_root, trainable_state  # noqa: F401


def make(tmp_path, dataset, **training):
    """A tiny run that saves every 2 steps and keeps one checkpoint."""
    model, processor = tiny()
    settings = {"max_steps": 4, "save_strategy": "steps", "save_steps": 2, "save_total_limit": 1,
                "output_dir": str(tmp_path / "run"), **training}
    return build_trainer(recipe(tmp_path, training=settings), model=model, processor=processor,
                         train_dataset=dataset.select(range(8)))


class SimulatedKillDuringSave(RuntimeError):
    pass


def test_a_kill_during_a_save_leaves_no_checkpoint_that_looks_complete(tmp_path, recon_dataset, monkeypatch, caplog):
    setup = make(tmp_path, recon_dataset)
    original = GeometryAlignedTrainer._save_rng_state

    def dies_at_step_4(self, output_dir):
        if self.state.global_step == 4:
            raise SimulatedKillDuringSave(output_dir)  # weights and optimizer written, state files not
        return original(self, output_dir)

    monkeypatch.setattr(GeometryAlignedTrainer, "_save_rng_state", dies_at_step_4)
    with pytest.raises(SimulatedKillDuringSave):
        setup.trainer.train()
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == ["checkpoint-2", "tmp-checkpoint-4"]
    assert (run / "tmp-checkpoint-4" / "checkpoint-4" / "model.safetensors").is_file()  # the half-written save
    assert checkpoint_problem(run / "checkpoint-2") is None

    # an older-layout half-written folder with a newer step: weights but no trainer state
    shutil.copytree(run / "tmp-checkpoint-4" / "checkpoint-4", run / "checkpoint-9")
    with caplog.at_level(logging.WARNING, logger="gap_mllm.training.checkpoints"):
        picked = resolve_resume("auto", str(run))
    assert picked == str(run / "checkpoint-2")
    messages = caplog.text
    assert f"skipping incomplete checkpoint {run / 'checkpoint-9'}: no trainer_state.json" in messages
    assert f"ignoring {run / 'tmp-checkpoint-4'}" in messages

    # the resumed run continues from step 2, replaces the leftovers and keeps save_total_limit=1
    shutil.rmtree(run / "checkpoint-9")
    monkeypatch.setattr(GeometryAlignedTrainer, "_save_rng_state", original)
    resumed = make(tmp_path, recon_dataset)
    resumed.trainer.train(resume_from_checkpoint=picked)
    assert resumed.trainer.state.global_step == 4
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == ["checkpoint-4"]
    assert checkpoint_problem(run / "checkpoint-4") is None


def complete_checkpoint(folder, step=4, max_steps=6):
    """A checkpoint folder with every file a resume needs, small."""
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": max_steps}))
    safetensors.torch.save_file({"w": torch.ones(8)}, str(folder / "model.safetensors"))
    torch.save({"state": {0: {"exp_avg": torch.zeros(8)}}, "param_groups": []}, folder / "optimizer.pt")
    torch.save({"last_epoch": step, "base_lrs": [1e-3]}, folder / "scheduler.pt")
    torch.save({"python": 1}, folder / "rng_state.pth")
    return folder


def test_truncated_trainer_state_and_missing_weights_are_incomplete(tmp_path):
    folder = tmp_path / "checkpoint-4"
    folder.mkdir()
    (folder / "trainer_state.json").write_text('{"global_step": 4, "log_hist')
    assert "truncated" in checkpoint_problem(folder)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    assert "no model weights" in checkpoint_problem(folder)
    (folder / "model.safetensors").write_bytes(b"")
    assert checkpoint_problem(folder).startswith("model.safetensors cannot be read (")
    shutil.rmtree(folder)
    complete_checkpoint(folder)
    assert checkpoint_problem(folder) is None
    assert find_resumable_checkpoint(tmp_path) == str(folder)
    assert find_resumable_checkpoint(tmp_path / "missing") is None


def cut(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


@pytest.mark.parametrize("damage, named", [
    (lambda f: (f / "optimizer.pt").unlink(), "no optimizer.pt (the optimizer's state"),
    (lambda f: (f / "scheduler.pt").unlink(), "no scheduler.pt (the learning-rate schedule's state"),
    (lambda f: (f / "rng_state.pth").unlink(), "no rng_state.pth"),
    (lambda f: (f / "trainer_state.json").write_text(json.dumps({"global_step": 2, "max_steps": 6})),
     "trainer_state.json says global_step 2, and the folder is the checkpoint of step 4"),
    (lambda f: (f / "trainer_state.json").write_text(json.dumps({"max_steps": 6})), "trainer_state.json holds no global_step"),
    (lambda f: cut(f / "model.safetensors"), "model.safetensors cannot be read (Error while deserializing header"),
    (lambda f: cut(f / "optimizer.pt", 0.9), "optimizer.pt cannot be read ("),
    (lambda f: (f / "scheduler.pt").write_bytes(b""), "scheduler.pt is empty"),
])
def test_each_missing_damaged_or_edited_file_is_named(tmp_path, damage, named):
    """A checkpoint's own files (training/checkpoints.py `checkpoint_problem`): Trainer resumes without a missing
    optimizer or scheduler file silently, with a fresh optimizer and a restarted schedule."""
    folder = complete_checkpoint(tmp_path / "checkpoint-4")
    damage(folder)
    assert checkpoint_problem(folder).startswith(named)


def test_the_trainer_itself_refuses_an_incomplete_checkpoint(tmp_path, recon_dataset):
    """`GeometryAlignedTrainer.train(resume_from_checkpoint=...)`, the Python path under `run_training`: the same rule,
    before a step (Trainer would go on with a fresh optimizer and schedule)."""
    folder = complete_checkpoint(tmp_path / "checkpoint-2", step=2)
    (folder / "optimizer.pt").unlink()
    setup = make(tmp_path, recon_dataset)  # 4 steps: two trained from the checkpoint
    with pytest.raises(ValueError, match=rf"--resume {folder}: not a complete checkpoint \(no optimizer.pt"):
        setup.trainer.train(resume_from_checkpoint=str(folder))
    assert setup.trainer.state.global_step == 0 and not list((tmp_path / "run").glob("*checkpoint-*"))


def test_the_runs_last_step_needs_no_optimizer(tmp_path):
    """A run state restores a finished run's checkpoint without the optimizer: nothing trains from it."""
    folder = complete_checkpoint(tmp_path / "checkpoint-6", step=6, max_steps=6)
    (folder / "optimizer.pt").unlink()
    assert checkpoint_problem(folder) is None and checkpoint_problem(folder, max_steps=6) is None
    # a run that trains on past it (a longer schedule) would start a fresh optimizer there: incomplete for it
    assert checkpoint_problem(folder, max_steps=8).startswith("no optimizer.pt")


def test_an_explicit_incomplete_resume_folder_is_a_clear_error(tmp_path):
    (tmp_path / "checkpoint-2").mkdir()
    with pytest.raises(ValueError, match=r"--resume .*checkpoint-2: not a complete checkpoint \(no trainer_state.json"):
        resolve_resume(str(tmp_path / "checkpoint-2"), str(tmp_path))
    assert resolve_resume(None, str(tmp_path)) is None


def test_a_full_disk_during_a_save_says_where_and_how_much_and_the_last_checkpoint_resumes(tmp_path, recon_dataset, monkeypatch):
    """ENOSPC while writing checkpoint-4: one error naming the device, the folder, the space to free and the
    checkpoint to resume from; the half-written save is removed; checkpoint-2 is intact and resuming from it
    ends with the weights of an uninterrupted run (bitwise)."""
    reference = make(tmp_path / "reference", recon_dataset, save_strategy="no")  # saving does not change training
    reference.trainer.train()

    setup = make(tmp_path, recon_dataset)
    original = GeometryAlignedTrainer._save_rng_state

    def disk_full_at_step_4(self, output_dir):
        if self.state.global_step == 4:
            raise OSError(errno.ENOSPC, "No space left on device", output_dir)
        return original(self, output_dir)

    monkeypatch.setattr(GeometryAlignedTrainer, "_save_rng_state", disk_full_at_step_4)
    with pytest.raises(CheckpointDiskFull) as excinfo:
        setup.trainer.train()
    run = tmp_path / "run"
    message = str(excinfo.value)
    assert excinfo.value.errno == errno.ENOSPC
    assert message.startswith(f"[Errno {errno.ENOSPC}] no space left on {checkpoints.device_of(run)} at {run} while writing checkpoint-4; free ")
    assert " MB and resume: `--resume auto` continues from " + str(run / "checkpoint-2") + " (complete" in message
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == ["checkpoint-2"]  # the partial save is gone
    assert checkpoint_problem(run / "checkpoint-2") is None and resolve_resume("auto", str(run)) == str(run / "checkpoint-2")

    monkeypatch.setattr(GeometryAlignedTrainer, "_save_rng_state", original)
    resumed = make(tmp_path, recon_dataset)
    resumed.trainer.train(resume_from_checkpoint=str(run / "checkpoint-2"))
    expected, got = trainable_state(reference.model), trainable_state(resumed.model)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=0, rtol=0, msg=name)


def test_errors_without_an_errno_count_as_a_full_disk_only_when_the_device_is_full(tmp_path, monkeypatch):
    """torch.save's zip writer drops the errno (on a full tmpfs it raised "unexpected pos 1529920 vs 1529812");
    such an error is a full disk when the device has less room than the checkpoint takes, else itself."""
    torch_error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1529920 vs 1529812")
    monkeypatch.setattr(checkpoints, "free_bytes", lambda path: 10 << 20)
    assert is_disk_full(torch_error, tmp_path, needed_bytes=50 << 20)
    assert not is_disk_full(torch_error, tmp_path, needed_bytes=5 << 20)
    wrapped = RuntimeError("Error while serializing")
    wrapped.__cause__ = OSError(errno.EDQUOT, "Disk quota exceeded")
    assert is_disk_full(wrapped, tmp_path) and is_disk_full(Exception("SafetensorError: IoError(StorageFull)"), tmp_path)
    assert not is_disk_full(PermissionError(errno.EACCES, "Permission denied"), tmp_path, needed_bytes=5 << 20)
