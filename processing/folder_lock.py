"""Who writes a folder now: one writer per output folder, held for the writer's life by an OS file lock.

Whose folder it is (the user's, another command's, this command's earlier output) is processing/output_folder.py's
rule; this module is its other half. Every writer of a folder the package owns takes the folder's lock before it
reads or writes anything there and keeps it to its end: `gap-mllm train` its output folder and its run state
folder, `python -m lab.mini` its `--out`, `gap-mllm evaluate` its `--out`, and every folder written through
`writing_output_folder` (synth data, the exports, the Space bundle, the run state). A second writer is refused in
one line naming the folder, the holder and the lock file.

The lock is `fcntl.flock` on a lock file: the kernel holds it for the open file, so it is released when the holder
ends however it ends (a kill, an out-of-memory kill, a lost machine), and it is seen by every process that opens
the same file, whatever its process-id namespace (two containers with one hostname, whose pids mean nothing to
each other). Nothing is judged from pids: the file's record (command, pid, host, boot id, start time) only names
the holder in the message. A lock file left by a killed run is taken (with a log line naming that run).

The lock file of a folder that is replaced whole by a rename (`writing_output_folder`) lies beside it,
`.<name>.gap-mllm-lock` in the same parent, so it outlives each rename; a folder that is appended to (an
evaluation's) may keep it inside (`lock_file=`). The lock is the folder's, not the path's: the folder is named with
every symbolic link resolved (`out` and a link `outL -> out` share one lock), and a lock file that is itself a
symbolic link is refused, never opened (writing the holder's record through it would overwrite what it points to). A process that holds a folder's lock may take it again (nested
writers of one run: the run state written at each checkpoint of a run that holds it); the lock goes with the
outermost. `flock` is local to one machine's kernel on most network file systems (NFS emulates it with byte-range
locks, which do reach the server); two machines writing one folder through a file system without lock support are
not told apart.

A lock file that cannot be made (the folder that holds it is read-only, or grants this process no write permission)
is `FolderNotWritable`: one line naming the folder and what to do, before anything is read or written there.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from .json_files import loads_json

logger = logging.getLogger(__name__)

LOCK_SUFFIX = ".gap-mllm-lock"

# this process's held locks: lock file (absolute) -> [depth, descriptor, record]
_HELD: dict[str, list] = {}


class FolderBusy(OSError):
    """Another process writes this folder now; the message names the folder, that writer and the lock file. An
    OSError: the command line shows it as one line (cli/errors.py)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.errno = errno.EBUSY


class FolderNotWritable(ValueError):
    """The lock file of a folder cannot be made: the folder that holds it is read-only or grants this process no write
    permission (the message names the folder, why and what to do; one line on the command line)."""


# what an attempt to make a file says in a folder one may not write
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


class LockFileIsALink(OSError):
    """A folder's lock file is a symbolic link: refused, never written through (the message names it)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.errno = errno.ELOOP


def lock_file_of(folder) -> Path:
    """The lock file of a folder replaced whole by a rename: `.<name>.gap-mllm-lock` beside the folder `folder`
    resolves to (every symbolic link followed: one folder, one lock, by whatever path it is given)."""
    folder = Path(os.path.realpath(folder))
    return folder.parent / f".{folder.name}{LOCK_SUFFIX}"


def _lock_path(folder, lock_file=None) -> Path:
    """The lock file `acquire` takes for `folder`: `lock_file` in its folder resolved (the file itself is not
    followed: a link there is refused), else `lock_file_of(folder)`."""
    if lock_file is None:
        return lock_file_of(folder)
    lock_file = Path(os.path.abspath(lock_file))
    return Path(os.path.realpath(lock_file.parent)) / lock_file.name


def boot_id() -> str | None:
    """This machine's boot id (Linux), recorded to tell a holder's machine apart in the message."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def holder_text(holder: dict) -> str:
    """The holder of a lock in words: "gap-mllm train, pid 12 on host, started 2026-01-01 10:00:00"."""
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    command = f"{holder['command']}, " if holder.get("command") else ""
    return f"{command}pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {when}"


def read_holder(path) -> dict | None:
    """The record of lock file `path` (None when it is gone; `{}` when it cannot be read)."""
    try:
        holder = loads_json(Path(path).read_text(encoding="utf-8"), path)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _open_locked(path: Path, folder) -> int | None:
    """A descriptor of `path` holding its exclusive lock, or None when another process holds it. The file is
    created when missing; a file replaced or deleted between the open and the lock (its holder released it) is
    opened again, so the lock held is always on the file the path names.

    Raises:
        LockFileIsALink: `path` is a symbolic link (it is not opened: `O_NOFOLLOW`)."""
    for _ in range(10):
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as error:
            if error.errno != errno.ELOOP or not path.is_symlink():
                raise
            raise LockFileIsALink(f"{path}: the lock file of {folder} is a symbolic link (to {os.readlink(path)}); a lock "
                                  "file is never written through a link: remove the link, then run again") from error
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(descriptor)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            raise
        try:
            same = os.path.samestat(os.fstat(descriptor), os.lstat(path))
        except FileNotFoundError:
            same = False
        if same:
            return descriptor
        os.close(descriptor)  # the holder deleted it as we opened it: lock the file that is there now
    raise FolderBusy(f"could not take the lock file {path} (other runs keep taking it)")


def acquire(folder, command: str, *, lock_file=None, what: str = "another run", option: str | None = None,
            busy: type[FolderBusy] = FolderBusy) -> Path:
    """Take the lock of `folder` for `command` (module docstring); returns the lock file. `what` names the other
    writer in the refusal ("another evaluation run"), `option` how the user gives another folder ("--out"), `busy`
    the error raised (a subclass of FolderBusy).

    Raises:
        FolderBusy: another process holds it.
        LockFileIsALink: the lock file is a symbolic link.
        FolderNotWritable: the lock file cannot be made there (a read-only folder, no write permission).
    """
    path = _lock_path(folder, lock_file)
    held = _HELD.get(str(path))
    if held is not None:
        held[0] += 1
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = _open_locked(path, folder)
    except OSError as error:
        if error.errno not in NOT_WRITABLE:
            raise
        place = next((p for p in (path.parent, *path.parent.parents) if p.exists()), path.parent)  # where it failed
        other = f"give another {option} you can write to" if option else "write elsewhere"
        raise FolderNotWritable(f"{folder} cannot be written: {place} is read-only for this process ({error.strerror}; "
                                f"the folder's lock file goes in {path.parent}); {other}, or make {place} writable"
                                ) from error
    if descriptor is None:
        holder = read_holder(path) or {}
        other = f" or give another {option}" if option else ""
        raise busy(f"{folder} is being written by {what} ({holder_text(holder)}; lock file {path}): "
                                      f"wait for it to end{other}")
    left = read_holder(path)
    if left:  # a record under a lock nobody holds: its run ended without releasing it (killed)
        logger.warning("%s: taking over the lock left by a run that is no longer running (%s)", folder, holder_text(left))
    record = {"command": command, "pid": os.getpid(), "host": socket.gethostname(), "boot_id": boot_id(),
              "started": time.time(), "argv": sys.argv[:8]}
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, (json.dumps(record) + "\n").encode("utf-8"), 0)
    _HELD[str(path)] = [1, descriptor, record]
    return path


def release(path) -> None:
    """Give back a lock `acquire` returned (the file goes with the outermost hold of this process)."""
    key = str(path)
    held = _HELD.get(key)
    if held is None:
        return
    held[0] -= 1
    if held[0] > 0:
        return
    del _HELD[key]
    with contextlib.suppress(FileNotFoundError):
        if os.path.samestat(os.fstat(held[1]), os.lstat(key)):
            os.unlink(key)  # deleted while still locked: a run that opened it meanwhile opens the next file
    os.close(held[1])


def holds(folder, lock_file=None) -> bool:
    """Whether this process holds the lock of `folder`."""
    return str(_lock_path(folder, lock_file)) in _HELD


@contextlib.contextmanager
def holding_folder(folder, command: str, *, lock_file=None, what: str = "another run", option: str | None = None,
                   busy: type[FolderBusy] = FolderBusy, take: bool = True):
    """Hold the lock of `folder` for the `with` block (`acquire`); `take=False` holds nothing (the non-main processes
    of one distributed run, whose main process holds it for all)."""
    if not take:
        yield None
        return
    path = acquire(folder, command, lock_file=lock_file, what=what, option=option, busy=busy)
    try:
        yield path
    finally:
        release(path)
