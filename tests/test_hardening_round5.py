"""Issue 55, items 1-11: a run state that is exact or refused, and one rule for whose folder it is and who writes it.

Each test names its case. One stopped run (step 1 of 4, its run state written) is shared by the state tests, each on
its own copy of the state; the others refuse before a model is built, or run the tiny model for one step.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
import yaml
from transformers import TrainerCallback

from gap_mllm.cli.errors import run_command
from gap_mllm.cli.main import main as gap_mllm
from gap_mllm.processing.errors import DiskFullError
from gap_mllm.processing.folder_lock import FolderBusy, lock_file_of
from gap_mllm.processing.output_folder import OutputFolderRefused, REPLACED_SUFFIX, sibling
from gap_mllm.training import run_state as run_state_module
from gap_mllm.training.config import load_recipe
from gap_mllm.training.data_sketch import compare_data, sketch_data_root
from gap_mllm.training.divergence import TrainingDivergedError, divergence_message
from gap_mllm.training.feature_cache import DamagedEntryError, FeatureCache, sample_key, undecoded_images
from gap_mllm.training.run import continuation_command, run_definition, run_training
from gap_mllm.training.run_state import (
    MOMENTS_FILE,
    STATE_FILE,
    WEIGHTS_FILE,
    RunStateError,
    restore_if_newer,
    restore_run_state,
    save_run_state,
)
from gap_mllm.training.time_limit import TrainingStoppedAtTimeLimit

from .test_run_state import source_model, write_recipe  # noqa: F401  (module fixture)
from .test_train_cache_entries import guarded
from .test_train_fixtures import recon_dataset, tiny, train_data_root  # noqa: F401


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, source_model, train_data_root):  # noqa: F811
    """A run stopped at its time limit after step 1 of 4: `(tmp, recipe path, output folder, state folder)`."""
    tmp = tmp_path_factory.mktemp("stopped")
    recipe_path = write_recipe(tmp, source_model, train_data_root, tmp / "out")
    recipe = load_recipe(recipe_path, [f"run_state.directory={tmp / 'state'}", "time_limit_s=1e-9"])
    with pytest.raises(TrainingStoppedAtTimeLimit):
        run_training(recipe, resume_from_checkpoint="auto")
    return tmp, recipe_path, tmp / "out", tmp / "state"


@pytest.fixture
def state(stopped, tmp_path):
    """A copy of the stopped run's state, for a test to damage."""
    copy = tmp_path / "state"
    shutil.copytree(stopped[3], copy)
    return copy


def epoch_recipe(tmp_path, source, data_root, output) -> Path:
    """The recipe of `write_recipe`, counting epochs as the shipped recipes do (no max_steps)."""
    path = write_recipe(tmp_path, source, data_root, output)
    recipe = yaml.safe_load(path.read_text())
    del recipe["training"]["max_steps"]
    recipe["training"]["num_train_epochs"] = 1
    path.write_text(yaml.safe_dump(recipe))
    return path


# ------------------------------------------------------------------------------ items 1-3: a stopped run


def test_item1_an_epoch_recipe_stopped_at_its_time_limit_exits_75_with_its_continuation_and_no_model(
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


def test_item2_a_sigterm_without_a_time_limit_ends_at_the_next_step_with_a_checkpoint_and_the_stop_line(
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


def test_item3_each_command_prints_its_own_continuation_command():
    assert continuation_command(["/venv/bin/gap-mllm", "mini", "--out", "runs/m", "--set", "time_limit_s=600"]) == \
        "gap-mllm mini --out runs/m --set time_limit_s=600"  # mini resumes by itself: no --resume (it has none)
    assert continuation_command(["/venv/bin/gap-mllm", "train", "--config", "r.yaml", "--resume", "runs/x/checkpoint-2"]) == \
        "gap-mllm train --config r.yaml --resume auto"
    assert continuation_command(["/venv/bin/gap-mllm", "train", "--resume=auto", "--config", "r y.yaml"]) == \
        "gap-mllm train --config 'r y.yaml' --resume auto"
    assert continuation_command(["/x/gap_mllm/training/train_cli.py", "--config", "r.yaml"]) == \
        "python -m gap_mllm.training.train_cli --config r.yaml --resume auto"
    assert continuation_command(["/x/pytest", "-q"]).startswith("run_training(recipe, resume_from_checkpoint=\"auto\")")


# ------------------------------------------------------------------------------ item 4: the run a state continues


def test_item4_another_recipe_resuming_a_state_is_refused_naming_the_settings(stopped, state, tmp_path):
    tmp, recipe_path, _, _ = stopped
    for change, named in (("training.learning_rate=0.002", "training.learning_rate: 0.001 then, 0.002 now"),
                          ("training.max_steps=6", "training.max_steps: 4 then, 6 now"),
                          ("data.tasks=[detection]", "data.tasks: ['reconstruction'] then, ['detection'] now")):
        recipe = load_recipe(recipe_path, [f"run_state.directory={state}", f"training.output_dir={tmp_path / 'new'}",
                                           change])
        with pytest.raises(RunStateError, match=rf"holds step 1 of another run: its settings differ \({re.escape(named)}\)"):
            run_training(recipe, resume_from_checkpoint="auto")
        assert not any((tmp_path / "new").glob("checkpoint-*"))
    # what says where the run writes is not the run: another output folder, time limit and device continue it
    recipe = load_recipe(recipe_path, [f"run_state.directory={state}", f"training.output_dir={tmp_path / 'new'}",
                                       "time_limit_s=3600", "device=cpu"])
    assert restore_if_newer(state, tmp_path / "new", source=recipe.model.name_or_path,
                            run=run_definition(recipe)).endswith("checkpoint-1")


# ------------------------------------------------------------------------------ item 5: every input file


def test_item5_a_changed_camera_pose_file_is_refused_by_content(state, tmp_path, source_model, train_data_root):  # noqa: F811
    data = tmp_path / "data"
    shutil.copytree(train_data_root, data)
    changed = sorted(data.rglob("*.txt"))[0]
    raw = bytearray(changed.read_bytes())
    raw[-2] = raw[-2] ^ 1  # one bit of the pose's last value
    changed.write_bytes(bytes(raw))
    with pytest.raises(RunStateError, match=rf"other data than .*{changed.name}: its text differs"):
        restore_run_state(state, tmp_path / "restored", source=source_model, data_root=data)
    assert not (tmp_path / "restored").exists()


def test_item5_depth_arrays_are_digested_by_content_apart_from_the_images(tmp_path):
    import numpy as np
    import PIL.Image

    sketches = []
    for value in (1.0, 1.5):
        root = tmp_path / str(value)
        root.mkdir()
        PIL.Image.new("RGB", (4, 4)).save(root / "0.png")
        np.save(root / "0.npy", np.full((4, 4), value, dtype=np.float32))
        sketches.append(sketch_data_root(root))
    assert compare_data(*sketches).differences == [("0.npy", "its bytes differ")]  # the image is the same


# ------------------------------------------------------------------------------ items 6, 7, 10: whose folder, who writes


def test_item6_a_state_folder_with_the_users_files_is_refused_before_training_and_their_files_kept(stopped, state,
                                                                                                 tmp_path):
    _, recipe_path, _, _ = stopped
    (state / "NOTES.md").write_text("mine")
    (state / "plots").mkdir()
    recipe = load_recipe(recipe_path, [f"run_state.directory={state}", f"training.output_dir={tmp_path / 'out'}"])
    with pytest.raises(OutputFolderRefused, match=r"holds files a run state does not write \(NOTES.md, plots/\)"):
        run_training(recipe, resume_from_checkpoint="auto")
    assert (state / "NOTES.md").read_text() == "mine" and (state / "plots").is_dir()
    assert not (tmp_path / "out").exists()


def test_item6_files_added_while_a_run_writes_its_state_are_carried_into_the_next_state(stopped, state, caplog):
    (state / "NOTES.md").write_text("mine")
    with caplog.at_level(logging.WARNING, logger=run_state_module.__name__):
        save_run_state(stopped[2] / "checkpoint-1", state, source=run_state_module.read_run_state(state)["source"]["path"])
    assert (state / "NOTES.md").read_text() == "mine" and "NOTES.md is not part of a run state" in caplog.text


@pytest.mark.parametrize("inside", [False, True])
def test_item6_an_output_dir_equal_to_or_inside_the_state_folder_is_refused_at_the_start(stopped, state, inside):
    _, recipe_path, _, _ = stopped
    output = state / "out" if inside else state
    before = sorted(p.name for p in state.iterdir())
    recipe = load_recipe(recipe_path, [f"run_state.directory={state}", f"training.output_dir={output}"])
    with pytest.raises(RunStateError, match="training.output_dir .* (is the run state folder|is inside the run state "
                                            "folder) .*give an output folder outside it"):
        run_training(recipe, resume_from_checkpoint="auto")
    assert sorted(p.name for p in state.iterdir()) == before


def hold_in_another_process(lock_file: Path) -> subprocess.Popen:
    """A live process holding `lock_file`'s lock, as a run holds it."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock_file.write_text(json.dumps({"command": "gap-mllm train", "pid": 1, "host": "elsewhere", "started": 0}))
    code = ("import fcntl, os, sys, time; d = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(d, fcntl.LOCK_EX); "
            "print('held', flush=True); time.sleep(120)")
    process = subprocess.Popen([sys.executable, "-c", code, str(lock_file)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_item7_a_second_run_with_the_same_run_state_is_refused_at_the_start(stopped, state, tmp_path):
    _, recipe_path, _, _ = stopped
    before = (state / STATE_FILE).read_bytes()
    holder = hold_in_another_process(lock_file_of(state))
    try:
        recipe = load_recipe(recipe_path, [f"run_state.directory={state}", f"training.output_dir={tmp_path / 'out2'}"])
        with pytest.raises(FolderBusy, match=rf"{state} is being written by another training run \(gap-mllm train, pid 1 "
                                             r"on elsewhere"):
            run_training(recipe, resume_from_checkpoint="auto")
    finally:
        holder.kill()
        holder.wait()
    assert (state / STATE_FILE).read_bytes() == before and not (tmp_path / "out2").exists()


def test_item10_train_output_dir_follows_the_output_folder_rule(stopped, tmp_path, source_model):  # noqa: F811
    _, recipe_path, _, _ = stopped
    users = tmp_path / "mine"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    for output, refusal in ((users, r"training.output_dir .*mine is not empty \(notes.txt\) and was not written by "
                                    r"gap-mllm train \(no marker .*; give an empty or new folder"),
                            (source_model, r"training.output_dir .* is the folder of the model the run starts from")):
        before = sorted(p.name for p in output.iterdir())
        recipe = load_recipe(recipe_path, [f"training.output_dir={output}"])
        with pytest.raises(OutputFolderRefused, match=refusal):
            run_training(recipe)
        assert sorted(p.name for p in output.iterdir()) == before
    status = gap_mllm(["train", "--config", str(recipe_path), "--output-dir", str(users)])
    assert status == 2


def test_item10_a_full_disk_while_writing_the_state_names_the_state_folder(stopped, state, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_state_module, "save_file", full)
    with pytest.raises(DiskFullError, match=rf"while writing the run state of step 1 in {state}; free space there"):
        save_run_state(stopped[2] / "checkpoint-1", state, source=run_state_module.read_run_state(state)["source"]["path"])
    assert run_state_module.read_run_state(state)["global_step"] == 1  # the last state stays


# ------------------------------------------------------------------------------ items 8, 9: the state's own files


def test_item8_a_kill_between_the_two_renames_of_a_state_write_loses_nothing(state, tmp_path, source_model):  # noqa: F811
    os.rename(state, sibling(state, REPLACED_SUFFIX))  # the old state moved aside, the new one not yet renamed in
    assert not state.exists()
    restored = restore_if_newer(state, tmp_path / "out", source=source_model)
    assert restored is not None and restored.endswith("checkpoint-1") and (state / STATE_FILE).is_file()


def lfs_pointer(path: Path) -> None:
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 123\n")


@pytest.mark.parametrize("file, damage, fault", [
    (STATE_FILE, lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "model": []})),
     r"run_state.json: damaged run state file: \"model\" is list, not dict"),
    (STATE_FILE, lambda p: p.write_text(json.dumps({k: v for k, v in json.loads(p.read_text()).items() if k != "files"})),
     r"run_state.json: damaged run state file: \"files\" is missing"),
    ("checkpoint/scheduler.pt", lambda p: p.write_bytes(p.read_bytes()[:100]),
     r"checkpoint/scheduler.pt: damaged run state file: 100 bytes, \d+ when written \(truncated or replaced\)"),
    (WEIGHTS_FILE, lambda p: p.write_bytes(p.read_bytes()[:1000]), r"weights.safetensors: damaged run state file: 1000 bytes"),
    (WEIGHTS_FILE, lfs_pointer, r"weights.safetensors: damaged run state file: a Git LFS pointer, not the file"),
    (MOMENTS_FILE, lfs_pointer, r"optimizer_moments.safetensors: damaged run state file: a Git LFS pointer"),
])
def test_item9_every_damaged_state_file_is_one_line_naming_it_before_anything_is_written(state, tmp_path, source_model,
                                                                                        file, damage, fault):  # noqa: F811
    damage(state / file)
    output = tmp_path / "out"
    with pytest.raises(RunStateError, match=fault) as error:
        restore_if_newer(state, output, source=source_model)
    assert "\n" not in str(error.value) and str(state) in str(error.value)
    assert not output.exists() or not any(output.iterdir())  # no checkpoint, no tmp-checkpoint folder


# ------------------------------------------------------------------------------ item 11: what diverged, and where


def test_item11_a_diverged_run_is_one_line_naming_the_step_and_the_run(tmp_path, capsys):
    def diverging(args):
        raise TrainingDivergedError(divergence_message(7, float("nan"), str(tmp_path)))

    assert run_command("train", diverging, None) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gap-mllm train: error: training diverged at optimizer step 7: the "
                                                   f"gradient norm is nan (a NaN or infinite loss or gradient) in the run "
                                                   f"writing {tmp_path}; ")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_item11_the_finite_check_of_an_entry_flags_nan_and_infinities_and_not_large_finite_values(dtype):
    from gap_mllm.training.feature_cache import _all_finite

    largest = torch.finfo(dtype).max
    assert _all_finite(torch.full((4096,), largest, dtype=dtype))  # a sum that would overflow in the same type
    for value in (float("nan"), float("inf"), -float("inf")):
        values = torch.zeros(4096, dtype=dtype)
        values[1234] = value
        assert not _all_finite(values), value
    assert not _all_finite(torch.tensor([float("inf"), -float("inf")], dtype=dtype))  # inf - inf: NaN


def test_item11_a_cache_entry_of_nan_features_is_named_as_an_entry(tmp_path, recon_dataset, caplog):  # noqa: F811
    model, processor = tiny()
    dataset = undecoded_images(recon_dataset.select(range(1)))
    cache = FeatureCache(tmp_path, model, processor, dtype="float32")
    cache.build(model, dataset, guarded(processor, "raise"))
    key = sample_key(dataset[0])
    tensors = safetensors.torch.load_file(cache.path(key))
    tensors["geometry.0"][0, 0] = torch.nan
    safetensors.torch.save_file(tensors, cache.path(key), metadata={"vision": "merged"})
    with caplog.at_level(logging.WARNING):
        with pytest.raises(DamagedEntryError, match=rf"feature cache entry {key} in {cache.folder} is damaged \(its "
                                                    r"features geometry.0 hold NaN or infinite values\)"):
            cache.load(key, "scene0000_00")
    assert f"entry {key} (sample 'scene0000_00') is damaged" in caplog.text and "learning_rate" not in caplog.text
