"""3D boxes and the exact answer texts of the official GAP-MLLM tasks (docs/method.md §3, §4.1).

Conventions (used everywhere in the package):
    - Coordinates: OpenCV camera frame of the FIRST view (x right, y down, z forward), metres.
    - Box: `[cx, cy, cz, sx, sy, sz, yaw, pitch, roll]`; sizes along the box's own axes; angles in
      radians, decoded as `R = Ry(roll) · Rx(pitch) · Rz(yaw)` (scipy `Rotation.from_euler("zxy",
      [yaw, pitch, roll])`, lower-case = extrinsic). The official detection IoU reads the same angles
      as `Rz·Rx·Ry`; that reading belongs behind an explicit official-compat switch in the evaluator.

Answer texts written here (numbers rounded to 2 decimals with Python's `round`, then `json.dumps`,
so `-0.0` and `2.0` are kept exactly as the official targets print them):

    detection       ```json\\n[\\n\\t{"label": "couch", "bbox_3d": [...]},\\n\\t{...}\\n]```
    grounding       {"bbox_3d": [9 numbers]}
    frame selection {"frame": k}
    pointmap        {"pointmap": [x, y, z], "label": "chair"}
    caption         the caption text
    spatial answer  the number or option letter, as text

The parsers in `output_parsing.py` read all of these back.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported where an array is built: `gap-mllm --help` and argument mistakes read the
    import numpy as np  # task registry, which imports this module, and need no numpy (tests/test_cli_startup.py)

DEFAULT_DECIMALS = 2

# The label key of the pre-training answer is not public (docs/method.md §4.1, §10.1); "label" is our choice.
POINTMAP_LABEL_KEY = "label"

# The pieces of the answer texts, named once: the serialisers below write them and the answer grammars
# (answer_grammar.py) are built from them, so a format and its grammar cannot drift apart.
BOX_KEY = "bbox_3d"  # grounding and detection boxes
LABEL_KEY = "label"  # a detection entry's label
FRAME_KEY = "frame"  # grounding stage 1
POINTMAP_KEY = "pointmap"  # the pre-training answer's point
ITEM_SEPARATOR, KEY_SEPARATOR = ", ", ": "  # json.dumps' own defaults, passed explicitly
DETECTION_OPEN = "```json\n[\n"  # the official detection answer: fence, list, one entry per line
DETECTION_INDENT = "\t"
DETECTION_LINE_END = ",\n"
DETECTION_CLOSE = "]```"


def _finite_floats(values, count: int, what: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be {count} numbers, got {values!r}") from err
    if len(out) != count:
        raise ValueError(f"{what} must have {count} numbers, got {len(out)}")
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{what} must be finite, got {out}")
    return out


def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """`Ry(roll) · Rx(pitch) · Rz(yaw)` as a `[3, 3]` float64 array (= scipy `from_euler("zxy", ...)`)."""
    import numpy as np

    cy_, sy_ = math.cos(yaw), math.sin(yaw)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cr, sr = math.cos(roll), math.sin(roll)
    rz = np.array([[cy_, -sy_, 0.0], [sy_, cy_, 0.0], [0.0, 0.0, 1.0]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
    ry = np.array([[cr, 0.0, sr], [0.0, 1.0, 0.0], [-sr, 0.0, cr]])
    return ry @ rx @ rz


@dataclass(frozen=True)
class Box3D:
    """An oriented 3D box in the first view's OpenCV camera frame (metres, radians; see module docstring).

    Attributes:
        label: object name, or None (grounding answers carry no label).
        center: `(cx, cy, cz)`.
        size: `(sx, sy, sz)` along the box's own x, y, z axes.
        angles: `(yaw, pitch, roll)`; `R = Ry(roll)·Rx(pitch)·Rz(yaw)`.
    """

    label: str | None
    center: tuple[float, float, float]
    size: tuple[float, float, float]
    angles: tuple[float, float, float] = field(default=(0.0, 0.0, 0.0))

    def __post_init__(self):
        if self.label is not None and not isinstance(self.label, str):
            raise TypeError(f"Box3D label must be a string or None, got {self.label!r}")
        object.__setattr__(self, "center", _finite_floats(self.center, 3, "Box3D center"))
        object.__setattr__(self, "size", _finite_floats(self.size, 3, "Box3D size"))
        object.__setattr__(self, "angles", _finite_floats(self.angles, 3, "Box3D angles"))

    def to_list(self) -> list[float]:
        """`[cx, cy, cz, sx, sy, sz, yaw, pitch, roll]` (9 floats)."""
        return [*self.center, *self.size, *self.angles]

    @classmethod
    def from_list(cls, values, label: str | None = None) -> "Box3D":
        """Inverse of `to_list`. Raises ValueError unless `values` holds exactly 9 finite numbers."""
        v = _finite_floats(values, 9, "bbox_3d")
        return cls(label=label, center=v[0:3], size=v[3:6], angles=v[6:9])

    def rotation_matrix(self) -> np.ndarray:
        """`[3, 3]` rotation box → camera frame (`Ry(roll)·Rx(pitch)·Rz(yaw)`)."""
        return rotation_matrix(*self.angles)

    def corners(self) -> np.ndarray:
        """The 8 corners `[8, 3]`: `R · (size ⊙ c) + center` for c ∈ {−½, ½}³ (x fastest)."""
        import numpy as np

        unit = np.array([[x, y, z] for z in (-0.5, 0.5) for y in (-0.5, 0.5) for x in (-0.5, 0.5)])
        return (unit * np.asarray(self.size)) @ self.rotation_matrix().T + np.asarray(self.center)

    def rounded(self, decimals: int = DEFAULT_DECIMALS) -> "Box3D":
        """The box as its serialised text reads back (every value through Python's `round`)."""
        return Box3D.from_list([round(v, decimals) for v in self.to_list()], label=self.label)


def _numbers(values, decimals: int) -> list[float]:
    return [round(float(v), decimals) for v in values]


def _dumps(obj) -> str:
    # json.dumps prints floats with repr(): 0.44, -0.0, 2.0 - exactly like the official targets.
    return json.dumps(obj, allow_nan=False, separators=(ITEM_SEPARATOR, KEY_SEPARATOR))


def detection_entry(box: Box3D, decimals: int = DEFAULT_DECIMALS) -> str:
    """One detection line without indentation: `{"label": "couch", "bbox_3d": [...]}`."""
    if box.label is None:
        raise ValueError("detection boxes need a label")
    return _dumps({LABEL_KEY: box.label, BOX_KEY: _numbers(box.to_list(), decimals)})


def serialize_detection(boxes, decimals: int = DEFAULT_DECIMALS) -> str:
    """The official detection answer: a ```json fence, `[`, one TAB-indented dict per line, `]```.

    Lines end with `,` except the last one; the closing fence follows `]` directly. An empty list is
    written as "```json\\n[\\n]```".
    """
    lines = [DETECTION_INDENT + detection_entry(box, decimals) for box in boxes]
    body = DETECTION_LINE_END.join(lines)
    return DETECTION_OPEN + (body + "\n" if body else "") + DETECTION_CLOSE


def serialize_grounding(box: Box3D, decimals: int = DEFAULT_DECIMALS) -> str:
    """`{"bbox_3d": [9 numbers]}` (the label is not part of the grounding answer)."""
    return _dumps({BOX_KEY: _numbers(box.to_list(), decimals)})


def serialize_frame_selection(frame: int) -> str:
    """`{"frame": k}` (ScanRefer stage 1)."""
    if isinstance(frame, bool) or int(frame) != frame:
        raise ValueError(f"frame must be an integer, got {frame!r}")
    return _dumps({FRAME_KEY: int(frame)})


def serialize_pointmap(point, label: str | None = None, decimals: int = DEFAULT_DECIMALS) -> str:
    """`{"pointmap": [x, y, z], "label": "..."}` on one line (no fence; the official line parser needs it).

    The label key name is not public; we use `"label"` (`POINTMAP_LABEL_KEY`). With `label=None` the key
    is omitted. Point in the first view's OpenCV camera frame, metres (the most consistent reading of
    the official evaluator, docs/method.md §10.1).
    """
    values = _finite_floats(point, 3, "pointmap")
    obj = {POINTMAP_KEY: _numbers(values, decimals)}
    if label is not None:
        if not isinstance(label, str):
            raise TypeError(f"pointmap label must be a string, got {label!r}")
        obj[POINTMAP_LABEL_KEY] = label
    return _dumps(obj)


def serialize_caption(caption: str) -> str:
    """A caption answer is the caption itself (surrounding whitespace removed); it must not be empty."""
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError(f"a caption must be a non-empty string, got {caption!r}")
    return caption.strip()


def serialize_spatial_answer(answer) -> str:
    """A spatial-QA answer: the number (`repr`, so 3.5 → "3.5") or the option letter as text."""
    if isinstance(answer, bool) or answer is None:
        raise ValueError(f"a spatial-QA answer must be a number or a string, got {answer!r}")
    if isinstance(answer, (int, float)):
        return _dumps(answer)
    text = str(answer).strip()
    if not text:
        raise ValueError("a spatial-QA answer must not be empty")
    return text
