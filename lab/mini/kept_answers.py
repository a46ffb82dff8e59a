"""An ablation arm's evaluation answers, kept in its run state (`python -m lab.mini --ablation --run-state DIR`).

The claims compare arms on the same samples, and the arms are trained over many sessions on machines that keep
nothing but the git repository. Without its answers in git, every session would answer every arm trained before it
again (about 35 minutes an arm on the 2-core CPU) before it could write the claims. So after an arm's evaluations
(the test split and the fresh seeds, finished or stopped part way) its answers go to
`DIR/<arm>/answers/<the evaluation folder under --out>/`:

    raw_outputs.rank<r>.jsonl.gz   the model's raw texts as the runner appended them (complete lines only; gzip
                                   without a timestamp, so the same answers give the same bytes)
    run_fingerprint.json           what wrote them: model weights digest, data, task settings (no machine path)

and the next machine puts them back before it evaluates the arm. The runner then resumes them as its own answers,
which it does only for the same model, data and settings (evaluation/run_fingerprint.py), generates what is
missing, and scores all of them again (scoring is deterministic and takes seconds). A kept folder whose model is
none of the arm's models on this machine (the digest of its weights or configuration files differs: the stage was
trained again) is not put back and is answered again, with a log line; its kept copy is then replaced. A stage
rebuilt from its run state is the folder that was evaluated (training/run_state.py restores the best model exactly).
The data are written again on each machine: an annotation file with other last digits (another CPU's float maths)
resumes its answers, while answers put back that the runner cannot resume (other data, or a record older than its
sketch of the annotation numbers with other bytes) are answered again (lab/mini/pipeline_settings.py
ANSWERS_OF_ANOTHER_RUN), with a warning, and their kept copy is then replaced.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

from gap_mllm.evaluation.folder_lock import claim_evaluation_folder
from gap_mllm.evaluation.reports import RAW_PATTERN
from gap_mllm.evaluation.run_fingerprint import RUN_FINGERPRINT_FILE, model_fingerprint
from gap_mllm.mini.default_model import replace_atomically

logger = logging.getLogger(__name__)

ANSWERS = "answers"  # DIR/<arm>/answers
GZIP_SUFFIX = ".gz"


def answers_folder(run_state: Path, arm: str) -> Path:
    """Where `arm`'s answers are kept in the run state `run_state` (`--run-state DIR`)."""
    return Path(run_state) / arm / ANSWERS


def evaluation_folders(roots: Iterable[Path]) -> list[Path]:
    """The evaluation folders (those with a run fingerprint) at or under each of `roots` that exist, sorted."""
    found = set()
    for root in map(Path, roots):
        if root.is_dir():
            found.update(path.parent for path in root.rglob(RUN_FINGERPRINT_FILE))
    return sorted(found)


def _write_atomically(path: Path, data: bytes) -> None:
    """`path` holds `data` whole or keeps what it held: a stop (SIGTERM) mid-write leaves no torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(path, lambda temporary: temporary.write_bytes(data))


def _complete_lines(data: bytes) -> bytes:
    """`data` up to its last newline: a line the runner was writing when it was stopped is left out."""
    return data[: data.rfind(b"\n") + 1]


def keep_answers(out: Path, run_state: Path, arm: str, roots: Iterable[Path]) -> int:
    """Copy the answers of every evaluation folder under `roots` (folders of `out`) into `answers_folder(run_state,
    arm)`, at the same path relative to `out`. Returns how many folders were kept."""
    kept = 0
    for folder in evaluation_folders(roots):
        raw_files = sorted(folder.glob(RAW_PATTERN))
        if not raw_files:
            continue
        target = answers_folder(run_state, arm) / folder.relative_to(out)
        for raw in raw_files:
            _write_atomically(target / f"{raw.name}{GZIP_SUFFIX}", gzip.compress(_complete_lines(raw.read_bytes()), mtime=0))
        _write_atomically(target / RUN_FINGERPRINT_FILE, (folder / RUN_FINGERPRINT_FILE).read_bytes())
        kept += 1
    return kept


def restore_answers(out: Path, run_state: Path, arm: str, models: Iterable[Path]) -> int:
    """Put the answers kept for `arm` back under `out`, into each evaluation folder that has no answers here yet and
    whose kept model is one of `models` (the arm's model folders on this machine, by the digests of their weights and
    configuration files: evaluation/run_fingerprint.py). Returns how many folders were put back."""
    kept_root = answers_folder(run_state, arm)
    kept_folders = evaluation_folders([kept_root])
    if not kept_folders:  # nothing kept: the models' weights are not hashed for nothing
        return 0
    here = [model_fingerprint(folder) for folder in map(Path, models) if (folder / "config.json").is_file()]
    restored = 0
    for kept in kept_folders:
        folder = Path(out) / kept.relative_to(kept_root)
        if any(folder.glob(RAW_PATTERN)):  # answered on this machine: its own answers are the newer
            continue
        model = json.loads((kept / RUN_FINGERPRINT_FILE).read_text(encoding="utf-8")).get("model")
        if model not in here:
            logger.warning("%s: the kept answers are of a model that %s has no longer (weights %s…, configuration "
                           "%s…); they are answered again", kept, arm, str((model or {}).get("weights"))[:12],
                           str((model or {}).get("configuration"))[:12])
            continue
        claim_evaluation_folder(folder)  # marked as an evaluation's: the runner owns a folder by its marker alone
        for raw in sorted(kept.glob(f"{RAW_PATTERN}{GZIP_SUFFIX}")):
            _write_atomically(folder / raw.name.removesuffix(GZIP_SUFFIX), gzip.decompress(raw.read_bytes()))
        _write_atomically(folder / RUN_FINGERPRINT_FILE, (kept / RUN_FINGERPRINT_FILE).read_bytes())
        restored += 1
    return restored


@contextmanager
def answers_kept(out: Path, run_state: Path | None, arm: str, roots: list[Path], models: list[Path]):
    """The `with` block evaluates `arm` into folders under `roots`: its kept answers are put back first, and its
    answers are kept when the block ends, however it ends (a time limit stops an evaluation part way: what was
    answered is kept). Nothing is done without a run state."""
    if run_state is None:
        yield
        return
    restored = restore_answers(out, run_state, arm, models)
    if restored:
        logger.info("%s: the answers of %d evaluation folder(s) put back from %s", arm, restored,
                    answers_folder(run_state, arm))
    try:
        yield
    finally:
        kept = keep_answers(out, run_state, arm, roots)
        logger.info("%s: the answers of %d evaluation folder(s) kept in %s", arm, kept, answers_folder(run_state, arm))
