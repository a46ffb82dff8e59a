"""Issue 83, item 2: "same data" means the same text. A resumed run continues only on text files whose numbers differ
from the recorded ones in their last digits, written in the same form, each within its own bound.

The data are a small folder of the shapes a SynthRooms root holds (a records JSON, a pose file); each case writes a
copy with one change and checks it against the sketch of the original with `check_same_data`, what every resume
path calls (training/run_state.py). The numbers that differ between NumPy's kernels are the measured ones
(8 Mini scenes, with and without X86_V3/V4: all 148 differing numbers are written at full precision, some with
another count of digits, e.g. 0.8707333211075002 and 0.8707333211075).
"""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from gap_mllm.training.data_sketch import compare_data, decode_sketch, sketch_data_root
from gap_mllm.training.run_state import RunStateError, check_same_data

RECORDS = "annotations/records.json"
POSE = "poses/00010.txt"


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
    """Case `%.2f` (silent -> refused): 0.4 -> 0.40 and 0.3 -> 0.30, equal values, other text."""
    changed = _variant(tmp_path, records=RECORDS_TEXT.replace("0.4,", "0.40,").replace("0.3,", "0.30,"))
    message = _refusal(original, changed)
    assert f"{changed / RECORDS}: its decimal numbers are reformatted" in message
    assert "0.40 for 0.4" in message and "start a new run" in message


def test_a_number_re_exported_in_exponent_form_is_refused_as_reformatted(original, tmp_path):
    """Case exponent form (silent -> refused): 3.66 -> 366e-2, the same value."""
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
    """Case 1e10 / 1e12 in a block (silent -> refused): a 0.01 change of a 2-decimal target beside it."""
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
