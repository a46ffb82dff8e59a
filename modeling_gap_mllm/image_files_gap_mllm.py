"""Reading input files for GAP-MLLM without torch or transformers: regular-file checks (a FIFO or a folder named as a
file is refused by name), image files decoded upright (EXIF orientation), animated images refused, 8-bit RGB
conversion of any PIL mode, and the one-aspect-ratio rule of a scene's views. The processor reads views through it;
the command line's early checks and the data builders use it before any model is loaded.
"""

from __future__ import annotations

import errno
import os
import stat

import numpy as np
import PIL.Image
import PIL.ImageOps


# ---------------------------------------------------------------------------------------------- files

# what a path that is not a regular file is instead, by its stat type (S_IFMT); anything else is "a special file"
_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class NotARegularFile(OSError):
    """A FIFO, device, socket or folder where a regular file is read; the message names the path and its kind."""

    def __init__(self, path, kind: str, what: str = "file"):
        super().__init__(errno.EINVAL, f"{what} {path} is {kind}, not a regular file; give a regular file")
        self.filename, self.kind, self.what = str(path), kind, what

    def __str__(self) -> str:  # the sentence alone, without OSError's "[Errno 22]" prefix
        return self.strerror

    def __reduce__(self):  # crosses process boundaries (datasets' workers) with its own arguments
        return type(self), (self.filename, self.kind, self.what)


def kind_of(mode: int) -> str | None:
    """What a file of stat mode `mode` is, in words, when it is not a regular file; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((words for test, words in _KINDS if test(mode)), "a special file")


def regular_file_problem(path) -> str | None:
    """What `path` is when it exists and is not a regular file ("a folder", ...), without opening it; else None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return kind_of(mode)


def open_regular_file(path, what: str = "file"):
    """`open(path, "rb")` of a regular file (links followed); `NotARegularFile` naming `path` as `what` ("colour image")
    for anything else, without blocking on a FIFO. Other OSErrors are raised as `open` raises them."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        kind = kind_of(os.fstat(descriptor).st_mode)
        if kind is not None:
            raise NotARegularFile(path, kind, what)
        os.set_blocking(descriptor, True)  # a regular file: reads as any other open file's
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def read_regular_bytes(path, what: str = "file") -> bytes:
    """The bytes of regular file `path` (`NotARegularFile` for anything else)."""
    with open_regular_file(path, what) as handle:
        return handle.read()


def read_regular_text(path, what: str = "file", encoding: str = "utf-8") -> str:
    """The text of regular file `path` (`NotARegularFile` for anything else; UnicodeDecodeError as decoding raises)."""
    return read_regular_bytes(path, what).decode(encoding)


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


def displayed_size(image: PIL.Image.Image) -> tuple[int, int]:
    """`(width, height)` of an opened image as viewed (EXIF orientation applied), from the header alone."""
    if image.getexif().get(ORIENTATION_TAG, 1) in SWAPPED_ORIENTATIONS:
        return image.height, image.width
    return image.width, image.height


def _shape(size: tuple[int, int]) -> str:
    width, height = size
    return "landscape" if width > height else "portrait" if width < height else "square"


def check_one_aspect_ratio(sizes, names) -> None:
    """ValueError naming the first frame (of `sizes`, `(width, height)` each, named by `names`) whose aspect ratio
    differs from the first frame's by more than `ASPECT_RATIO_TOLERANCE`; frame sizes themselves may differ."""
    sizes, names = list(sizes), list(names)
    if not sizes:
        return
    first_width, first_height = sizes[0]
    for size, name in zip(sizes[1:], names[1:]):
        width, height = size
        if abs((width * first_height) / (height * first_width) - 1) > ASPECT_RATIO_TOLERANCE:
            raise ValueError(
                f"{name} is {width}x{height} ({_shape(size)}) but {names[0]} is {first_width}x{first_height} "
                f"({_shape(sizes[0])}): the frames of one scene must share one aspect ratio (resized to one size, "
                "they would be stretched); crop or turn them to one shape, or leave this frame out")


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
