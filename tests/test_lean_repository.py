"""The repository a user clones stays lean (docs/design.md §13, "Run states in git"): the tracked tree is at most
40 MB, no tracked file is over 5 MB but the embedded Mini's weights, finished runs' states are kept by commit
(mini/ablation-run/ARCHIVE.json) and come back with one command, and a run never retrains an archived arm in silence.
One exception: the stage folders of the one arm in flight (the record's `pending`), within `IN_FLIGHT_LIMIT_BYTES`,
until its run finishes.

The size rules read the working tree of the tracked files (what `git ls-files -z | xargs -0 du -cb` counts). The
archive checks read only the archive commit's tree listing, never its files' contents, so a blobless clone passes
them; a shallow clone that lacks the commit skips them, saying why."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest

from lab.mini import pipeline
from lab.mini.ablation import ARM_STAGES
from lab.mini.archived_states import (ARCHIVE_RECORD, IN_FLIGHT_LIMIT_BYTES, ArchivedStateMissing, StateArchive,
                                           archive_sentence, arm_stages, check_states_present, read_archive)
from lab.mini.arms import ABLATION_ARMS
from lab.mini.pipeline_settings import add_arguments

REPO = Path(__file__).resolve().parents[1]
RUN_STATE = "mini/ablation-run"
TREE_LIMIT = 40_000_000  # bytes: the product tree (code, docs, the shipped Mini, small fixtures)
FILE_LIMIT = 5_000_000  # bytes: one tracked file
# the embedded GAP-MLLM-Mini's weight shards (the model the quick start and the tests run): the only large files
LARGE_FILES_ALLOWED = "mini/gap-mllm-mini/model-*-of-*.safetensors"


def _git(*args, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)


def _tracked_sizes() -> dict[str, int]:
    listed = _git("ls-files", "-z")
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout ({listed.stderr.strip()}): the tree's size is a property of a clone")
    paths = [path for path in listed.stdout.split("\0") if path]
    return {path: (REPO / path).stat().st_size for path in paths if (REPO / path).is_file()}


def _archive() -> StateArchive:
    archive = read_archive(REPO / RUN_STATE)
    assert archive is not None, f"{RUN_STATE}/{ARCHIVE_RECORD} is missing: the record of the finished runs' states"
    return archive


def _pending_state(path: str, archive: StateArchive) -> bool:
    """Whether `path` lies in a stage folder of an arm whose states are still to leave the tree."""
    return any(path.startswith(folder + "/") for folder in archive.stage_folders(archive.pending))


def test_the_tracked_tree_is_at_most_40_mb():
    archive = _archive()
    sizes = _tracked_sizes()
    counted = {path: size for path, size in sizes.items() if not _pending_state(path, archive)}
    total = sum(counted.values())
    largest = ", ".join(f"{path} ({size / 1e6:.1f} MB)" for path, size in
                        sorted(counted.items(), key=lambda item: -item[1])[:5])
    apart = (f"; not counted: the in-flight state of {', '.join(archive.pending)}" if archive.pending else "")
    assert total <= TREE_LIMIT, (
        f"the tracked tree is {total / 1e6:.1f} MB, over the {TREE_LIMIT / 1e6:.0f} MB of the rule (docs/design.md §13: "
        f"finished runs' states leave the tree, kept by commit; only the shipped model and small fixtures stay); "
        f"largest: {largest}{apart}")


def test_the_one_arm_in_flight_is_the_only_exception_and_keeps_within_its_limit():
    """The stage folders of the arm the record lists as pending (in flight) are the one exception to the limits: one
    arm at most, its tracked state within `IN_FLIGHT_LIMIT_BYTES`, never ignored (a session commits it so that the
    next continues the run). With none pending, no exception is in use."""
    archive = _archive()
    assert len(archive.pending) <= 1, (f"{ARCHIVE_RECORD} lists {len(archive.pending)} arms in flight "
                                       f"({', '.join(archive.pending)}): one arm runs at a time (docs/design.md §13)")
    in_flight = {path: size for path, size in _tracked_sizes().items() if _pending_state(path, archive)}
    total = sum(in_flight.values())
    assert total <= IN_FLIGHT_LIMIT_BYTES, (
        f"the in-flight state {', '.join(archive.stage_folders(archive.pending))} is {total / 1e6:.1f} MB, over the "
        f"{IN_FLIGHT_LIMIT_BYTES / 1e6:.0f} MB the rule admits for the one arm in flight (docs/design.md §13)")
    for folder in archive.stage_folders(archive.pending):
        assert _git("check-ignore", "-q", f"{folder}/weights.safetensors").returncode != 0, (
            f"{folder} is in flight, yet git ignores it: its run state could not cross to the next machine")
    if not archive.pending:
        assert not in_flight


def test_no_tracked_file_is_over_5_mb_but_the_minis_weights():
    archive = _archive()
    large = sorted(path for path, size in _tracked_sizes().items()
                   if size > FILE_LIMIT and not fnmatch(path, LARGE_FILES_ALLOWED) and not _pending_state(path, archive))
    assert not large, (f"tracked files over {FILE_LIMIT / 1e6:.0f} MB: {', '.join(large)}; the rule (docs/design.md §13) "
                       f"admits only {LARGE_FILES_ALLOWED}: archive a finished run's state by commit "
                       f"({RUN_STATE}/{ARCHIVE_RECORD}), keep fixtures small")
    assert [path for path in _tracked_sizes() if fnmatch(path, LARGE_FILES_ALLOWED)], "the allow-list matches nothing"


def test_the_record_lists_every_ablation_arm_once_and_git_ignores_the_archived_ones():
    archive = _archive()
    arms = {arm.name for arm in ABLATION_ARMS}
    assert set(archive.archived) | set(archive.pending) == arms
    assert len(archive.archived) + len(archive.pending) == len(arms)
    tracked = set(_tracked_sizes())
    for folder in archive.stage_folders(archive.archived):
        assert not [path for path in tracked if path.startswith(folder + "/")], f"{folder} is archived yet tracked"
        # a state brought back by the restore command stays out of the next commit
        assert _git("check-ignore", "-q", f"{folder}/weights.safetensors").returncode == 0, f"{folder} not ignored"
    for arm in archive.archived:  # what the claims and the report read stays
        assert [path for path in tracked if path.startswith(f"{RUN_STATE}/{arm}/answers/")], f"{arm}'s answers left"


def _archive_commit_or_skip(archive: StateArchive) -> None:
    if _git("cat-file", "-e", f"{archive.commit}^{{commit}}").returncode != 0:
        pytest.skip(f"this clone lacks the archive commit {archive.commit[:12]} (a shallow clone): its tree cannot be "
                    "listed here; a full or blobless clone has it")


def test_the_archive_commit_is_in_history_and_holds_every_arms_stage_states():
    archive = _archive()
    _archive_commit_or_skip(archive)
    assert _git("merge-base", "--is-ancestor", archive.commit, "HEAD").returncode == 0, (
        f"{ARCHIVE_RECORD}'s commit {archive.commit} is not an ancestor of HEAD: history is never rewritten")
    listing = _git("ls-tree", "-r", "--name-only", archive.commit, "--", archive.folder)
    assert listing.returncode == 0, listing.stderr
    held = set(listing.stdout.splitlines())
    for arm in archive.archived:  # an arm in flight keeps its states in the tree, not yet in the commit
        for stage in arm_stages(arm):  # an arm without stage 1 has no state for it
            for name in ("run_state.json", "weights.safetensors"):
                assert f"{archive.folder}/{arm}/{stage}/{name}" in held, f"{archive.commit[:12]} lacks {arm}/{stage}/{name}"


def _scratch_repository(tmp_path: Path) -> tuple[Path, str]:
    """A repository whose first commit holds one arm's stage folders and answers; the second removes the stage
    folders and adds the record, as the archiving commit does. Returns (its root, the first commit)."""
    root = tmp_path / "repo"
    folder = root / RUN_STATE
    for stage in ARM_STAGES:
        (folder / "arm_a" / stage).mkdir(parents=True)
        (folder / "arm_a" / stage / "weights.safetensors").write_bytes(bytes(range(256)) * 4)
        (folder / "arm_a" / stage / "run_state.json").write_text(json.dumps({"stage": stage}), encoding="utf-8")
    (folder / "arm_a" / "answers").mkdir()
    (folder / "arm_a" / "answers" / "claims.json").write_text("{}", encoding="utf-8")
    (root / "kept.txt").write_text("the user's file\n", encoding="utf-8")
    for command in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m",
                                                      "states"]):
        assert _git(*command, cwd=root).returncode == 0
    first = _git("rev-parse", "HEAD", cwd=root).stdout.strip()
    for stage in ARM_STAGES:
        shutil.rmtree(folder / "arm_a" / stage)
    (folder / ARCHIVE_RECORD).write_text(json.dumps({"commit": first, "folder": RUN_STATE, "archived": ["arm_a"],
                                                     "pending": []}), encoding="utf-8")
    for command in (["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "archive"]):
        assert _git(*command, cwd=root).returncode == 0
    return root, first


def test_the_restore_command_brings_the_states_back_unstaged_and_leaves_every_other_file(tmp_path):
    root, first = _scratch_repository(tmp_path)
    (root / "kept.txt").write_text("edited since\n", encoding="utf-8")
    archive = read_archive(root / RUN_STATE)
    restored = subprocess.run(archive.restore_command(), shell=True, cwd=root, capture_output=True, text=True)
    assert restored.returncode == 0, restored.stderr
    for stage in ARM_STAGES:
        assert (root / RUN_STATE / "arm_a" / stage / "weights.safetensors").read_bytes() == bytes(range(256)) * 4
    assert (root / RUN_STATE / ARCHIVE_RECORD).is_file()  # the record itself is not deleted
    assert (root / "kept.txt").read_text(encoding="utf-8") == "edited since\n"
    assert _git("diff", "--cached", "--name-only", cwd=root).stdout == ""  # nothing staged
    check_states_present(root / RUN_STATE, ["arm_a"])  # present again: the run may continue


def test_a_run_that_needs_an_archived_arm_is_refused_before_anything_is_written(tmp_path):
    archive = _archive()
    state = tmp_path / "state"
    state.mkdir()
    shutil.copy(REPO / RUN_STATE / ARCHIVE_RECORD, state / ARCHIVE_RECORD)
    arm = archive.archived[0]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "out"
    args = parser.parse_args(["--out", str(out), "--ablation", "--arms", arm, "--run-state", str(state),
                              "--stage0", str(tmp_path / "no-stage0")])
    with pytest.raises(ArchivedStateMissing) as refused:
        pipeline.main(args)
    line = str(refused.value)
    assert "\n" not in line and arm in line and archive.commit in line
    assert archive.restore_command([arm]) in line
    assert not out.exists()
    assert sorted(path.name for path in state.iterdir()) == [ARCHIVE_RECORD]


def test_a_malformed_record_is_refused_naming_the_file_and_field(tmp_path):
    (tmp_path / ARCHIVE_RECORD).write_text(json.dumps({"commit": "76f53ee", "folder": RUN_STATE}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"ARCHIVE\.json: 'commit' must be a full 40-hex commit id"):
        read_archive(tmp_path)


@pytest.mark.parametrize("document", ["mini/RESULTS.md", "reports/mini/claims-in-miniature.md"])
def test_the_claims_name_the_archive_commit_and_the_command_that_rebuilds_them(document):
    sentence = archive_sentence(_archive())
    assert sentence in (REPO / document).read_text(encoding="utf-8"), (
        f"{document} must carry the archive's sentence as lab/mini/archived_states.py writes it for {ARCHIVE_RECORD}")


def test_a_device_call_carries_the_tree_and_the_wheels_without_moving_anything_out():
    """`make gpu-figures` runs on the tree as it is, with `.whl/` beside it, within the 64 MiB a device call carries
    (the wheels are held to their budget where they are downloaded: bench/gpu_figures.py); the one arm in flight
    is left out of the call (bench/README.md, "One call on a GPU")."""
    sys.path.insert(0, str(REPO / "bench"))
    import gpu_figures

    archive = _archive()
    tracked = sum(size for path, size in _tracked_sizes().items() if not _pending_state(path, archive))
    assert tracked + gpu_figures.WHEELS_BUDGET_BYTES <= gpu_figures.DEVICE_CARRY_BYTES, (
        f"the tracked tree ({tracked / 2**20:.1f} MiB) and the wheels' budget "
        f"({gpu_figures.WHEELS_BUDGET_BYTES / 2**20:.0f} MiB) exceed the {gpu_figures.DEVICE_CARRY_BYTES / 2**20:.0f} MiB "
        f"a device call carries")
    if (REPO / ".whl").is_dir():  # where `make gpu-wheels` ran: the folder as downloaded keeps to its budget
        gpu_figures.check_wheels_budget(REPO / ".whl")
