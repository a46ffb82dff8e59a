"""The one rule for commands that write a whole output folder: never delete or overwrite the user's files, never
leave half a folder behind, and one writer at a time.

    with writing_output_folder(out, "gap-mllm export-vsibench", overwrite=args.overwrite) as staging:
        ...write every file under `staging`...
    # now `out` holds the complete result (the folder it held before, if any, is gone)

What it does, for a target folder `out` of a command:

* **Refuses a folder it did not write.** A non-empty `out` is replaced only when it is this command's own earlier
  output: it holds the marker file `.gap-mllm-output.json` naming the same command (written into every folder this
  module writes). The marker is read for what it says (`marker_problem`, the one ownership rule): a regular file,
  opened without following a symbolic link (`O_NOFOLLOW`: a link to another folder's marker says nothing of this
  one), that parses as a JSON object naming the command. No other file name stands for a marker (a user's
  `run_fingerprint.json` or `evaluation.lock` is the user's file), so a folder an earlier version wrote without a
  marker is refused like the user's, and the line says how to proceed (move its files, or `--overwrite` where the
  command has it). Anything else (the user's files, another command's output) is refused with one line naming the
  folder, a few of its entries and the option that replaces it anyway (`--overwrite`). The working folder and the
  folders above it are refused even then: replacing them would pull the ground from under the shell. A folder that
  cannot be written (read-only, no permission) is refused too, before any work whose result would be lost.
* **Writes beside it, then renames.** The files go into a hidden sibling `.<name>.gap-mllm-partial` (same parent,
  so the same file system and an atomic rename); when the body of the `with` ends without an error, the old `out`
  is moved aside (`.<name>.gap-mllm-replaced`), the sibling renamed to `out`, and the old one deleted. A kill leaves
  the last complete result (or nothing), never half a folder; a failed write leaves `out` as it was. An `out` that
  is a symbolic link is written through: the folder it leads to is the one replaced, and the user's link stays.
* **One writer at a time.** The folder's lock (processing/folder_lock.py, an OS file lock beside it) is taken
  before the folder is checked and held until the rename: a second writer of the same folder is refused in one
  line naming the first. A run that writes a folder many times (the run state, at each checkpoint) holds the
  lock for its whole life (`holding_folder`) and takes it again here.
* **Cleans up after a killed run.** The next run on the same target deletes a leftover partial sibling, and puts
  back a replaced folder whose successor never arrived (a kill between the two renames).

Writers that fill a folder in place rather than replace it whole follow the same rule: the folder is new, empty or
their own (the marker), never the user's (no `--overwrite`), and is marked as theirs before the first file is
written: `gap-mllm evaluate`, which resumes into its `--out` (evaluation/folder_lock.py), `demo --out` and
`predict --save-dir` through `claim_output_folder`; a training run's output folder through its own check
(training/run.py `check_training_output`, which also refuses the model's folder).

Data roots (SynthRooms) carry no marker file of this module: a training run records the digest of every file of
its data root (training/run_state.py) and would take one more file for other data. Their own record,
`synthrooms/dataset_info.json` (written last), says who wrote them; the writers pass `owner_check` for it, which
reads it as the marker is read (`read_owner_bytes`). For the same reason an output folder inside a data root is
refused (`check_outside_data`): its files, and its lock file, would be read as data.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Collection, Iterator

from gap_mllm.files import kind_of

from .folder_lock import holding_folder
from .json_files import loads_json
from .path_containment import broken_link, resolve_inside

MARKER = ".gap-mllm-output.json"
MARKER_PARTIAL_SUFFIX = ".partial"  # `.<MARKER>.<pid>.partial`: a marker being written (`mark_output_folder`)
PARTIAL_SUFFIX = ".gap-mllm-partial"
REPLACED_SUFFIX = ".gap-mllm-replaced"
SHOWN_ENTRIES = 4  # entries of a refused folder named in the message

# owner_check(folder) -> None when `folder` is the command's own earlier output (it may be replaced), else what
# it holds instead, in words ("holds SynthRooms scenes of other settings")
OwnerCheck = Callable[[Path], "str | None"]


class OutputFolderRefused(ValueError):
    """A target folder the command will not replace; the message is one line (folder, contents, what to pass)."""


def sibling(folder: Path, suffix: str) -> Path:
    """The hidden folder next to `folder` used while writing it (`suffix`: PARTIAL_SUFFIX or REPLACED_SUFFIX)."""
    return folder.parent / f".{folder.name}{suffix}"


class NotAnOwnerRecord(ValueError):
    """A file that would say who wrote a folder (its marker, a data root's dataset_info.json) but cannot: a symbolic
    link, not a regular file, or not readable. The message says which, in words that follow "the folder ... and"."""


def _is_link(name: str, directory: int) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=directory).st_mode)
    except OSError:
        return False


def read_owner_bytes(folder, relative: str, what: str = "") -> bytes | None:
    """The bytes of the file `relative` under `folder` that says who wrote the folder, or None when there is none.
    Every part of `relative` is opened without following a symbolic link (`O_NOFOLLOW`, from a descriptor of
    `folder`), and the file is read only when the opened descriptor is a regular file (a FIFO is opened without
    waiting, `O_NONBLOCK`): a record is this folder's own, never one it points to. `what` names the file in the
    message ("marker ").

    Raises:
        NotAnOwnerRecord: a part is a symbolic link, the file is not a regular file, or it cannot be read.
    """
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
    try:
        directory = os.open(folder, flags | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    parts = Path(relative).parts
    try:
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            try:
                opened = os.open(part, flags | os.O_NOFOLLOW | (os.O_NONBLOCK if last else os.O_DIRECTORY),
                                 dir_fd=directory)
            except FileNotFoundError:
                return None
            except OSError as error:
                if _is_link(part, directory):
                    target = os.readlink(part, dir_fd=directory)
                    raise NotAnOwnerRecord(f"its {what}{relative} is a symbolic link (to {target}), which says nothing "
                                           "of who wrote this folder") from None
                if error.errno == errno.ENOTDIR:  # a part above the file is a file: there is no record
                    return None
                raise NotAnOwnerRecord(f"its {what}{relative} cannot be read ({error.strerror})") from None
            os.close(directory)
            directory = opened
        kind = kind_of(os.fstat(directory).st_mode)
        if kind is not None:
            raise NotAnOwnerRecord(f"its {what}{relative} is {kind}, not a regular file")
        os.set_blocking(directory, True)
        with os.fdopen(os.dup(directory), "rb") as handle:
            return handle.read()
    finally:
        os.close(directory)


def _read_marker_record(folder) -> dict:
    """The parsed marker of `folder` (`read_owner_bytes`): a JSON object naming its command.

    Raises:
        FileNotFoundError: `folder` has no marker.
        NotAnOwnerRecord: the marker is a link, not a regular file, unreadable, or not such an object.
    """
    data = read_owner_bytes(folder, MARKER, "marker ")
    if data is None:
        raise FileNotFoundError(MARKER)
    try:
        marker = loads_json(data.decode("utf-8"), MARKER)
    except ValueError:  # not UTF-8, not JSON, nested too deep (processing/json_files.py)
        marker = None
    if not isinstance(marker, dict) or not isinstance(marker.get("command"), str):
        raise NotAnOwnerRecord(f"its marker {MARKER} is not a JSON object naming the command that wrote the folder")
    return marker


def read_marker(folder: Path) -> dict | None:
    """The marker of `folder` (what wrote it), or None when it has none or one that says nothing (`marker_problem`)."""
    try:
        return _read_marker_record(folder)
    except (FileNotFoundError, NotAnOwnerRecord):
        return None


def marker_problem(folder, command: str) -> str | None:
    """The one ownership rule (module docstring): None when the marker of `folder` is a regular file, reached through
    no link, that parses and names `command`; else why the folder is not `command`'s, in words that follow "the
    folder ... and" in a refusal."""
    try:
        marker = _read_marker_record(folder)
    except FileNotFoundError:
        return (f"was not written by {command} (no marker {MARKER} names it; an earlier version's folder has none: "
                "to use it, move its files elsewhere)")
    except NotAnOwnerRecord as error:
        return str(error)
    return None if marker["command"] == command else f"holds the output of {marker['command']}"


def mark_output_folder(folder: Path, command: str, settings: dict | None = None) -> None:
    """Write the marker of `folder`: `command` wrote it (with `settings` and the time), so its next run knows the
    folder as its own. For writers that fill a folder in place (a training run's output folder) as for those that
    rename a finished one into place (`writing_output_folder`).

    Written whole or not at all: into `.<marker>.<pid>.partial` beside it, then renamed into place. A write that
    fails (a full disk) deletes its partial file and leaves no marker, so the folder stays as it was (a new folder
    stays empty, and the command's rerun takes it); a partial file a kill left is this module's own, and counts as
    nothing in the folder (`_left_by_a_failed_marker_write`)."""
    record = {"command": command, "settings": settings, "written": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    partial = Path(folder) / f".{MARKER}.{os.getpid()}{MARKER_PARTIAL_SUFFIX}"
    partial.unlink(missing_ok=True)  # one a killed run of the same pid left (a container's pid 1)
    try:
        with open(partial, "x", encoding="utf-8") as handle:
            handle.write(json.dumps(record, indent=1) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, Path(folder) / MARKER)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _left_by_a_failed_marker_write(entry: Path) -> bool:
    """Whether `entry` is what a marker write that failed can leave in a folder: its partial file (a kill during the
    write), or an empty marker (a version that wrote the marker in place, stopped by a full disk). Neither says who
    wrote the folder nor holds anything of the user's, so a folder holding only these counts as empty."""
    if entry.name.startswith(f".{MARKER}.") and entry.name.endswith(MARKER_PARTIAL_SUFFIX):
        return True
    try:
        status = entry.lstat()
    except OSError:
        return False
    return entry.name == MARKER and stat.S_ISREG(status.st_mode) and status.st_size == 0


def marker_owner(command: str) -> OwnerCheck:
    """The owner check of every writer with a marker: `marker_problem` for `command`."""

    def check(folder: Path) -> str | None:
        return marker_problem(folder, command)

    return check


def entries_in_words(folder: Path) -> str:
    """A few of the entries of `folder`, sorted, e.g. "README.md, data/, notes.txt, … (12 entries)"."""
    entries = sorted(folder.iterdir(), key=lambda p: p.name)
    names = [p.name + ("/" if p.is_dir() else "") for p in entries[:SHOWN_ENTRIES]]
    more = f", … ({len(entries)} entries)" if len(entries) > SHOWN_ENTRIES else ""
    return ", ".join(names) + more


def unwritable_reason(folder: Path) -> str | None:
    """Why `folder` cannot be written, or None: the folder when it exists, else the nearest folder above it that
    exists (where it would be made), is on a read-only file system or grants this process no write permission."""
    place = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if place is None or not place.is_dir() or os.access(place, os.W_OK | os.X_OK):
        return None
    try:
        read_only = bool(os.statvfs(place).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    where = "it" if place == folder else str(place)
    return f"{where} is on a read-only file system" if read_only else f"{where} grants no write permission"


def _holds_working_folder(folder: Path) -> bool:
    """`folder` is the working folder or one above it (replacing it would remove the shell's own folder)."""
    here, target = Path.cwd().resolve(), folder.resolve()
    return target == here or target in here.parents


def check_output_folder(folder, command: str, *, overwrite: bool = False, option: str = "--out",
                        overwrite_option: str | None = "--overwrite", owner_check: OwnerCheck | None = None,
                        named: str | None = None, ignore: Collection[str] = ()) -> None:
    """Raise OutputFolderRefused unless `command` may write `folder`: it is missing or empty, or the command's own
    earlier output (`owner_check`, default: the marker names `command`), or `overwrite` was given.

    `option` names the folder in the message as the user gave it ("--out", "--export"); `overwrite_option` is what
    the message offers (None: the command has no such option, the message asks for another folder); `named`
    replaces "OPTION FOLDER" in the message for a folder the user did not name (a default one); `ignore`: names of
    entries the caller itself put there (the lock file it holds inside the folder), which leave a folder empty."""
    folder = Path(folder)
    named = named or (f"{option} {folder}" if option else str(folder))
    leads_nowhere = broken_link(folder)
    if leads_nowhere is not None:  # found only when the first file is written, after the command's work
        raise OutputFolderRefused(f"{named} is {leads_nowhere}; give a folder (a new name, or a link to a real one)")
    if folder.exists() and not folder.is_dir():
        raise OutputFolderRefused(f"{named} is a file, not a folder; give a folder")
    if folder.exists() and _holds_working_folder(folder):
        raise OutputFolderRefused(f"{named} is the working folder or holds it; give a new folder for the output")
    unwritable = unwritable_reason(folder)
    if unwritable is not None:  # now, not when the first file is written after the command's work
        raise OutputFolderRefused(f"{named} cannot be written: {unwritable}; give a folder you can write to")
    if not folder.is_dir() or overwrite or not any(
            entry.name not in ignore and not _left_by_a_failed_marker_write(entry) for entry in folder.iterdir()):
        return
    holds = (owner_check or marker_owner(command))(folder)
    if holds is None:
        return
    remedy = (f"pass {overwrite_option} to replace it, or give an empty or new folder" if overwrite_option
              else "give an empty or new folder")
    raise OutputFolderRefused(f"{named} is not empty ({entries_in_words(folder)}) and {holds}; {remedy}")


def claim_output_folder(folder, command: str, *, option: str = "--out", owner_check: OwnerCheck | None = None,
                        named: str | None = None, settings: dict | None = None, ignore: Collection[str] = ()) -> Path:
    """The rule for a writer that fills `folder` in place (module docstring): `check_output_folder` without an
    overwrite option (a folder of the user's is never written, whatever is passed), then the folder is made and
    marked as `command`'s when it has no marker yet; returns it. OutputFolderRefused otherwise, before anything is
    written."""
    check_output_folder(folder, command, option=option, overwrite_option=None, owner_check=owner_check, named=named,
                        ignore=ignore)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if read_marker(folder) is None:
        mark_output_folder(folder, command, settings)
    return folder


def check_outside_data(folder, data_root, named: str, data_named: str) -> None:
    """OutputFolderRefused when output folder `folder` is the data root `data_root` or lies inside it, links
    followed (nothing is checked without a data root): every file under a data root is read as data (a training
    run digests them all), so the output, and the lock file beside it, would become part of the data it reads.
    `named` / `data_named` name both as the user gave them ("training.output_dir runs/x", "data.data_root data")."""
    if data_root is None or resolve_inside(Path(data_root), os.path.abspath(folder)) is None:
        return
    raise OutputFolderRefused(f"{named} is inside the data root {data_named} (links followed), where every file is "
                              "read as data; give an output folder outside the data root")


def clean_leftovers(folder: Path) -> None:
    """Undo what a killed run left beside `folder`: delete its partial sibling; put back the folder it had moved
    aside if the new one never arrived, else delete that too. Both siblings are this module's own."""
    partial, replaced = sibling(folder, PARTIAL_SUFFIX), sibling(folder, REPLACED_SUFFIX)
    if partial.is_dir():
        shutil.rmtree(partial)
    if replaced.is_dir():
        if not folder.exists():
            os.rename(replaced, folder)  # killed between the two renames: the last complete result comes back
        else:
            shutil.rmtree(replaced)


def _put_in_place(partial: Path, folder: Path) -> None:
    """Rename the finished `partial` to `folder`, moving the old `folder` aside first and deleting it last."""
    replaced = sibling(folder, REPLACED_SUFFIX)
    if folder.exists():
        os.rename(folder, replaced)
    os.rename(partial, folder)
    if replaced.exists():
        shutil.rmtree(replaced)


@contextmanager
def writing_output_folder(folder, command: str, *, overwrite: bool = False, option: str = "--out",
                          overwrite_option: str | None = "--overwrite", owner_check: OwnerCheck | None = None,
                          marker: bool = True, settings: dict | None = None, named: str | None = None) -> Iterator[Path]:
    """Check `folder` (`check_output_folder`), then yield an empty hidden sibling to write the output into; on a
    normal exit it becomes `folder` (module docstring), on an error it is deleted and `folder` stays as it was.

    `marker`: write `.gap-mllm-output.json` (`command`, `settings`, the time) into the output, so the next run of
    `command` knows the folder as its own; False for data roots, whose own record says who wrote them."""
    check_output_folder(folder, command, overwrite=overwrite, option=option, overwrite_option=overwrite_option,
                        owner_check=owner_check, named=named)  # first: "." or ".." is refused before anything beside it is touched
    folder = Path(os.path.abspath(folder))  # a real name and parent for the siblings ("out/" and "a/../out" too)
    if folder.is_symlink():  # the user's link stays: the output is written through it, where it leads
        folder = Path(os.path.realpath(folder))
    folder.parent.mkdir(parents=True, exist_ok=True)
    with holding_folder(folder, command, option=option):  # one writer: the leftovers below are no live run's
        clean_leftovers(folder)
        if folder.exists():  # a folder put back by clean_leftovers (or written meanwhile) is checked like any other
            check_output_folder(folder, command, overwrite=overwrite, option=option, overwrite_option=overwrite_option,
                                owner_check=owner_check, named=named)
        partial = sibling(folder, PARTIAL_SUFFIX)
        partial.mkdir()
        try:
            if marker:
                mark_output_folder(partial, command, settings)
            yield partial
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)  # our own half folder; the target is untouched
            raise
        _put_in_place(partial, folder)
