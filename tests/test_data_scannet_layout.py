"""ScanNet posed_images I/O round trips and the synth CLI writes a readable dataset."""

from __future__ import annotations

import argparse
import json

import numpy as np
from scipy.spatial.transform import Rotation

from gap_mllm.processing.annotation_files import TASKS, find_annotation_file
from gap_mllm.processing.scannet_layout import read_axis_align, read_views, write_frame, write_scene_meta
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
    assert json.loads(printed[printed.find("{") :])["train"]["reconstruction"] > 0
    for split in ("train", "val"):
        for task in TASKS:
            assert isinstance(json.loads(find_annotation_file(out, task, split).read_text()), list)
    info = json.loads((out / "synthrooms" / "dataset_info.json").read_text())
    assert info["splits"] == {"train": ["synth0000_00"], "val": ["synth0001_00"]}
    assert len(list((out / "scannet" / "posed_images" / "synth0000_00").glob("*.jpg"))) == 10
    bad = parser.parse_args(["--scenes", "0", "--out", str(out)])
    assert main(bad) == 2
