"""Finished runs' states kept by commit, not in the tree (docs/design.md §13, "Run states in git").

A run state crosses machines in git while its run is in flight (`--run-state DIR`, training/run_state.py). Once the
run is finished its weights, moments and data sketches (tens of MB an arm) no longer need to stand in the tree: they
leave it, and the folder's `ARCHIVE.json` names the commit that still holds them, so that one command brings them
back. What the claims, the report and their tests read (each arm's kept answers) stays. The record:

    {"commit":   the 40-hex commit whose tree holds every listed arm's stage folders,
     "folder":   the folder's path in that commit's tree (the repository-relative `--run-state` folder),
     "archived": arms whose stage folders left the tree,
     "pending":  the arm whose run is in flight: its stage folders stay tracked while it runs, so that a fresh machine
                 continues it (at most one arm, its folder within `IN_FLIGHT_LIMIT_BYTES`; a device call leaves it
                 out: bench/README.md), and leave the tree by this record when its run finishes,
     "issue":    why}

A run that would continue an archived arm whose stage folders are absent is refused before anything is written
(`check_states_present`): without the states it would train the arm again from its first step, hours of work, with
no word that the finished run exists.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from .ablation import ARM_STAGES, arm_state_dir
from .arms import ARMS

ARCHIVE_RECORD = "ARCHIVE.json"
# the one in-flight arm's tracked stage folders: weights, bfloat16 moments and the best model (26 MB each at the Mini's
# size), the data sketch (13 MB for the stage-2 mix) and the records (0.2 MB): 91.6 MB once the best validation is
# not the checkpoint's step, with room for the records to grow
IN_FLIGHT_LIMIT_BYTES = 100_000_000
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def arm_stages(arm: str) -> tuple[str, ...]:
    """The training stages whose run states the arm `arm` keeps (of `ARM_STAGES`: an arm without stage 1 has none
    for it; an arm this version does not know is taken to have them all)."""
    known = ARMS.get(arm)
    return tuple(stage for stage in ARM_STAGES if known is None or known.stage1 or stage != ARM_STAGES[0])


class ArchivedStateMissing(ValueError):
    """A run needs an archived arm's run state, and the checkout does not hold it."""


@dataclass(frozen=True)
class StateArchive:
    """One `ARCHIVE.json` (module docstring)."""

    commit: str
    folder: str
    archived: tuple[str, ...]
    pending: tuple[str, ...]

    def stage_folders(self, arms) -> list[str]:
        """The repository paths of `arms`' stage folders, in the archive commit's tree."""
        return [f"{self.folder}/{arm}/{stage}" for arm in arms for stage in arm_stages(arm)]

    def restore_command(self, arms=None) -> str:
        """The one shell command, run at the repository's root, that writes `arms`' (default: every archived arm's)
        stage folders back from the archive commit, unstaged, leaving every other file of the tree as it is.

        `git archive` rather than `git checkout <commit> -- PATH`: checkout stages hundreds of MB into the index (the
        next `git commit -a` would put them back in the tree), and `git restore --source` deletes the files the
        commit lacks, this record among them."""
        arms = tuple(arms) if arms is not None else self.archived
        members = [f"{self.folder}/{arm}" for arm in arms]
        wanted = f"{self.folder}/*/stage*"
        return (f"git archive {self.commit} {' '.join(shlex.quote(member) for member in members)} "
                f"| tar -x --wildcards {shlex.quote(wanted)}")


def read_archive(root) -> StateArchive | None:
    """The `ARCHIVE.json` of the run-state folder `root`, None when it has none; a malformed record is refused
    naming the file and the field."""
    path = Path(root) / ARCHIVE_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not the JSON record of an archive of finished run states ({error})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: not the JSON record of an archive of finished run states (an object is expected)")
    commit, folder = record.get("commit"), record.get("folder")
    if not isinstance(commit, str) or not _COMMIT.match(commit):
        raise ValueError(f"{path}: 'commit' must be a full 40-hex commit id, got {commit!r}")
    if not isinstance(folder, str) or not folder or folder.startswith("/") or ".." in Path(folder).parts:
        raise ValueError(f"{path}: 'folder' must be the run-state folder's path inside the repository, got {folder!r}")
    arms = {}
    for field in ("archived", "pending"):
        value = record.get(field, [])
        if not isinstance(value, list) or not all(isinstance(arm, str) and arm and "/" not in arm for arm in value):
            raise ValueError(f"{path}: '{field}' must be a list of arm names, got {value!r}")
        arms[field] = tuple(value)
    both = sorted(set(arms["archived"]) & set(arms["pending"]))
    if both:
        raise ValueError(f"{path}: {', '.join(both)} listed both as archived and as pending")
    return StateArchive(commit=commit, folder=folder, archived=arms["archived"],
                        pending=arms["pending"])


def check_states_present(root, arms) -> None:
    """Refuse (ArchivedStateMissing, one line) a run with `--run-state root` over `arms` when one of them is an
    archived arm whose stage folders are not all in `root`: the line names the arms, the commit and the command that
    brings them back."""
    archive = read_archive(root)
    if archive is None:
        return
    missing = [arm for arm in arms if arm in archive.archived
               and not all(arm_state_dir(root, arm, stage).is_dir() for stage in arm_stages(arm))]
    if missing:
        raise ArchivedStateMissing(
            f"--run-state {root}: the finished run states of {', '.join(missing)} left the tree (kept by commit "
            f"{archive.commit[:12]}, {ARCHIVE_RECORD}); without them the run would train "
            f"{'that arm' if len(missing) == 1 else 'those arms'} again from the first step. Bring them back, at the "
            f"repository's root, with: {archive.restore_command(missing)}")


def archive_sentence(archive: StateArchive) -> str:
    """The sentence of RESULTS.md's claims section and the ablation report that says where the finished arms' run
    states are and the command that brings them back to rebuild the claims."""
    later = (f"; those of {', '.join(archive.pending)}, in flight, stay in the tree until its run finishes"
             if archive.pending else "")
    return (f"The arms' run states (weights, optimizer moments, data sketches) are kept by commit {archive.commit}, "
            f"not in the tree: those of {', '.join(archive.archived)} left it when the ablation finished{later} "
            f"(docs/design.md §13, {archive.folder}/{ARCHIVE_RECORD}). To rebuild this section from them, at the "
            f"repository's root: `{archive.restore_command()}`, then `make mini-ablation`.")
