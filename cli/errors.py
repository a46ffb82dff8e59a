"""User mistakes become one clear line (and exit status 2); the traceback stays available with --debug.

`gap-mllm` runs every command through `run_command`. An exception that describes bad input (a file
that is missing, unreadable or refused, a bad recipe value, a data error, an upload rule, a checkpoint
that does not convert, a model source that cannot be loaded, an optional package to install) is printed as

    gap-mllm <command>: error: <message>

(one line: `--debug`, which shows the traceback, is an option of every command's --help and in docs/usage.md) and the
command exits with status 2; the traceback is also logged at DEBUG level. Anything else is a
bug and keeps its traceback. `--debug` (anywhere on the command line) re-raises everything.

A write that fails because the device is full (ENOSPC / EDQUOT, `processing.errors.names_full_disk`) or because
the file grew past the file system's size limit (EFBIG) is such a line too, whatever command wrote and however
the error was wrapped. A buffered write or close reports no path (`[Errno 28] No space left on device`), so the
line names the file being written: the error's own file name, else the file open for writing where the write
failed (read from the traceback), else the command's output argument (`--out`, `--write-oracle`):

    gap-mllm evaluate: error: no space left on /dev/sdb1 (mounted at /data) while writing /data/eval/samples.jsonl;
    free space there (or write elsewhere), then run the command again

A `DiskFullError` (training's checkpoints, export-llm) already says more (the space needed, how to resume) and is
printed as it is.

A symbolic link loop met anywhere (an `OSError` of errno ELOOP, or the RuntimeError of `Path.resolve` before Python
3.13) is one line too, naming the path with the option the user gave it (`link_loop_message`); the commands' path
arguments are checked for such links before anything runs (cli/early_checks.py `check_path_links`).
"""

from __future__ import annotations

import errno
import io
import logging
import os
import pickle
import sys
import traceback

from safetensors import SafetensorError

from gap_mllm.processing.errors import (
    DataError,
    DiskFullError,
    MissingDependency,
    RunFailed,
    RunStoppedEarly,
    device_of,
    exception_chain,
    names_full_disk,
)
from gap_mllm.processing.path_containment import LINK_LOOP, link_loop_of

logger = logging.getLogger(__name__)

USAGE_ERROR_STATUS = 2


class UserError(ValueError):
    """A mistake in what the user gave (a path, an id, a value); the message says what to do."""


# MissingDependency: an optional package to install (its message says how), not a bug
USER_ERROR_TYPES = (UserError, DataError, MissingDependency, ValueError, OSError, pickle.UnpicklingError, SafetensorError)


def own_error_types() -> tuple[type, ...]:
    """The package's own error types, whose message is the one to print. A checkpoint's `ConversionError` is read
    from the VGGT converter only once that module is imported (no such error exists before), so that
    `--help` and argument mistakes import no torch."""
    converter = sys.modules.get("gap_mllm.convert_vggt_to_hf")
    return (UserError, DataError, MissingDependency) + ((converter.ConversionError,) if converter else ())


# argparse destinations of the commands' outputs -> how the user wrote them (named when the failing file is unknown)
OUTPUT_ARGUMENTS = {"out": "--out", "output_dir": "--out", "save_dir": "--out", "write_oracle": "--write-oracle"}


def _file_open_for_writing(error: BaseException) -> str | None:
    """The name of the file open for writing nearest to where `error` (or an error it wraps) was raised: the
    file a failed buffered write or close was writing (such an OSError carries no file name)."""
    for link in exception_chain(error):
        frames = [frame for frame, _ in traceback.walk_tb(link.__traceback__)]
        for frame in reversed(frames):  # innermost first
            for value in list(frame.f_locals.values()):
                name = getattr(value, "name", None) if isinstance(value, io.IOBase) else None
                mode = str(getattr(value, "mode", ""))
                # "<stderr>" and descriptors (int names) are no files the user chose
                if isinstance(name, str) and not name.startswith("<") and any(c in mode for c in "wax+"):
                    return name
    return None


def path_being_written(error: BaseException, args=None) -> tuple[str | None, str | None]:
    """`(path, flag)`: the file a failed write was writing (the error's own file name, a copy's destination
    first, else the file open for writing in its traceback; flag None), else the command's output argument
    and its flag; `(None, None)` when neither is known."""
    for link in exception_chain(error):
        if isinstance(link, OSError) and (link.filename2 or link.filename):
            return str(link.filename2 or link.filename), None
    name = _file_open_for_writing(error)
    if name is not None:
        return name, None
    for destination, flag in OUTPUT_ARGUMENTS.items():
        if getattr(args, destination, None):
            return str(getattr(args, destination)), flag
    return None, None


def write_failure_message(error: BaseException, args=None) -> str | None:
    """The one line for a write that failed because the device is full or the file is too large for it (module
    docstring), or None for any other error."""
    described = next((link for link in exception_chain(error) if isinstance(link, DiskFullError)), None)
    if described is not None:  # training's checkpoints, export-llm: their own line says more (space needed, resume)
        return str(described)
    if names_full_disk(error):
        problem = "no space left on {device}"
    elif any(isinstance(link, OSError) and link.errno == errno.EFBIG for link in exception_chain(error)):
        problem = "the file grew past the size limit of {device} (or of this process)"
    else:
        return None
    path, flag = path_being_written(error, args)
    if path is None:
        return f"{problem.format(device='the device')} ({error}); free space, then run the command again"
    where = f"into {flag} {path}" if flag else path
    return (f"{problem.format(device=device_of(path))} while writing {where}; free space there (or write elsewhere), "
            "then run the command again")


# argparse destinations of the paths a command reads or writes -> how the user wrote them (a link loop names them)
PATH_ARGUMENTS = {**OUTPUT_ARGUMENTS, "model": "--model", "data": "--data", "config": "--config",
                  "predictions": "--predictions"}


def link_loop_message(path: str, args=None) -> str:
    """The one line for a path whose symbolic links loop, found wherever a command read or wrote it (a path check
    that missed it, Python's own `Path.resolve`): named with its option when it is one the user gave."""
    named, remedy = path, "give a real file or folder"
    for destination, flag in PATH_ARGUMENTS.items():
        given = getattr(args, destination, None)
        if isinstance(given, (str, os.PathLike)) and os.path.abspath(given) == os.path.abspath(path):
            named = f"{flag} {given}"
            if destination in OUTPUT_ARGUMENTS:  # the words of the output-folder rule (processing/output_folder.py)
                remedy = "give a folder (a new name, or a link to a real one)"
            break
    return f"{named}: this is {LINK_LOOP}; {remedy}"


def user_message(error: BaseException, args=None) -> str | None:
    """The one-line message for a user mistake, or None for an error that is a bug.

    A full disk (or a file too large for it) comes first, however it was wrapped (`write_failure_message`; `args`:
    the command's arguments, whose output is named when the failing file is unknown). Then the most precise
    exception in the cause chain wins: our own (UserError, DataError, ...) over the generic ValueError / OSError
    that libraries wrap them in (datasets wraps builder errors). A symbolic link loop is named as one
    (`link_loop_message`), whether an OSError or pathlib's RuntimeError says it."""
    written = write_failure_message(error, args)
    if written is not None:
        return written
    chain = list(exception_chain(error))
    for candidate in chain:
        if isinstance(candidate, own_error_types()):
            return str(candidate)
    loop = next((path for path in map(link_loop_of, chain) if path is not None), None)
    if loop is not None:
        return link_loop_message(loop, args)
    if isinstance(error, USER_ERROR_TYPES):
        text = str(error).strip() or type(error).__name__
        return text.splitlines()[0] if isinstance(error, pickle.UnpicklingError) else text
    return None


def run_command(name: str, main, args, debug: bool = False, program: str = "gap-mllm") -> int:
    """`main(args)` with user mistakes printed as one line (exit status 2); see the module docstring. Each line
    starts with `program name` ("gap-mllm train"; "python -m lab.mini" for a module's own command line)."""
    command = f"{program} {name}"
    try:
        return int(main(args) or 0)
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    except RunStoppedEarly as stop:  # a time limit, a SIGTERM or Ctrl-C: expected, and the same command continues it
        print(f"{command}: {stop}", file=sys.stderr)
        return stop.status  # RUN_STOPPED_STATUS; 130 after Ctrl-C
    except RunFailed as failure:  # a diverged run: its line says what and where; not a bug, not the user's input
        if debug:
            raise
        print(f"{command}: error: {failure}", file=sys.stderr)
        return 1
    except Exception as error:  # noqa: BLE001 - sorted into user mistakes and bugs below
        message = None if debug else user_message(error, args)
        if message is None:
            raise
        logger.debug("%s failed", command, exc_info=True)
        # one line, as docs/usage.md promises; `--debug` is an option of every command's --help and in the docs
        print(f"{command}: error: {message}", file=sys.stderr)
        return USAGE_ERROR_STATUS
