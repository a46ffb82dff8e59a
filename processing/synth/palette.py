"""Named colours and surface textures of SynthRooms objects (the attributes used in referring text)."""

from __future__ import annotations

import numpy as np

# Linear RGB in [0, 1]; names are the words used in referring expressions and captions.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.80, 0.15, 0.15),
    "green": (0.20, 0.60, 0.25),
    "blue": (0.20, 0.30, 0.80),
    "yellow": (0.92, 0.80, 0.20),
    "white": (0.93, 0.93, 0.90),
    "black": (0.12, 0.12, 0.12),
    "brown": (0.50, 0.32, 0.18),
    "gray": (0.52, 0.52, 0.52),
    "orange": (0.95, 0.50, 0.10),
    "purple": (0.50, 0.25, 0.62),
    "pink": (0.95, 0.60, 0.72),
    "beige": (0.86, 0.78, 0.62),
}
COLOUR_NAMES = tuple(COLOURS)

# Texture ids used by the renderer; the names are the attribute words ("a striped couch").
TEXTURES = ("plain", "striped", "checkered", "wooden")
TEXTURE_IDS = {name: index for index, name in enumerate(TEXTURES)}


def texture_factor(texture: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Brightness multiplier (shape of `a`) of one texture id at surface coordinates (a, b), metres.

    plain: 1; striped: 8 cm bands along a; checkered: 10 cm squares; wooden: fine irregular grain.
    Patterns are functions of object-frame coordinates, so they stick to the object between frames.
    """
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    # Parities through int32 & 1: float `% 2` is ~100x slower in numpy.
    if texture == TEXTURE_IDS["striped"]:
        stripes = np.floor(a * np.float32(1 / 0.08)).astype(np.int32) & 1
        return np.float32(1.0) - np.float32(0.38) * stripes
    if texture == TEXTURE_IDS["checkered"]:
        parity = (np.floor(a * np.float32(10.0)).astype(np.int32) + np.floor(b * np.float32(10.0)).astype(np.int32)) & 1
        return np.float32(1.0) - np.float32(0.45) * parity
    if texture == TEXTURE_IDS["wooden"]:
        # Grain: a sine along a whose phase drifts with b (one sine keeps it cheap).
        return np.float32(0.82) + np.float32(0.18) * np.sin(a * np.float32(90.0) + b * np.float32(9.0))
    if texture == TEXTURE_IDS["plain"]:
        return np.ones_like(a)
    raise ValueError(f"unknown texture id {texture}")
