"""Issue 83, items 5, 7 and 9 (run-state side): a run state is untrusted input.

One tiny run stopped after step 1 of 4 with its run state (round 5's module fixture, one per module); each case
copies the state, changes what a hostile or careless hand would, re-signs it where a forger would, and resumes it as
`--resume auto` does on a fresh machine (`resume_from_run_state`, before any model is built): refused in one line
naming the field, nothing written.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from gap_mllm.processing.errors import DiskFullError
from gap_mllm.training import run_state as run_state_module
from gap_mllm.training.config import load_recipe
from gap_mllm.training.data_sketch import sketch_data_root
from gap_mllm.training.run import resume_from_run_state, run_state_settings
from gap_mllm.training.run_state import (
    STATE_FILE,
    RunStateError,
    file_digest,
    read_run_state,
    save_run_state,
)

from .test_hardening_round5 import stopped  # noqa: F401  (module fixture)
from .test_hardening_round6_state import rewrite_record  # re-signed as a forger would
from .test_run_state import source_model  # noqa: F401  (module fixture)
from .test_train_fixtures import train_data_root  # noqa: F401


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


def set_group(index: int, key: str, value):
    def change(record):
        record["optimizer"]["param_groups"][index][key] = value
    return change


# ------------------------------------------------------------------------------ item 5: what steers training


def test_the_states_own_values_restore(stopped, state, tmp_path):  # noqa: F811
    """The checks accept what the run wrote: its step, rates at step 1 of the schedule, its scheduler."""
    assert resume(stopped, state, tmp_path / "out") == str(tmp_path / "out" / "checkpoint-1")


@pytest.mark.parametrize("key, value", [
    ("lr", 1e9), ("initial_lr", 1.0), ("eps", 1e-3), ("weight_decay", 0.5), ("betas", {"tuple": [0.5, 0.5]}),
])
def test_an_optimizer_group_value_not_the_recipes_is_refused_naming_it(stopped, state, tmp_path, key, value):
    """Case lr 1e9 and its kin (silent -> refused naming the field)."""
    rewrite_record(state, set_group(0, key, value))
    message = refused(stopped, state, tmp_path, f"optimizer.param_groups[0].{key} is ")
    assert message.startswith(f"{state / STATE_FILE}: refused: its optimizer.param_groups[0].{key} is ")


def test_an_edited_scheduler_is_refused(stopped, state, tmp_path):
    """Case scheduler edited (its base rates 1e9), the file's digest re-recorded (silent -> refused)."""
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
    """Cases global_step 10**30 / -5 / 0 / not the checkpoint's (silent, `checkpoint--5` -> refused, no folder)."""
    rewrite_record(state, lambda record: record.update(global_step=step))
    named = "and its checkpoint's trainer_state.json says 1" if step == 3 else "not a step of the run (1 to its max_steps 4)"
    refused(stopped, state, tmp_path, f"its global_step is {step}, {named}")
    assert not list(tmp_path.rglob(f"checkpoint-{step}")) and not list(tmp_path.rglob("tmp-checkpoint*"))


def test_the_settings_refusal_never_repeats_the_records_command(stopped, state, tmp_path):
    """Case `command` = "rm -rf ~ #" (printed as advice -> never printed)."""
    rewrite_record(state, lambda record: record.update(command="rm -rf ~ # gap-mllm train"))
    with pytest.raises(RunStateError) as caught:
        resume(stopped, state, tmp_path / "out", extra=["training.learning_rate=0.5"])
    assert "of another run: its settings differ" in str(caught.value) and "rm -rf" not in str(caught.value)
    with pytest.raises(RunStateError) as caught:
        resume(stopped, state, tmp_path / "out", resume_from=None)
    assert "continue it with --resume auto (" in str(caught.value) and "rm -rf" not in str(caught.value)


def test_the_digest_covers_the_files_bytes(stopped, state, tmp_path):
    """Case the record's bytes edited, its parsed content the same (accepted -> refused)."""
    text = (state / STATE_FILE).read_text()
    (state / STATE_FILE).write_text(text.replace("\n", "\n  ", 3))
    with pytest.raises(RunStateError, match=r"its content differs from its digest \(the record was edited\)"):
        read_run_state(state)


def test_a_key_written_twice_is_refused(stopped, state, tmp_path):
    """Case a duplicate JSON key, the later one equal to the record's (passes the digest -> refused)."""
    text = (state / STATE_FILE).read_text()
    (state / STATE_FILE).write_text(text.replace("{", '{"global_step": 999, ', 1))
    with pytest.raises(RunStateError, match=r'damaged run state file: the key "global_step" is written twice'):
        read_run_state(state)


# ------------------------------------------------------------------------------ item 9: a later format


def test_a_later_format_is_not_called_an_earlier_state(state):
    """Case format 5 ("an earlier state" -> written by a later version, update the package)."""
    rewrite_record(state, lambda record: record.update(format=5))
    with pytest.raises(RunStateError) as caught:
        read_run_state(state)
    assert "run state format 5, written by a later version of gap-mllm" in str(caught.value)
    assert "earlier" not in str(caught.value)


# ------------------------------------------------------------------------------ item 7: the real cause, run-state side


@pytest.mark.parametrize("text, cause", [
    ('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })',
     "no space left on "),
    ('Error while serializing: IoError(Os { code: 27, kind: FileTooLarge, message: "File too large" })',
     "file-size limit"),
])
def test_a_failed_state_write_names_the_state_folder_whichever_library_raised(stopped, tmp_path, monkeypatch,  # noqa: F811
                                                                              text, cause):
    """Case a full disk, or `ulimit -f`, under the run-state folder (SafetensorError, raw or blamed on the output
    folder -> one line naming the state folder, the last state kept, nothing half-written beside it)."""
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
    """Case `ulimit -f` in torch.save (RuntimeError "unexpected pos", no errno -> one line naming the limit)."""
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
    """Case `ulimit -f` while Trainer saves (two tracebacks and `tmp-checkpoint-1` -> one line, nothing half-written):
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
