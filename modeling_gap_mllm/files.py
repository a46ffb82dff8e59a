"""Reading the files a user names, without torch: regular files only, and the refusal of pickled checkpoints.

A FIFO, device, socket or folder given where a file is read is refused by name (`NotARegularFile`,
`regular_file_problem`) instead of being waited on or read. The command line's early checks, the data builders, the
evaluation, the converters and the processor's view-file check (`image_utils_gap_mllm.view_file_errors`) use it; the
standard library only, it is copied into a model folder with the processor.
"""

import errno
import os
import stat

# Why a pickled checkpoint that torch's safe loader refuses is not loaded anyway (one wording for the
# converters and the command line).
PICKLE_REFUSED = (
    "pickle weights are refused: unpickling a file can run arbitrary code, so only plain tensors are loaded "
    "(torch.load(weights_only=True)) and this file holds other objects. Convert it to safetensors where you "
    "trust it (load it there, then save_pretrained or safetensors.torch.save_file)"
)


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
