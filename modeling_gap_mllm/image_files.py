"""The one reader of image files: every frame is read as the photo its viewer shows, EXIF orientation applied.

A phone stores a portrait photo as a landscape sensor image plus an EXIF `Orientation` tag (6: turn 90° clockwise
to view); every photo viewer applies it, and `PIL.Image.open` does not. Read without it, the model gets the frame
sideways and a pixel the user picked in the photo they see (`gap-mllm predict --marker`) lies elsewhere, or outside
the stored image. So every reader of an image file goes through `read_image_file`, which applies the tag
(`PIL.ImageOps.exif_transpose`) before anything else: the command line and the Space (cli/uploads.py), the
processor's paths (image_alignment.py `load_image`), the dataset builders (processing/scannet_layout.py
`read_color`, processing/builders.py), the training cache's decoding and the evaluation's pictures. A reader that
needs the size without decoding asks `displayed_size`.

An animated file (a GIF, an animated PNG or WebP of several frames) is a clip, not one frame: `read_image_file`
refuses it rather than give its first frame as if it were all of it (`gap-mllm predict` and the Space sample it as
a clip, cli/uploads.py).

The frames of one scene share one aspect ratio (`check_one_aspect_ratio`): VGGT attends across them at one size, and
resizing a portrait frame to a landscape one's size would stretch it. Frames of one shape and different sizes are
resized; frames of different shapes are refused, naming them and their sizes, by the processor (image_alignment.py's
callers: the Python API, training, evaluation) and by `gap-mllm predict` and the Space (cli/uploads.py), which
resize to one size before the processor.

Light (PIL only) and part of the remote code (image_alignment.py imports it).
"""

from __future__ import annotations

import os

import PIL.Image
import PIL.ImageOps

ORIENTATION_TAG = 0x0112  # EXIF "Orientation"
SWAPPED_ORIENTATIONS = (5, 6, 7, 8)  # the tag values whose upright photo is the stored one turned by a quarter
# How far one frame's width/height ratio may differ from the first frame's (relatively) and still count as its shape:
# 1920x1080 beside 1920x1088 (a codec's padded rows) is one shape, 4:3 beside 3:2 (12.5 %) is not.
ASPECT_RATIO_TOLERANCE = 0.01


class AnimatedImageError(ValueError):
    """An animated image file given where one frame is read (`read_image_file`)."""


def upright(image: PIL.Image.Image) -> PIL.Image.Image:
    """`image` as its EXIF orientation says it is viewed (a new image, the tag removed); `image` itself when it has
    no orientation other than 1."""
    if image.getexif().get(ORIENTATION_TAG, 1) == 1:
        return image
    return PIL.ImageOps.exif_transpose(image)


def read_image_file(source, before_decoding=None) -> PIL.Image.Image:
    """The image file `source` (a path or a binary file object), fully decoded and upright (`upright`), in its own
    mode. `before_decoding(image)`, if given, sees the opened file first (its header: a reader's pixel limit is
    checked before the pixels are decoded). PIL's errors pass through: each caller words them for its user; an
    animated file is an `AnimatedImageError` (module docstring)."""
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
    """`(width, height)` of an opened image as it is viewed (its EXIF orientation applied), read from the header
    without decoding the pixels."""
    if image.getexif().get(ORIENTATION_TAG, 1) in SWAPPED_ORIENTATIONS:
        return image.height, image.width
    return image.width, image.height


def _shape(size: tuple[int, int]) -> str:
    width, height = size
    return "landscape" if width > height else "portrait" if width < height else "square"


def check_one_aspect_ratio(sizes, names) -> None:
    """A ValueError when the frames of `sizes` (`(width, height)` each, as shown) do not share the first one's aspect
    ratio (within `ASPECT_RATIO_TOLERANCE`), naming the first frame that differs and the first frame (`names`: how
    each is named), with both sizes. Frames of one aspect ratio pass whatever their sizes."""
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


__all__ = ["AnimatedImageError", "check_one_aspect_ratio", "displayed_size", "read_image_file", "upright"]
