"""A full disk outside training (`evaluate`, `predict`, `synth`, `export-llm`) is one line naming the file being
written and what to do, not `[Errno 28] No space left on device`; `export-llm` writes into a hidden folder renamed
when complete, so a failed export leaves nothing that blocks the rerun.

The disk is never filled: an output file is a link to /dev/full (every write to it fails with ENOSPC, the real
error of the real writer), or a writer is replaced by one that raises what a full disk raises."""

from __future__ import annotations

import errno
import io
import json
import os
from argparse import Namespace
from pathlib import Path

import pytest

from gap_mllm.cli.errors import path_being_written, user_message
from gap_mllm.cli.main import main as gap_mllm
from gap_mllm.cli.scenes import EXAMPLE_SEEDS
from gap_mllm.processing.errors import device_of
from gap_mllm.processing.output_folder import mark_output_folder
from gap_mllm.tiny.tiny_model import save_tiny_checkpoint

FULL = Path("/dev/full")
needs_dev_full = pytest.mark.skipif(not FULL.exists(), reason="no /dev/full on this system")
WHAT_TO_DO = "; free space there (or write elsewhere), then run the command again"


def run(argv, capsys) -> tuple[int, str]:
    status = gap_mllm(argv)
    return status, capsys.readouterr().err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("gap-mllm ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def full_file(path: Path) -> Path:
    """Make `path` a link to /dev/full: writing it fails with ENOSPC."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(FULL)
    return path


def full_disk_line(command: str, path) -> str:
    return f"gap-mllm {command}: error: no space left on {device_of(path)} while writing {path}{WHAT_TO_DO}"


@pytest.fixture(scope="module")
def oracle(synth_data, tmp_path_factory):
    from gap_mllm.evaluation.runner import write_oracle_predictions

    return write_oracle_predictions("detection", synth_data, tmp_path_factory.mktemp("oracle") / "oracle.jsonl")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("gap") / "gap", seed=4)


# ------------------------------------------------------------------------------------------ the error line


def test_a_buffered_write_names_the_file_it_was_writing(tmp_path):
    """ENOSPC from a write or close carries no file name; the line takes it from the file open for writing."""
    path = full_file(tmp_path / "out.json") if FULL.exists() else None

    def write():
        if path is None:  # what the OS gives a buffered writer on a full disk, raised where the file is open
            with open(tmp_path / "out.json", "w") as handle:  # noqa: F841 - the open file is what the line names
                raise OSError(errno.ENOSPC, "No space left on device")
        path.write_text("{}" * 10)

    with pytest.raises(OSError) as excinfo:
        write()
    assert excinfo.value.errno == errno.ENOSPC and excinfo.value.filename is None
    assert path_being_written(excinfo.value) == (str(tmp_path / "out.json"), None)
    assert user_message(excinfo.value) == (f"no space left on {device_of(tmp_path / 'out.json')} while writing "
                                           f"{tmp_path / 'out.json'}{WHAT_TO_DO}")


def test_the_line_names_the_error_s_own_file_then_the_command_output(tmp_path):
    copy = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "a"), None, str(tmp_path / "b"))
    assert path_being_written(copy) == (str(tmp_path / "b"), None)  # a copy's destination, not its source
    quota = RuntimeError("writing failed")
    quota.__cause__ = OSError(errno.EDQUOT, "Disk quota exceeded")
    args = Namespace(out=str(tmp_path / "eval"))
    assert user_message(quota, args) == (f"no space left on {device_of(tmp_path)} while writing into --out "
                                         f"{tmp_path / 'eval'}{WHAT_TO_DO}")
    too_large = OSError(errno.EFBIG, "File too large")
    assert user_message(too_large, Namespace(output_dir=str(tmp_path / "llm"))).startswith(
        f"the file grew past the size limit of {device_of(tmp_path)} (or of this process) while writing into "
        f"--out {tmp_path / 'llm'}")
    # safetensors loses the errno and says it in words
    from safetensors import SafetensorError

    text = SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')
    assert user_message(text, Namespace(save_dir=str(tmp_path))).startswith(f"no space left on {device_of(tmp_path)}")
    # other errors keep their own line
    assert user_message(OSError(errno.EACCES, "Permission denied", "x")) == "[Errno 13] Permission denied: 'x'"


def test_training_s_own_full_disk_line_is_kept(tmp_path):
    from gap_mllm.training.checkpoints import disk_full_error

    error = disk_full_error(tmp_path, 2**20, "checkpoint-2")
    assert user_message(error, Namespace(out=str(tmp_path))) == str(error)
    assert "`--resume auto` continues from checkpoint-2" in str(error)


# ------------------------------------------------------------------------------------------ the commands


@needs_dev_full
def test_evaluate_on_a_full_disk(synth_data, oracle, tmp_path, capsys):
    out = tmp_path / "eval"
    full_file(out / "summary.json")
    mark_output_folder(out, "gap-mllm evaluate")  # an earlier evaluation's folder: the command's own to write again
    status, err = run(["evaluate", "--task", "detection", "--data", str(synth_data), "--predictions", str(oracle),
                       "--out", str(out), "--no-plots"], capsys)
    assert status == 2 and error_line(err) == full_disk_line("evaluate", out / "summary.json")
    assert "--debug" not in err  # one line (docs/usage.md)
    assert json.loads((out / "samples.jsonl").read_text().splitlines()[0])  # what was written before stays


def test_evaluate_when_the_failing_file_is_unknown_names_out(synth_data, oracle, tmp_path, capsys, monkeypatch):
    from gap_mllm.evaluation import reports

    def full(path, rows):
        raise OSError(errno.ENOSPC, "No space left on device")  # no file name, no open file

    monkeypatch.setattr(reports, "write_jsonl", full)
    out = tmp_path / "eval"
    status, err = run(["evaluate", "--task", "detection", "--data", str(synth_data), "--predictions", str(oracle),
                       "--out", str(out), "--no-plots"], capsys)
    assert status == 2
    assert error_line(err) == f"gap-mllm evaluate: error: no space left on {device_of(out)} while writing into --out {out}{WHAT_TO_DO}"


@needs_dev_full
def test_predict_on_a_full_disk(tmp_path, capsys):
    saved = tmp_path / "pictures"
    full_file(saved / "frames_with_boxes.png")
    mark_output_folder(saved, "gap-mllm predict")  # an earlier predict's folder: the command's own to write again
    status, err = run(["predict", "--model", "tiny", "--example", sorted(EXAMPLE_SEEDS)[0], "--task", "detection",
                       "--max-new-tokens", "2", "--out", str(saved), "--formats", "png"], capsys)
    assert status == 2 and error_line(err) == full_disk_line("predict", saved / "frames_with_boxes.png")


@needs_dev_full
def test_synth_on_a_full_disk(tmp_path, capsys, monkeypatch):
    """synth writes into a hidden sibling renamed when complete (processing/output_folder.py): the full file is
    planted there, once the folder is made, and the line names it; the failed write leaves no folder behind."""
    from gap_mllm.processing.synth import writer

    out = tmp_path / "synth"
    staged = tmp_path / ".synth.gap-mllm-partial" / "synthrooms" / "dataset_info.json"
    write_dataset = writer.write_dataset

    def write_onto_a_full_disk(out_dir, *args, **kwargs):
        full_file(staged)
        return write_dataset(out_dir, *args, **kwargs)

    monkeypatch.setattr(writer, "write_dataset", write_onto_a_full_disk)
    status, err = run(["synth", "--scenes", "1", "--out", str(out), "--size", "48", "64", "--frames", "4",
                       "--min-objects", "2", "--max-objects", "2"], capsys)
    assert status == 2 and error_line(err) == full_disk_line("synth", staged)
    assert not out.exists() and not staged.parent.parent.exists()


# ------------------------------------------------------------------------------------------ export-llm


def fill_the_disk_at(monkeypatch, name: str) -> list:
    """Make every write of a file called `name` fail as on a full disk (ENOSPC at close, no file name), as the real
    writers meet it; returns the folders it was written into."""
    real_open, folders = io.open, []

    class FullFile(io.BytesIO):
        def close(self):
            if not self.closed:
                super().close()
                raise OSError(errno.ENOSPC, "No space left on device")

    def fake_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file).name == name and "w" in mode:
            folders.append(Path(file).parent)
            return io.TextIOWrapper(FullFile(), encoding="utf-8") if "b" not in mode else FullFile()
        return real_open(file, mode, *args, **kwargs)

    import builtins

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    return folders


def test_export_llm_on_a_full_disk_leaves_nothing_and_the_rerun_works(checkpoint, tmp_path, capsys, monkeypatch):
    output = tmp_path / "exports" / "llm"
    folders = fill_the_disk_at(monkeypatch, "README.md")  # the last file written: the weights are already there
    status, err = run(["export-llm", str(checkpoint), str(output)], capsys)
    assert status == 2
    line = error_line(err)
    assert line.startswith(f"gap-mllm export-llm: error: [Errno 28] no space left on {device_of(output.parent)} while "
                           f"writing the export into {output} (its weights take ")
    assert line.endswith("MB); the partial export was removed: free space there (or export elsewhere), then run "
                         "export-llm again")
    assert folders and folders[0].parent == output.parent and folders[0].name.startswith(".llm.partial-")
    assert not output.exists() and list(output.parent.iterdir()) == []  # no config-only folder, no staging left

    monkeypatch.undo()
    status, err = run(["export-llm", str(checkpoint), str(output)], capsys)
    assert status == 0, err
    assert {"config.json", "model.safetensors", "README.md", "gap_export.json"} <= {p.name for p in output.iterdir()}
    assert [p.name for p in output.parent.iterdir()] == ["llm"]


def test_export_llm_into_an_existing_empty_folder_keeps_its_place(checkpoint, tmp_path):
    from gap_mllm.serving.export import export_llm_folder

    output = tmp_path / "llm"
    output.mkdir()
    exported = export_llm_folder(checkpoint, output)
    assert exported.path == output and "model.safetensors" in exported.files
    assert [p.name for p in tmp_path.iterdir()] == ["llm"]
    assert oct(output.stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def test_an_export_never_replaces_a_folder_that_filled_meanwhile(checkpoint, tmp_path, monkeypatch):
    from gap_mllm.serving import export

    output = tmp_path / "llm"
    real_write = export._write_export

    def write_while_someone_fills_the_target(folder, *args):
        real_write(folder, *args)
        output.mkdir()
        (output / "mine.txt").write_text("keep me")

    monkeypatch.setattr(export, "_write_export", write_while_someone_fills_the_target)
    with pytest.raises(FileExistsError, match="exists and is not an empty folder"):
        export.export_llm_folder(checkpoint, output)
    assert (output / "mine.txt").read_text() == "keep me" and [p.name for p in tmp_path.iterdir()] == ["llm"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------------------------------ a read-only folder


def read_only_folder(folder: Path, monkeypatch) -> Path:
    """`folder` made read-only (mode 0o555). Root writes there anyway, so for root the two calls a writer meets are
    made to answer as they answer a user: `os.access` without write permission, and `os.open` creating a file in it
    with EACCES (what the kernel raises for a user)."""
    folder.mkdir(parents=True)
    folder.chmod(0o555)
    if os.geteuid() == 0:
        access, opened = os.access, os.open

        def refused_access(path, mode, **kwargs):
            if Path(path).resolve() == folder.resolve() and mode & os.W_OK:
                return False
            return access(path, mode, **kwargs)

        def refused_open(path, flags, *args, **kwargs):
            if flags & os.O_CREAT and Path(path).resolve().parent == folder.resolve():
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return opened(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "access", refused_access)
        monkeypatch.setattr(os, "open", refused_open)
    return folder


def test_train_into_a_read_only_folder_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    """Was `[Errno 13] Permission denied: '.../.out.gap-mllm-lock'`, the lock file beside the output folder."""
    parent = read_only_folder(tmp_path / "ro", monkeypatch)
    status, err = run(["train", "--config", "training/recipes/first_finetune.yaml", "--set", "model.tiny=tiny",
                       "--out", str(parent / "out")], capsys)
    assert status == 2
    assert error_line(err) == (f"gap-mllm train: error: {parent / 'out'} cannot be written: {parent} is read-only for "
                               f"this process (Permission denied; the folder's lock file goes in {parent}); give another "
                               f"--out you can write to, or make {parent} writable")
    assert list(parent.iterdir()) == []


def test_export_llm_into_a_read_only_folder_is_refused_before_the_model_loads(checkpoint, tmp_path, capsys,
                                                                              monkeypatch):
    """Was `[Errno 13] Permission denied: '.../.llm.partial-…'`, after the model was loaded and converted."""
    from gap_mllm import GapMllmForConditionalGeneration

    parent = read_only_folder(tmp_path / "ro", monkeypatch)
    monkeypatch.setattr(GapMllmForConditionalGeneration, "from_pretrained",
                        classmethod(lambda *args, **kwargs: pytest.fail("the model was loaded")))
    status, err = run(["export-llm", str(checkpoint), str(parent / "llm")], capsys)
    assert status == 2
    assert error_line(err) == (f"gap-mllm export-llm: error: OUTPUT_DIR {parent / 'llm'} cannot be written: {parent} "
                               "grants no write permission (the export is written into a hidden folder beside "
                               "OUTPUT_DIR, then renamed); give an OUTPUT_DIR in a folder you can write to")
    assert list(parent.iterdir()) == []
