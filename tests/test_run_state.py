"""Run state in git (training/run_state.py): a run stopped after its first step, its state committed, cloned and
continued by a fresh `gap-mllm train` process in the clone, ends with the weights of the uninterrupted run (float32
moments: exactly; bfloat16 moments: within a stated tolerance); a restore is refused, with nothing written, for
another source model, other data or changed weights; the best model and SIGTERM take the same path."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from transformers import TrainerControl, TrainerState

from gap_mllm.training.config import load_recipe
from gap_mllm.training.run import run_training
from gap_mllm.training.run_state import (
    BEST_FOLDER,
    STATE_FILE,
    WEIGHTS_FILE,
    RunStateError,
    file_digest,
    record_digest,
    restore_run_state,
    save_run_state,
)
from gap_mllm.training.time_limit import TimeLimitCallback, TrainingStoppedAtTimeLimit

from .test_train_fixtures import tiny, train_data_root  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "init.defaultBranch=main"]


@pytest.fixture(scope="module")
def source_model(tmp_path_factory):
    """The model folder the runs start from (its tensors are what a state does not copy)."""
    folder = tmp_path_factory.mktemp("source")
    model, processor = tiny()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def write_recipe(tmp_path, source, data_root, output_dir) -> Path:
    recipe = {"stage": "pretrain", "model": {"name_or_path": str(source)},
              "data": {"data_root": str(data_root), "cache_dir": str(tmp_path / "hf")},
              "training": {"output_dir": str(output_dir), "use_cpu": True, "report_to": "none", "max_steps": 4,
                           "per_device_train_batch_size": 2, "learning_rate": 1e-3, "logging_steps": 1,
                           "save_strategy": "steps", "save_steps": 2, "disable_tqdm": True,
                           "train_sampling_strategy": "random", "seed": 0, "dataloader_num_workers": 0}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def final_weights(folder) -> dict[str, torch.Tensor]:
    return load_file(Path(folder) / "model.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, source_model, train_data_root):
    tmp = tmp_path_factory.mktemp("straight")
    recipe = load_recipe(write_recipe(tmp, source_model, train_data_root, tmp / "out"))
    run_training(recipe)
    return final_weights(tmp / "out")


def commit_and_clone(work: Path, state: Path) -> Path:
    """A git repository holding the state folder, and a fresh clone of it: what a later session gets."""
    subprocess.run([*GIT, "init", "-q", str(work)], check=True)
    subprocess.run([*GIT, "-C", str(work), "add", state.relative_to(work).as_posix()], check=True)
    subprocess.run([*GIT, "-C", str(work), "commit", "-q", "-m", "run state"], check=True)
    clone = work.parent / "clone"
    subprocess.run([*GIT, "clone", "-q", str(work), str(clone)], check=True)
    return clone


# float32 moments: exact, in a fresh process of a fresh clone; bfloat16 moments (the Mini's stage-2 state) round
# each moment to 8 significant bits once per restore: within 2e-5 of the uninterrupted weights after 3 more steps at
# lr 1e-3 (measured: about 4e-6), in-process
@pytest.mark.parametrize("moments, atol, fresh_process", [("float32", 0.0, True), ("bfloat16", 2e-5, False)])
def test_a_run_continued_from_its_committed_state_in_a_fresh_clone_ends_as_the_uninterrupted_run(
        tmp_path, source_model, train_data_root, uninterrupted, moments, atol, fresh_process):
    work = tmp_path / "repo"
    state = work / "runs-state" / "stage"
    recipe = load_recipe(write_recipe(tmp_path, source_model, train_data_root, tmp_path / "session1"),
                         [f"run_state.directory={state}", f"run_state.moments_dtype={moments}", "time_limit_s=1e-9"])
    with pytest.raises(TrainingStoppedAtTimeLimit) as stop:  # past the limit after step 1: saved, state written
        run_training(recipe, resume_from_checkpoint="auto")
    assert stop.value.result.global_step == 1
    record = json.loads((state / STATE_FILE).read_text())
    assert record["global_step"] == 1 and record["max_steps"] == 4 and record["optimizer"]["moments_dtype"] == moments
    assert record["source"]["path"] == str(source_model) and record["data"]["folder"] == train_data_root.name
    # the untrained tensors come from the source: the trained ones are all that is stored
    assert 0 < record["model"]["stored"] < len(record["model"]["from_source"]) + record["model"]["stored"]
    assert not list(state.rglob("*.py")) and not (state / "checkpoint" / "optimizer.pt").exists()

    clone = commit_and_clone(work, state)
    shutil.rmtree(tmp_path / "session1")  # the machine is gone: only the repository is left
    fresh_out = tmp_path / "session2"
    if fresh_process:
        command = [sys.executable, "-m", "gap_mllm.cli.main", "train", "--config", str(tmp_path / "recipe.yaml"),
                   "--resume", "auto", "--output-dir", str(fresh_out), "--run-state", str(clone / "runs-state" / "stage")]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert done.returncode == 0, done.stderr[-3000:]
        assert "restored step 1 of 4 from the run state" in done.stderr
        assert "trained 4 steps" in done.stdout
    else:
        recipe = load_recipe(tmp_path / "recipe.yaml", [f"run_state.directory={clone / 'runs-state' / 'stage'}",
                                                        f"training.output_dir={fresh_out}"])
        assert run_training(recipe, resume_from_checkpoint="auto").global_step == 4
    resumed = final_weights(fresh_out)
    assert resumed.keys() == uninterrupted.keys()
    for name in uninterrupted:
        torch.testing.assert_close(resumed[name], uninterrupted[name], atol=atol, rtol=0, msg=name)
    # the clone's state now holds the last checkpoint of the continued run, without moments (nothing trains from it)
    last = json.loads((clone / "runs-state" / "stage" / STATE_FILE).read_text())
    assert last["global_step"] == last["max_steps"] == 4 and last["optimizer"] is None
    assert not (clone / "runs-state" / "stage" / "optimizer_moments.safetensors").exists()
    if fresh_process:  # the finished state rebuilds the finished run: nothing trained, the same final weights
        again = tmp_path / "session3"
        recipe = load_recipe(tmp_path / "recipe.yaml", [f"run_state.directory={clone / 'runs-state' / 'stage'}",
                                                        f"training.output_dir={again}"])
        assert run_training(recipe, resume_from_checkpoint="auto").global_step == 4
        assert all(torch.equal(final_weights(again)[name], resumed[name]) for name in resumed)


def checkpoint_and_state(tmp_path, source_model, train_data_root):
    recipe = load_recipe(write_recipe(tmp_path, source_model, train_data_root, tmp_path / "out"),
                         [f"run_state.directory={tmp_path / 'state'}", "time_limit_s=1e-9"])
    with pytest.raises(TrainingStoppedAtTimeLimit):
        run_training(recipe, resume_from_checkpoint="auto")
    return tmp_path / "out" / "checkpoint-1", tmp_path / "state"


def test_a_restore_is_refused_for_another_source_other_data_or_changed_weights(tmp_path, source_model, train_data_root):
    _, state = checkpoint_and_state(tmp_path, source_model, train_data_root)
    target = tmp_path / "elsewhere"

    other = tmp_path / "other_source"
    model, processor = tiny(seed=1)
    model.save_pretrained(other)
    with pytest.raises(RunStateError, match="holds other weights"):
        restore_run_state(state, target, source=other, data_root=train_data_root)

    changed_data = tmp_path / "changed_data"
    shutil.copytree(train_data_root, changed_data)
    annotation = next(p for p in sorted(changed_data.rglob("*.json*")) if p.is_file())
    annotation.write_text(annotation.read_text() + " ")
    with pytest.raises(RunStateError, match=rf"other data than .*changed_data: .*{annotation.name}: its text differs"):
        restore_run_state(state, target, source=source_model, data_root=changed_data)

    weights = load_file(state / WEIGHTS_FILE)
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1
    save_file(weights, state / WEIGHTS_FILE, metadata={"format": "pt"})
    with pytest.raises(RunStateError, match=r"weights.safetensors: damaged run state file: its sha256 differs"):
        restore_run_state(state, target, source=source_model, data_root=train_data_root)
    assert not any(target.rglob("checkpoint-*")) if target.exists() else True


def _nudge_numbers(data: Path, factor: float) -> None:
    """Every decimal number of one scene record and of one pose file times `factor`, written back at full precision
    (1 + 1e-15: the last digits another CPU's float maths gives; 1 + 1e-6: other values). A number whose written
    form that would change (1.5 -> 1.5000000000000016) is kept: another CPU moves a full repr's last digits only."""
    import re

    from gap_mllm.training.data_sketch import number_forms

    def scaled(match):
        nudged = repr(float(match.group()) * factor)
        same_form = number_forms(match.group().encode())[0].tobytes() == number_forms(nudged.encode())[0].tobytes()
        return nudged if same_form else match.group()

    number = re.compile(r"-?\d+\.\d+(?:[eE][-+]?\d+)?")
    record = next(p for p in sorted(data.rglob("*.json")) if number.search(p.read_text()))
    pose = next(p for p in sorted(data.rglob("*.txt")) if number.search(p.read_text()))
    for path in (record, pose):
        before = path.read_text()
        path.write_text(number.sub(scaled, before))
        assert path.read_text() != before


def test_numbers_that_differ_in_their_last_digits_restore_and_other_numbers_do_not(tmp_path, source_model,
                                                                                  train_data_root):
    """Data written again on another CPU (the records' and poses' numbers in their last digits) continue the run;
    numbers that differ by 1e-6 are other data. A state written before the data sketch (format 2) is refused on the
    rewritten data, naming run_state.accept_other_data, and continues with it."""
    _, state = checkpoint_and_state(tmp_path, source_model, train_data_root)
    last_digits = tmp_path / "last_digits"
    shutil.copytree(train_data_root, last_digits)
    _nudge_numbers(last_digits, 1 + 1e-15)
    assert restore_run_state(state, tmp_path / "restored", source=source_model, data_root=last_digits).is_dir()

    other_values = tmp_path / "other_values"
    shutil.copytree(train_data_root, other_values)
    _nudge_numbers(other_values, 1 + 1e-6)
    with pytest.raises(RunStateError, match=r"other data than .*other_values: .*other_values/annotations/.*json: its "
                                            r"decimal numbers 1-\d+ of \d+ are not the recorded ones \(they differ by "
                                            r"more than another CPU's last digits, 1e-12 relative\) \(and 1 more file "
                                            r"differs\)"):
        restore_run_state(state, tmp_path / "refused", source=source_model, data_root=other_values)

    record = json.loads((state / STATE_FILE).read_text())  # as a state of the earlier format recorded its data
    record.update(format=2, data={"folder": train_data_root.name, "records": "0" * 64, "files": 1})
    del record["digest"], record["files"]["data_sketch.safetensors"]
    (state / "data_sketch.safetensors").unlink()
    (state / STATE_FILE).write_text(json.dumps(record))
    with pytest.raises(RunStateError, match=r"format 2, before the per-file sketch\), so .*last_digits cannot be "
                                            r"checked .* run_state.accept_other_data=true continues on them"):
        restore_run_state(state, tmp_path / "refused_old", source=source_model, data_root=last_digits)
    assert not (tmp_path / "refused").exists() and not (tmp_path / "refused_old").exists()
    assert restore_run_state(state, tmp_path / "accepted", source=source_model, data_root=last_digits,
                             accept_other_data=True).is_dir()


def test_images_encoded_otherwise_with_the_same_pixels_restore_and_other_pixels_do_not(tmp_path, source_model,
                                                                                     train_data_root):
    import numpy as np
    import PIL.Image

    _, state = checkpoint_and_state(tmp_path, source_model, train_data_root)
    data = tmp_path / "rewritten_data"
    shutil.copytree(train_data_root, data)
    image = sorted(data.rglob("*.png"))[0]
    pixels = np.asarray(PIL.Image.open(image)).copy()
    before = image.read_bytes()
    PIL.Image.fromarray(pixels).save(image, compress_level=1)  # another encoder setting: other bytes, same pixels
    assert image.read_bytes() != before
    assert restore_run_state(state, tmp_path / "restored", source=source_model, data_root=data).is_dir()

    pixels[0, 0] = ~pixels[0, 0]  # every bit of one pixel flipped (uint8)
    PIL.Image.fromarray(pixels).save(image)
    with pytest.raises(RunStateError, match=rf"{image.name}: its pixels differ"):
        restore_run_state(state, tmp_path / "restored_again", source=source_model, data_root=data)


def test_a_fresh_run_does_not_overwrite_another_runs_state(tmp_path, source_model, train_data_root):
    _, state = checkpoint_and_state(tmp_path, source_model, train_data_root)
    recipe = load_recipe(tmp_path / "recipe.yaml", [f"run_state.directory={state}",
                                                    f"training.output_dir={tmp_path / 'new'}"])
    before = (state / STATE_FILE).read_bytes()
    with pytest.raises(RunStateError, match="holds step 1 of a run.*--resume auto"):
        run_training(recipe, resume_from_checkpoint=None)
    assert (state / STATE_FILE).read_bytes() == before


def test_a_state_folder_of_the_users_files_is_refused_before_training_and_kept(tmp_path, source_model, train_data_root):
    from gap_mllm.processing.output_folder import OutputFolderRefused

    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "todo.txt").write_text("mine")
    recipe = load_recipe(write_recipe(tmp_path, source_model, train_data_root, tmp_path / "out"),
                         [f"run_state.directory={mine}"])
    with pytest.raises(OutputFolderRefused, match=r"run_state.directory .*notes is not empty \(todo.txt\) and holds no "
                                                  r"run state \(no run_state.json\); give an empty or new folder"):
        run_training(recipe, resume_from_checkpoint="auto")
    assert sorted(p.name for p in mine.iterdir()) == ["todo.txt"] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_best_model_comes_back_with_the_state(tmp_path, source_model, train_data_root, dtype):
    checkpoint, _ = checkpoint_and_state(tmp_path, source_model, train_data_root)
    best = tmp_path / "out" / BEST_FOLDER
    model, _ = tiny()
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "language_model" in n).add_(0.123456789)
    model.save_pretrained(best)
    (best / "best.json").write_text(json.dumps({"step": 1, "metric": "gen_x", "value": 0.5, "figures": {}}))
    state = tmp_path / "state_with_best"
    save_run_state(checkpoint, state, source=source_model, best_dir=best, best_dtype=dtype)
    restored = tmp_path / "restored"
    restore_run_state(state, restored, source=source_model)
    got, expected = final_weights(restored / BEST_FOLDER), final_weights(best)
    assert json.loads((restored / BEST_FOLDER / "best.json").read_text())["value"] == 0.5
    source = final_weights(source_model)
    trained = [name for name in expected if not torch.equal(expected[name], source[name])]
    assert len(trained) == 1
    for name in expected:  # tensors equal to the source's come from it exactly; the trained one in `dtype`
        rounded = dtype == "bfloat16" and name in trained
        want = expected[name].to(torch.bfloat16).to(expected[name].dtype) if rounded else expected[name]
        assert torch.equal(got[name], want), name


def _old_form_best(state: Path, stored: dict, from_source: dict) -> None:
    """Rewrite `state`'s best model as states before `best.from_checkpoint` kept it: `stored` (every tensor that
    differs from the source, rounded to bfloat16, `best_dtype`) in best/weights.safetensors under their own dtype
    (float32), the others `from_source` ({name: dtype}), no `from_checkpoint`; signed again."""
    save_file(stored, state / BEST_FOLDER / WEIGHTS_FILE, metadata={"format": "pt"})
    record = json.loads((state / STATE_FILE).read_text())
    record["best"].pop("from_checkpoint", None)
    record["best"]["from_source"] = from_source
    record["best"]["dtype"] = "bfloat16"
    record["best"]["stored_dtypes"] = {name: "float32" for name in stored}
    path = state / BEST_FOLDER / WEIGHTS_FILE
    record["files"][f"{BEST_FOLDER}/{WEIGHTS_FILE}"] = {"sha256": file_digest(path), "bytes": path.stat().st_size}
    record["digest"] = record_digest(record)
    (state / STATE_FILE).write_text(json.dumps(record))


def test_a_best_model_of_the_checkpoints_step_comes_back_exactly_and_costs_no_bytes(tmp_path, source_model,
                                                                                   train_data_root):
    # the ablation's stage 2 keeps its last step as its best: rebuilt from the state, its final folder must be the
    # one its session evaluated (answers kept for it are reused only then), whatever `best_dtype` rounds
    checkpoint, _ = checkpoint_and_state(tmp_path, source_model, train_data_root)
    best = tmp_path / "out" / BEST_FOLDER
    best.mkdir()
    for name in ("model.safetensors", "config.json"):
        shutil.copy2(checkpoint / name, best / name)
    (best / "best.json").write_text(json.dumps({"step": 1, "metric": "gen_x", "value": 0.5, "figures": {}}))
    expected, source = final_weights(best), final_weights(source_model)
    trained = {name: t for name, t in expected.items() if not torch.equal(t, source[name])}
    untrained = {name: str(t.dtype).removeprefix("torch.") for name, t in expected.items() if name not in trained}
    assert trained and all(t.dtype == torch.float32 for t in trained.values())
    assert any(not torch.equal(t.to(torch.bfloat16).float(), t) for t in trained.values())  # bfloat16 would round

    state = tmp_path / "state_with_best"
    save_run_state(checkpoint, state, source=source_model, best_dir=best, best_dtype="bfloat16")
    assert load_file(state / BEST_FOLDER / WEIGHTS_FILE) == {}
    assert set(json.loads((state / STATE_FILE).read_text())["best"]["from_checkpoint"]) == set(expected)
    restore_run_state(state, tmp_path / "restored", source=source_model)
    got = final_weights(tmp_path / "restored" / BEST_FOLDER)
    assert set(got) == set(expected) and all(torch.equal(got[name], expected[name]) for name in expected)

    # a state written before `from_checkpoint` kept such a best rounded: it is the checkpoint's model, taken exactly
    _old_form_best(state, {name: t.to(torch.bfloat16) for name, t in trained.items()}, untrained)
    restore_run_state(state, tmp_path / "restored_old", source=source_model)
    got = final_weights(tmp_path / "restored_old" / BEST_FOLDER)
    assert all(torch.equal(got[name], expected[name]) for name in expected)

    # ... once its stored copy agrees: a tensor that is not the checkpoint's rounded is refused, nothing written
    changed = {name: t.to(torch.bfloat16) for name, t in trained.items()}
    first = sorted(changed)[0]
    changed[first] = changed[first] + 1
    _old_form_best(state, changed, untrained)
    with pytest.raises(RunStateError, match=rf"best model, kept at the checkpoint's step, holds '{first}' other than "
                                            r"the checkpoint's"):
        restore_run_state(state, tmp_path / "restored_bad", source=source_model)
    assert not (tmp_path / "restored_bad").exists()


def test_sigterm_while_training_stops_at_the_next_step_with_a_checkpoint():
    callback = TimeLimitCallback(1e9)
    state, control = TrainerState(max_steps=10), TrainerControl()
    callback.on_train_begin(None, state, control)
    try:
        state.global_step = 3
        callback.on_step_end(None, state, control)
        assert not control.should_training_stop
        os.kill(os.getpid(), signal.SIGTERM)  # handled: the test process goes on
        callback.on_step_end(None, state, control)
        assert control.should_save and control.should_training_stop and callback.terminated
    finally:
        callback.on_train_end(None, state, control)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # outside training, SIGTERM means what it did


def test_the_minis_run_state_folder_is_not_ignored_by_git():
    """A run state in the repository (mini/README.md, "A run longer than a session": the fifth release's
    `mini/stage2-run/` until it shipped) must reach it whole: none of its files may match an ignore rule."""
    files = ["mini/stage2-run/run_state.json", "mini/stage2-run/weights.safetensors",
             "mini/stage2-run/optimizer_moments.safetensors", "mini/stage2-run/data_sketch.safetensors",
             "mini/stage2-run/checkpoint/trainer_state.json",
             "mini/stage2-run/checkpoint/rng_state.pth", "mini/stage2-run/checkpoint/training_args.bin",
             "mini/stage2-run/checkpoint/scheduler.pt", "mini/stage2-run/best/weights.safetensors"]
    ignored = subprocess.run(["git", "-C", str(REPO), "check-ignore", "--no-index", *files], capture_output=True, text=True)
    assert ignored.stdout == "", ignored.stdout


def test_a_fresh_models_state_takes_its_encoders_from_the_folder_they_came_from(tmp_path, source_model, train_data_root):
    """A fresh model (`model.tiny`) whose encoders came from `model.encoders_from` (the Mini's stage 1): its state
    stores the trained weights only, names that folder as its source, restores exactly from it and refuses another."""
    path = write_recipe(tmp_path, source_model, train_data_root, tmp_path / "out")
    recipe = yaml.safe_load(path.read_text())
    recipe["model"] = {"tiny": "tiny", "seed": 3, "encoders_from": str(source_model)}
    path.write_text(yaml.safe_dump(recipe))
    state = tmp_path / "state"
    with pytest.raises(TrainingStoppedAtTimeLimit):
        run_training(load_recipe(path, [f"run_state.directory={state}", "time_limit_s=1e-9"]),
                     resume_from_checkpoint="auto")
    record = json.loads((state / STATE_FILE).read_text())
    assert record["source"]["path"] == str(source_model)
    stored = load_file(state / WEIGHTS_FILE)
    encoders = [name for name in record["model"]["from_source"] if name.startswith(("model.geometry_encoder.", "model.visual."))]
    assert encoders and not [name for name in stored if name in encoders]
    assert record["model"]["stored"] == len(stored) > 0  # the fresh LLM trained: stored

    other = tmp_path / "other_source"
    tiny(seed=1)[0].save_pretrained(other)
    with pytest.raises(RunStateError, match="holds other weights"):
        restore_run_state(state, tmp_path / "elsewhere", source=other, data_root=train_data_root)
    checkpoint = restore_run_state(state, tmp_path / "rebuilt", source=source_model, data_root=train_data_root)
    rebuilt = load_file(Path(checkpoint) / "model.safetensors")
    original = load_file(tmp_path / "out" / "checkpoint-1" / "model.safetensors")
    assert rebuilt.keys() == original.keys() and all(torch.equal(rebuilt[n], original[n]) for n in original)
