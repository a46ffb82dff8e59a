"""Pictures of one answer: frames with projected 3D boxes, a 3D scene (GLB / PLY) and gate heat maps.

Conventions: boxes and points are in the first frame's OpenCV camera (x right, y down, z forward,
metres). Frame v is drawn with `first → v = inv(cam_to_first[v])` when poses are known; without poses
only the first frame can carry boxes. The GLB is turned into glTF's y-up frame (x, −y, −z) so viewers
show the room upright; the PLY keeps the camera frame, as the package's point clouds do.

The frames PNG carries a legend naming what each colour is (reference vs predicted boxes, the reference box of a
grounding query's object in its own colour, the predicted point, the marker of a reconstruction request, drawn as the
model saw it), and says when the boxes are drawn on frame 0 only (frames without poses; with the camera VGGT's heads
estimated, or an assumed one: `frame_zero_note`) and why a predicted point is drawn in no frame (`hidden_point_note`),
in the words the commands print too. A sheet has no more columns than frames. Every text lies inside the
picture it is drawn on: a box's label is moved into its frame, a legend line too long for the sheet is wrapped. A 3D
file with nothing to show (no point cloud, no box, no point) is not written; `write_visualisations` says why.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from gap_mllm.evaluation.plots import project_box_edges
from gap_mllm.image_utils_gap_mllm import MARKER_COLOR, apply_point_prompt
from gap_mllm.point_cloud import write_ply
from gap_mllm.processing.coordinates import box_corners, invert_rigid, transform_boxes
from gap_mllm.processing.scoring.box_iou import BOX_EDGES
from gap_mllm.tasks_gap_mllm import CAPTIONING, Box3D

from .example_reference import query_reference_box
from .scenes import CAMERA_ESTIMATED

PREDICTED = (230, 40, 40)
REFERENCE = (40, 200, 80)
QUERY_REFERENCE = (40, 110, 255)  # the reference box of the object a grounding query describes
MARKER = (255, 200, 0)
OPENCV_TO_GLTF = np.diag([1.0, -1.0, -1.0])


def _as_array(boxes) -> np.ndarray:
    """`[K, 9]` from Box3D objects or rows of 9 numbers."""
    rows = [b.to_list() if isinstance(b, Box3D) else list(b) for b in boxes]
    return np.asarray(rows, dtype=np.float64).reshape(-1, 9)


def fitted_text(draw: ImageDraw.ImageDraw, text: str, width: float) -> str:
    """`text`, cut to end in "…" where its drawn width passes `width` pixels (the whole of it when it fits)."""
    if draw.textlength(text) <= width:
        return text
    while text and draw.textlength(text + "…") > width:
        text = text[:-1]
    return text + "…" if text else ""


def text_inside(draw: ImageDraw.ImageDraw, anchor, text: str, width: int, height: int):
    """Where to draw `text` near `anchor` (x, y) so that its box (`draw.textbbox`) lies inside a `width x height`
    picture: the anchor, moved in just as far as needed; `(xy, text)`, the text cut to the width if it is wider."""
    text = fitted_text(draw, text, width)
    left, top, right, bottom = draw.textbbox((0, 0), text)
    x = min(max(anchor[0], -left), width - right)
    y = min(max(anchor[1], -top), height - bottom)
    return (x, y), text


def _draw_box_set(draw: ImageDraw.ImageDraw, boxes: np.ndarray, intrinsics, colour, width: int, labels=None):
    """The boxes' projected edges; each label at the top left of the part of its box the frame shows, moved into the
    frame where it would pass an edge (none for a box wholly outside the frame)."""
    frame_width, frame_height = draw.im.size
    for index, box in enumerate(boxes):
        segments = project_box_edges(box, intrinsics)
        for start, end in segments:
            draw.line([tuple(start), tuple(end)], fill=colour, width=width)
        if labels and labels[index] and segments:
            points = np.array([point for segment in segments for point in segment])
            left, top = np.maximum(points.min(axis=0), 0)
            right, bottom = np.minimum(points.max(axis=0), (frame_width - 1, frame_height - 1))
            if left > right or top > bottom:
                continue
            xy, text = text_inside(draw, (left + 2, top + 2), str(labels[index]), frame_width, frame_height)
            draw.text(xy, text, fill=colour)


def frames_with_boxes(scene, boxes, point=None, show_reference: bool = True, marker=None,
                      query_box=None) -> list[Image.Image]:
    """Every frame with the predicted boxes (red), the reference boxes (green, synthetic scenes), the reference box of
    the object a grounding query describes (`query_box`, blue and thicker, over its green one) and the predicted 3D
    point (yellow; a wedge on the edge where it lies beyond the frame: `_draw_point`) projected, and the marker
    `(view, x, y)` of a reconstruction request painted as the model saw it (the official red "+"); frames without a
    known pose get no projections."""
    predicted = _as_array(boxes)
    labels = [b.label if isinstance(b, Box3D) else None for b in boxes]
    labels = labels if any(labels) else None
    views = apply_point_prompt([view.convert("RGB") for view in scene.views], marker)
    drawn = []
    for index, view in enumerate(views):
        image = view.copy()
        first_to_view = _first_to_view(scene, index)
        if first_to_view is None:
            drawn.append(image)
            continue
        draw = ImageDraw.Draw(image)
        if show_reference and len(scene.reference_boxes):
            _draw_box_set(draw, transform_boxes(scene.reference_boxes, first_to_view), scene.intrinsics, REFERENCE, 1)
        if show_reference and query_box is not None:
            _draw_box_set(draw, transform_boxes(_as_array([query_box]), first_to_view), scene.intrinsics,
                          QUERY_REFERENCE, 2)
        if len(predicted):
            _draw_box_set(draw, transform_boxes(predicted, first_to_view), scene.intrinsics, PREDICTED, 2, labels)
        mark = point_mark(point, first_to_view, scene.intrinsics, image.width, image.height) if point is not None else None
        if mark is not None:
            _draw_point(draw, mark, image.width, image.height)
        drawn.append(image)
    return drawn


def _first_to_view(scene, index: int):
    """Frame 0's camera to view `index`'s (4x4), or None for a view without a known pose."""
    if index == 0:
        return np.eye(4)
    return invert_rigid(scene.cam_to_first[index]) if scene.cam_to_first is not None else None


def point_marks(scene, point) -> list[tuple[str, float, float] | None]:
    """`point_mark` of the predicted 3D `point` in every view of `scene` (as `frames_with_boxes` draws it; None for a
    view without a known pose too)."""
    marks = []
    for index, view in enumerate(scene.views):
        first_to_view = _first_to_view(scene, index)
        marks.append(None if first_to_view is None
                     else point_mark(point, first_to_view, scene.intrinsics, view.width, view.height))
    return marks


MIN_POINT_DEPTH = 0.05  # metres in front of the camera: a point nearer or behind it is not drawn in that view


def point_mark(point, first_to_view, intrinsics, width: int, height: int) -> tuple[str, float, float] | None:
    """How the predicted 3D `point` (frame 0's camera) shows in one `width x height` view (`first_to_view`: frame 0's
    camera to the view's): `("ring", u, v)` inside the frame, `("wedge", u, v)` beyond its edge in front of the camera
    (`_draw_point` draws both), None behind the camera (nothing is drawn)."""
    p = first_to_view[:3, :3] @ np.asarray(point, dtype=np.float64) + first_to_view[:3, 3]
    if p[2] <= MIN_POINT_DEPTH:
        return None
    u, v = (intrinsics @ (p / p[2]))[:2]
    return ("ring" if 0 <= u < width and 0 <= v < height else "wedge"), float(u), float(v)


POINT_RADIUS, WEDGE_LENGTH, WEDGE_HALF_WIDTH = 5, 20, 6  # a long, narrow wedge: its direction reads at a glance
OUTLINE = (0, 0, 0)  # around the yellow, which vanishes on the rooms' light walls without it


def _draw_point(draw: ImageDraw.ImageDraw, mark: tuple[str, float, float], width: int, height: int) -> None:
    """The predicted point's `point_mark` `(kind, u, v)` in a `width x height` frame: a yellow ring edged in black
    where it falls inside the frame; where it falls outside (in front of the camera), a yellow wedge on the frame's
    edge pointing towards it, so that a point beyond every frame (as a wrong answer often is) is still drawn."""
    kind, u, v = mark
    if kind == "ring":
        r = POINT_RADIUS
        draw.ellipse([u - r - 1, v - r - 1, u + r + 1, v + r + 1], outline=OUTLINE, width=4)
        draw.ellipse([u - r, v - r, u + r, v + r], outline=MARKER, width=2)
        return
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    direction = np.array([u, v]) - centre
    # the tip: where the line from the frame's centre to the point leaves the frame (1 pixel inside its edge)
    reach = min(((width - 1) / 2 - 1) / abs(direction[0]) if direction[0] else np.inf,
                ((height - 1) / 2 - 1) / abs(direction[1]) if direction[1] else np.inf)
    tip = centre + reach * direction
    along = direction / np.linalg.norm(direction)
    across = np.array([-along[1], along[0]])
    base = tip - WEDGE_LENGTH * along
    corners = [tuple(tip), tuple(base + WEDGE_HALF_WIDTH * across), tuple(base - WEDGE_HALF_WIDTH * across)]
    draw.polygon(corners, fill=MARKER, outline=OUTLINE, width=1)


def contact_sheet(images: list[Image.Image], columns: int = 2, legend=None) -> Image.Image:
    """The frames tiled into one image (for a single PNG per answer), at most `columns` a row and no more columns
    than frames (one frame is a sheet one frame wide), with `legend` (`legend_entries`) in a white strip below them,
    each entry's text wrapped to the sheet's width (`legend_lines`)."""
    width, height = images[0].size
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    lines = legend_lines(legend, columns * width) if legend is not None else []
    strip = LEGEND_ROW_HEIGHT * len(lines) + 2 * LEGEND_PADDING if legend is not None else 0
    sheet = Image.new("RGB", (columns * width, rows * height + strip), (255, 255, 255))
    for index, image in enumerate(images):
        sheet.paste(image.resize((width, height)), ((index % columns) * width, (index // columns) * height))
    if legend is not None:
        _draw_legend(ImageDraw.Draw(sheet), lines, top=rows * height + LEGEND_PADDING)
    return sheet


LEGEND_ROW_HEIGHT, LEGEND_PADDING, LEGEND_SWATCH = 14, 4, 10
LEGEND_TEXT_LEFT = LEGEND_PADDING + LEGEND_SWATCH + 6  # where an entry's text starts, right of its swatch
NOTHING_DRAWN = "nothing to draw: the answer has no box or point"


def hidden_point_note(scene, point) -> str | None:
    """Why the predicted 3D `point` is drawn in no frame: it lies behind (or within `MIN_POINT_DEPTH` of) the camera
    of every frame it could be drawn in (`point_marks`); None when a frame draws it (a ring, or a wedge on the edge of
    a frame it lies beyond), or when there is no point. The legend and the commands' output say it in these words."""
    if point is None or any(mark is not None for mark in point_marks(scene, point)):
        return None
    drawable = sum(_first_to_view(scene, index) is not None for index in range(len(scene.views)))
    where = "the camera of every frame" if drawable > 1 else "frame 0's camera"
    return (f"predicted 3D point [{', '.join(f'{v:.2f}' for v in point)}] is not drawn: it lies behind {where} "
            f"(depth {float(point[2]):.2f} m in frame 0's camera, under {MIN_POINT_DEPTH} m)")


def frame_zero_note(scene) -> str | None:
    """Where boxes and the point are drawn when the frames have no known poses (`scene.cam_to_first` None, several
    frames): on frame 0 only, and with which camera (the one VGGT's heads estimated, or an assumed one); None when
    every frame is drawn. The legend and `gap-mllm predict`'s output say it in these words."""
    if len(scene.views) < 2 or scene.cam_to_first is not None:
        return None
    if scene.camera == CAMERA_ESTIMATED:
        return (f"boxes drawn on frame 0 (top left) only, of {len(scene.views)} frames, with the camera VGGT's heads "
                "estimated for it: the other frames' estimated poses are in VGGT's normalised scale, not the boxes' "
                "metres")
    return (f"boxes drawn on frame 0 (top left) only, of {len(scene.views)} frames: the others have no known camera "
            "pose")


def legend_entries(scene, boxes, point=None, marker=None, task: str | None = None,
                   show_reference: bool = True, query_box=None) -> list[tuple[str, tuple[int, int, int] | None, str]]:
    """`(shape, colour, text)` for everything `frames_with_boxes` draws with these arguments; a `("note", None, text)`
    entry (no swatch) says when boxes and the point are drawn on frame 0 only (several frames, no poses)."""
    entries = []
    if show_reference and len(scene.reference_boxes):
        entries.append(("box", REFERENCE, "reference boxes (ground truth)"))
    if show_reference and query_box is not None:
        entries.append(("box", QUERY_REFERENCE, "reference box of the query's object"))
    if len(_as_array(boxes)):
        text = "box to describe (input)" if task == CAPTIONING.name else "predicted boxes"
        entries.append(("box", PREDICTED, text))
    hidden = hidden_point_note(scene, point)
    if hidden is not None:
        entries.append(("note", None, hidden))
    elif point is not None:
        entries.append(("circle", MARKER, "predicted 3D point (wedge: beyond the frame)"))
    if marker is not None:
        entries.append(("plus", MARKER_COLOR, f"marker: the pixel asked about (view {int(marker[0])})"))
    drawn = bool(len(_as_array(boxes))) or point is not None or (show_reference and bool(len(scene.reference_boxes)))
    only_frame_zero = frame_zero_note(scene)
    if drawn and only_frame_zero is not None:
        entries.append(("note", None, only_frame_zero))
    return entries


def _wrapped(draw: ImageDraw.ImageDraw, text: str, width: float) -> list[str]:
    """`text` in lines no wider than `width` pixels, broken between words (a word wider than a line is cut)."""
    lines, line = [], ""
    for word in text.split():
        joined = f"{line} {word}" if line else word
        if line and draw.textlength(joined) > width:
            lines.append(line)
            joined = word
        line = joined
    lines.append(line)
    return [fitted_text(draw, line, width) for line in lines]


def legend_lines(entries, sheet_width: int) -> list[tuple[str | None, tuple[int, int, int] | None, int, str]]:
    """The legend of `entries` as drawn lines `(shape, colour, x, text)` on a sheet `sheet_width` wide: each entry's
    text wrapped so that every line ends inside the sheet (`shape` on its first line only; a note starts at the left
    edge); the "nothing to draw" line when there are no entries."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))  # to measure text in the font the sheet is drawn with
    if not entries:
        entries = [("note", None, NOTHING_DRAWN)]
    lines = []
    for shape, colour, text in entries:
        x = LEGEND_PADDING if shape == "note" else LEGEND_TEXT_LEFT
        for number, line in enumerate(_wrapped(draw, text, sheet_width - x - LEGEND_PADDING)):
            lines.append((shape if number == 0 else None, colour, x, line))
    return lines


def _draw_legend(draw: ImageDraw.ImageDraw, lines, top: int) -> None:
    for row, (shape, colour, x, text) in enumerate(lines):
        y = top + row * LEGEND_ROW_HEIGHT
        x0, y0, x1, y1 = LEGEND_PADDING, y, LEGEND_PADDING + LEGEND_SWATCH, y + LEGEND_SWATCH
        if shape == "box":
            draw.rectangle([x0, y0, x1, y1], outline=colour, width=2)
        elif shape == "circle":
            draw.ellipse([x0 - 1, y0 - 1, x1 + 1, y1 + 1], outline=OUTLINE, width=4)
            draw.ellipse([x0, y0, x1, y1], outline=colour, width=2)
        elif shape == "plus":
            draw.rectangle([x0, y0 + 4, x1, y0 + 6], fill=colour)
            draw.rectangle([x0 + 4, y0, x0 + 6, y1], fill=colour)
        draw.text((x, y0 - 1), text, fill=(0, 0, 0))


def box_edge_points(boxes, per_edge: int = 24) -> np.ndarray:
    """Points sampled along every box edge `[K·12·per_edge, 3]`: boxes inside a plain point cloud (PLY)."""
    boxes = _as_array(boxes)
    if not len(boxes):
        return np.zeros((0, 3), dtype=np.float32)
    corners = box_corners(boxes).reshape(-1, 8, 3)
    steps = np.linspace(0.0, 1.0, per_edge)[None, None, :, None]
    start, end = corners[:, BOX_EDGES[:, 0], None, :], corners[:, BOX_EDGES[:, 1], None, :]
    return (start + (end - start) * steps).reshape(-1, 3).astype(np.float32)


def has_3d_content(scene, boxes, point=None) -> bool:
    """Whether a 3D file of this answer would hold anything: a point cloud, a box or a point."""
    return (scene.points is not None and len(scene.points) > 0) or len(_as_array(boxes)) > 0 or point is not None


def ply_parts(scene, boxes, point=None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """What `save_scene_ply` writes, in its order, as `{part: (xyz [N, 3], rgb [N, 3] uint8)}`: "point cloud" (the
    scene's), "box edges" (red points sampled along every edge of the answer's boxes, `box_edge_points`), "answer
    point" (yellow); empty parts left out. A front end counts the PLY's vertices from it."""
    parts = {}
    if scene.points is not None and len(scene.points):
        colors = scene.colors if scene.colors is not None else np.full((len(scene.points), 3), 200, np.uint8)
        parts["point cloud"] = (scene.points, colors)
    edges = box_edge_points(boxes)
    if len(edges):
        parts["box edges"] = (edges, np.tile(np.array(PREDICTED, np.uint8), (len(edges), 1)))
    if point is not None:
        parts["answer point"] = (np.asarray([point], dtype=np.float32), np.array([MARKER], np.uint8))
    return parts


def save_scene_ply(path, scene, boxes, point=None) -> Path:
    """PLY: the scene's point cloud (if any) plus red box-edge points and a yellow point for the answer
    (`ply_parts`). Raises ValueError when there is nothing to write (`has_3d_content`): a 0-vertex PLY helps nobody."""
    if not has_3d_content(scene, boxes, point):
        raise ValueError("nothing to write to a PLY: no point cloud, no box and no point")
    parts = list(ply_parts(scene, boxes, point).values())
    return write_ply(path, np.concatenate([xyz for xyz, _ in parts]), np.concatenate([rgb for _, rgb in parts]))


def _edge_cylinders(trimesh, boxes: np.ndarray, colour, radius: float):
    meshes = []
    for corners in box_corners(boxes).reshape(-1, 8, 3):
        for a, b in BOX_EDGES:
            segment = np.stack([corners[a], corners[b]]) @ OPENCV_TO_GLTF.T
            if np.linalg.norm(segment[1] - segment[0]) < 1e-6:
                continue
            cylinder = trimesh.creation.cylinder(radius=radius, segment=segment, sections=6)
            cylinder.visual.face_colors = [*colour, 255]
            meshes.append(cylinder)
    return meshes


def save_scene_glb(path, scene, boxes, point=None, show_reference: bool = True) -> Path:
    """GLB for `gr.Model3D` and any glTF viewer: coloured point cloud (glTF POINTS), predicted boxes as red
    tubes, reference boxes as thin green tubes, the answer point as a yellow sphere. Needs trimesh."""
    import trimesh  # here, not at the top: optional (the demo extra), only the GLB needs it

    geometry = []
    if scene.points is not None and len(scene.points):
        colors = scene.colors if scene.colors is not None else np.full((len(scene.points), 3), 200, np.uint8)
        rgba = np.concatenate([colors, np.full((len(colors), 1), 255, np.uint8)], axis=1)
        geometry.append(trimesh.PointCloud(scene.points @ OPENCV_TO_GLTF.T, colors=rgba))
    if show_reference and len(scene.reference_boxes):
        geometry += _edge_cylinders(trimesh, scene.reference_boxes, REFERENCE, 0.008)
    geometry += _edge_cylinders(trimesh, _as_array(boxes), PREDICTED, 0.015)
    if point is not None:
        sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.05)
        sphere.apply_translation(np.asarray(point, dtype=np.float64) @ OPENCV_TO_GLTF.T)
        sphere.visual.face_colors = [*MARKER, 255]
        geometry.append(sphere)
    if not geometry:  # an empty answer on uncalibrated frames: still a valid file, the camera as a small axis
        geometry.append(trimesh.creation.axis(origin_size=0.02, axis_length=0.3))
    path = Path(path)
    path.write_bytes(trimesh.Scene(geometry).export(file_type="glb"))
    return path


def gate_heatmap(gates: list[np.ndarray], token_grids: list[tuple[int, int]], path) -> Path | None:
    """PNG with one row per fusion level and one column per view: the gate share of the Qwen feature in
    each visual token (1 = pure Qwen, 0 = pure geometry). None when the model returned no gates."""
    if not gates:
        return None
    import matplotlib  # here, not at the top: optional (the demo and eval extras) and slow to import

    matplotlib.use("Agg")  # headless servers and Spaces
    import matplotlib.pyplot as plt

    counts = [h * w for h, w in token_grids]
    names = ["main (VGGT ⊕ ViT out)"] + [f"DeepStack {i}" for i in range(len(gates) - 1)]
    fig, axes = plt.subplots(len(gates), len(token_grids), squeeze=False,
                             figsize=(2.2 * len(token_grids) + 1.0, 1.9 * len(gates)))
    image = None
    for level, gate in enumerate(gates):
        if gate.size != sum(counts):
            raise ValueError(f"level {level}: {gate.size} gate values for {sum(counts)} visual tokens")
        offsets = np.cumsum([0, *counts])
        for view, (h, w) in enumerate(token_grids):
            ax = axes[level][view]
            image = ax.imshow(gate[offsets[view]:offsets[view + 1]].reshape(h, w), vmin=0.0, vmax=1.0, cmap="viridis")
            ax.set_xticks([]), ax.set_yticks([])
            if level == 0:
                ax.set_title(f"view {view}", fontsize=9)
            if view == 0:
                ax.set_ylabel(names[level], fontsize=8)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="gate: share of Qwen feature")
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


class SavedPictures(dict):
    """`{kind: path}` of the files written, plus `skipped`: `{kind: reason}` for requested ones that were not, and
    `notes`: what the picture's legend says of an answer it cannot draw (`hidden_point_note`), for the command's
    output to say too."""

    def __init__(self):
        super().__init__()
        self.skipped: dict[str, str] = {}
        self.notes: list[str] = []


NOTHING_IN_3D = "no point cloud (uncalibrated frames) and no box or point in the answer: the 3D file would be empty"


def answer_picture(scene, result) -> Image.Image:
    """The frames of `result` (a `TaskResult`) with its boxes / point / marker and a legend, as one image; on a
    bundled room asked its own grounding query, that query's object's reference box is marked
    (example_reference.py `query_reference_box`)."""
    marker = getattr(result, "marker", None)
    query_box = query_reference_box(scene, getattr(result, "query", None))
    frames = frames_with_boxes(scene, result.boxes, result.point, marker=marker, query_box=query_box)
    return contact_sheet(frames, legend=legend_entries(scene, result.boxes, result.point, marker, result.task,
                                                       query_box=query_box))


def write_visualisations(scene, result, out_dir, formats=("png", "glb", "ply")) -> SavedPictures:
    """Save the pictures of `result` (a `TaskResult`) under `out_dir`; returns `{kind: path}` with the
    reasons for requested formats not written in `.skipped`.

    Kinds: `frames` (PNG contact sheet with projected boxes and a legend), `gates` (PNG heat map, when
    gated), `glb` / `ply` (3D scene; skipped when it would hold nothing)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = SavedPictures()
    if "png" in formats:
        written["frames"] = out_dir / "frames_with_boxes.png"
        answer_picture(scene, result).save(written["frames"])
        hidden = hidden_point_note(scene, result.point)
        if hidden is not None:
            written.notes.append(hidden)
        gates = gate_heatmap(result.gates, result.token_grids, out_dir / "fusion_gates.png")
        if gates is not None:
            written["gates"] = gates
    three_d = has_3d_content(scene, result.boxes, result.point)
    for kind, save in (("glb", save_scene_glb), ("ply", save_scene_ply)):
        if kind not in formats:
            continue
        if three_d:
            written[kind] = save(out_dir / f"scene.{kind}", scene, result.boxes, result.point)
        else:
            written.skipped[kind] = NOTHING_IN_3D
    return written
