"""Round 6, sections 1 and 2: "same data" means the same data, and a lock and a run state that cannot be walked around.

Each test names its case. The data cases sketch a copy of the training data root with one change and check it
against the sketch of the original (`check_same_data`, what every resume path calls); the resume cases run the tiny
model for one step once (a module fixture) and resume from its checkpoint or state; the lock and state cases take
the smallest real path that reproduces each (the function the run calls).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from gap_mllm.evaluation.folder_lock import evaluation_folder_lock
from gap_mllm.processing.folder_lock import FolderBusy, LockFileIsALink, holding_folder, lock_file_of
from gap_mllm.processing.output_folder import OutputFolderRefused
from gap_mllm.processing.synth.generator import SynthRooms
from gap_mllm.processing.synth.writer import write_dataset
from gap_mllm.training import run_state as run_state_module
from gap_mllm.training.config import load_recipe
from gap_mllm.training.data_sketch import BLOCK, RECORD_FILE, compare_data, number_forms, read_sketch
from gap_mllm.training.data_sketch import sketch_data_root
from gap_mllm.training.run import run_training
from gap_mllm.training.run_state import (
    DATA_SKETCH_FILE,
    STATE_FILE,
    RunStateError,
    check_same_data,
    check_state_folder,
    file_digest,
    read_run_state,
    record_digest,
    restore_run_state,
    resumed_data,
    save_run_state,
)

from .test_hardening_round5 import hold_in_another_process, stopped  # noqa: F401  (module fixture)
from .test_run_state import source_model  # noqa: F401  (module fixture)
from .test_train_fixtures import TRAIN_CONFIG, train_data_root  # noqa: F401

RECONS = Path("annotations") / "scannet_recons_train_4frames.json"
POSES = Path("scannet") / "posed_images"
# a reconstruction target as the annotation file holds it (a JSON answer inside a JSON string)
TARGET = re.compile(r'(\\"pointmap\\": \[)(-?\d+\.\d+), (-?\d+\.\d+), (-?\d+\.\d+)\]')


@pytest.fixture(scope="module")
def recorded(train_data_root):  # noqa: F811
    """The sketch of the data the run trained on."""
    return sketch_data_root(train_data_root)


@pytest.fixture
def data(train_data_root, tmp_path):  # noqa: F811
    """A copy of the training data root, for a test to change."""
    return Path(shutil.copytree(train_data_root, tmp_path / "data"))


def refusal(recorded, root) -> str:
    """The one-line refusal of a resume on `root` (the check every resume path makes)."""
    with pytest.raises(RunStateError) as error:
        check_same_data(recorded, sketch_data_root(root), "runs/state", root)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"runs/state: the run trained on other data than {root}: ")
    return message


def numbers_refused(message: str, path: Path, more: int = 0) -> bool:
    """`message` names `path` as the first file whose decimal numbers are not the recorded ones."""
    tail = "" if not more else rf" \(and {more} more files? differs?\)"
    return re.search(rf": {re.escape(str(path))}: its decimal numbers \d+-\d+ of \d+ are not the recorded ones \(they "
                     rf"differ by more than another CPU's last digits, 1e-12 relative\){tail}; continuing it there",
                     message) is not None


def edit_targets(path: Path, change) -> None:
    """Rewrite the reconstruction targets of annotation file `path`: `change(list of [x, y, z] strings)` in place."""
    text = path.read_text()
    matches = list(TARGET.finditer(text))
    targets = [[m.group(2), m.group(3), m.group(4)] for m in matches]
    change(targets)
    pieces, end = [], 0
    for match, (x, y, z) in zip(matches, targets):
        pieces += [text[end:match.start()], f"{match.group(1)}{x}, {y}, {z}]"]
        end = match.end()
    edited = "".join(pieces) + text[end:]
    assert edited != text
    path.write_text(edited)


def pose_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / POSES).rglob("0*.txt"))


# ------------------------------------------------------------------------------ 1: any permutation of numbers


def test_1_x_and_y_of_every_training_target_swapped_is_refused_naming_the_file(recorded, data):
    def swap(targets):
        assert len(targets) == 16
        for target in targets:
            target[0], target[1] = target[1], target[0]

    edit_targets(data / RECONS, swap)
    assert numbers_refused(refusal(recorded, data), data / RECONS)


def test_1_two_records_targets_swapped_is_refused_naming_the_file(recorded, data):
    def swap(targets):
        targets[0], targets[1] = targets[1], targets[0]

    edit_targets(data / RECONS, swap)
    assert numbers_refused(refusal(recorded, data), data / RECONS)


def test_1_two_pose_files_swapped_is_refused_naming_the_first(recorded, data):
    first, second = pose_files(data)[:2]
    first_text, second_text = first.read_text(), second.read_text()
    first.write_text(second_text)
    second.write_text(first_text)
    assert numbers_refused(refusal(recorded, data), first, more=1)


def test_1_fx_and_cx_swapped_is_refused_naming_the_intrinsics(recorded, data):
    intrinsics = sorted((data / POSES).rglob("intrinsic.txt"))[0]
    rows = [row.split() for row in intrinsics.read_text().splitlines()]
    rows[0][0], rows[0][2] = rows[0][2], rows[0][0]  # "fx 0 cx 0"
    intrinsics.write_text("\n".join(" ".join(row) for row in rows) + "\n")
    assert numbers_refused(refusal(recorded, data), intrinsics)


# ------------------------------------------------------------------------------ 1: changes that keep both sums


def test_1_plus_and_minus_half_in_one_record_is_refused(recorded, data):
    def balanced(targets):
        targets[0][0] = f"{float(targets[0][0]) + 0.5:.2f}"
        targets[0][1] = f"{float(targets[0][1]) - 0.5:.2f}"

    edit_targets(data / RECONS, balanced)
    assert numbers_refused(refusal(recorded, data), data / RECONS)


def test_1_plus_and_minus_half_across_two_files_is_refused_naming_the_first(recorded, data):
    for path, delta in zip(pose_files(data)[:2], (0.5, -0.5)):
        rows = [row.split() for row in path.read_text().splitlines()]
        rows[0][3] = repr(float(rows[0][3]) + delta)  # the camera's x
        path.write_text("\n".join(" ".join(row) for row in rows) + "\n")
    assert numbers_refused(refusal(recorded, data), pose_files(data)[0], more=1)


# ------------------------------------------------------------------------------ 1: a bound that does not grow


def test_1_one_target_moved_by_a_hundredth_is_refused(recorded, data):
    def moved(targets):
        targets[0][0] = f"{float(targets[0][0]) + 0.01:.2f}"  # e.g. -2.53 -> -2.52, nothing to balance it

    edit_targets(data / RECONS, moved)
    assert numbers_refused(refusal(recorded, data), data / RECONS)


def test_1_the_bound_is_a_blocks_not_the_datas_a_millionth_in_a_hundred_thousand_numbers_is_refused(tmp_path):
    numbers = np.random.default_rng(0).uniform(-100, 100, 100_000)
    root = tmp_path / "big"
    root.mkdir()
    (root / "records.txt").write_text(" ".join(repr(float(x)) for x in numbers))
    before = sketch_data_root(root)
    numbers[77_777] += 1e-6  # its block's bound: 2e-12 * (sum of 64 |x|) < 1.3e-8
    (root / "records.txt").write_text(" ".join(repr(float(x)) for x in numbers))
    message = refusal(before, root)
    start = 77_777 // BLOCK * BLOCK
    assert f"records.txt: its decimal numbers {start + 1}-{start + BLOCK} of 100000 are not the recorded ones" in message


# ------------------------------------------------------------------------------ 1: every image, every link


def noise_like(path: Path, seed: int) -> None:
    """Replace image `path` by noise of its size and mode, in its format."""
    with PIL.Image.open(path) as image:
        pixels = np.asarray(image)
    noise = np.random.default_rng(seed).integers(0, 255, pixels.shape).astype(pixels.dtype)
    PIL.Image.fromarray(noise).save(path)


def test_1_frames_replaced_by_noise_are_refused_whichever_image_it_is(recorded, data):
    frames = sorted((data / POSES).rglob("*.jpg"))
    for index, frame in enumerate(frames):
        if index % 3:  # never the 1st, 4th ...: the images the earlier check sampled
            noise_like(frame, index)
    message = refusal(recorded, data)
    assert f": {frames[1]}: its pixels differ (and {len(frames) - len(frames[::3]) - 1} more files differ)" in message


def test_1_a_depth_map_replaced_by_noise_is_refused_naming_it(recorded, data):
    depth = sorted((data / POSES).rglob("*.png"))[5]
    noise_like(depth, 1)
    assert f": {depth}: its pixels differ; continuing it there" in refusal(recorded, data)


def test_1_a_linked_posed_images_folder_is_digested_through_the_link_and_a_change_there_refused(recorded, data,
                                                                                                tmp_path):
    elsewhere = tmp_path / "disk2" / "posed_images"
    shutil.move(data / POSES, elsewhere)
    os.symlink(elsewhere, data / POSES)
    through = sketch_data_root(data)
    assert through.names == recorded.names and through.links == 1 and compare_data(recorded, through).same()
    frame = sorted(elsewhere.rglob("*.jpg"))[3]
    noise_like(frame, 2)
    pose = pose_files(data)[-1]  # after the frame in name order
    pose.write_text(pose.read_text().replace("0 0 0 1", "0 0 0 2"))
    message = refusal(recorded, data)
    assert f": {data / POSES / frame.relative_to(elsewhere)}: its pixels differ (and 1 more file differs)" in message


# ------------------------------------------------------------------------------ 1: last digits still continue


def _in_the_same_form(written: str, nudged: str) -> str:
    """`nudged` where it keeps the written form of `written` (a full-precision repr), else `written`: another CPU's
    float maths moves the last digits of a number, never 1.5 into 1.5000000000000016 (issue 83)."""
    return nudged if number_forms(written.encode())[0].tobytes() == number_forms(nudged.encode())[0].tobytes() else written


def test_1_last_digit_noise_of_1e_15_relative_in_every_number_still_continues(recorded, data):
    number = re.compile(r"(?<![\w.])-?\d+\.\d+(?:[eE][-+]?\d+)?(?![\w.])")
    changed = 0
    for path in sorted(p for p in data.rglob("*") if p.suffix in (".json", ".txt")):
        text = path.read_text()
        nudged = number.sub(lambda m: _in_the_same_form(m.group(), repr(float(m.group()) * (1 + 1e-15))), text)
        changed += nudged != text
        path.write_text(nudged)
    current = sketch_data_root(data)
    assert check_same_data(recorded, current, "runs/state", data) is recorded  # the run keeps recording its data
    assert len(compare_data(recorded, current).last_digits) == changed > 40  # records, poses, intrinsics


# ------------------------------------------------------------------------------ 1: every resume path


@pytest.fixture(scope="module")
def trained(stopped):  # noqa: F811
    """Round 5's run stopped after step 1 of 4 with its run state (its own, this module's): `(recipe path, output
    folder, state folder)`."""
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
def test_1_resuming_on_another_seeds_data_is_refused_on_every_resume_path_and_the_state_kept(
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


def test_1_a_resume_records_the_data_it_trained_on_not_the_data_it_is_given(trained, train_data_root, data):  # noqa: F811
    _, out, _ = trained
    pose = pose_files(data)[0]
    pose.write_text(re.sub(r"\d+\.\d+", lambda m: repr(float(m.group()) * (1 + 1e-15)), pose.read_text()))
    record = read_sketch(out / RECORD_FILE)
    kept = resumed_data(out / "checkpoint-1", sketch_data_root(data), data)
    assert kept.digest() == record.digest() == sketch_data_root(train_data_root).digest()


def test_1_a_local_checkpoint_whose_folder_holds_no_data_record_is_refused_unless_the_user_vouches(trained, data,
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


# ------------------------------------------------------------------------------ 2: the lock


@pytest.mark.parametrize("which", ["output", "state"])
def test_2_a_linked_output_or_state_folder_takes_the_lock_of_the_folder_it_names(trained, tmp_path, which):
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


def test_2_an_evaluation_lock_file_that_is_a_link_is_refused_not_written_through(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("mine")
    folder = tmp_path / "eval"
    folder.mkdir()
    os.symlink(precious, folder / "evaluation.lock")
    with pytest.raises(LockFileIsALink, match=rf"^{re.escape(str(folder / 'evaluation.lock'))}: the lock file of .* is "
                                              rf"a symbolic link \(to {re.escape(str(precious))}\); a lock file is never "
                                              "written through a link: remove the link"):
        with evaluation_folder_lock(folder):
            pass
    assert precious.read_text() == "mine"


def test_2_a_folder_lock_file_that_is_a_link_is_refused_not_written_through(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("mine")
    os.symlink(precious, lock_file_of(tmp_path / "out"))
    with pytest.raises(LockFileIsALink, match="is a symbolic link"):
        with holding_folder(tmp_path / "out", "gap-mllm train"):
            pass
    assert precious.read_text() == "mine"


# ------------------------------------------------------------------------------ 2: the state's own names


@pytest.fixture
def state(trained, tmp_path):
    """A copy of the stopped run's state, for a test to change."""
    return Path(shutil.copytree(trained[2], tmp_path / "state"))


def rewrite_record(state: Path, change, sign: bool = True) -> None:
    """Change run_state.json with `change(record)`; `sign`: with its digest recomputed (as a forger would)."""
    record = json.loads((state / STATE_FILE).read_text())
    change(record)
    if sign:
        record["digest"] = record_digest(record)
    (state / STATE_FILE).write_text(json.dumps(record))


def test_2_a_checkpoint_file_named_outside_the_state_is_refused_and_nothing_written_outside(state, tmp_path,
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


def test_2_a_run_state_json_edited_without_its_digest_is_refused(state, tmp_path, source_model):  # noqa: F811
    rewrite_record(state, lambda record: record.update(global_step=3), sign=False)
    with pytest.raises(RunStateError, match=r"run_state.json: damaged run state file: its content differs from its "
                                            r"digest \(the record was edited\)"):
        restore_run_state(state, tmp_path / "out", source=source_model)
    assert not (tmp_path / "out").exists()


def test_2_a_state_file_that_is_a_link_is_refused(state, tmp_path, source_model):  # noqa: F811
    scheduler = state / "checkpoint" / "scheduler.pt"
    shutil.move(scheduler, tmp_path / "scheduler.pt")
    os.symlink(tmp_path / "scheduler.pt", scheduler)  # the same bytes, through a link
    with pytest.raises(RunStateError, match=rf"{re.escape(str(scheduler))}: damaged run state: a symbolic link"):
        restore_run_state(state, tmp_path / "out", source=source_model)
    assert not (tmp_path / "out").exists()


def test_2_a_linked_state_folder_is_written_through_to_its_target(trained, tmp_path, source_model):  # noqa: F811
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


def test_2_a_users_file_inside_the_states_checkpoint_folder_is_kept_by_the_next_write_and_refused_at_the_start(
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


def test_2_an_output_folder_that_is_a_link_to_the_state_folder_is_refused_at_the_start(trained, tmp_path):
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


def test_2_the_state_records_its_data_sketch_as_a_listed_file(trained):
    _, _, state = trained
    record = read_run_state(state)
    assert record["format"] == 4 and record["data"]["sketch"] == record["files"][DATA_SKETCH_FILE]["sha256"]
    assert record["data"]["files"] == len(read_sketch(state / DATA_SKETCH_FILE).names)
