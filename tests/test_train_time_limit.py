"""`time_limit_s`: a run stops at its time limit with a checkpoint and no final model, and the same recipe
with `--resume auto` ends with exactly the weights of an uninterrupted run; the pipeline does not mark such
a stage done. A run stopped at its time limit, by SIGTERM or by Ctrl-C ends at the next step with a checkpoint (and
its run state) and one line holding the command that continues it, each command's own (exit status 75; 130 for
Ctrl-C); a setting given at its default value continues the run."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import TrainerCallback, TrainerControl, TrainerState

from gap_mllm.cli.errors import run_command
from gap_mllm.cli.main import main as gap_mllm
from gap_mllm.processing.dataset_identity import TRAINING_RECORD
from gap_mllm.processing.errors import INTERRUPTED_STATUS
from gap_mllm.training.config import load_recipe
from gap_mllm.training.run import continuation_command, run_definition, run_training
from gap_mllm.training.run_state import STATE_FILE, RunStateError, check_same_run, restore_if_newer
from gap_mllm.training.time_limit import TimeLimitCallback, TrainingStoppedAtTimeLimit

from .test_run_state import source_model, write_recipe  # noqa: F401  (module fixture)
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
    # no final model, no training record (the marker says a training run writes the folder; the run record, the
    # settings a resume is checked against)
    assert sorted(p.name for p in folder.iterdir()) == [".gap-mllm-output.json", ".gap-mllm-run.json", "checkpoint-1"]

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


# ------------------------------------------------------------ a stopped epoch recipe, SIGTERM, the continuation command


def epoch_recipe(tmp_path, source, data_root, output) -> Path:
    """The recipe of `write_recipe`, counting epochs as the shipped recipes do (no max_steps)."""
    path = write_recipe(tmp_path, source, data_root, output)
    recipe = yaml.safe_load(path.read_text())
    del recipe["training"]["max_steps"]
    recipe["training"]["num_train_epochs"] = 1
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_an_epoch_recipe_stopped_at_its_time_limit_exits_75_with_its_continuation_and_no_model(
        tmp_path, source_model, train_data_root, monkeypatch, capsys):  # noqa: F811
    recipe = epoch_recipe(tmp_path, source_model, train_data_root, tmp_path / "out")
    argv = ["train", "--config", str(recipe), "--time-limit-s", "1e-9"]
    monkeypatch.setattr(sys, "argv", ["/venv/bin/gap-mllm", *argv])  # as the console script runs it
    status = gap_mllm(argv)
    captured = capsys.readouterr()
    assert status == 75 and "trained" not in captured.out
    line = next(text for text in captured.err.splitlines() if text.startswith("gap-mllm train: training stopped"))
    assert "after step 1 of 8" in line  # 16 samples, batch 2, one epoch
    assert line.endswith(f"continue it with: gap-mllm train --config {recipe} --time-limit-s 1e-9 --resume auto")
    assert (tmp_path / "out" / "checkpoint-1").is_dir() and not (tmp_path / "out" / "model.safetensors").exists()


class Sigterm(TrainerCallback):
    """Sends this process a SIGTERM at the start of step `step` (a scheduler ending the slot)."""

    def __init__(self, step):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_sigterm_without_a_time_limit_ends_at_the_next_step_with_a_checkpoint_and_the_stop_line(
        tmp_path, source_model, train_data_root):  # noqa: F811
    recipe = load_recipe(epoch_recipe(tmp_path, source_model, train_data_root, tmp_path / "out"))
    assert recipe.time_limit_s is None
    received = []

    def handler(*_):  # outside the training loop; also keeps a run that ignored the signal from killing the tests
        received.append("outside")

    outside = signal.signal(signal.SIGTERM, handler)
    try:
        with pytest.raises(TrainingStoppedAtTimeLimit, match=r"training stopped on SIGTERM after step 1 of 8; the "
                                                             r"checkpoint in .*out holds the full state; continue it with: "):
            run_training(recipe, callbacks=[Sigterm(step=1)])
        assert signal.getsignal(signal.SIGTERM) is handler and not received  # the run's handler had it; now back
    finally:
        signal.signal(signal.SIGTERM, outside)
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == ["checkpoint-1"]
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_each_command_prints_its_own_continuation_command():
    assert continuation_command(["/venv/bin/gap-mllm", "mini", "--out", "runs/m", "--set", "time_limit_s=600"]) == \
        "gap-mllm mini --out runs/m --set time_limit_s=600"  # mini resumes by itself: no --resume (it has none)
    assert continuation_command(["/venv/bin/gap-mllm", "train", "--config", "r.yaml", "--resume", "runs/x/checkpoint-2"]) == \
        "gap-mllm train --config r.yaml --resume auto"
    assert continuation_command(["/venv/bin/gap-mllm", "train", "--resume=auto", "--config", "r y.yaml"]) == \
        "gap-mllm train --config 'r y.yaml' --resume auto"
    assert continuation_command(["/x/gap_mllm/training/train_cli.py", "--config", "r.yaml"]) == \
        "python -m gap_mllm.training.train_cli --config r.yaml --resume auto"
    assert continuation_command(["/x/pytest", "-q"]).startswith("run_training(recipe, resume_from_checkpoint=\"auto\")")


# ----------------------------------------------------------- Ctrl-C, a setting at its default, the continuation command


class Signal(TrainerCallback):
    """Sends this process `signum` at the start of step `step` (a person pressing Ctrl-C)."""

    def __init__(self, signum, step):
        self.signum, self.step = signum, step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            os.kill(os.getpid(), self.signum)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, source_model, train_data_root):  # noqa: F811
    """A run with a run state stopped by Ctrl-C at step 1 of 4: `(recipe path, output, state, the exception, the
    SIGINT handler after the run)`."""
    tmp = tmp_path_factory.mktemp("interrupted")
    recipe_path = write_recipe(tmp, source_model, train_data_root, tmp / "out")
    recipe = load_recipe(recipe_path, [f"run_state.directory={tmp / 'state'}"])
    outside = signal.signal(signal.SIGINT, lambda *_: None)  # a Ctrl-C the run did not take must not end the tests
    try:
        with pytest.raises(TrainingStoppedAtTimeLimit) as stop:
            run_training(recipe, callbacks=[Signal(signal.SIGINT, step=1)])
        after = signal.getsignal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, outside)
    return recipe_path, tmp / "out", tmp / "state", stop.value, after


def test_ctrl_c_saves_a_checkpoint_and_the_state_and_exits_130_with_the_continue_line(interrupted, capsys):
    _, out, state, stop, after = interrupted
    assert after is not stop and callable(after) and after.__name__ == "<lambda>"  # the run's handler gave it back
    assert stop.status == INTERRUPTED_STATUS == 130
    assert re.fullmatch(rf"training stopped on SIGINT \(Ctrl-C\) after step 1 of 4; the checkpoint in {out} and the run "
                        rf"state {state} holds the full state; continue it with: .+", str(stop))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    assert json.loads((state / STATE_FILE).read_text())["global_step"] == 1 and not (out / "model.safetensors").exists()

    def stopped(args):
        raise stop

    assert run_command("train", stopped, None) == 130
    assert capsys.readouterr().err == f"gap-mllm train: {stop}\n"


def test_a_setting_given_at_its_default_value_continues_the_run(interrupted, tmp_path):
    recipe_path, _, state, _, _ = interrupted
    copy = tmp_path / "state"
    shutil.copytree(state, copy)

    def resume(*settings):
        recipe = load_recipe(recipe_path, [f"run_state.directory={copy}", f"training.output_dir={tmp_path / 'out'}",
                                           *settings])
        return restore_if_newer(copy, tmp_path / "out", source=recipe.model.name_or_path, run=run_definition(recipe))

    assert resume("training.weight_decay=0.0", "training.adam_beta1=0.9").endswith("checkpoint-1")  # defaults: the same run
    with pytest.raises(RunStateError, match=r"its settings differ \(training.weight_decay: 0.0 then, 0.01 now\)"):
        resume("training.weight_decay=0.01")
    # a state that recorded the default written out continues a run that leaves it out
    record = json.loads((copy / STATE_FILE).read_text())
    recorded = {**record, "run": {**record["run"], "training.weight_decay": 0.0}}
    check_same_run(recorded, run_definition(load_recipe(recipe_path)), copy)


def test_the_settings_of_one_resume_are_left_out_of_every_later_continuation_command():
    assert continuation_command(["/venv/bin/gap-mllm", "train", "--config", "r.yaml", "--set",
                                 "run_state.accept_other_data=true", "--run-state", "s", "--resume", "auto"]) == \
        "gap-mllm train --config r.yaml --run-state s --resume auto"
    assert continuation_command(["/venv/bin/gap-mllm", "train", "--set=run_state.accept_other_data=true", "--config",
                                 "r.yaml", "--set", "training.max_steps=8"]) == \
        "gap-mllm train --config r.yaml --set training.max_steps=8 --resume auto"
    assert continuation_command(["/venv/bin/gap-mllm", "mini", "--out", "runs/m", "--set",
                                 "run_state.accept_other_data=true"]) == "gap-mllm mini --out runs/m"
    # the Mini pipeline's per-stage form, both spellings; a stage's other settings stay
    assert continuation_command(["/venv/bin/gap-mllm", "mini", "--out", "runs/m", "--stage-set",
                                 "stage2:cpu_bf16_autocast=false", "--stage-set",
                                 "stage2:run_state.accept_other_settings=true",
                                 "--stage-set=stage1:run_state.accept_other_data=true"]) == \
        "gap-mllm mini --out runs/m --stage-set stage2:cpu_bf16_autocast=false"
