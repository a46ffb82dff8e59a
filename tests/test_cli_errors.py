"""A user's mistake is one clear line naming the input and what to do (exit status 2), not a traceback or a
misleading message; `--debug` keeps the traceback. The cases: conversions, recipes, data, the processor, the Space,
token budgets that are not positive, and a FIFO given for a frame (refused by train, predict and every reader of
media, never waited on)."""

from __future__ import annotations

import argparse
import errno
import functools
import json
import logging
import os
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from gap_mllm.cli.errors import UserError
from gap_mllm.cli.main import main as gap_mllm
from gap_mllm.cli.model_source import check_model_source, load_pretrained
from gap_mllm.evaluation.runner import read_predictions_file
from gap_mllm.files import NotARegularFile
from gap_mllm.processing.builder_fingerprint import file_content_digest
from gap_mllm.processing.builders import load_annotation_file
from gap_mllm.processing.errors import DataError
from gap_mllm.processing_gap_mllm import load_image
from gap_mllm.tiny.tiny_model import save_tiny_checkpoint

from .test_train_fixtures import train_data_root  # noqa: F401  (session fixture)


def run(argv, capsys):
    status = gap_mllm(argv)
    captured = capsys.readouterr()
    return status, captured.err


def assert_one_line_error(status, err, *fragments):
    assert status == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("gap-mllm ")]
    assert len(lines) == 1 and "error:" in lines[0], err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "--debug" not in err, err  # one line (docs/usage.md): no hint line after it


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


# ------------------------------------------------------------------------------------------ convert


def test_convert_a_missing_file(tmp_path, capsys):
    status, err = run(["convert", "vggt", str(tmp_path / "model.pt"), str(tmp_path / "out")], capsys)
    assert_one_line_error(status, err, "model.pt: no such file or folder", "Hub repo id")


def test_convert_a_jpeg(tmp_path, capsys):
    PIL.Image.new("RGB", (8, 8)).save(tmp_path / "photo.jpg")
    status, err = run(["convert", "vggt", str(tmp_path / "photo.jpg"), str(tmp_path / "out")], capsys)
    assert_one_line_error(status, err, "photo.jpg: not a PyTorch or safetensors checkpoint (it is a JPEG image)")
    assert not (tmp_path / "out").exists()


def test_convert_a_hub_id_while_offline(tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    status, err = run(["convert", "vggt", "facebook/VGGT-1B", str(tmp_path / "out")], capsys)
    assert_one_line_error(status, err, "facebook/VGGT-1B: no network and not in the local Hub cache")
    assert "has neither model.safetensors nor model.pt" not in err


def test_convert_a_pickle_the_safe_loader_refuses(tmp_path, capsys):
    torch.save({"aggregator.camera_token": torch.zeros(1), "hook": functools.partial(print, "hi")}, tmp_path / "model.pt")
    status, err = run(["convert", "vggt", str(tmp_path / "model.pt"), str(tmp_path / "out")], capsys)
    assert_one_line_error(status, err, "model.pt: pickle weights are refused: unpickling a file can run arbitrary code")


def test_convert_a_truncated_safetensors_file(tmp_path, capsys, checkpoint):
    data = (checkpoint / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    status, err = run(["convert", "vggt", str(tmp_path / "model.safetensors"), str(tmp_path / "out")], capsys)
    assert_one_line_error(status, err, f"{tmp_path / 'model.safetensors'}: not a readable safetensors file", "truncated")


def test_convert_official_from_a_missing_folder(tmp_path, capsys):
    status, err = run(["convert", "official", str(tmp_path / "nope"), str(tmp_path / "out")], capsys)
    assert_one_line_error(status, err, "nope: no such folder")


def test_debug_keeps_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        gap_mllm(["convert", "vggt", str(tmp_path / "model.pt"), str(tmp_path / "out"), "--debug"])


# -------------------------------------------------------------------------------------------- --model


def test_model_sources(tmp_path, checkpoint, monkeypatch):
    with pytest.raises(UserError, match="--model .*nope: no such folder"):
        check_model_source(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="the folder is empty"):
        check_model_source(tmp_path / "empty")
    (tmp_path / "noconfig").mkdir()
    (tmp_path / "noconfig" / "model.safetensors").write_bytes(b"x")
    with pytest.raises(UserError, match="has no config.json"):
        check_model_source(tmp_path / "noconfig")
    with pytest.raises(UserError, match="this is a file"):
        check_model_source(checkpoint / "config.json")
    truncated = tmp_path / "truncated"
    shutil.copytree(checkpoint, truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[:100])
    with pytest.raises(UserError, match=rf"unreadable weights \({truncated / 'model.safetensors'}: .*truncated or corrupt"):
        check_model_source(truncated)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(UserError, match="org/not-cached: no network .* not in the local Hub cache"):
        check_model_source("org/not-cached")
    assert check_model_source(checkpoint) == str(checkpoint)


def test_model_with_pickled_weights_the_safe_loader_refuses(tmp_path, checkpoint):
    from safetensors.torch import load_file
    from transformers import AutoModel

    folder = tmp_path / "pickled"
    shutil.copytree(checkpoint, folder)
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save({**state, "hook": functools.partial(print, "hi")}, folder / "pytorch_model.bin")
    with pytest.raises(UserError, match=r"pytorch_model.bin: pickle weights are refused"):
        load_pretrained(AutoModel.from_pretrained, folder, trust_remote_code=True)


def test_predict_with_an_empty_model_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    from gap_mllm.cli.scenes import EXAMPLE_SEEDS

    status, err = run(["predict", "--model", str(tmp_path / "empty"), "--example", sorted(EXAMPLE_SEEDS)[0],
                       "--task", "detection"], capsys)
    assert_one_line_error(status, err, f"--model {tmp_path / 'empty'}: the folder is empty")


def test_evaluate_with_a_missing_model_folder_and_a_bad_predictions_file(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    status, err = run(["evaluate", "--task", "detection", "--model", str(tmp_path / "nope"), "--data", str(tmp_path / "data"),
                       "--out", str(tmp_path / "out")], capsys)
    assert_one_line_error(status, err, "no such folder")
    status, err = run(["evaluate", "--task", "detection", "--predictions", str(tmp_path / "missing.jsonl"),
                       "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out")], capsys)
    assert_one_line_error(status, err, "--predictions", "missing.jsonl: no such file or folder")


# ------------------------------------------------------------------------------------------ recipes


def test_train_with_a_missing_recipe_or_a_bad_value(tmp_path, capsys):
    status, err = run(["train", "--config", str(tmp_path / "missing.yaml")], capsys)
    assert_one_line_error(status, err, "missing.yaml' not found")
    status, err = run(["train", "--config", "training/recipes/stage1_pretrain.yaml", "--set", "training.learning_rate=abc"], capsys)
    assert_one_line_error(status, err, "training.learning_rate: expected float, got str 'abc'")


# -------------------------------------------------------------------------------------------- data


def test_malformed_intrinsics_is_a_data_error_that_can_be_skipped(tmp_path):
    from gap_mllm.processing.annotation_files import find_annotation_file
    from gap_mllm.processing.builders import DetectionBuilder, load_annotation_file
    from gap_mllm.processing.scannet_layout import posed_images_dir, read_intrinsics
    from gap_mllm.processing.synth.writer import write_dataset

    from .test_data_bad_inputs import build, data_error
    from .test_data_fixtures import tiny_generator

    (tmp_path / "intrinsic.txt").write_text("1 0 0 0\n0 one 0 0\n0 0 1 0\n0 0 0 1\n")
    with pytest.raises(DataError, match="intrinsic.txt: cannot parse intrinsics"):
        read_intrinsics(tmp_path / "intrinsic.txt")

    root = tmp_path / "data"
    write_dataset(root, tiny_generator(), {"train": 2})
    records = load_annotation_file(find_annotation_file(root, "detection", "train"))
    scene = records[0]["images"][0].split("/")[0]
    (posed_images_dir(root) / scene / "intrinsic.txt").write_text("not numbers\n")
    with pytest.raises(Exception) as excinfo:
        build(DetectionBuilder, root, tmp_path / "c1", load_poses=True)
    assert records[0]["id"] in str(data_error(excinfo.value))
    builder = build(DetectionBuilder, root, tmp_path / "c2", load_poses=True, skip_bad_samples=True)
    affected = [r for r in records if r["images"][0].startswith(scene + "/")]
    assert builder.skipped["train"].total == len(affected) and len(builder.as_dataset(split="train")) == len(records) - len(affected)


@pytest.mark.parametrize("boxes", [{"label": "chair"}, "chair", [["chair", [0] * 9]], [{"label": "chair", "bbox_3d": [0] * 8}]])
def test_boxes_that_are_not_a_list_of_objects(boxes):
    from gap_mllm.evaluation.tasks import get_task

    with pytest.raises(DataError, match="sample 'r1': .*'boxes'|sample 'r1': every entry"):
        get_task("detection").evaluate([{"id": "r1", "images": ["a.jpg"], "boxes": boxes}], [["[]"]])


# ------------------------------------------------------------------------------------------ processor


def test_processor_names_the_view_for_aspect_ratio_and_decompression_bomb_errors(tiny_processor, tmp_path, monkeypatch):
    samples = [[PIL.Image.new("RGB", (64, 64))], [PIL.Image.new("RGB", (800, 2))]]
    with pytest.raises(ValueError, match=r"sample 1, view 0 \(800x2 px\): absolute aspect ratio must be smaller than 200"):
        tiny_processor(images=samples, text=["x", "y"])
    PIL.Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100)  # 64*64 > 2 * 100: PIL refuses to open it
    with pytest.raises(ValueError, match=rf"sample 0, view 0: image file '{tmp_path / 'big.png'}' is refused as a possible decompression bomb"):
        tiny_processor(images=[str(tmp_path / "big.png")], text="x")


@pytest.mark.parametrize("text", [5, 1.5, b"bytes", [["nested"]], ["ok", 3]])
def test_processor_text_of_the_wrong_type(tiny_processor, text):
    with pytest.raises(TypeError, match="`text` must be a string or a list of strings"):
        tiny_processor(images=[PIL.Image.new("RGB", (64, 64))], text=text)


def test_post_processing_drops_negative_ids_and_names_foreign_ones(tiny_processor):
    from gap_mllm.tasks_gap_mllm import Box3D, serialize_detection

    text = serialize_detection([Box3D.from_list([0.5, 0.0, 2.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0], label="chair")])
    ids = tiny_processor.tokenizer(text)["input_ids"]
    padded = torch.tensor([ids + [-100] * 4, [-100] * 3 + ids[:3] + [-1] + ids[3:]])
    results = tiny_processor.post_process_detection(padded)
    assert [r.boxes for r in results] == [tiny_processor.post_process_detection([ids])[0].boxes] * 2
    assert results[0].boxes[0].label == "chair"
    with pytest.raises(ValueError, match=r"row 0 holds token id 1000000, outside the tokenizer's \d+ ids"):
        tiny_processor.post_process_detection([ids + [10**6]])


# ------------------------------------------------------------------------------------------- Space


@pytest.mark.parametrize("marker", ["0 inf 5", "0 nan 5", "0 1e400 5"])
def test_space_marker_with_non_finite_numbers(marker):
    from gap_mllm.cli.space_backend import parse_numbers
    from gap_mllm.cli.uploads import UploadError

    with pytest.raises(UploadError, match="marker: expected 3 finite numbers"):
        parse_numbers(marker, 3, "marker")


def test_predictions_file_with_a_broken_line(tmp_path):
    from gap_mllm.evaluation.runner import read_predictions_file

    path = tmp_path / "answers.jsonl"
    path.write_text(json.dumps({"id": "a", "text": "[]"}) + "\n{broken\n")
    with pytest.raises(ValueError, match=r"answers.jsonl, line 2: not a JSON object"):
        read_predictions_file(path, 1)
    path.write_text("[1, 2]\n")
    with pytest.raises(ValueError, match=r"line 1: need an object with 'id'"):
        read_predictions_file(path, 1)


def test_sixteen_bit_arrays_are_refused_with_a_hint():
    from gap_mllm.processing_gap_mllm import load_image

    with pytest.raises(TypeError, match="sample 2, view 0: unsupported image dtype uint16"):
        load_image(np.zeros((4, 4, 3), dtype=np.uint16), name="sample 2, view 0")


# ------------------------------------------------------------------------------------ token budgets


@pytest.mark.parametrize("value", ["-1", "0"])
def test_cli_budget_flags_must_be_positive(capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        gap_mllm(["predict", "--example", "synthetic room A", "--task", "detection", "--max-new-tokens", value])
    assert exit_info.value.code == 2
    assert f"argument --max-new-tokens: '{value}' must be a positive number" in capsys.readouterr().err


# ----------------------------------------------------------------------- a FIFO in place of a frame


def test_a_fifo_in_place_of_a_frame_is_refused_by_train_and_predict_and_every_reader_of_media(
        train_data_root, tmp_path, capsys):  # noqa: F811
    data = tmp_path / "data"
    shutil.copytree(train_data_root, data)
    frame = data / "scannet" / "posed_images" / "synth0000_00" / "00010.jpg"  # a frame of the reconstruction samples
    frame.unlink()
    os.mkfifo(frame)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps({"model": {"tiny": "tiny"}, "data": {"data_root": str(data), "cache_dir": str(tmp_path / "hf")},
                                  "training": {"output_dir": str(tmp_path / "out"), "use_cpu": True, "report_to": "none",
                                               "max_steps": 1, "per_device_train_batch_size": 2, "save_strategy": "no",
                                               "disable_tqdm": True}}))
    def hung(*_):  # pytest's failure is no Exception: the command line cannot take it for a user's mistake
        pytest.fail("gap-mllm train waited 120 s on the FIFO")

    earlier = signal.signal(signal.SIGALRM, hung)  # a hang fails this test (the blocked open is interrupted)
    signal.alarm(120)
    package = logging.getLogger("gap_mllm")
    handlers, level = list(package.handlers), package.level
    try:
        assert gap_mllm(["train", "--config", str(recipe)]) == 2
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, earlier)
    # its terminal handler was this command's: one left behind would write to this test's stream after it closes
    assert package.handlers == handlers and package.level == level
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("gap-mllm train: error: ")]
    assert len(errors) == 1 and re.fullmatch(rf"gap-mllm train: error: sample '\w+'; file {re.escape(str(frame))}: colour "
                                             r"image is a FIFO \(named pipe\), not a regular file", errors[0])
    assert gap_mllm(["predict", "--model", "tiny", "--images", str(frame), "--task", "detection"]) == 2
    assert capsys.readouterr().err == (f"gap-mllm predict: error: {frame.resolve()}: not a regular file (give image files, a "
                                       "folder of images, or one video)\n")
    # the readers behind them: the data's cache key, the processor's images, annotation and predictions files
    assert file_content_digest(frame) == "unreadable:22"
    with pytest.raises(ValueError, match=rf"view 0: image file '{frame}' is a FIFO \(named pipe\), not a regular file"):
        load_image(str(frame), name="view 0")
    with pytest.raises(DataError, match="annotation file is a FIFO"):
        load_annotation_file(frame)
    with pytest.raises(NotARegularFile, match=rf"^predictions file {frame} is a FIFO \(named pipe\), not a regular file"):
        read_predictions_file(frame, 1)


def test_a_plain_mistake_is_one_line(tmp_path, capsys):
    """docs/usage.md: a mistake in what a command is given is one line naming the input (no hint line after it)."""
    from gap_mllm.cli.main import main

    a_file = tmp_path / "taken"
    a_file.write_text("mine")
    status = main(["predict", "--example", "synthetic room A", "--task", "detection", "--out", str(a_file)])
    assert status == 2
    assert capsys.readouterr().err.splitlines() == [f"gap-mllm predict: error: --out {a_file}: this is a file; "
                                                    "give a folder"]


# ---------------------------------------------------------------------------------------------- symbolic link loops
LOOP_LINE = "a symbolic link loop (following its links leads back to itself)"
# command line (LOOP: the loop, RECIPE: a shipped recipe) -> the one line's text after "gap-mllm COMMAND: error: "
LOOP_COMMANDS = {
    "predict --model LOOP --example": ("--model {loop}: this is " + LOOP_LINE + "; give the checkpoint folder itself "
                                       "or a Hub repo id"),
    "evaluate --model LOOP": "--model {loop}: this is " + LOOP_LINE + "; give the checkpoint folder itself or a Hub repo id",
    "export-llm LOOP": "SOURCE {loop}: this is " + LOOP_LINE + "; give a real file or folder",
    "export-llm CKPT LOOP": "--out {loop} is " + LOOP_LINE + "; give a folder (a new name, or a link to a real one)",
    "train --out LOOP": "--out {loop} is " + LOOP_LINE + "; give a folder (a new name, or a link to a real one)",
    "convert vggt LOOP": "SOURCE {loop}: this is " + LOOP_LINE + "; give a real file or folder",
    "push --model LOOP": "--model {loop}: this is " + LOOP_LINE + "; give the checkpoint folder itself or a Hub repo id",
    "export-lmms --data LOOP": "--data {loop}: this is " + LOOP_LINE + "; give a real folder",
    "export-vsibench --data LOOP": "--data {loop}: this is " + LOOP_LINE + "; give a real folder",
}
LOOP_ARGV = {
    "predict --model LOOP --example": ["predict", "--model", "LOOP", "--example", "synthetic room A", "--task",
                                       "detection"],
    "evaluate --model LOOP": ["evaluate", "--task", "detection", "--model", "LOOP", "--data", "DATA", "--out", "OUT"],
    "export-llm LOOP": ["export-llm", "LOOP", "OUT"],
    "export-llm CKPT LOOP": ["export-llm", "CKPT", "LOOP"],
    "train --out LOOP": ["train", "--config", "RECIPE", "--out", "LOOP"],
    "convert vggt LOOP": ["convert", "vggt", "LOOP", "OUT"],
    "push --model LOOP": ["push", "--model", "LOOP", "--repo", "someone/model"],
    "export-lmms --data LOOP": ["export-lmms", "--data", "LOOP", "--out", "OUT"],
    "export-vsibench --data LOOP": ["export-vsibench", "--data", "LOOP", "--out", "OUT"],
}


@pytest.mark.parametrize("command", sorted(LOOP_COMMANDS))
def test_a_path_argument_that_is_a_link_loop_is_one_line_for_every_command(command, tmp_path, checkpoint, capsys):
    """`predict --model LOOP` and `export-llm LOOP` ended in `RuntimeError: Symlink loop` (Path.resolve before Python
    3.13), `train --out LOOP` in a bare "[Errno 40]", the others called the loop missing or not a checkpoint."""
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    (tmp_path / "data").mkdir()
    (tmp_path / "recipe.yaml").write_text("training: {}\n")
    values = {"LOOP": str(loop), "OUT": str(tmp_path / "out"), "CKPT": str(checkpoint), "DATA": str(tmp_path / "data"),
              "RECIPE": str(tmp_path / "recipe.yaml")}
    status, err = run([values.get(word, word) for word in LOOP_ARGV[command]], capsys)
    name = LOOP_ARGV[command][0]
    assert (status, err) == (2, f"gap-mllm {name}: error: {LOOP_COMMANDS[command].format(loop=loop)}\n")
    assert not (tmp_path / "out").exists()


def test_a_link_loop_found_anywhere_in_a_command_is_one_line_naming_its_option(tmp_path, capsys):
    """The mechanism under every command (cli/errors.py): a loop that no path check caught, raised as pathlib's
    RuntimeError or as an OSError (errno ELOOP), is named as a loop, with the option the user gave it."""
    from gap_mllm.cli.errors import run_command, user_message

    loop = tmp_path / "loop"
    loop.symlink_to(loop)

    def resolving(args):
        return Path(args.out, "run").resolve()  # RuntimeError before Python 3.13, OSError after

    assert run_command("train", resolving, argparse.Namespace(out=str(loop))) == 2
    assert capsys.readouterr().err == (f"gap-mllm train: error: {loop / 'run'}: this is {LOOP_LINE}; give a real file "
                                       "or folder\n")
    args = argparse.Namespace(out=str(loop), data=None)
    assert user_message(OSError(errno.ELOOP, "symbolic link loop", str(loop)), args) == (
        f"--out {loop}: this is {LOOP_LINE}; give a folder (a new name, or a link to a real one)")
    assert user_message(RuntimeError(f"Symlink loop from '{loop}'"), argparse.Namespace(data=str(loop))) == (
        f"--data {loop}: this is {LOOP_LINE}; give a real file or folder")
    assert user_message(RuntimeError("Symlink loop somewhere")) is None  # not pathlib's words: a bug, kept as one


def test_a_model_name_through_a_link_loop_is_refused_as_one(tmp_path):
    """`check_model_source` (every front end that loads a model, and the Space) names the loop before reading it as
    a Hub id or a missing folder; `missing_local_folder` raises OSError (ELOOP), never pathlib's RuntimeError."""
    from gap_mllm.processing.model_paths import missing_local_folder

    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(UserError) as refused:
        check_model_source(loop)
    assert str(refused.value) == (f"--model {loop}: this is {LOOP_LINE}; give the checkpoint folder itself or a Hub "
                                  "repo id")
    with pytest.raises(OSError) as looped:
        missing_local_folder(str(loop / "model"))
    assert looped.value.errno == errno.ELOOP and looped.value.filename == str(loop / "model")
