"""The sketch of a training data root (training/data_sketch.py): "same data" means the same data. A resumed run
continues only on files whose numbers differ from the recorded ones in their last digits, written in the same form,
each within its own bound, and whose images are the recorded ones.

Each case writes a copy of the data with one change and checks it against the sketch of the original with
`check_same_data`, what every resume path calls (training/run_state.py): the small cases on a folder of the shapes a
SynthRooms root holds (a records JSON, a pose file), the others on a copy of the training data root (permuted
numbers, changes that keep the sums, one number moved by a hundredth, frames and depth maps replaced, through a
linked folder too). The numbers that differ between NumPy's kernels are the measured ones (8 Mini scenes, with and
without X86_V3/V4: all 148 differing numbers are written at full precision, some with another count of digits, e.g.
0.8707333211075002 and 0.8707333211075).
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

from gap_mllm.training.data_sketch import BLOCK, compare_data, decode_sketch, number_forms, sketch_data_root
from gap_mllm.training.run_state import RunStateError, check_same_data

from .test_train_fixtures import train_data_root  # noqa: F401  (session fixture)

RECORDS = "annotations/records.json"
POSE = "poses/00010.txt"
RECONS = Path("annotations") / "scannet_recons_train_4frames.json"
POSES = Path("scannet") / "posed_images"
# a reconstruction target as the annotation file holds it (a JSON answer inside a JSON string)
TARGET = re.compile(r'(\\"pointmap\\": \[)(-?\d+\.\d+), (-?\d+\.\d+), (-?\d+\.\d+)\]')


def _write(root, records, pose):
    (root / "annotations").mkdir(parents=True)
    (root / "poses").mkdir()
    (root / RECORDS).write_text(records)
    (root / POSE).write_text(pose)
    return root


RECORDS_TEXT = json.dumps([{"question": "How far is the chair from the table?", "answer": 0.4, "box": [3.66, 0.3, 1.25]},
                           {"question": "How tall is the lamp?", "answer": 1.5, "size": 10000000000.0}], indent=1)
POSE_TEXT = "0.8707333211075002 -0.1911459835846016 0.4 1.5593490436719641\n0.0 0.0 0.0 1.0\n"


@pytest.fixture()
def original(tmp_path):
    return _write(tmp_path / "data", RECORDS_TEXT, POSE_TEXT)


def _variant(tmp_path, records=RECORDS_TEXT, pose=POSE_TEXT):
    return _write(tmp_path / "again", records, pose)


def _refusal(original, changed) -> str:
    with pytest.raises(RunStateError) as caught:
        check_same_data(sketch_data_root(original), sketch_data_root(changed), "runs/state", changed)
    message = str(caught.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------ reformatted: other data


def test_records_re_exported_with_two_decimals_are_refused_as_reformatted(original, tmp_path):
    """Case `%.2f`: 0.4 -> 0.40 and 0.3 -> 0.30, equal values, other text: refused."""
    changed = _variant(tmp_path, records=RECORDS_TEXT.replace("0.4,", "0.40,").replace("0.3,", "0.30,"))
    message = _refusal(original, changed)
    assert f"{changed / RECORDS}: its decimal numbers are reformatted" in message
    assert "0.40 for 0.4" in message and "start a new run" in message


def test_a_number_re_exported_in_exponent_form_is_refused_as_reformatted(original, tmp_path):
    """Case exponent form: 3.66 -> 366e-2, the same value, other text: refused."""
    assert float("366e-2") == 3.66
    changed = _variant(tmp_path, records=RECORDS_TEXT.replace("3.66", "366e-2"))
    assert f"{changed / RECORDS}: its decimal numbers are reformatted" in _refusal(original, changed)


def test_full_precision_pose_rounded_to_six_decimals_is_refused(original, tmp_path):
    """A %.6f re-export of full-precision numbers: rounded values (by up to 5e-7), so other numbers; the short ones
    (0.0, 1.0) as %.6f only: the same values in another form."""
    rounded = " ".join(f"{float(x):.6f}" for x in POSE_TEXT.split()[:4]) + "\n0.0 0.0 0.0 1.0\n"
    changed = _variant(tmp_path, pose=rounded)
    assert f"{changed / POSE}: its decimal numbers 1-8 of 8 are not the recorded ones" in _refusal(original, changed)
    short = _variant(tmp_path / "short", pose=POSE_TEXT.replace("0.0 0.0 0.0 1.0", "0.000000 0.000000 0.000000 1.000000"))
    assert f"{short / POSE}: its decimal numbers are reformatted: the same values" in _refusal(original, short)


# ------------------------------------------------------------------------------ per number, not per block


@pytest.mark.parametrize("size", ["10000000000.0", "1000000000000.0"])
def test_a_large_number_beside_a_target_lends_it_no_bound(tmp_path, size):
    """Case 1e10 / 1e12 in a block: a 0.01 change of a 2-decimal target beside it is refused."""
    records = RECORDS_TEXT.replace("10000000000.0", size).replace("1.25", "1.23")
    original = _write(tmp_path / "data", records, POSE_TEXT)
    changed = _variant(tmp_path, records=records.replace("1.23", "1.24"))
    message = _refusal(original, changed)
    assert f"{changed / RECORDS}: its decimal numbers 1-6 of 6 are not the recorded ones" in message


def test_a_full_precision_number_beyond_its_own_bound_is_refused(original, tmp_path):
    """1e-9 relative on one number (beyond its 1e-12), in the same form."""
    changed = _variant(tmp_path, pose=POSE_TEXT.replace("1.5593490436719641", repr(1.5593490436719641 * (1 + 1e-9))))
    assert "its decimal numbers 1-8 of 8 are not the recorded ones" in _refusal(original, changed)


# ------------------------------------------------------------------------------ another CPU's last digits continue


def test_another_cpus_last_digits_continue_and_the_info_line_says_what_was_compared(original, tmp_path, caplog):
    """The measured kinds of difference: a last bit that shortens the repr (0.8707333211075002 -> 0.8707333211075),
    and a few ulp elsewhere; accepted, and the INFO line is true: same form, each number within its own bound."""
    noisy = POSE_TEXT.replace("0.8707333211075002", "0.8707333211075")
    for text in ("-0.1911459835846016", "1.5593490436719641"):
        noisy = noisy.replace(text, repr(float(np.nextafter(float(text), 10.0))))
    assert noisy != POSE_TEXT
    changed = _variant(tmp_path, pose=noisy)
    recorded = sketch_data_root(original)
    with caplog.at_level(logging.INFO, logger="gap_mllm.training.data_sketch"):
        assert check_same_data(recorded, sketch_data_root(changed), "runs/state", changed) is recorded
    assert ("runs/state: 1 file(s) of the data differ from those the run trained on only in the last digits of numbers "
            "written in the same form (each within 1e-12 relative of its own value") in caplog.text


def test_a_sketch_read_back_compares_as_the_one_made(original, tmp_path):
    recorded = decode_sketch(sketch_data_root(original).encode())
    shutil.copytree(original, tmp_path / "copy")
    assert compare_data(recorded, sketch_data_root(tmp_path / "copy")).same()


# ------------------------------------------------------------------------------------- a copy of the training data root


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


# ------------------------------------------------------------------------------------------- any permutation of numbers


def test_x_and_y_of_every_training_target_swapped_is_refused_naming_the_file(recorded, data):
    def swap(targets):
        assert len(targets) == 16
        for target in targets:
            target[0], target[1] = target[1], target[0]

    edit_targets(data / RECONS, swap)
    assert numbers_refused(refusal(recorded, data), data / RECONS)


def test_two_records_targets_swapped_is_refused_naming_the_file(recorded, data):
    def swap(targets):
        targets[0], targets[1] = targets[1], targets[0]

    edit_targets(data / RECONS, swap)
    assert numbers_refused(refusal(recorded, data), data / RECONS)


def test_two_pose_files_swapped_is_refused_naming_the_first(recorded, data):
    first, second = pose_files(data)[:2]
    first_text, second_text = first.read_text(), second.read_text()
    first.write_text(second_text)
    second.write_text(first_text)
    assert numbers_refused(refusal(recorded, data), first, more=1)


def test_fx_and_cx_swapped_is_refused_naming_the_intrinsics(recorded, data):
    intrinsics = sorted((data / POSES).rglob("intrinsic.txt"))[0]
    rows = [row.split() for row in intrinsics.read_text().splitlines()]
    rows[0][0], rows[0][2] = rows[0][2], rows[0][0]  # "fx 0 cx 0"
    intrinsics.write_text("\n".join(" ".join(row) for row in rows) + "\n")
    assert numbers_refused(refusal(recorded, data), intrinsics)


# ------------------------------------------------------------------------------------------ changes that keep both sums


def test_plus_and_minus_half_in_one_record_is_refused(recorded, data):
    def balanced(targets):
        targets[0][0] = f"{float(targets[0][0]) + 0.5:.2f}"
        targets[0][1] = f"{float(targets[0][1]) - 0.5:.2f}"

    edit_targets(data / RECONS, balanced)
    assert numbers_refused(refusal(recorded, data), data / RECONS)


def test_plus_and_minus_half_across_two_files_is_refused_naming_the_first(recorded, data):
    for path, delta in zip(pose_files(data)[:2], (0.5, -0.5)):
        rows = [row.split() for row in path.read_text().splitlines()]
        rows[0][3] = repr(float(rows[0][3]) + delta)  # the camera's x
        path.write_text("\n".join(" ".join(row) for row in rows) + "\n")
    assert numbers_refused(refusal(recorded, data), pose_files(data)[0], more=1)


# ------------------------------------------------------------------------------------------- a bound that does not grow


def test_one_target_moved_by_a_hundredth_is_refused(recorded, data):
    def moved(targets):
        targets[0][0] = f"{float(targets[0][0]) + 0.01:.2f}"  # e.g. -2.53 -> -2.52, nothing to balance it

    edit_targets(data / RECONS, moved)
    assert numbers_refused(refusal(recorded, data), data / RECONS)


def test_the_bound_is_a_blocks_not_the_datas_a_millionth_in_a_hundred_thousand_numbers_is_refused(tmp_path):
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


# ---------------------------------------------------------------------------------------------- every image, every link


def noise_like(path: Path, seed: int) -> None:
    """Replace image `path` by noise of its size and mode, in its format."""
    with PIL.Image.open(path) as image:
        pixels = np.asarray(image)
    noise = np.random.default_rng(seed).integers(0, 255, pixels.shape).astype(pixels.dtype)
    PIL.Image.fromarray(noise).save(path)


def test_frames_replaced_by_noise_are_refused_whichever_image_it_is(recorded, data):
    frames = sorted((data / POSES).rglob("*.jpg"))
    for index, frame in enumerate(frames):
        if index % 3:  # never the 1st, 4th ...: a check sampling every third image would pass
            noise_like(frame, index)
    message = refusal(recorded, data)
    assert f": {frames[1]}: its pixels differ (and {len(frames) - len(frames[::3]) - 1} more files differ)" in message


def test_a_depth_map_replaced_by_noise_is_refused_naming_it(recorded, data):
    depth = sorted((data / POSES).rglob("*.png"))[5]
    noise_like(depth, 1)
    assert f": {depth}: its pixels differ; continuing it there" in refusal(recorded, data)


def test_a_linked_posed_images_folder_is_digested_through_the_link_and_a_change_there_refused(recorded, data,
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


def test_depth_arrays_are_digested_by_content_apart_from_the_images(tmp_path):
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


# ------------------------------------------------------------------------------------------- last digits still continue


def _in_the_same_form(written: str, nudged: str) -> str:
    """`nudged` where it keeps the written form of `written` (a full-precision repr), else `written`: another CPU's
    float maths moves the last digits of a number, never 1.5 into 1.5000000000000016."""
    return nudged if number_forms(written.encode())[0].tobytes() == number_forms(nudged.encode())[0].tobytes() else written


def test_last_digit_noise_of_1e_15_relative_in_every_number_still_continues(recorded, data):
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
