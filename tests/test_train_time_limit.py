"""`time_limit_s`: a run stops at its time limit with a checkpoint and no final model, and the same recipe
with `--resume auto` ends with exactly the weights of an uninterrupted run; the pipeline does not mark such
a stage done."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import TrainerControl, TrainerState

from gap_mllm.processing.dataset_identity import TRAINING_RECORD
from gap_mllm.training.run import run_training
from gap_mllm.training.time_limit import TimeLimitCallback, TrainingStoppedAtTimeLimit

from .test_train_fixtures import recipe, recon_dataset, tiny, train_data_root, trainable_state  # noqa: F401


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_the_callback_stops_and_saves_at_the_first_step_past_the_limit():
    clock = FakeClock()
    callback = TimeLimitCallback(30, clock=clock)
    state, control = TrainerState(max_steps=10), TrainerControl()
    callback.on_train_begin(None, state, control)
    clock.now, state.global_step = 129.9, 4
    callback.on_step_end(None, state, control)
    assert not (control.should_save or control.should_training_stop or callback.reached)
    clock.now, state.global_step = 130.0, 5
    callback.on_step_end(None, state, control)
    callback.on_train_end(None, state, control)  # SIGTERM and Ctrl-C handlers back to the test process's own
    assert control.should_save and control.should_training_stop and callback.reached


def test_the_last_step_is_not_a_time_limited_stop():
    clock = FakeClock()
    callback = TimeLimitCallback(1, clock=clock)
    state, control = TrainerState(max_steps=10), TrainerControl()
    callback.on_train_begin(None, state, control)
    clock.now, state.global_step = 500.0, 10  # the run ends here anyway, with its final model
    callback.on_step_end(None, state, control)
    callback.on_train_end(None, state, control)  # SIGTERM and Ctrl-C handlers back to the test process's own
    assert not (callback.reached or control.should_training_stop)


class WorkerPids(torch.utils.data.Dataset):
    """Each item is the process id of the process that loaded it."""

    def __len__(self):
        return 12

    def __getitem__(self, index):
        return os.getpid()


def test_the_training_loaders_workers_outlive_a_sigterm_sent_to_the_whole_job():
    """A scheduler's SIGTERM reaches every process of the job: the run must stop at its next step end with a
    checkpoint, so the data loader's worker keeps loading (PyTorch's own worker dies at a SIGTERM its parent did not
    send, and the main process then failed at its next batch, with no checkpoint)."""
    loader = torch.utils.data.DataLoader(WorkerPids(), batch_size=1, num_workers=1)
    callback = TimeLimitCallback(None)
    state, control = TrainerState(max_steps=10), TrainerControl()
    callback.on_train_begin(None, state, control, train_dataloader=loader)
    try:
        batches = iter(loader)
        worker = int(next(batches))
        # sent by another process, as a scheduler sends it (not the worker's parent)
        subprocess.run([sys.executable, "-c", f"import os, signal; os.kill({worker}, signal.SIGTERM)"], check=True)
        rest = [int(batch) for batch in batches]
    finally:
        callback.on_train_end(None, state, control)  # SIGTERM and Ctrl-C handlers back to the test process's own
    assert worker != os.getpid() and rest == [worker] * 11


@pytest.mark.parametrize("limit", [0, -5, float("nan")])
def test_a_limit_that_is_not_positive_is_refused(limit):
    with pytest.raises(ValueError, match="time_limit_s"):
        TimeLimitCallback(limit)


def run(tmp_path, name, dataset, resume=None, **top):
    model, processor = tiny()
    settings = {"max_steps": 6, "save_strategy": "steps", "save_steps": 3, "train_sampling_strategy": "random",
                "output_dir": str(tmp_path / name)}
    result = run_training(recipe(tmp_path, training=settings, **top), resume_from_checkpoint=resume,
                          model=model, processor=processor, train_dataset=dataset)
    return result, model


def test_a_time_limited_run_resumes_to_the_uninterrupted_weights(tmp_path, recon_dataset):
    _, reference = run(tmp_path, "full", recon_dataset)

    with pytest.raises(TrainingStoppedAtTimeLimit, match="after step 1 of 6") as stop:  # past the limit after step 1
        run(tmp_path, "limited", recon_dataset, time_limit_s=1e-9)
    folder = tmp_path / "limited"
    assert stop.value.result.global_step == 1
    # no final model, no training record (the marker says a training run writes the folder)
    assert sorted(p.name for p in folder.iterdir()) == [".gap-mllm-output.json", "checkpoint-1"]

    finished, resumed = run(tmp_path, "limited", recon_dataset, resume="auto")
    assert finished.global_step == 6
    assert (folder / "model.safetensors").is_file()
    assert json.loads((folder / TRAINING_RECORD).read_text())["global_step"] == 6
    expected, got = trainable_state(reference), trainable_state(resumed)
    assert expected.keys() == got.keys()
    for name in expected:  # the checkpoint holds optimizer, scheduler, RNG and data position
        torch.testing.assert_close(got[name], expected[name], atol=0, rtol=0, msg=name)


def test_a_stopped_run_is_one_line_and_exit_status_75_on_the_command_line(capsys):
    """`gap-mllm mini` after a time-limited (or SIGTERM) stop: not a traceback, and a status a scheduler can read."""
    from gap_mllm.cli.errors import run_command

    line = "training stopped on SIGTERM after step 3805 of 7200; ... continue it with: gap-mllm mini --out runs/m"

    def stopped(args):
        raise TrainingStoppedAtTimeLimit(line)

    assert run_command("mini", stopped, None) == 75
    assert capsys.readouterr().err == f"gap-mllm mini: {line}\n"
