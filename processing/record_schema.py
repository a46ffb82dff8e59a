"""Typed fields of an annotation record, checked before a sample reaches Arrow.

JSON gives loosely typed values, and Python's conversions accept far too much: `float("123456789")` reads
a string digit by digit when it is iterated, `list("a chair")` is seven one-letter captions, `bool("no")` is
True, `int(3.7)` is 3, `str({})` is "{}". Each builder therefore declares the fields it reads as
`RecordField(name, kind)` and `read_fields` converts them with ONE reader per kind of value; a value of the
wrong type is a `DataError` naming the sample and the field, e.g.

    sample 'scene0001_00-3': 'gt_bbox' must be a list of 9 finite numbers (sizes >= 0), got str '123456789'

(or, with the builders' `skip_bad_samples=True`, a skipped and counted sample). Kinds:

    SAMPLE_ID       a string, or an int written as text
    INTEGER         an int (not a bool)
    IDENTIFIER      an int, or a string of decimal digits (ScanRefer writes object ids as "38") -> int
    REAL            a finite int or float (not a bool)
    BOOLEAN         true or false (never "no", 0 or 1)
    TEXT            a string
    ANSWER_TEXT     a string, or a finite number written back as text (numerical ground truths)
    TEXT_LIST       a list of strings (a bare string is refused: it is not a list of one)
    IMAGE_LIST      a non-empty list of strings: a sample's frames (`IMAGES`, the field every task reads)
    OBJECT_LIST     a list of JSON objects (each then read with its own fields)
    BOX             9 finite numbers [cx, cy, cz, sx, sy, sz, yaw, pitch, roll], sizes >= 0
    PIXEL           [view, x, y]: 3 ints
    matrix(shape)   nested lists of finite numbers of exactly that shape -> float64 array

A field is required unless it has a `default` (used when the key is absent); `nullable=True` also reads an
explicit null as the default (VSI-Bench writes `"options": null` for numerical questions).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .errors import DataError

REQUIRED = object()  # marker: the field has no default


class WrongType(ValueError):
    """Raised by a kind's reader; its message, when there is one, says what is wrong beyond the type."""


@dataclass(frozen=True)
class FieldKind:
    """One kind of value: what it must be (for messages) and the reader that returns the converted value
    or raises `WrongType`."""

    expected: str
    read: Callable[[Any], Any]

    def __call__(self, value):
        return self.read(value)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _checked(test: Callable[[Any], bool], convert: Callable[[Any], Any] = lambda v: v):
    def read(value):
        if not test(value):
            raise WrongType
        return convert(value)

    return read


def _identifier(value) -> int:
    if _is_int(value):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    raise WrongType


def _text_list(value) -> list[str]:
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise WrongType
    return list(value)


def _image_list(value) -> list[str]:
    if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
        raise WrongType
    return list(value)


def _box(value) -> list[float]:
    if not (isinstance(value, list) and len(value) == 9 and all(_is_real(v) for v in value)):
        raise WrongType
    if any(v < 0 for v in value[3:6]):
        raise WrongType(f"negative size {[float(v) for v in value[3:6]]}")
    return [float(v) for v in value]


def _pixel(value) -> list[int]:
    if not (isinstance(value, list) and len(value) == 3 and all(_is_int(v) for v in value)):
        raise WrongType
    return list(value)


SAMPLE_ID = FieldKind("a string or an integer", _checked(lambda v: isinstance(v, str) or _is_int(v), str))
INTEGER = FieldKind("an integer", _checked(_is_int))
IDENTIFIER = FieldKind("an integer (or a string of digits)", _identifier)
REAL = FieldKind("a finite number", _checked(_is_real, float))
BOOLEAN = FieldKind("true or false", _checked(lambda v: isinstance(v, bool)))
TEXT = FieldKind("a string", _checked(lambda v: isinstance(v, str)))
ANSWER_TEXT = FieldKind("a string (or a number)", _checked(lambda v: isinstance(v, str) or _is_real(v), str))
TEXT_LIST = FieldKind("a list of strings", _text_list)
OBJECT_LIST = FieldKind("a list of objects", _checked(lambda v: isinstance(v, list) and all(isinstance(e, dict) for e in v), list))
IMAGE_LIST = FieldKind("a non-empty list of image paths (strings)", _image_list)
BOX = FieldKind("a list of 9 finite numbers (sizes >= 0)", _box)
PIXEL = FieldKind("[view, x, y] integers", _pixel)


def _nested_numbers(value, shape: tuple) -> bool:
    """Whether `value` is nested lists of finite numbers of exactly `shape` (no ragged rows, no strings)."""
    if not shape:
        return _is_real(value)
    return isinstance(value, list) and len(value) == shape[0] and all(_nested_numbers(v, shape[1:]) for v in value)


def matrix(*shape: int) -> FieldKind:
    """A float64 array of `shape` from nested lists of finite numbers."""

    def read(value):
        if not _nested_numbers(value, shape):
            raise WrongType
        return np.asarray(value, dtype=np.float64)

    return FieldKind(f"nested lists of finite numbers of shape {'x'.join(str(s) for s in shape)}", read)


@dataclass(frozen=True)
class RecordField:
    """A field of an annotation record: its key, kind, default when absent, and whether null means absent."""

    name: str
    kind: FieldKind
    default: Any = REQUIRED
    nullable: bool = False


# the frames of a sample, which every task's builder and benchmark reads (relative to the media root)
IMAGES = RecordField("images", IMAGE_LIST)
# the fields several tasks' records share; absent per-view poses are an empty [0, 4, 4] array (a None Array3D would
# read back as NaN)
_NO_POSES = np.zeros((0, 4, 4))
MATRIX_4X4 = matrix(4, 4)
AXIS_ALIGN = RecordField("axis_align_matrix", MATRIX_4X4, default=None, nullable=True)
OBJECT_ID = RecordField("object_id", IDENTIFIER, default=-1)  # -1: the record has none


def camera_poses(num_images: int) -> RecordField:
    """`cam2global`: one 4x4 camera-to-world pose per image (absent: an empty [0, 4, 4])."""
    return RecordField("cam2global", matrix(num_images, 4, 4), default=_NO_POSES)


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def read_field(record: dict, field: RecordField, sample=None, prefix: str = ""):
    """The converted value of one field of `record`, or a `DataError` naming the sample and the field
    (`prefix` + its name, e.g. "boxes[2].bbox_3d" for a field of a nested object)."""
    name = prefix + field.name
    absent = field.name not in record or (field.nullable and record[field.name] is None)
    if absent:
        if field.default is REQUIRED:
            raise DataError(f"the record has no {name!r}", sample=sample)
        return copy.copy(field.default)  # a default list or array is never shared between samples
    value = record[field.name]
    try:
        return field.kind(value)
    except WrongType as wrong:
        detail = f" ({wrong})" if str(wrong) else ""
        raise DataError(f"{name!r} must be {field.kind.expected}, got {type(value).__name__} {_shown(value)}{detail}",
                        sample=sample) from None


def read_fields(record, fields, sample=None, prefix: str = "") -> dict:
    """`{name: converted value}` of every field in `fields` (see `read_field`); `record` must be an object."""
    if not isinstance(record, dict):
        where = prefix.rstrip(".") or "the annotation record"
        raise DataError(f"{where} must be an object, got {type(record).__name__} {_shown(record)}", sample=sample)
    return {field.name: read_field(record, field, sample, prefix) for field in fields}
