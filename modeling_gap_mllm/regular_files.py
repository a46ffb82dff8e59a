"""The one rule of every reader of the user's files (frames, depth, poses, annotation and predictions files): regular
files only.

Opening a FIFO (named pipe) for reading waits for a writer that never comes: a FIFO in place of a frame hung
`gap-mllm train` (the data's cache key reads every frame) with no output at all. A character device (`/dev/zero`)
reads without end, a folder or a socket does not read at all. So a reader opens through `open_regular_file`: the
open itself never waits (`O_NONBLOCK`, cleared once the file is known to be regular), and anything but a regular
file (symbolic links followed) is `NotARegularFile`, an OSError whose message names the file and what it is
instead. Checking the opened descriptor, not the path beforehand, leaves no moment in which the path could be
swapped for a pipe. `regular_file_problem` says the same of a path without opening it, for readers that hand a
path to a library (the processor's `load_image`) and for checks made before the readers run (the command line's early
checks).

Its users: the data's cache key and readers (processing/builder_fingerprint.py, scannet_layout.py, builders.py), the
processor's image loading (image_alignment.py), the evaluation's predictions and fingerprints, the command line's
checks of the files it is given (cli/early_checks.py; the uploads' own check, cli/uploads.py, takes regular files
only too). Light to import (os, stat), and part of the remote code (image_alignment.py imports it).
"""

from __future__ import annotations

import errno
import os
import stat

# what a path that is not a regular file is instead, by its stat type (S_IFMT); anything else is "a special file"
_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class NotARegularFile(OSError):
    """A path a reader refuses: it is a FIFO, a device, a socket or a folder, not a regular file. The message names
    the file and what it is; an OSError, so the command line shows it as one line (cli/errors.py)."""

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
    """What `path` is when it exists and is not a regular file ("a FIFO (named pipe)", "a folder", ...), without
    opening it; None for a regular file and for a path that is missing (the caller's own message names that)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return kind_of(mode)


def open_regular_file(path, what: str = "file"):
    """`open(path, "rb")` of a regular file (symbolic links followed); `NotARegularFile` naming `path` as `what`
    ("colour image", "annotation file") for anything else, without waiting on a FIFO. Other OSErrors (missing, no
    permission) are raised as `open` raises them."""
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
    """The bytes of regular file `path` (`open_regular_file`: `NotARegularFile` for anything else)."""
    with open_regular_file(path, what) as handle:
        return handle.read()


def read_regular_text(path, what: str = "file", encoding: str = "utf-8") -> str:
    """The text of regular file `path` (`open_regular_file`); a UnicodeDecodeError as `Path.read_text` raises it."""
    return read_regular_bytes(path, what).decode(encoding)


__all__ = ["NotARegularFile", "kind_of", "open_regular_file", "read_regular_bytes", "read_regular_text",
           "regular_file_problem"]
