"""One writer per evaluation folder: `<out>/evaluation.lock`, taken before the run reads the folder, kept to its end.

Two `gap-mllm evaluate` runs into one `--out` would otherwise both pass the run-fingerprint check (no answer
exists yet), then both append answers: rows twice over, and a summary that scores a mix of two models' answers.
So a run takes the folder's lock (processing/folder_lock.py, the one mechanism every writer of the package uses:
an OS file lock held for the run's life, seen across process-id namespaces, released by a kill) before the
fingerprint check, and gives it back when it ends. A second run is refused in one line naming the folder and the
holder. The lock file lies inside the folder (the folder is appended to, never replaced whole); a file left by a
killed run is taken over with a log line.

Whose folder `--out` is follows the rule of every writer (processing/output_folder.py): a new or empty folder, or
one an evaluation wrote (its marker file, or for a folder an earlier version wrote, its `run_fingerprint.json`),
never the user's: `claim_evaluation_folder` refuses any other before anything is read or written there, and marks
the folder as an evaluation's.
"""

from __future__ import annotations

from pathlib import Path

from gap_mllm.processing.folder_lock import FolderBusy, holding_folder
from gap_mllm.processing.output_folder import check_output_folder, claim_output_folder, read_marker

from .run_fingerprint import RUN_FINGERPRINT_FILE

LOCK_FILE = "evaluation.lock"
COMMAND = "gap-mllm evaluate"


class EvaluationFolderBusy(FolderBusy):
    """Another run writes into this evaluation folder (the message names the folder and that run)."""


def evaluation_folder_lock(folder, take: bool = True):
    """Hold the lock of evaluation folder `folder` for the `with` block (`take=False`: hold nothing, e.g. on the
    non-main processes of one sharded run, whose main process holds it for all).

    Raises:
        EvaluationFolderBusy: another run holds it.
    """
    return holding_folder(folder, COMMAND, lock_file=Path(folder) / LOCK_FILE, what="another evaluation run",
                          option="--out", busy=EvaluationFolderBusy, take=take)


def evaluation_folder_owner(folder: Path) -> str | None:
    """The owner check of an evaluation's `--out` (processing/output_folder.py): None for an evaluation's own
    folder (its marker names this command, or, written by an earlier version without a marker, it holds the run's
    `run_fingerprint.json` or lock file), else what it holds instead, in words."""
    marker = read_marker(folder)
    if marker is not None:
        return None if marker.get("command") == COMMAND else f"holds the output of {marker.get('command')}"
    if (Path(folder) / RUN_FINGERPRINT_FILE).is_file() or (Path(folder) / LOCK_FILE).is_file():
        return None
    return f"was not written by {COMMAND}"


def check_evaluation_folder(folder) -> None:
    """OutputFolderRefused unless `folder` may take an evaluation (`evaluation_folder_owner`): the command line's
    early check, which writes nothing."""
    check_output_folder(folder, COMMAND, overwrite_option=None, owner_check=evaluation_folder_owner)


def claim_evaluation_folder(folder) -> Path:
    """`check_evaluation_folder`, then the folder made and marked as an evaluation's (`claim_output_folder`)."""
    return claim_output_folder(folder, COMMAND, owner_check=evaluation_folder_owner)
