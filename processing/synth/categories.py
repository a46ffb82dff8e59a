"""Furniture categories of SynthRooms: size ranges and part templates.

Each template returns the parts of one object in its own frame (x width, y depth with the back at
+y, z up). `build_parts` recentres them so that the object's 9-DoF box is exactly the tight box of
its parts; this is what makes the ground truth boxes exact. Category names follow the ScanNet /
EmbodiedScan vocabulary of the detection category lists (docs/method.md §6.1), so the official metrics
apply unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .scene import Part

Box = tuple[tuple[float, float, float], tuple[float, float, float]]  # (min corner, max corner)


@dataclass(frozen=True)
class Category:
    """A furniture kind: size ranges (metres) and whether it usually stands against a wall."""

    name: str
    width: tuple[float, float]
    depth: tuple[float, float]
    height: tuple[float, float]
    wall_probability: float
    template: Callable[[float, float, float], list[tuple[Box, float]]]


def _slab(w, d, h):
    return [(((-w / 2, -d / 2, 0.0), (w / 2, d / 2, h)), 1.0)]


def _legs(w, d, top_z, thickness):
    """Four legs in the corners, from the floor up to `top_z` (shade 0.7: legs a bit darker)."""
    t = thickness
    legs = []
    for sx in (-1, 1):
        for sy in (-1, 1):
            x0 = sx * (w / 2 - t / 2) - t / 2
            y0 = sy * (d / 2 - t / 2) - t / 2
            legs.append((((x0, y0, 0.0), (x0 + t, y0 + t, top_z)), 0.7))
    return legs


def _table(w, d, h):
    top = 0.04
    return [(((-w / 2, -d / 2, h - top), (w / 2, d / 2, h)), 1.0)] + _legs(w, d, h - top, 0.06)


def _desk(w, d, h):
    top, side = 0.035, 0.04
    return [
        (((-w / 2, -d / 2, h - top), (w / 2, d / 2, h)), 1.0),
        (((-w / 2, -d / 2, 0.0), (-w / 2 + side, d / 2, h - top)), 0.8),
        (((w / 2 - side, -d / 2, 0.0), (w / 2, d / 2, h - top)), 0.8),
        (((-w / 2 + side, d / 2 - 0.03, 0.3), (w / 2 - side, d / 2, h - top)), 0.75),  # modesty panel
    ]


def _chair(w, d, h):
    seat_z, seat_t, back_t = 0.45, 0.05, 0.05
    return (
        [(((-w / 2, -d / 2, seat_z - seat_t), (w / 2, d / 2, seat_z)), 1.0)]
        + [(((-w / 2, d / 2 - back_t, seat_z), (w / 2, d / 2, h)), 0.9)]
        + _legs(w, d, seat_z - seat_t, 0.04)
    )


def _couch(w, d, h):
    seat_z, arm = 0.42, 0.18
    return [
        (((-w / 2, -d / 2, 0.0), (w / 2, d / 2, seat_z)), 1.0),
        (((-w / 2, d / 2 - 0.22, seat_z), (w / 2, d / 2, h)), 0.9),
        (((-w / 2, -d / 2, seat_z), (-w / 2 + arm, d / 2 - 0.22, seat_z + 0.2)), 0.85),
        (((w / 2 - arm, -d / 2, seat_z), (w / 2, d / 2 - 0.22, seat_z + 0.2)), 0.85),
    ]


def _bed(w, d, h):
    frame_z, mattress = 0.3, 0.22
    return [
        (((-w / 2, -d / 2, 0.0), (w / 2, d / 2 - 0.06, frame_z)), 0.8),
        (((-w / 2 + 0.03, -d / 2 + 0.03, frame_z), (w / 2 - 0.03, d / 2 - 0.09, frame_z + mattress)), 1.15),
        (((-w / 2, d / 2 - 0.06, 0.0), (w / 2, d / 2, h)), 0.9),  # headboard at the back
    ]


def _lamp(w, d, h):
    base, pole = 0.04, 0.035
    shade_h = min(0.35, 0.3 * h)
    return [
        (((-w / 2 * 0.7, -d / 2 * 0.7, 0.0), (w / 2 * 0.7, d / 2 * 0.7, base)), 0.6),
        (((-pole / 2, -pole / 2, base), (pole / 2, pole / 2, h - shade_h)), 0.6),
        (((-w / 2, -d / 2, h - shade_h), (w / 2, d / 2, h)), 1.2),
    ]


def _shelf(w, d, h):
    side, board = 0.03, 0.025
    parts = [
        (((-w / 2, -d / 2, 0.0), (-w / 2 + side, d / 2, h)), 0.85),
        (((w / 2 - side, -d / 2, 0.0), (w / 2, d / 2, h)), 0.85),
        (((-w / 2 + side, d / 2 - 0.015, 0.0), (w / 2 - side, d / 2, h)), 0.7),  # back panel
    ]
    levels = 4
    for level in range(levels + 1):
        z = level * (h - board) / levels
        parts.append((((-w / 2 + side, -d / 2, z), (w / 2 - side, d / 2 - 0.015, z + board)), 1.0))
    return parts


def _cabinet(w, d, h):
    return [
        (((-w / 2 + 0.02, -d / 2 + 0.03, 0.0), (w / 2 - 0.02, d / 2, 0.08)), 0.5),  # plinth
        (((-w / 2, -d / 2, 0.08), (w / 2, d / 2, h)), 1.0),
    ]


def _dresser(w, d, h):
    top = 0.03
    return [
        (((-w / 2 + 0.02, -d / 2 + 0.02, 0.0), (w / 2 - 0.02, d / 2 - 0.02, h - top)), 1.0),
        (((-w / 2, -d / 2, h - top), (w / 2, d / 2, h)), 0.8),
    ]


def _refrigerator(w, d, h):
    split = 0.62 * h
    return [
        (((-w / 2, -d / 2 + 0.01, 0.0), (w / 2, d / 2, split)), 1.0),
        (((-w / 2, -d / 2, split + 0.01), (w / 2, d / 2, h)), 1.05),
    ]


def _stand(w, d, h):
    return [
        (((-w / 2, -d / 2, 0.1), (w / 2, d / 2, h)), 1.0),
    ] + _legs(w, d, 0.1, 0.04)


CATEGORIES: dict[str, Category] = {
    c.name: c
    for c in (
        Category("chair", (0.42, 0.55), (0.42, 0.55), (0.80, 1.00), 0.1, _chair),
        Category("table", (0.80, 1.60), (0.60, 1.00), (0.70, 0.78), 0.0, _table),
        Category("desk", (1.00, 1.60), (0.55, 0.80), (0.72, 0.78), 0.9, _desk),
        Category("couch", (1.50, 2.20), (0.80, 0.95), (0.75, 0.90), 0.9, _couch),
        Category("bed", (1.00, 1.80), (1.90, 2.10), (0.90, 1.20), 1.0, _bed),
        Category("bin", (0.25, 0.40), (0.25, 0.40), (0.30, 0.60), 0.3, _slab),
        Category("lamp", (0.30, 0.45), (0.30, 0.45), (1.30, 1.75), 0.4, _lamp),
        Category("shelf", (0.60, 1.20), (0.30, 0.40), (1.20, 2.00), 1.0, _shelf),
        Category("cabinet", (0.50, 1.20), (0.40, 0.60), (0.80, 1.20), 1.0, _cabinet),
        Category("dresser", (0.90, 1.50), (0.45, 0.60), (0.70, 1.00), 1.0, _dresser),
        Category("refrigerator", (0.60, 0.85), (0.60, 0.75), (1.60, 1.90), 1.0, _refrigerator),
        Category("ottoman", (0.40, 0.80), (0.40, 0.80), (0.35, 0.45), 0.0, _slab),
        Category("stand", (0.40, 0.60), (0.35, 0.50), (0.50, 0.65), 0.8, _stand),
    )
}
CATEGORY_NAMES = tuple(CATEGORIES)


def build_parts(category: Category, size: tuple[float, float, float], colour: np.ndarray, texture: str):
    """Parts of one object and its box size, recentred so that the tight box is centred at 0.

    Returns (parts, box_size `[3]`). The box size can differ slightly from `size` where a template
    does not fill its nominal extent (e.g. a lamp base narrower than the shade).
    """
    raw = category.template(*size)
    mins = np.array([box[0] for box, _ in raw], dtype=np.float64)
    maxs = np.array([box[1] for box, _ in raw], dtype=np.float64)
    low, high = mins.min(axis=0), maxs.max(axis=0)
    centre = (low + high) / 2
    parts = [
        Part(
            center=(lo + hi) / 2 - centre,
            size=hi - lo,
            colour=np.clip(np.asarray(colour) * shade, 0.0, 1.0),
            texture=texture,
        )
        for (lo, hi), shade in zip(zip(mins, maxs), [s for _, s in raw])
    ]
    return parts, high - low
