"""Image utilities of GAP-MLLM without torch or transformers: image files decoded upright (EXIF orientation),
animated images refused, 8-bit RGB conversion of any PIL mode, the alignment of a scene's views of different shapes
(VGGT's "pad" loader), and the marker visual prompt drawn on a view. The processor reads views through it (a view
file's errors name the view: `view_file_errors`); the command line's early checks and the data builders use it before
any model is loaded.
"""

from __future__ import annotations

import contextlib
import numbers
import os
from collections.abc import Sequence

import numpy as np
import PIL.Image
import PIL.ImageOps

from .files import regular_file_problem

# --------------------------------------------------------------------------------------------- images

ORIENTATION_TAG = 0x0112  # EXIF "Orientation"
SWAPPED_ORIENTATIONS = (5, 6, 7, 8)  # the tag values whose upright photo is the stored one turned by a quarter
# relative width/height difference still one shape: 1920x1080 beside 1920x1088 is, 4:3 beside 3:2 (12.5 %) is not
ASPECT_RATIO_TOLERANCE = 0.01


class AnimatedImageError(ValueError):
    """An animated image file given where one frame is read (`read_image_file`)."""


def upright(image: PIL.Image.Image) -> PIL.Image.Image:
    """`image` as its EXIF orientation says it is viewed (a new image); `image` itself for orientation 1 or none."""
    if image.getexif().get(ORIENTATION_TAG, 1) == 1:
        return image
    return PIL.ImageOps.exif_transpose(image)


def read_image_file(source, before_decoding=None) -> PIL.Image.Image:
    """The image file `source` (a path or binary file object), fully decoded and `upright`, in its own mode.

    `before_decoding(image)`, if given, sees the opened header first (e.g. to check a pixel limit). PIL's errors pass
    through; an animated file raises `AnimatedImageError`."""
    with PIL.Image.open(source) as image:
        if getattr(image, "is_animated", False):
            name = repr(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else "the image"
            raise AnimatedImageError(f"{name} is an animated {image.format} of {image.n_frames} frames, a clip rather "
                                     "than one frame: give its frames as images, or give the file to gap-mllm predict "
                                     "or the Space, which sample it as a clip")
        if before_decoding is not None:
            before_decoding(image)
        image.load()  # decoded: the image outlives the closed file
        return upright(image)


@contextlib.contextmanager
def view_file_errors(path, name: str):
    """Around the processor's reading of image file `path` as view `name`: before it, ValueError for a path that is
    not a regular file (a FIFO would be waited on), FileNotFoundError for a missing one; then the reading's errors (an
    animated image, a possible decompression bomb, a file PIL cannot read) as ValueErrors naming view and file."""
    kind, shown = regular_file_problem(path), repr(os.fspath(path))
    if kind is not None:
        raise ValueError(f"{name}: image file {shown} is {kind}, not a regular file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name}: image file not found: {shown}")
    try:
        yield
    except AnimatedImageError as err:  # a clip: which of its frames would be the view is the caller's choice
        raise ValueError(f"{name}: {err}") from err
    except PIL.Image.DecompressionBombError as err:
        raise ValueError(f"{name}: image file {shown} is refused as a possible decompression bomb ({err}); "
                         "downscale it, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file") from err
    except (PIL.UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{name}: cannot read image file {shown}: {err}") from err


def displayed_size(image: PIL.Image.Image) -> tuple[int, int]:
    """`(width, height)` of an opened image as viewed (EXIF orientation applied), from the header alone."""
    if image.getexif().get(ORIENTATION_TAG, 1) in SWAPPED_ORIENTATIONS:
        return image.height, image.width
    return image.width, image.height


def _shape(size: tuple[int, int]) -> str:
    width, height = size
    return "landscape" if width > height else "portrait" if width < height else "square"


VGGT_PAD_SIZE, VGGT_PAD_MULTIPLE = 518, 14  # VGGT's `load_and_preprocess_images(mode="pad")`: its square, its patch


def one_aspect_ratio(sizes) -> bool:
    """Whether frames of `sizes` (`(width, height)` each) share the first one's aspect ratio (`ASPECT_RATIO_TOLERANCE`)."""
    return all(abs((w * sizes[0][1]) / (h * sizes[0][0]) - 1) <= ASPECT_RATIO_TOLERANCE for w, h in sizes)


def vggt_pad_boxes(sizes, names) -> list[tuple[int, int, int, int]] | None:
    """Where each frame (of `sizes`, `(width, height)` each, named by `names`) lies in the white 518×518 square of
    VGGT's reference loader in "pad" mode, `(left, top, width, height)`: its longer side made 518, the other
    `round(side·518/longer / 14)·14`, centred (`(518 − width) // 2` left, `(518 − height) // 2` top; a 256x300 photo →
    (35, 0, 448, 518), a 640x480 one → (0, 63, 518, 392)). None when the frames share one aspect ratio (within
    `ASPECT_RATIO_TOLERANCE`: they are resized to one size instead). ValueError naming the first frame too thin to
    align (its shorter side rounds to no pixels: an aspect ratio of 74 or more, a 1x4000 strip)."""
    sizes, names = list(sizes), list(names)
    if one_aspect_ratio(sizes):
        return None
    boxes = []
    for (width, height), name in zip(sizes, names):
        scale = VGGT_PAD_SIZE / max(width, height)
        short = round(min(width, height) * scale / VGGT_PAD_MULTIPLE) * VGGT_PAD_MULTIPLE  # the loader's own rounding
        if short == 0:
            raise ValueError(f"{name} is {width}x{height} ({_shape((width, height))}): too thin to align with frames of "
                             f"another shape (padded to VGGT's {VGGT_PAD_SIZE}x{VGGT_PAD_SIZE} square, its shorter side "
                             "would keep no pixel); crop it or leave this frame out")
        box_width, box_height = (VGGT_PAD_SIZE, short) if width >= height else (short, VGGT_PAD_SIZE)
        boxes.append(((VGGT_PAD_SIZE - box_width) // 2, (VGGT_PAD_SIZE - box_height) // 2, box_width, box_height))
    return boxes


def pad_to_vggt_square(image: PIL.Image.Image, box: tuple[int, int, int, int]) -> PIL.Image.Image:
    """`image` resized (bicubic) into `box` of a white 518×518 RGB square (`vggt_pad_boxes`), as VGGT's loader pads."""
    square = PIL.Image.new("RGB", (VGGT_PAD_SIZE, VGGT_PAD_SIZE), (255, 255, 255))
    square.paste(image.resize(box[2:], PIL.Image.Resampling.BICUBIC), box[:2])
    return square


def alignment_note(sizes) -> str:
    """The one line that says frames of different shapes were padded (`vggt_pad_boxes`)."""
    shapes = ", ".join(sorted({f"{w}x{h}" for w, h in sizes}))
    return (f"frames of different shapes ({shapes}): each is scaled to {VGGT_PAD_SIZE} px on its longer side and "
            f"padded with white to {VGGT_PAD_SIZE}x{VGGT_PAD_SIZE}, as VGGT's reference loader does (mode 'pad'); "
            "the model sees the white bars too")


# ------------------------------------------------------------------------------------- 8-bit RGB

def _composite_rgba_on_white(rgba: PIL.Image.Image) -> PIL.Image.Image:
    # VGGT's loader blends transparency onto white; doing it for every input keeps both branches equal.
    background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return PIL.Image.alpha_composite(background, rgba).convert("RGB")


# single-channel modes of more than 8 bits ("I;16*", "I", "F"): `convert("RGB")` clips them at 255 (a white frame)
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
UINT16_MAX = 65535


def _high_bit_depth_to_l(image: PIL.Image.Image, name: str) -> PIL.Image.Image:
    """A 16-bit grey image as 8-bit "L", v -> round(v · 255 / 65535); ValueError for "F" or "I" beyond 16 bits."""
    if image.mode == "F":
        raise ValueError(
            f"{name}: a 32-bit float image (mode F) has no defined brightness range; convert it to 8-bit RGB "
            "(or pass a float array in [0, 1]) before giving it to the processor"
        )
    values = np.asarray(image, dtype=np.int64)
    if values.size and (values.min() < 0 or values.max() > UINT16_MAX):
        raise ValueError(
            f"{name}: a 32-bit integer image (mode {image.mode}) with values in [{values.min()}, {values.max()}] "
            "beyond the 16-bit range; convert it to 8-bit RGB first"
        )
    scaled = np.rint(values.astype(np.float64) * (255.0 / UINT16_MAX)).astype(np.uint8)
    return PIL.Image.fromarray(scaled, mode="L")


def pil_to_rgb(image: PIL.Image.Image, name: str = "image") -> PIL.Image.Image:
    """A new 8-bit RGB copy of a PIL image of any mode: transparency blended onto white, 16-bit grey scaled by its full
    range; ValueError naming `name` for a 32-bit float image (no defined range)."""
    if image.mode in SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        image = _high_bit_depth_to_l(image, name)
    return _pil_to_rgb(image)


def _pil_to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    if image.mode == "RGBA":
        return _composite_rgba_on_white(image)
    if image.mode in ("LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        return _composite_rgba_on_white(image.convert("RGBA"))
    return image.convert("RGB")  # always a new object, so later drawing never touches the caller's image


# ------------------------------------------------------------------------------------ marker visual prompt

MARKER_COLOR = (255, 0, 0)
MARKER_ARM = 10  # half-length of each bar
MARKER_HALF_THICKNESS = 2  # the official `thickness = 3` draws offsets -2..2, i.e. a 5-px stroke


def _as_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be an integer, got {value!r}")
    if isinstance(value, numbers.Integral):
        return int(value)
    if float(value).is_integer():
        return int(value)
    raise ValueError(f"{what} must be an integer pixel coordinate, got {value!r}")


def marker_mask(height: int, width: int, x: int, y: int) -> np.ndarray:
    """Boolean mask `[height, width]` of the pixels the marker at column `x`, row `y` paints."""
    mask = np.zeros((height, width), dtype=bool)
    arm, half = MARKER_ARM, MARKER_HALF_THICKNESS
    # Python slices clip at the borders for us; negative starts must be clamped to 0 by hand.
    mask[max(y - half, 0) : max(y + half + 1, 0), max(x - arm, 0) : max(x + arm + 1, 0)] = True
    mask[max(y - arm, 0) : max(y + arm + 1, 0), max(x - half, 0) : max(x + half + 1, 0)] = True
    return mask


def check_marker_inside(x: int, y: int, width: int, height: int, name: str = "marker") -> None:
    """ValueError naming `name` unless pixel (x, y) (column, row) lies inside a `width × height` image."""
    if not (0 <= x < width and 0 <= y < height):
        raise ValueError(
            f"{name}: marker pixel (x={x}, y={y}) is outside the {width}x{height} view "
            f"(x must be in [0, {width - 1}], y in [0, {height - 1}], in the view's original pixel grid)"
        )


def draw_marker(image: PIL.Image.Image, x: int, y: int, name: str = "marker") -> PIL.Image.Image:
    """An RGB copy of `image` with the red "+" centred at column `x`, row `y` (arms clipped at the border).
    ValueError naming `name` when the centre is outside the image."""
    x, y = _as_int(x, f"{name} x"), _as_int(y, f"{name} y")
    check_marker_inside(x, y, image.width, image.height, name)
    rgb = np.array(image.convert("RGB"), dtype=np.uint8)  # np.array copies
    rgb[marker_mask(rgb.shape[0], rgb.shape[1], x, y)] = MARKER_COLOR
    return PIL.Image.fromarray(rgb, mode="RGB")


def parse_point_prompt(point_prompt, num_views: int, name: str = "point prompt") -> tuple[int, int, int]:
    """`(view_idx, x, y)` as plain ints. TypeError / ValueError: not 3 integers; IndexError: `view_idx` outside
    `[0, num_views)` (negative indices are refused, not wrapped)."""
    if not isinstance(point_prompt, Sequence) or isinstance(point_prompt, str) or len(point_prompt) != 3:
        raise ValueError(f"{name} must be (view_idx, x, y), got {point_prompt!r}")
    view_idx = _as_int(point_prompt[0], f"{name} view index")
    x = _as_int(point_prompt[1], f"{name} x")
    y = _as_int(point_prompt[2], f"{name} y")
    if not 0 <= view_idx < num_views:
        raise IndexError(f"{name}: view index {view_idx} is out of range for a sample with {num_views} view(s)")
    return view_idx, x, y


def apply_point_prompt(views: Sequence[PIL.Image.Image], point_prompt, name: str = "point prompt") -> list:
    """A new list of `views` (PIL images at their original resolution) with the marker `point_prompt`
    `(view_idx, x, y)` painted into a copy of view `view_idx`; None leaves every view as is. ValueError / TypeError /
    IndexError for a malformed prompt or a marker pixel outside its view."""
    views = list(views)
    if point_prompt is None:
        return views
    view_idx, x, y = parse_point_prompt(point_prompt, len(views), name)
    views[view_idx] = draw_marker(views[view_idx], x, y, name=f"{name} (view {view_idx})")
    return views
