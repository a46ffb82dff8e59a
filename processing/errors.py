"""Bad-data errors and the skip policy shared by the readers and the builders; what a full disk looks like.

Every reader raises `DataError` with the offending file and, when known, the sample it belongs to.
Builders either let it propagate (default) or, with `skip_bad_samples=True`, skip the sample and
count it in a `SkipCounter` (reported at the end, per reason) so nothing is dropped silently.

`names_full_disk` is the one rule for "the device is full" (ENOSPC / EDQUOT anywhere in an error's chain, or
the texts of writers that lose the errno), used by training's checkpoints, export-llm and the CLI's error line;
`device_of` names the filesystem a path is on; `DiskFullError` is a full disk already described for the user.
`MissingDependency` is an optional package a command needs and does not find, named with how to install it.
"""

from __future__ import annotations

import errno
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)


# `gap-mllm` exit status of a run stopped before its end that the same command continues (sysexits' EX_TEMPFAIL)
RUN_STOPPED_STATUS = 75
# ... and of one a person stopped with Ctrl-C (SIGINT): the shell's status of an interrupted command, 128 + 2
INTERRUPTED_STATUS = 130


class RunStoppedEarly(RuntimeError):
    """A run stopped before the end of its schedule (its time limit, a SIGTERM, Ctrl-C) with a checkpoint that the
    same command continues. Not a failure: the command line prints it as one line and exits with `status`
    (RUN_STOPPED_STATUS; INTERRUPTED_STATUS for Ctrl-C)."""

    status = RUN_STOPPED_STATUS


class RunFailed(RuntimeError):
    """A run that cannot go on, for a reason its message states whole (what failed and where: a diverged training
    step, ...). Not a bug: the command line prints it as one line, without a traceback, and exits with status 1."""


class DataError(ValueError):
    """A file or sample that cannot be used. The message names the file and/or the sample."""

    def __init__(self, message: str, path=None, sample=None):
        self.path = None if path is None else str(path)
        self.sample = sample
        where = []
        if sample is not None:
            where.append(f"sample {sample!r}")
        if path is not None:
            where.append(f"file {self.path}")
        super().__init__(f"{'; '.join(where)}: {message}" if where else message)

    def with_sample(self, sample) -> "DataError":
        """The same error, now also naming `sample` (readers know the file, builders the sample)."""
        if self.sample is not None:
            return self
        message = str(self)
        if self.path is not None and message.startswith(f"file {self.path}: "):
            message = message[len(f"file {self.path}: ") :]
        return DataError(message, path=self.path, sample=sample)


class MissingDependency(ImportError):
    """An optional package that a command needs is not installed (or is another release). The message names the
    package and the command that installs it; front ends show it as one line, not a traceback."""


def exception_chain(error: BaseException | None):
    """`error`, then what caused it (`__cause__`, else `__context__`), each once: a cycle stops the walk."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# How writers without an errno report it: the OS text (wrapped by many libraries), safetensors' Rust io
# error kind, the quota text.
DISK_FULL_TEXTS = ("no space left on device", "storagefull", "disk quota exceeded")


class DiskFullError(OSError):
    """A write stopped by a full device, whose message already names the device, what was being written and what
    to do (training's checkpoints, export-llm): front ends show it as it is."""


def names_full_disk(error: BaseException) -> bool:
    """Whether `error` or anything in its chain says the device is full: a full-disk errno, or its text."""
    for link in exception_chain(error):
        if isinstance(link, OSError) and link.errno in DISK_FULL_ERRNOS:
            return True
        if any(marker in str(link).lower() for marker in DISK_FULL_TEXTS):
            return True
    return False


def existing_parent(path) -> Path:
    """`path` made absolute, or its nearest ancestor that exists."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def device_of(path) -> str:
    """The filesystem holding `path`: "<device> (mounted at <mount point>)" from /proc/self/mounts, or the
    mount point alone where that table cannot be read."""
    mount = existing_parent(path)
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    try:
        table = Path("/proc/self/mounts").read_text(encoding="utf-8").splitlines()
    except OSError:
        table = []
    # the last entry for a mount point is the one in effect; spaces in paths are written as \040
    devices = [fields[0] for fields in map(str.split, table) if len(fields) >= 2 and fields[1].replace("\\040", " ") == str(mount)]
    return f"{devices[-1]} (mounted at {mount})" if devices else str(mount)


@dataclass
class SkipCounter:
    """Counts skipped samples by reason and keeps the first few messages for the report."""

    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    max_examples: int = 5

    def skip(self, error: Exception, reason: str | None = None) -> None:
        reason = reason or type(error).__name__
        self.counts[reason] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(str(error))
        logger.warning("skipping bad sample (%s): %s", reason, error)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.total:
            return "no samples skipped"
        parts = ", ".join(f"{reason}: {count}" for reason, count in sorted(self.counts.items()))
        return f"skipped {self.total} sample(s) ({parts}); first: " + " | ".join(self.examples)
