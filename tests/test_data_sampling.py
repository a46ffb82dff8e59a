"""Frame sampling: uniform spacing and Spatial-MLLM space-aware (maximum voxel coverage)."""

from __future__ import annotations

import numpy as np
import pytest

from gap_mllm.processing.sampling import (
    space_aware_from_points,
    space_aware_indices,
    uniform_indices,
    voxel_keys,
)
from gap_mllm.processing.synth.samples import choose_clip

from .test_data_fixtures import tiny_scene  # noqa: F401


def test_uniform_indices_include_both_ends():
    assert uniform_indices(10, 4) == [0, 3, 6, 9]
    assert uniform_indices(10, 3, start=2, stop=7) == [2, 4, 6]
    assert uniform_indices(3, 8) == [0, 1, 2]
    with pytest.raises(ValueError):
        uniform_indices(5, 2, start=4, stop=3)


def test_voxel_keys_count_distinct_cells():
    points = np.array([[0.01, 0.01, 0.01], [0.02, 0.05, 0.09], [0.15, 0.0, 0.0], [np.nan, 0, 0]])
    assert len(voxel_keys(points, 0.1)) == 2


def test_space_aware_prefers_frames_that_add_new_space():
    grid = np.stack(np.meshgrid(np.arange(10), np.arange(10), indexing="ij"), -1).reshape(-1, 2) * 0.1
    wall = lambda x: np.c_[np.full(len(grid), x), grid]  # noqa: E731 - a 1 m x 1 m patch at x
    frames = [wall(0.0), wall(0.0), wall(0.05), wall(3.0), wall(0.0)]
    # Frames 0, 1, 2, 4 see the same voxels; frame 3 sees new ones. Ties go to the earliest frame.
    assert space_aware_from_points(frames, 2, voxel_size=0.1) == [0, 3]
    # Nothing new after that: the budget is filled with uniformly spaced remaining frames.
    assert len(space_aware_from_points(frames, 4, voxel_size=0.1)) == 4


def coverage(scene, frames, voxel=0.1):
    from gap_mllm.processing.coordinates import backproject_depth

    keys = [voxel_keys(backproject_depth(scene.frames[f].depth, scene.intrinsics, scene.cam_to_room[f]).reshape(-1, 3), voxel) for f in frames]
    return len(np.unique(np.concatenate(keys)))


def test_space_aware_covers_at_least_as_much_as_uniform(tiny_scene):
    scene, _ = tiny_scene
    depth = np.stack([f.depth for f in scene.frames])
    picked = space_aware_indices(depth, scene.intrinsics, scene.cam_to_room, 4, pixel_stride=1)
    assert picked == sorted(picked) and len(set(picked)) == 4
    assert coverage(scene, picked) >= coverage(scene, uniform_indices(len(scene.frames), 4))
    clip = choose_clip(scene, 4, np.random.default_rng(0), "space_aware")
    assert len(clip) == 4 and clip == sorted(clip)
