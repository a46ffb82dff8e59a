"""A run state is untrusted input (training/run_state.py): what a resume checks before it continues a run.

One tiny run stopped at its time limit after step 1 of 4 with its run state (a module fixture) is shared; each case
copies the state (or the output folder), changes what a hostile or careless hand would, re-signs it where a forger
would, and resumes it, as `--resume auto` does on a fresh machine (`resume_from_run_state`, before any model is
built) or through `run_training`: refused in one line naming the field, the file or the folder, nothing written.
The cases: another recipe's settings, other data (also another seed's, on every resume path), a state folder holding
the user's files or an output folder inside or linked to it, a second run on the same state (its lock, through
links too), a kill between the renames of a state write, damaged or forged files and names, values that steer
training (rates, scheduler, step), a later format, and a failed write named by its real cause.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from gap_mllm.cli.main import main as gap_mllm
from gap_mllm.processing.errors import DiskFullError
from gap_mllm.processing.folder_lock import FolderBusy, LockFileIsALink, holding_folder, lock_file_of
from gap_mllm.processing.output_folder import MARKER, REPLACED_SUFFIX, OutputFolderRefused, sibling
from gap_mllm.processing.synth.generator import SynthRooms
from gap_mllm.processing.synth.writer import write_dataset
from gap_mllm.training import run_state as run_state_module
from gap_mllm.training.config import load_recipe
from gap_mllm.training.data_sketch import RECORD_FILE, read_sketch, sketch_data_root
from gap_mllm.training.run import resume_from_run_state, run_definition, run_state_settings, run_training
from gap_mllm.training.run_state import (
    DATA_SKETCH_FILE,
    MOMENTS_FILE,
    RUN_RECORD_FILE,
    STATE_FILE,
    WEIGHTS_FILE,
    RunStateError,
    check_state_folder,
    file_digest,
    read_run_state,
    record_digest,
    restore_if_newer,
    restore_run_state,
    resumed_data,
    save_run_state,
)
from gap_mllm.training.time_limit import TrainingStoppedAtTimeLimit

from .test_data_sketch import data, pose_files  # noqa: F401  (data: a copy of the training data root)
from .test_run_state import source_model, write_recipe  # noqa: F401  (module fixture)
from .test_train_fixtures import TRAIN_CONFIG, train_data_root  # noqa: F401


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
def state(stopped, tmp_path):  # noqa: F811
    """A copy of the stopped run's state, for a test to change."""
    return Path(shutil.copytree(stopped[3], tmp_path / "state"))


def resume(stopped, state: Path, out: Path, resume_from="auto", extra=()):  # noqa: F811
    """`--resume auto` of the stopped run's recipe with run state `state` into a fresh output folder `out`."""
    recipe = load_recipe(stopped[1], [f"run_state.directory={state}", f"training.output_dir={out}", *extra])
    return resume_from_run_state(recipe, resume_from, run_state_settings(recipe, sketch_data_root(recipe.data.data_root)))


def refused(stopped, state: Path, tmp_path: Path, match: str) -> str:  # noqa: F811
    out = tmp_path / "out"
    with pytest.raises(RunStateError) as caught:
        resume(stopped, state, out)
    message = str(caught.value)
    assert match in message and "\n" not in message, message
    assert not out.exists() or not any(out.glob("checkpoint*")), "a refused state wrote a checkpoint"
    return message


def rewrite_record(state: Path, change, sign: bool = True) -> None:
    """Change run_state.json with `change(record)`; `sign`: with its digest recomputed (as a forger would)."""
    record = json.loads((state / STATE_FILE).read_text())
    change(record)
    if sign:
        record["digest"] = record_digest(record)
    (state / STATE_FILE).write_text(json.dumps(record))


def hold_in_another_process(lock_file: Path) -> subprocess.Popen:
    """A live process holding `lock_file`'s lock, as a run holds it."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock_file.write_text(json.dumps({"command": "gap-mllm train", "pid": 1, "host": "elsewhere", "started": 0}))
    code = ("import fcntl, os, sys, time; d = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(d, fcntl.LOCK_EX); "
            "print('held', flush=True); time.sleep(120)")
    process = subprocess.Popen([sys.executable, "-c", code, str(lock_file)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def set_group(index: int, key: str, value):
    def change(record):
        record["optimizer"]["param_groups"][index][key] = value
    return change


# ------------------------------------------------------------------------------------------------- what steers training


def test_the_states_own_values_restore(stopped, state, tmp_path):  # noqa: F811
    """The checks accept what the run wrote: its step, rates at step 1 of the schedule, its scheduler."""
    assert resume(stopped, state, tmp_path / "out") == str(tmp_path / "out" / "checkpoint-1")


@pytest.mark.parametrize("key, value", [
    ("lr", 1e9), ("initial_lr", 1.0), ("eps", 1e-3), ("weight_decay", 0.5), ("betas", {"tuple": [0.5, 0.5]}),
])
def test_an_optimizer_group_value_not_the_recipes_is_refused_naming_it(stopped, state, tmp_path, key, value):
    """Case lr 1e9 and its kin: refused naming the field."""
    rewrite_record(state, set_group(0, key, value))
    message = refused(stopped, state, tmp_path, f"optimizer.param_groups[0].{key} is ")
    assert message.startswith(f"{state / STATE_FILE}: refused: its optimizer.param_groups[0].{key} is ")


def test_an_edited_scheduler_is_refused(stopped, state, tmp_path):
    """Case scheduler edited (its base rates 1e9), the file's digest re-recorded: refused."""
    path = state / "checkpoint" / "scheduler.pt"
    scheduler = torch.load(path, weights_only=True)
    scheduler["base_lrs"] = [1e9 for _ in scheduler["base_lrs"]]
    torch.save(scheduler, path)

    def change(record):
        record["files"]["checkpoint/scheduler.pt"] = {"sha256": file_digest(path), "bytes": path.stat().st_size}
    rewrite_record(state, change)
    refused(stopped, state, tmp_path, "its checkpoint's scheduler.pt holds base_lrs [1000000000.0")


@pytest.mark.parametrize("step", [10**30, -5, 0, 3])
def test_a_step_outside_the_run_or_not_its_checkpoints_is_refused(stopped, state, tmp_path, step):
    """Cases global_step 10**30 / -5 / 0 / not the checkpoint's: refused, no folder (such as `checkpoint--5`) made."""
    rewrite_record(state, lambda record: record.update(global_step=step))
    named = "and its checkpoint's trainer_state.json says 1" if step == 3 else "not a step of the run (1 to its max_steps 4)"
    refused(stopped, state, tmp_path, f"its global_step is {step}, {named}")
    assert not list(tmp_path.rglob(f"checkpoint-{step}")) and not list(tmp_path.rglob("tmp-checkpoint*"))


def test_the_settings_refusal_never_repeats_the_records_command(stopped, state, tmp_path):
    """Case `command` = "rm -rf ~ #": the record's command is never printed as advice."""
    rewrite_record(state, lambda record: record.update(command="rm -rf ~ # gap-mllm train"))
    with pytest.raises(RunStateError) as caught:
        resume(stopped, state, tmp_path / "out", extra=["training.learning_rate=0.5"])
    assert "of another run: its settings differ" in str(caught.value) and "rm -rf" not in str(caught.value)
    with pytest.raises(RunStateError) as caught:
        resume(stopped, state, tmp_path / "out", resume_from=None)
    assert "continue it with --resume auto (" in str(caught.value) and "rm -rf" not in str(caught.value)


def test_the_digest_covers_the_files_bytes(stopped, state, tmp_path):
    """Case the record's bytes edited, its parsed content the same: refused."""
    text = (state / STATE_FILE).read_text()
    (state / STATE_FILE).write_text(text.replace("\n", "\n  ", 3))
    with pytest.raises(RunStateError, match=r"its content differs from its digest \(the record was edited\)"):
        read_run_state(state)


def test_a_key_written_twice_is_refused(stopped, state, tmp_path):
    """Case a duplicate JSON key, the later one equal to the record's (it passes the digest): refused."""
    text = (state / STATE_FILE).read_text()
    (state / STATE_FILE).write_text(text.replace("{", '{"global_step": 999, ', 1))
    with pytest.raises(RunStateError, match=r'damaged run state file: the key "global_step" is written twice'):
        read_run_state(state)


# ------------------------------------------------------------------------------------------------------- a later format


def test_a_later_format_is_not_called_an_earlier_state(state):
    """Case format 5: named as written by a later version (update the package), never as an earlier state."""
    rewrite_record(state, lambda record: record.update(format=5))
    with pytest.raises(RunStateError) as caught:
        read_run_state(state)
    assert "run state format 5, written by a later version of gap-mllm" in str(caught.value)
    assert "earlier" not in str(caught.value)


# ---------------------------------------------------------------------------------- a failed write names its real cause


@pytest.mark.parametrize("text, cause", [
    ('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })',
     "no space left on "),
    ('Error while serializing: IoError(Os { code: 27, kind: FileTooLarge, message: "File too large" })',
     "file-size limit"),
])
def test_a_failed_state_write_names_the_state_folder_whichever_library_raised(stopped, tmp_path, monkeypatch,  # noqa: F811
                                                                              text, cause):
    """Case a full disk, or `ulimit -f`, under the run-state folder (a SafetensorError): one line naming the state
    folder (not the output folder), the last state kept, nothing half-written beside it."""
    _, _, out, _ = stopped
    folder = tmp_path / "states" / "run"

    def full(*args, **kwargs):
        raise SafetensorError(text)
    monkeypatch.setattr(run_state_module, "save_file", full)
    with pytest.raises(DiskFullError) as caught:
        save_run_state(out / "checkpoint-1", folder)
    message = str(caught.value)
    assert cause in message and f"in {folder}" in message and "\n" not in message
    assert not folder.parent.exists() or not any(folder.parent.iterdir())  # no half-written state beside it


def test_a_torch_save_cut_by_the_file_size_limit_is_named(stopped, tmp_path, monkeypatch):  # noqa: F811
    """Case `ulimit -f` in torch.save (RuntimeError "unexpected pos", no errno): one line naming the limit."""
    import resource

    _, _, out, state = stopped
    monkeypatch.setattr(resource, "getrlimit", lambda which: (4096, resource.RLIM_INFINITY))

    def cut(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed; unexpected pos 4096 vs 12345")
    monkeypatch.setattr(run_state_module, "save_file", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EFBIG, "x")))
    with pytest.raises(DiskFullError, match="file-size limit"):
        save_run_state(out / "checkpoint-1", tmp_path / "st")
    monkeypatch.setattr(run_state_module, "save_file", cut)
    with pytest.raises(DiskFullError, match=r"file-size limit \(ulimit -f, 4096 bytes\)"):
        save_run_state(out / "checkpoint-1", tmp_path / "st2")
    assert not (tmp_path / "st2").exists()


def test_a_checkpoint_cut_by_the_file_size_limit_is_one_line_and_leaves_no_tmp_checkpoint(tmp_path, monkeypatch,
                                                                                         source_model,  # noqa: F811
                                                                                         train_data_root):  # noqa: F811
    """Case `ulimit -f` while Trainer saves: one line, nothing half-written (no `tmp-checkpoint-1`):
    torch.save writes up to the limit and says "unexpected pos", as under a real limit (Python ignores SIGXFSZ)."""
    import resource

    from gap_mllm.training.run import run_training

    from .test_run_state import write_recipe

    real_save = torch.save

    def cut(obj, path, *args, **kwargs):
        if str(path).endswith("optimizer.pt"):
            Path(path).write_bytes(b"\0" * 4096)
            raise RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed writing file "
                               "data/0: file write failed; unexpected pos 4096 vs 20000")
        return real_save(obj, path, *args, **kwargs)
    monkeypatch.setattr(torch, "save", cut)
    monkeypatch.setattr(resource, "getrlimit", lambda which: (4096, resource.RLIM_INFINITY))
    out = tmp_path / "out"
    recipe = load_recipe(write_recipe(tmp_path, source_model, train_data_root, out), ["training.max_steps=2",
                                                                                      "training.save_steps=1"])
    with pytest.raises(DiskFullError) as caught:
        run_training(recipe)
    assert f"file-size limit (ulimit -f, 4096 bytes) while writing checkpoint-1 in {out}" in str(caught.value)
    assert not list(out.glob("tmp-checkpoint*")) and not list(out.glob("checkpoint-*"))


# -------------------------------------------------------------------------------------------- the run a state continues


def test_another_recipe_resuming_a_state_is_refused_naming_the_settings(stopped, state, tmp_path):
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


def test_a_deliberate_change_continues_a_state_on_a_fresh_machine_and_is_recorded(stopped, state, tmp_path):
    """`run_state.accept_other_settings=true`: the state's settings rule is the output folder's (run_state.py
    `check_same_settings`); the change is recorded in the training record, and the states written from then on hold
    the new settings; the learning rate, which the checkpoint's optimizer carries, is refused even then."""
    _, recipe_path, _, _ = stopped
    out = tmp_path / "new"
    opt_in = [f"run_state.directory={state}", f"training.output_dir={out}", "run_state.accept_other_settings=true"]
    with pytest.raises(RunStateError, match=r"its settings differ \(training.learning_rate: 0.001 then, 0.5 now\), "
                                            r"which a resume cannot change"):
        run_training(load_recipe(recipe_path, [*opt_in, "training.learning_rate=0.5"]), resume_from_checkpoint="auto")
    assert not out.exists() or not any(out.glob("checkpoint-*"))
    run_training(load_recipe(recipe_path, [*opt_in, "data.tasks=[detection]"]), resume_from_checkpoint="auto")
    change = {"at_step": 1, "from": "checkpoint-1",
              "settings": {"data.tasks": {"then": ["reconstruction"], "now": ["detection"]}}}
    assert json.loads((out / "gap_mllm_training.json").read_text())["changed_settings"] == [change]
    assert read_run_state(state)["global_step"] == 4 and read_run_state(state)["run"]["data.tasks"] == ["detection"]
    # the states hold the change too: the run continued on yet another machine still records it (no opt-in needed)
    assert read_run_state(state)["changes"] == [change]
    again = tmp_path / "again"
    run_training(load_recipe(recipe_path, [f"run_state.directory={state}", f"training.output_dir={again}",
                                           "data.tasks=[detection]"]), resume_from_checkpoint="auto")
    assert json.loads((again / RUN_RECORD_FILE).read_text())["changes"] == [change]
    assert json.loads((again / "gap_mllm_training.json").read_text())["changed_settings"] == [change]


def test_a_changed_camera_pose_file_is_refused_by_content(state, tmp_path, source_model, train_data_root):  # noqa: F811
    data = tmp_path / "data"
    shutil.copytree(train_data_root, data)
    changed = sorted(data.rglob("*.txt"))[0]
    raw = bytearray(changed.read_bytes())
    raw[-2] = raw[-2] ^ 1  # one bit of the pose's last value
    changed.write_bytes(bytes(raw))
    with pytest.raises(RunStateError, match=rf"other data than .*{changed.name}: its text differs"):
        restore_run_state(state, tmp_path / "restored", source=source_model, data_root=data)
    assert not (tmp_path / "restored").exists()


# ----------------------------------------------------------------------- the data it continues on, on every resume path


@pytest.fixture(scope="module")
def trained(stopped):  # noqa: F811
    """The stopped run (step 1 of 4, with its run state): `(recipe path, output folder, state folder)`."""
    _, recipe_path, out, state = stopped
    return recipe_path, out, state


@pytest.fixture(scope="module")
def other_seed(tmp_path_factory):
    """Another seed's data, written by the same command otherwise."""
    import dataclasses

    root = tmp_path_factory.mktemp("other_seed")
    write_dataset(root, SynthRooms(dataclasses.replace(TRAIN_CONFIG, seed=4)), {"train": 2, "val": 1})
    return root


@pytest.mark.parametrize("path", ["a local checkpoint and the state", "a local checkpoint", "the state on a fresh machine"])
def test_resuming_on_another_seeds_data_is_refused_on_every_resume_path_and_the_state_kept(
        trained, other_seed, tmp_path, path):
    recipe_path, out, state = trained
    out_copy, state_copy = Path(shutil.copytree(out, tmp_path / "out")), Path(shutil.copytree(state, tmp_path / "state"))
    if path == "the state on a fresh machine":
        shutil.rmtree(out_copy)

    def kept():  # the state, and the output folder's checkpoints and data record (a fresh one is only marked)
        record = out_copy / RECORD_FILE
        return ((state_copy / STATE_FILE).read_bytes(), sorted(p.name for p in out_copy.glob("*checkpoint-*")),
                record.read_bytes() if record.exists() else None)

    before = kept()
    overrides = [f"training.output_dir={out_copy}", f"data.data_root={other_seed}"]
    recipe = load_recipe(recipe_path, overrides + ([f"run_state.directory={state_copy}"] if "state" in path else []))
    with pytest.raises(RunStateError) as error:
        run_training(recipe, resume_from_checkpoint="auto")
    refused = state_copy if path == "the state on a fresh machine" else out_copy / "checkpoint-1"
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{refused}: the run trained on other data than {other_seed}: "
                                                      f"{other_seed}/")
    assert kept() == before


def test_a_resume_records_the_data_it_trained_on_not_the_data_it_is_given(trained, train_data_root, data):  # noqa: F811
    _, out, _ = trained
    pose = pose_files(data)[0]
    pose.write_text(re.sub(r"\d+\.\d+", lambda m: repr(float(m.group()) * (1 + 1e-15)), pose.read_text()))
    record = read_sketch(out / RECORD_FILE)
    kept = resumed_data(out / "checkpoint-1", sketch_data_root(data), data)
    assert kept.digest() == record.digest() == sketch_data_root(train_data_root).digest()


def test_a_local_checkpoint_whose_folder_holds_no_data_record_is_refused_unless_the_user_vouches(trained, data,
                                                                                                  tmp_path, caplog):
    _, out, _ = trained
    out_copy = Path(shutil.copytree(out, tmp_path / "out"))
    (out_copy / RECORD_FILE).unlink()
    with pytest.raises(RunStateError, match=rf"^{re.escape(str(out_copy / 'checkpoint-1'))}: its folder holds no "
                                            r"record of the data it trained on .* run_state.accept_other_data=true"):
        resumed_data(out_copy / "checkpoint-1", sketch_data_root(data), data)
    with caplog.at_level(logging.WARNING, logger=run_state_module.__name__):
        current = sketch_data_root(data)
        assert resumed_data(out_copy / "checkpoint-1", current, data, accept_other_data=True) is current
    assert "continuing on" in caplog.text


# --------------------------------------------------------------------------------------------- whose folder, who writes


def test_a_state_folder_with_the_users_files_is_refused_before_training_and_their_files_kept(stopped, state,
                                                                                                 tmp_path):
    _, recipe_path, _, _ = stopped
    (state / "NOTES.md").write_text("mine")
    (state / "plots").mkdir()
    recipe = load_recipe(recipe_path, [f"run_state.directory={state}", f"training.output_dir={tmp_path / 'out'}"])
    with pytest.raises(OutputFolderRefused, match=r"holds files a run state does not write \(NOTES.md, plots/\)"):
        run_training(recipe, resume_from_checkpoint="auto")
    assert (state / "NOTES.md").read_text() == "mine" and (state / "plots").is_dir()
    assert not (tmp_path / "out").exists()


def test_files_added_while_a_run_writes_its_state_are_carried_into_the_next_state(stopped, state, caplog):
    (state / "NOTES.md").write_text("mine")
    with caplog.at_level(logging.WARNING, logger=run_state_module.__name__):
        save_run_state(stopped[2] / "checkpoint-1", state, source=run_state_module.read_run_state(state)["source"]["path"])
    assert (state / "NOTES.md").read_text() == "mine" and "NOTES.md is not part of a run state" in caplog.text


@pytest.mark.parametrize("inside", [False, True])
def test_an_output_dir_equal_to_or_inside_the_state_folder_is_refused_at_the_start(stopped, state, inside):
    _, recipe_path, _, _ = stopped
    output = state / "out" if inside else state
    before = sorted(p.name for p in state.iterdir())
    recipe = load_recipe(recipe_path, [f"run_state.directory={state}", f"training.output_dir={output}"])
    with pytest.raises(RunStateError, match="training.output_dir .* (is the run state folder|is inside the run state "
                                            "folder) .*give an output folder outside it"):
        run_training(recipe, resume_from_checkpoint="auto")
    assert sorted(p.name for p in state.iterdir()) == before


def test_a_second_run_with_the_same_run_state_is_refused_at_the_start(stopped, state, tmp_path):
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


def test_train_output_dir_follows_the_output_folder_rule(stopped, tmp_path, source_model):  # noqa: F811
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


def test_a_full_disk_while_writing_the_state_names_the_state_folder(stopped, state, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_state_module, "save_file", full)
    with pytest.raises(DiskFullError, match=rf"while writing the run state of step 1 in {state}; free space there"):
        save_run_state(stopped[2] / "checkpoint-1", state, source=run_state_module.read_run_state(state)["source"]["path"])
    assert run_state_module.read_run_state(state)["global_step"] == 1  # the last state stays


# ------------------------------------------------------------------------------------------------------------- the lock


@pytest.mark.parametrize("which", ["output", "state"])
def test_a_linked_output_or_state_folder_takes_the_lock_of_the_folder_it_names(trained, tmp_path, which):
    recipe_path, _, _ = trained
    real, link = tmp_path / which, tmp_path / f"{which}L"
    real.mkdir()
    os.symlink(real, link)
    assert lock_file_of(link) == lock_file_of(real)
    holder = hold_in_another_process(lock_file_of(real))
    try:
        output, state = (link, tmp_path / "state2") if which == "output" else (tmp_path / "out2", link)
        recipe = load_recipe(recipe_path, [f"training.output_dir={output}", f"run_state.directory={state}"])
        with pytest.raises(FolderBusy, match=rf"is being written by another training run \(gap-mllm train, pid 1 on "
                                             rf"elsewhere, .*lock file {re.escape(str(lock_file_of(real)))}\)"):
            run_training(recipe, resume_from_checkpoint="auto")
    finally:
        holder.kill()
        holder.wait()
    assert not any(real.iterdir())


def test_a_folder_lock_file_that_is_a_link_is_refused_not_written_through(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("mine")
    os.symlink(precious, lock_file_of(tmp_path / "out"))
    with pytest.raises(LockFileIsALink, match="is a symbolic link"):
        with holding_folder(tmp_path / "out", "gap-mllm train"):
            pass
    assert precious.read_text() == "mine"


# ------------------------------------------------------------------------------------------------ the state's own files


def test_a_kill_between_the_two_renames_of_a_state_write_loses_nothing(state, tmp_path, source_model):  # noqa: F811
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
    (STATE_FILE, lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "changes": [{"at_step": "1"}]})),
     r"run_state.json: damaged run state file: \"changes\" is not a list of setting changes \(at_step, settings\)"),
    ("checkpoint/scheduler.pt", lambda p: p.write_bytes(p.read_bytes()[:100]),
     r"checkpoint/scheduler.pt: damaged run state file: 100 bytes, \d+ when written \(truncated or replaced\)"),
    (WEIGHTS_FILE, lambda p: p.write_bytes(p.read_bytes()[:1000]), r"weights.safetensors: damaged run state file: 1000 bytes"),
    (WEIGHTS_FILE, lfs_pointer, r"weights.safetensors: damaged run state file: a Git LFS pointer, not the file"),
    (MOMENTS_FILE, lfs_pointer, r"optimizer_moments.safetensors: damaged run state file: a Git LFS pointer"),
])
def test_every_damaged_state_file_is_one_line_naming_it_before_anything_is_written(state, tmp_path, source_model,
                                                                                        file, damage, fault):  # noqa: F811
    damage(state / file)
    output = tmp_path / "out"
    with pytest.raises(RunStateError, match=fault) as error:
        restore_if_newer(state, output, source=source_model)
    assert "\n" not in str(error.value) and str(state) in str(error.value)
    assert not output.exists() or not any(output.iterdir())  # no checkpoint, no tmp-checkpoint folder


def test_a_state_written_before_changes_were_kept_restores_with_none(state, tmp_path, source_model):  # noqa: F811
    rewrite_record(state, lambda record: record.pop("changes"))
    output = tmp_path / "out"
    assert restore_if_newer(state, output, source=source_model).endswith("checkpoint-1")
    assert json.loads((output / RUN_RECORD_FILE).read_text())["changes"] == []


# ------------------------------------------------------------------------------------------------ the state's own names


def test_a_checkpoint_file_named_outside_the_state_is_refused_and_nothing_written_outside(state, tmp_path,
                                                                                           source_model):  # noqa: F811
    output = tmp_path / "deep" / "er" / "out"
    victim = output.parent / "victim.txt"  # where out/tmp-checkpoint-1/checkpoint-1/../../../victim.txt lands
    victim.parent.mkdir(parents=True)
    victim.write_text("mine")
    name = "../../../victim.txt"

    def attack(record):  # listed with a digest and the record signed again: names are checked, not only digests
        record["checkpoint_files"].append(name)
        record["files"][f"checkpoint/{name}"] = {"sha256": file_digest(victim), "bytes": victim.stat().st_size}

    rewrite_record(state, attack)
    with pytest.raises(RunStateError, match=rf"run_state.json: damaged run state file: \"files\" lists "
                                            rf"'checkpoint/\.\./\.\./\.\./victim.txt', not a file of a run state"):
        restore_run_state(state, output, source=source_model)
    rewrite_record(state, lambda record: record["files"].pop(f"checkpoint/{name}"))
    with pytest.raises(RunStateError, match=r"damaged run state file: \"checkpoint_files\" lists '\.\./\.\./\.\./"
                                            r"victim.txt', not a file of its checkpoint/ folder listed in \"files\""):
        restore_run_state(state, output, source=source_model)
    assert victim.read_text() == "mine" and not output.exists()


def test_a_run_state_json_edited_without_its_digest_is_refused(state, tmp_path, source_model):  # noqa: F811
    rewrite_record(state, lambda record: record.update(global_step=3), sign=False)
    with pytest.raises(RunStateError, match=r"run_state.json: damaged run state file: its content differs from its "
                                            r"digest \(the record was edited\)"):
        restore_run_state(state, tmp_path / "out", source=source_model)
    assert not (tmp_path / "out").exists()


def test_a_state_file_that_is_a_link_is_refused(state, tmp_path, source_model):  # noqa: F811
    scheduler = state / "checkpoint" / "scheduler.pt"
    shutil.move(scheduler, tmp_path / "scheduler.pt")
    os.symlink(tmp_path / "scheduler.pt", scheduler)  # the same bytes, through a link
    with pytest.raises(RunStateError, match=rf"{re.escape(str(scheduler))}: damaged run state: a symbolic link"):
        restore_run_state(state, tmp_path / "out", source=source_model)
    assert not (tmp_path / "out").exists()


def test_a_linked_state_folder_is_written_through_to_its_target(trained, tmp_path, source_model):  # noqa: F811
    _, out, _ = trained
    target = tmp_path / "repo" / "state"
    target.mkdir(parents=True)
    link = tmp_path / "st"
    os.symlink(target, link)
    for _ in range(2):  # the first state and the next one
        save_run_state(out / "checkpoint-1", link, source=source_model, data_root=None)
        assert link.is_symlink() and read_run_state(target)["global_step"] == 1
    assert sorted(p.name for p in target.iterdir()) == ["README.md", "checkpoint", "optimizer_moments.safetensors",
                                                        "run_state.json", "weights.safetensors"]


def test_a_users_file_inside_the_states_checkpoint_folder_is_kept_by_the_next_write_and_refused_at_the_start(
        trained, state, tmp_path, caplog, source_model):  # noqa: F811
    recipe_path, out, _ = trained
    notes = state / "checkpoint" / "notes.txt"
    notes.write_text("mine")
    with caplog.at_level(logging.WARNING, logger=run_state_module.__name__):
        save_run_state(out / "checkpoint-1", state, source=source_model, data_description=read_sketch(
            out / RECORD_FILE))
    assert notes.read_text() == "mine" and "checkpoint/notes.txt is not part of a run state" in caplog.text
    assert "checkpoint/notes.txt" not in read_run_state(state)["files"]
    with pytest.raises(OutputFolderRefused, match=r"holds files a run state does not write \(checkpoint/notes.txt\)"):
        check_state_folder(state, tmp_path / "out")


def test_an_output_folder_that_is_a_link_to_the_state_folder_is_refused_at_the_start(trained, tmp_path):
    recipe_path, _, _ = trained
    state = tmp_path / "state"
    state.mkdir()
    link = tmp_path / "outL"
    os.symlink(state, link)
    recipe = load_recipe(recipe_path, [f"training.output_dir={link}", f"run_state.directory={state}"])
    with pytest.raises(RunStateError, match=rf"training.output_dir {re.escape(str(link))} is the run state folder "
                                            r"run_state.directory=.* \(links followed\), which every state write"):
        run_training(recipe, resume_from_checkpoint="auto")
    assert not any(state.iterdir())


def test_the_state_records_its_data_sketch_as_a_listed_file(trained):
    _, _, state = trained
    record = read_run_state(state)
    assert record["format"] == 4 and record["data"]["sketch"] == record["files"][DATA_SKETCH_FILE]["sha256"]
    assert record["data"]["files"] == len(read_sketch(state / DATA_SKETCH_FILE).names)


def test_a_state_folder_with_the_users_files_is_refused_in_words_that_read(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / STATE_FILE).write_text("{}")
    (state / "NOTES.md").write_text("mine")
    with pytest.raises(OutputFolderRefused) as refused:
        check_state_folder(state)
    assert str(refused.value) == (f"run_state.directory {state} is not empty (NOTES.md, run_state.json) and holds files a "
                                  "run state does not write (NOTES.md): the folder is the run state's alone (move them "
                                  "out); give an empty or new folder")
    assert ", or;" not in str(refused.value) and (state / "NOTES.md").read_text() == "mine"
    assert MARKER not in [p.name for p in state.iterdir()]
