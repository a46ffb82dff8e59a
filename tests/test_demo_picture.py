"""README's demo picture shows what it says (issue 55, item 14): the marker task's predicted point is drawn where it
can be seen, also when it lies beyond every frame (docs/images/make_demo_picture.py draws with cli/visualize.py)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from gap_mllm.cli.scenes import Scene
from gap_mllm.cli.visualize import MARKER, frames_with_boxes, legend_entries


def test_a_predicted_point_beyond_the_frame_is_drawn_on_its_edge():
    """README's demo picture: the Mini's marker point lies beyond every frame of the room, where it used to be drawn
    nowhere. A point inside a frame is a ring around it; beyond the frame, a yellow wedge on the edge it lies past."""
    intrinsics = np.array([[100.0, 0.0, 79.5], [0.0, 100.0, 63.5], [0.0, 0.0, 1.0]])
    scene = Scene(views=[Image.new("RGB", (160, 128), (128, 128, 128))], intrinsics=intrinsics)

    def yellow(point):
        pixels = np.asarray(frames_with_boxes(scene, [], point=point)[0])
        return np.argwhere((pixels == MARKER).all(axis=-1))  # [N, 2] rows, columns

    inside = yellow([0.2, 0.1, 2.0])  # projects to (89.5, 68.5)
    assert len(inside) and np.allclose(inside.mean(axis=0), [68.5, 89.5], atol=1.0)
    right = yellow([1.0, 0.0, 1.0])  # projects to (179.5, 63.5): 20 pixels beyond the right edge
    assert len(right) and right[:, 1].max() >= 156 and right[:, 1].min() >= 130 and abs(right[:, 0].mean() - 63.5) < 3
    below = yellow([0.0, 5.0, 1.0])  # far below the frame
    assert len(below) and below[:, 0].max() >= 124 and abs(below[:, 1].mean() - 79.5) < 3
    assert not len(yellow([0.0, 0.0, -1.0]))  # behind the camera: not drawn

    assert ("circle", MARKER, "predicted 3D point (wedge: beyond the frame)") in legend_entries(scene, [], point=[1, 0, 1])
