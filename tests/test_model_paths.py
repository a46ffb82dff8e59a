"""What `--model` and `model.name_or_path` name: a missing local folder is refused by name at once, on the command
line and in training, instead of being tried as a Hub repo id (a minute of network retries offline, then a message
about the Hub); a checkpoint of another model type is named by its model_type, a saved GAP-MLLM one passes; a small
local checkpoint loads without a progress bar (a download keeps its bars), and so does the Mini loaded as the
README loads it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gap_mllm.cli.errors import UserError
from gap_mllm.cli.main import main as gap_mllm
from gap_mllm.cli.model_source import check_model_source, load_pretrained
from gap_mllm.processing.model_paths import missing_local_folder
from gap_mllm.tiny.tiny_model import save_tiny_checkpoint
from gap_mllm.training.config import ModelSource
from gap_mllm.training.model_loading import load_model_and_processor


def test_which_names_are_missing_local_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "here").mkdir()
    assert missing_local_folder("checkpoints/my-run") == tmp_path / "checkpoints" / "my-run"  # its parent is here
    assert missing_local_folder("runs/mini/stage0_geometry") == tmp_path / "runs" / "mini" / "stage0_geometry"
    assert missing_local_folder("./my-run") == tmp_path / "my-run"
    assert missing_local_folder("Qwen/Qwen3-VL-2B-Instruct") is None  # a Hub id: no folder Qwen/ here
    assert missing_local_folder("here") is None and missing_local_folder("checkpoints") is None  # they exist


def test_the_command_line_names_the_missing_folder_before_any_network(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(UserError) as error:
        check_model_source("checkpoints/my-run")
    assert str(error.value) == (f"--model checkpoints/my-run: no such folder {tmp_path / 'checkpoints' / 'my-run'} (its "
                                f"folder {tmp_path / 'checkpoints'} is here, so it is not taken for a Hub repo id)")
    assert check_model_source("Qwen/Qwen3-VL-2B-Instruct") == "Qwen/Qwen3-VL-2B-Instruct"


def test_training_names_model_name_or_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ValueError, match=rf"^model.name_or_path=checkpoints/gap-mllm-init: no such folder "
                                         rf"{tmp_path / 'checkpoints' / 'gap-mllm-init'} \(train the stage"):
        load_model_and_processor(ModelSource(name_or_path="checkpoints/gap-mllm-init"))
    (tmp_path / "mini").mkdir()  # e.g. the repository's source folder mini/, which is not the embedded model
    (tmp_path / "mini" / "README.md").write_text("not a checkpoint")
    # `gap-mllm train` resolves "mini" to the embedded model (cli/train.py); the training module alone names how to
    # find its folder rather than reading the repository's source folder mini/ as a checkpoint
    with pytest.raises(ValueError, match=r"^model.name_or_path=mini names the embedded GAP-MLLM-Mini under "
                                         r"`gap-mllm train` only; started otherwise, give its folder: "):
        load_model_and_processor(ModelSource(name_or_path="mini"))
    assert os.listdir(tmp_path / "checkpoints") == []


def _folder_with_model_type(tmp_path, model_type) -> Path:
    folder = tmp_path / f"type-{model_type}"
    folder.mkdir()
    config = {"architectures": ["Other"]} if model_type is None else {"model_type": model_type}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_checkpoint_of_another_model_type_is_named(tmp_path, capsys):
    folder = _folder_with_model_type(tmp_path, "llava_next_video_plus")
    status = gap_mllm(["predict", "--model", str(folder), "--example", "synthetic room A", "--task", "detection"])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err and "upgrade" not in err
    assert f"--model {folder} is a llava_next_video_plus checkpoint, not a GAP-MLLM one (its config.json has " \
           "model_type 'llava_next_video_plus', GAP-MLLM's is 'gap_mllm')" in err
    with pytest.raises(UserError, match="is not a transformers checkpoint, not a GAP-MLLM one .*has no model_type"):
        check_model_source(_folder_with_model_type(tmp_path, None))
    with pytest.raises(UserError, match="is a qwen3_vl checkpoint, not a GAP-MLLM one"):
        check_model_source(_folder_with_model_type(tmp_path, "qwen3_vl"))

    def hub_loader(source, **kwargs):  # what AutoModel.from_pretrained raises for a Hub id of an unknown type
        raise ValueError("The checkpoint you are trying to load has model type `newvlm` but Transformers does not "
                         "recognize this architecture. ... `pip install --upgrade transformers`")

    with pytest.raises(UserError, match="--model org/newvlm is a newvlm checkpoint, not a GAP-MLLM one"):
        load_pretrained(hub_loader, "org/newvlm")


def test_a_saved_gap_mllm_checkpoint_still_passes_the_source_check(tmp_path):
    folder = save_tiny_checkpoint(tmp_path / "tiny")
    assert check_model_source(folder) == str(folder)


def test_a_small_local_checkpoint_loads_without_a_progress_bar(tmp_path):
    from transformers.utils import logging as transformers_logging

    from gap_mllm.processing.model_paths import loading_bar_for

    (tmp_path / "model.safetensors").write_bytes(b"\0" * 1024)
    assert transformers_logging.is_progress_bar_enabled()
    with loading_bar_for(tmp_path):
        assert not transformers_logging.is_progress_bar_enabled()
    assert transformers_logging.is_progress_bar_enabled()
    with loading_bar_for("org/a-hub-model"):  # a download keeps its bars
        assert transformers_logging.is_progress_bar_enabled()


def test_loading_the_mini_as_the_readme_does_prints_only_the_loading_bar(tmp_path):
    """The package's own model loads through the Auto classes with trust_remote_code as every snippet does, with no
    warning and no report: only transformers' own loading bar (the quiet load of a small checkpoint is the front ends',
    `loading_bar_for`, which stays out of the model folder)."""
    script = ("from transformers import AutoModel\nfrom gap_mllm.mini import default_model_path\n"
              "AutoModel.from_pretrained(default_model_path(), trust_remote_code=True)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert lines and all(line.startswith("Loading weights") for line in lines), done.stderr[-2000:]
