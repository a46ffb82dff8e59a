"""One writer per evaluation folder: a lock file that a run takes before it reads the folder and keeps to its end.

Two `gap-mllm evaluate` runs into one `--out` would otherwise both pass the run-fingerprint check (no answer
exists yet), then both append answers: rows twice over, and a summary that scores a mix of two models' answers.
So a run creates `<out>/evaluation.lock` (O_CREAT | O_EXCL: of two runs, exactly one creates it), holding its pid,
host and start time, before the fingerprint check, and deletes it when it ends, however it ends. A second run
finds the file and is refused in one line naming the folder and the holder.

A run that was killed leaves its lock behind. When the holder was on this host and its pid is no longer a live
process (or is a process started after the lock was taken: the pid was reused), the lock is taken over with a
log line, so a kill never blocks the folder. A holder on another host cannot be checked from here: the message
says to delete the file once that run is gone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK_FILE = "evaluation.lock"
CLOCK_SLACK_S = 2.0  # a process start time read from /proc is rounded to clock ticks


class EvaluationFolderBusy(OSError):
    """Another run writes into this evaluation folder (the message names the folder and that run). An OSError: the
    command line shows it as one line (cli/errors.py)."""


def _holder_text(holder: dict) -> str:
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {when}"


def _read_holder(path: Path) -> dict | None:
    """The lock's holder, or None when the file is gone; an unreadable file reads as `{}` (a holder unknown)."""
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


def process_start_time(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch, from /proc), or None where that cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: start time in clock ticks
    except (OSError, IndexError, ValueError, StopIteration):
        return None


def holder_is_gone(holder: dict) -> bool:
    """Whether the run that holds a lock has ended: on this host, and its pid is dead or was reused since."""
    pid, started = holder.get("pid"), holder.get("started")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or isinstance(pid, bool):
        return False  # another host's processes (or a holder we cannot read) cannot be checked from here
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    begun = process_start_time(pid)
    return isinstance(started, (int, float)) and begun is not None and begun > started + CLOCK_SLACK_S


def _create(path: Path, holder: dict) -> bool:
    """Create the lock file holding `holder`; False if it exists (atomic: of two creators, one wins)."""
    try:
        handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        file.write(json.dumps(holder) + "\n")
    return True


def _take_over(path: Path, stale: dict) -> None:
    """Remove a stale lock, unless it changed since it was judged stale (another run took it over first)."""
    aside = path.with_name(f".{path.name}.{os.getpid()}.stale")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return
    if _read_holder(aside) != stale:  # a fresh lock of another run: put it back
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
    aside.unlink(missing_ok=True)


def acquire(folder) -> dict:
    """Take the lock of evaluation folder `folder` (module docstring); returns what it holds.

    Raises:
        EvaluationFolderBusy: another run holds it.
    """
    path = Path(folder) / LOCK_FILE
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    for _ in range(3):  # a stale lock taken over, or a holder that ended between two looks: try again
        if _create(path, mine):
            return mine
        holder = _read_holder(path)
        if holder is None:
            continue
        if not holder_is_gone(holder):
            raise EvaluationFolderBusy(
                f"{folder} is being written by another evaluation run ({_holder_text(holder)}; lock file {path}): "
                f"wait for it to end, or give another --out; if that run is gone, delete {path}")
        logger.warning("%s: taking over the lock left by a run that is no longer running (%s)", folder, _holder_text(holder))
        _take_over(path, holder)
    raise EvaluationFolderBusy(f"{folder}: could not take the lock file {path} (other runs keep taking it)")


def release(folder, holder: dict) -> None:
    """Delete the lock of `folder` if it is still `holder`'s (a run never deletes another run's lock)."""
    path = Path(folder) / LOCK_FILE
    if _read_holder(path) == holder:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def evaluation_folder_lock(folder, take: bool = True):
    """Hold the lock of `folder` for the `with` block (`take=False`: hold nothing, e.g. on the non-main processes
    of one sharded run, whose main process holds it for all)."""
    if not take:
        yield None
        return
    holder = acquire(folder)
    try:
        yield holder
    finally:
        release(folder, holder)
