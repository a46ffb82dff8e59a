"""The orientations of the boxes a model was trained on, recorded in its folder, and the check of a box against them.

A box's angles are what the model reads and writes: `[yaw, pitch, roll]` in radians, `R = Ry(roll) · Rx(pitch) ·
Rz(yaw)` (scipy "zxy"), in the OpenCV frame of the first camera (x right, y down, z forward; docs/method.md §5).
Objects stand upright, so the targets' pitch and roll are set by how the camera is held: an upright object seen by a
level camera has pitch π/2 and roll ±π (yaw then turns it about its vertical axis), and a camera tilted down by t
gives pitch π/2 − t. SynthRooms' cameras look 7-33° down (processing/synth/trajectory.py), so GAP-MLLM-Mini's boxes
have pitch 0.99-1.46 and roll within 0.37 of ±π; a box of pitch 0 and roll 0 (an object lying on its back) is an
orientation no target had, and the model's answer to it is no caption.

The record, `box_angles.json` in the model's folder (written by the Mini's export, mini/export.py):

    {"convention": BOX_ANGLE_CONVENTION, "source": "what the angles were read from",
     "angles": {"yaw": [[-3.15, 3.15]], "pitch": [[0.99, 1.46]], "roll": [[-3.15, -2.77], [2.77, 3.15]]},
     "camera_tilt": 0.29}

Each angle's values are the intervals (one, or two where they wrap through ±π) of the smallest arc holding every
training box's angle, widened outward to 2 decimals, the precision a prompt writes. `camera_tilt` (optional) is the
median downward tilt of the training frames' cameras, radians: a box given by centre and size alone takes the angles
of an upright object seen so (`upright_angles`). A folder without the file (the real model, any other) records
nothing, and no box is checked against it; a 6-number box then takes a level camera's angles.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

BOX_ANGLES_RECORD = "box_angles.json"
ANGLE_NAMES = ("yaw", "pitch", "roll")
BOX_ANGLE_CONVENTION = ("yaw pitch roll in radians, R = Ry(roll)·Rx(pitch)·Rz(yaw) (scipy 'zxy'), in the first "
                        "camera's OpenCV frame (x right, y down, z forward)")
_DECIMALS = 2  # a prompt writes the box's numbers to 2 decimals (tasks_gap_mllm.format_box)
# The angles of a box given by its centre and size alone (`gap-mllm predict --box cx cy cz sx sy sz`, the Space's
# box field): an upright object seen by a level first camera (optical axis horizontal, no roll), its width along the
# camera's x axis (across the view), its depth along z (away from the camera) and its height along -y (up). That
# rotation is Rx(π/2), which the model's boxes write with roll ±π: yaw π, pitch π/2, roll π. A camera tilted down by
# t (the usual case: pitch π/2 - t) or an object turned about its vertical axis (yaw) needs the angles given.
UPRIGHT_LEVEL_ANGLES = (math.pi, math.pi / 2, math.pi)
CENTRE_AND_SIZE = 6  # the numbers of a box given without its angles
# The record's typical downward tilt of the training cameras, radians (the median over every training frame), which
# `upright_angles` turns into the angles of a 6-number box for that model: an upright object as its cameras see it.
CAMERA_TILT = "camera_tilt"


def _down(value: float) -> float:
    return math.floor(value * 10**_DECIMALS) / 10**_DECIMALS


def _up(value: float) -> float:
    return math.ceil(value * 10**_DECIMALS) / 10**_DECIMALS


def angle_intervals(values) -> list[list[float]]:
    """The smallest arc of the circle holding every angle of `values` (radians, within [-π, π]), as intervals of
    [-π, π]: one, or two when the arc wraps through ±π; each widened outward to 2 decimals. Angles that leave no gap
    wider than 0.01 (a prompt's precision) give the whole circle, `[[-3.15, 3.15]]`."""
    ordered = sorted(float(v) for v in values)
    if not ordered:
        raise ValueError("no angles to record")
    gaps = [(ordered[k + 1] - ordered[k], k + 1) for k in range(len(ordered) - 1)]
    wrap = ordered[0] + 2 * math.pi - ordered[-1]
    widest, after = max(gaps, default=(0.0, 0))
    if max(widest, wrap) <= 10**-_DECIMALS:
        return [[_down(-math.pi), _up(math.pi)]]
    if wrap >= widest:  # the values' own span is the arc
        return [[_down(ordered[0]), _up(ordered[-1])]]
    # the arc runs from the value after the widest gap, through ±π, round to the value before it
    return [[_down(-math.pi), _up(ordered[after - 1])], [_down(ordered[after]), _up(math.pi)]]


def box_angle_record(angles, source: str, camera_tilts=None) -> dict:
    """The record (module docstring) of `angles`, rows of `[yaw, pitch, roll]` (the training boxes' angles), read
    from `source` (a few words naming the data); with `camera_tilts` (each training frame's downward camera tilt,
    radians), their median as `CAMERA_TILT`, to 2 decimals."""
    rows = [list(row) for row in angles]
    record = {"convention": BOX_ANGLE_CONVENTION, "source": source,
              "angles": {name: angle_intervals([row[k] for row in rows]) for k, name in enumerate(ANGLE_NAMES)}}
    if camera_tilts is not None:
        tilts = sorted(float(value) for value in camera_tilts)
        if not tilts:
            raise ValueError("no camera tilts to record")
        middle = len(tilts) // 2
        median = tilts[middle] if len(tilts) % 2 else (tilts[middle - 1] + tilts[middle]) / 2
        record[CAMERA_TILT] = round(median, _DECIMALS)
    return record


def upright_angles(record: dict | None) -> tuple[float, float, float]:
    """The angles `[yaw, pitch, roll]` of a box given by its centre and size alone (6 numbers) for the model whose
    record is `record` (`read_box_angles`): an upright object seen by a camera tilted down by the record's
    `CAMERA_TILT` (yaw π, pitch π/2 less the tilt, roll π: `sx` across the view, `sy` along it on the floor, `sz` its
    height), so that the box lies among the orientations the model was trained on; `UPRIGHT_LEVEL_ANGLES` (a level
    camera) when the record holds no tilt, or there is no record. `read_box_angles` refuses a tilt that is not one.

    Raises:
        ValueError: a record not read by `read_box_angles` whose tilt is not one, naming it.
    """
    if record is None or record.get(CAMERA_TILT) is None:
        return UPRIGHT_LEVEL_ANGLES
    problem = _tilt_problem(record[CAMERA_TILT])
    if problem is not None:
        raise ValueError(f"not a record of box angles ({problem})")
    yaw, pitch, roll = UPRIGHT_LEVEL_ANGLES
    return (yaw, pitch - float(record[CAMERA_TILT]), roll)


def write_box_angles(folder, record: dict) -> Path:
    """Write `record` as the folder's `box_angles.json`; returns its path."""
    path = Path(folder) / BOX_ANGLES_RECORD
    path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def read_box_angles(folder) -> dict | None:
    """The `box_angles.json` record of a model folder, or None when `folder` is not a folder or records none (a Hub
    id, the tiny test model). A file that is not a record (`_record_problem`: an empty, reversed or non-finite
    interval, a convention holding control characters) is ValueError naming it and what is wrong."""
    path = Path(folder) / BOX_ANGLES_RECORD if folder is not None else None
    if path is None or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        intervals = {name: [[float(low), float(high)] for low, high in record["angles"][name]] for name in ANGLE_NAMES}
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a record of box angles ({type(error).__name__}: {error}); "
                         "delete it or write it again") from None
    problem = _record_problem(record, intervals)
    if problem is not None:  # printed to the user as the ranges a box is checked against ("trained: nan to 1.46")
        raise ValueError(f"{path}: not a record of box angles ({problem}); delete it or write it again")
    return {**record, "angles": intervals}


# the recorded texts are printed in a note on the terminal: no escape sequence nor line break of a tampered file
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_ANGLE_LIMIT = _up(math.pi)  # intervals are widened outward to 2 decimals: ±3.15


def _record_problem(record: dict, intervals: dict) -> str | None:
    """What makes `record` (read from JSON, `intervals` its angles as floats) no record of box angles: an angle with no
    interval, a bound that is not a finite number within ±3.15 (π widened to 2 decimals), an interval whose low end
    is above its high end, or a `convention` / `source` that is not text or holds control characters; None when it
    is one."""
    for name in ANGLE_NAMES:
        if not intervals[name]:
            return f"{name} has no interval"
        for low, high in intervals[name]:
            if not all(math.isfinite(v) and abs(v) <= _ANGLE_LIMIT for v in (low, high)):
                return f"{name} interval [{low!r}, {high!r}] is not within ±{_ANGLE_LIMIT:g} radians"
            if low > high:
                return f"{name} interval [{low:g}, {high:g}] runs backwards"
    for key in ("convention", "source"):
        text = record.get(key)
        if text is not None and not isinstance(text, str):
            return f"{key} is {type(text).__name__}, not text"
        if text is not None and _CONTROL_CHARACTERS.search(text):
            return f"{key} holds control characters ({ascii(_CONTROL_CHARACTERS.search(text).group())})"
    return _tilt_problem(record.get(CAMERA_TILT))


def _tilt_problem(tilt) -> str | None:
    """What makes `tilt` no record's `CAMERA_TILT` (absent is none): not a finite number of radians within ±π/2."""
    if tilt is None:
        return None
    if isinstance(tilt, bool) or not isinstance(tilt, (int, float)) or not abs(tilt) <= math.pi / 2:
        return f"{CAMERA_TILT} {tilt!r} is not a camera tilt in radians (a finite number within ±π/2)"
    return None


def _inside(value: float, intervals) -> bool:
    return any(low <= value <= high for low, high in intervals)


def _intervals_text(intervals) -> str:
    return " or ".join(f"{low:g} to {high:g}" for low, high in intervals)


def unseen_angles_note(box, record: dict | None) -> str | None:
    """One line when the angles of `box` (9 numbers), as a prompt writes them, hold a value outside the training
    boxes' angles of `record` (`read_box_angles`), naming the values, the recorded ranges and the convention; None
    when they lie inside, or nothing is recorded."""
    if record is None:
        return None
    written = [round(float(v), _DECIMALS) for v in list(box)[6:9]]
    outside = [(name, value) for name, value in zip(ANGLE_NAMES, written) if not _inside(value, record["angles"][name])]
    if not outside:
        return None
    unseen = ", ".join(f"{name} {value:g} (trained: {_intervals_text(record['angles'][name])})"
                       for name, value in outside)
    return (f"note: the box's angles (yaw pitch roll {' '.join(f'{v:g}' for v in written)}) hold {unseen}, an "
            f"orientation no box this model was trained on had, so its answer may mean nothing. Angles are "
            f"{record.get('convention', BOX_ANGLE_CONVENTION)}: an upright object has pitch π/2 less the camera's "
            "downward tilt and roll ±π; the angles of this model's own detection answers are in its convention")


__all__ = ["ANGLE_NAMES", "BOX_ANGLES_RECORD", "BOX_ANGLE_CONVENTION", "CAMERA_TILT", "CENTRE_AND_SIZE",
           "UPRIGHT_LEVEL_ANGLES", "angle_intervals", "box_angle_record", "read_box_angles", "unseen_angles_note",
           "upright_angles", "write_box_angles"]
