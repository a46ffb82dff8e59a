"""One writer per evaluation folder: `<out>/evaluation.lock`, taken before the run reads the folder, kept to its end.

Two `gap-mllm evaluate` runs into one `--out` would otherwise both pass the run-fingerprint check (no answer
exists yet), then both append answers: rows twice over, and a summary that scores a mix of two models' answers.
So a run takes the folder's lock (processing/folder_lock.py, the one mechanism every writer of the package uses:
an OS file lock held for the run's life, seen across process-id namespaces, released by a kill) before the
fingerprint check, and gives it back when it ends. A second run is refused in one line naming the folder and the
holder. The lock file lies inside the folder (the folder is appended to, never replaced whole); a file left by a
killed run is taken over with a log line.

Whose folder `--out` is follows the rule of every writer (processing/output_folder.py `marker_problem`): a new or
empty folder, or one whose marker (a regular file, read without following a link) names `gap-mllm evaluate`, never
the user's: a `run_fingerprint.json` or `evaluation.lock` of the user's is no marker, and a folder an earlier version
wrote without one is refused like theirs. `check_evaluation_folder` refuses any other before anything is written
there; `claim_evaluation_folder`, under the lock, checks again (the lock file it holds there leaves a new folder
empty) and marks the folder as an evaluation's.
"""

from __future__ import annotations

from pathlib import Path

from gap_mllm.processing.folder_lock import FolderBusy, holding_folder, holds
from gap_mllm.processing.output_folder import check_output_folder, claim_output_folder

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


def check_evaluation_folder(folder) -> None:
    """OutputFolderRefused unless `folder` may take an evaluation (new, empty, or its marker names this command): the
    command line's early check, which writes nothing."""
    check_output_folder(folder, COMMAND, overwrite_option=None)


def claim_evaluation_folder(folder) -> Path:
    """`check_evaluation_folder` under the folder's lock, then the folder made and marked as an evaluation's
    (`claim_output_folder`). The lock file this process holds there is its own, not a file of the folder's."""
    held = (LOCK_FILE,) if holds(folder, Path(folder) / LOCK_FILE) else ()
    return claim_output_folder(folder, COMMAND, ignore=held)
