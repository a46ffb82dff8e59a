"""The one reader of image files: every frame is read as the photo its viewer shows, EXIF orientation applied.

A phone stores a portrait photo as a landscape sensor image plus an EXIF `Orientation` tag (6: turn 90° clockwise
to view); every photo viewer applies it, and `PIL.Image.open` does not. Read without it, the model gets the frame
sideways and a pixel the user picked in the photo they see (`gap-mllm predict --marker`) lies elsewhere, or outside
the stored image. So every reader of an image file goes through `read_image_file`, which applies the tag
(`PIL.ImageOps.exif_transpose`) before anything else: the command line and the Space (cli/uploads.py), the
processor's paths (image_alignment.py `load_image`), the dataset builders (processing/scannet_layout.py
`read_color`, processing/builders.py), the training cache's decoding and the evaluation's pictures. A reader that
needs the size without decoding asks `displayed_size`.

Light (PIL only) and part of the remote code (image_alignment.py imports it).
"""

from __future__ import annotations

import PIL.Image
import PIL.ImageOps

ORIENTATION_TAG = 0x0112  # EXIF "Orientation"
SWAPPED_ORIENTATIONS = (5, 6, 7, 8)  # the tag values whose upright photo is the stored one turned by a quarter


def upright(image: PIL.Image.Image) -> PIL.Image.Image:
    """`image` as its EXIF orientation says it is viewed (a new image, the tag removed); `image` itself when it has
    no orientation other than 1."""
    if image.getexif().get(ORIENTATION_TAG, 1) == 1:
        return image
    return PIL.ImageOps.exif_transpose(image)


def read_image_file(source, before_decoding=None) -> PIL.Image.Image:
    """The image file `source` (a path or a binary file object), fully decoded and upright (`upright`), in its own
    mode. `before_decoding(image)`, if given, sees the opened file first (its header: a reader's pixel limit is
    checked before the pixels are decoded). PIL's errors pass through: each caller words them for its user."""
    with PIL.Image.open(source) as image:
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


__all__ = ["displayed_size", "read_image_file", "upright"]
