"""ScanNet posed_images I/O round trips and the synth CLI writes a readable dataset; `.npy` depth is read as metres
only when it holds floats (integer depth needs an explicit depth_scale, bool and complex are refused)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from gap_mllm.processing.annotation_files import find_annotation_file, tasks_with_files
from gap_mllm.processing.errors import DataError
from gap_mllm.processing.scannet_layout import read_axis_align, read_depth, read_views, write_frame, write_scene_meta
from gap_mllm.processing.synth_cli import add_arguments, main


def test_frame_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    pose = np.eye(4)
    pose[:3, :3] = Rotation.random(random_state=rng).as_matrix()
    pose[:3, 3] = rng.normal(size=3)
    depth = rng.uniform(0.3, 8.0, size=(6, 8))
    k = np.array([[500.0, 0, 3.5], [0, 500.0, 2.5], [0, 0, 1]])
    align = np.eye(4)
    align[:3, 3] = [1.0, -2.0, 0.0]
    scene = tmp_path / "scannet" / "posed_images" / "scene0000_00"
    write_scene_meta(scene, k, None, align)
    write_frame(scene, "00010", rng.integers(0, 255, size=(6, 8, 3)), depth, pose)
    views = read_views(tmp_path / "scannet" / "posed_images", ["scene0000_00/00010.jpg"])
    np.testing.assert_array_equal(views.cam_to_world[0], pose)  # written with 17 significant digits
    np.testing.assert_allclose(views.depth[0], depth, atol=5e-4 + 1e-7)  # uint16 millimetres
    np.testing.assert_array_equal(views.intrinsics[0], k)
    np.testing.assert_array_equal(views.depth_intrinsics[0], k)  # falls back to the colour K
    np.testing.assert_array_equal(read_axis_align(scene), align)
    assert views.images[0].size == (8, 6)


def test_synth_cli_writes_every_task(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "synth"
    args = parser.parse_args(["--scenes", "1", "--val-scenes", "1", "--out", str(out), "--size", "36", "48", "--frames", "10"])
    assert main(args) == 0
    printed = capsys.readouterr().out
    block, _, last = printed.rstrip("\n").rpartition("\n")
    assert json.loads(block[block.find("{") :])["train"]["reconstruction"] > 0
    # the last line says what was written where and what reads it next, as the other commands end theirs
    assert last == (f"wrote 2 scenes (train 1, val 1) to {out}: the samples of each split and task above; next: "
                    f"gap-mllm evaluate --task TASK --data {out} --split val --model MODEL --out runs/eval, or gap-mllm "
                    f"train --config RECIPE --data {out} (training/README.md)")
    for split in ("train", "val"):
        for task in tasks_with_files():
            assert isinstance(json.loads(find_annotation_file(out, task, split).read_text()), list)
    info = json.loads((out / "synthrooms" / "dataset_info.json").read_text())
    assert info["splits"] == {"train": ["synth0000_00"], "val": ["synth0001_00"]}
    assert len(list((out / "scannet" / "posed_images" / "synth0000_00").glob("*.jpg"))) == 10
    bad = parser.parse_args(["--scenes", "0", "--out", str(out)])
    assert main(bad) == 2


# --------------------------------------------------------------------------------------------------------- depth arrays


@pytest.mark.parametrize("dtype", [np.uint16, np.uint8, np.int32])
def test_integer_npy_depth_is_refused_without_a_depth_scale(tmp_path, dtype):
    path = tmp_path / "00000.npy"
    np.save(path, np.full((4, 5), 150, dtype=dtype))
    with pytest.raises(DataError, match=rf"^file {path}: depth array is {np.dtype(dtype).name}: integer depth has no "
                                        r"unit \(1500 may be millimetres or metres\), so it is not read as metres; save "
                                        r"float32 metres, or uint16 millimetres as 00000\.png, or read it with an "
                                        r"explicit depth_scale"):
        read_depth(path)
    np.testing.assert_array_equal(read_depth(path, depth_scale=1000), np.full((4, 5), 0.15, dtype=np.float32))


@pytest.mark.parametrize("dtype", [bool, np.complex64])
def test_bool_and_complex_npy_depth_are_refused_naming_the_file(tmp_path, dtype):
    path = tmp_path / "00000.npy"
    np.save(path, np.ones((4, 5), dtype=dtype))
    name = np.dtype(dtype).name
    with pytest.raises(DataError, match=rf"^file {path}: depth array is {name}, not numbers of metres; save float32 metres$"):
        read_depth(path)
    with pytest.raises(DataError, match=rf"depth array is {name}"):
        read_depth(path, depth_scale=1000)  # no scale makes them numbers


def test_float_npy_depth_is_metres_and_a_bad_scale_is_refused(tmp_path):
    path = tmp_path / "00000.npy"
    np.save(path, np.full((4, 5), 1.5, dtype=np.float64))
    np.testing.assert_array_equal(read_depth(path), np.full((4, 5), 1.5, dtype=np.float32))
    for scale in (0, -1000, float("nan"), "1000"):
        with pytest.raises(ValueError, match=r"depth_scale must be a positive number of units per metre"):
            read_depth(path, depth_scale=scale)
