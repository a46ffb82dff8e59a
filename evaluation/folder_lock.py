"""One writer per evaluation folder: `<out>/evaluation.lock`, taken before the run reads the folder, kept to its end.

Two `gap-mllm evaluate` runs into one `--out` would otherwise both pass the run-fingerprint check (no answer
exists yet), then both append answers: rows twice over, and a summary that scores a mix of two models' answers.
So a run takes the folder's lock (processing/folder_lock.py, the one mechanism every writer of the package uses:
an OS file lock held for the run's life, seen across process-id namespaces, released by a kill) before the
fingerprint check, and gives it back when it ends. A second run is refused in one line naming the folder and the
holder. The lock file lies inside the folder (the folder is appended to, never replaced whole); a file left by a
killed run is taken over with a log line.
"""

from __future__ import annotations

from pathlib import Path

from gap_mllm.processing.folder_lock import FolderBusy, holding_folder

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
