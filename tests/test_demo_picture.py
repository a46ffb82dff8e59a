"""README's demo picture shows what it says: the marker task's predicted point is drawn where it can be seen, also
when it lies beyond every frame (docs/images/make_demo_picture.py draws with cli/visualize.py), and the README's
caption says where it is drawn."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import numpy as np
from matplotlib.text import Text
from PIL import Image, ImageDraw

from gap_mllm.cli.example_reference import query_reference_box
from gap_mllm.cli.scenes import EXAMPLE_SEEDS, Scene, scene_from_frames, synthetic_scene
from gap_mllm.cli.tasks import TaskResult
from gap_mllm.cli.visualize import MARKER, QUERY_REFERENCE, answer_picture, frames_with_boxes, gate_heatmap, legend_entries
from gap_mllm.tasks_gap_mllm import Box3D

REPO = Path(__file__).resolve().parent.parent


def test_a_predicted_point_beyond_the_frame_is_drawn_on_its_edge():
    """README's demo picture: the Mini's marker point lies beyond every frame of the room, and is still drawn. A
    point inside a frame is a ring around it; beyond the frame, a yellow wedge on the edge it lies past."""
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


# --------------------------------------------------------------------------- every text inside its panel, markers


def record_texts(monkeypatch) -> list[tuple[tuple[int, int], str, tuple[int, int, int, int]]]:
    """Every text PIL draws from now on: `(size of the picture drawn on, text, its box as drawn)` (`textbbox`, the
    pixels the glyphs take)."""
    drawn = []
    draw_text = ImageDraw.ImageDraw.text

    def text(self, xy, text, *args, **kwargs):
        drawn.append((self.im.size, text, self.textbbox(xy, text, font=kwargs.get("font"))))
        return draw_text(self, xy, text, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", text)
    return drawn


def inside(box, left, top, right, bottom) -> bool:
    return left <= box[0] and top <= box[1] and box[2] <= right and box[3] <= bottom


def readme_results(scene) -> dict:
    """An answer of each task of README's picture on its room (docs/images/make_demo_picture.py), made without a
    model: the reference boxes as detections, the query's answer a box beside its object, the example's captioning
    box (its label ran off the frame), a point beyond every frame with the example's marker."""
    given = scene.example_inputs
    detections = [Box3D.from_list(box, label=label)
                  for box, label in zip(scene.reference_boxes, scene.reference_labels)]
    beside = np.asarray(given["grounding"]["box"]) + [0.6, 0, 0, 0, 0, 0, 0, 0, 0]
    return {"detection": TaskResult("detection", "", None, boxes=detections),
            "grounding": TaskResult("grounding", "", None, boxes=[Box3D.from_list(beside.tolist())],
                                    query=given["grounding"]["query"]),
            "captioning": TaskResult("captioning", "", None,
                                     boxes=[Box3D.from_list(given["captioning"]["box"], label="described object")]),
            "reconstruction": TaskResult("reconstruction", "", None, point=(1.0, 0.0, 1.0),
                                         marker=tuple(given["reconstruction"]["marker"]))}


def test_every_text_of_the_readme_picture_lies_inside_its_panel(monkeypatch):
    """README's picture at its size (160 x 128 frames): every label lies inside the frame it is drawn on (the
    captioning box's "described object" ran off it: "ibed object"), every legend line inside the sheet's strip, every
    title inside its panel of docs/images/make_demo_picture.py's sheet; the gate map's texts (matplotlib) inside its
    figure."""
    scene = synthetic_scene(EXAMPLE_SEEDS["synthetic room A"])
    width, height = scene.views[0].size
    assert (width, height) == (160, 128)
    drawn = record_texts(monkeypatch)
    pictures = {task: answer_picture(scene, result) for task, result in readme_results(scene).items()}
    frame_texts = [(text, box) for size, text, box in drawn if size == (width, height)]
    assert "described object" in [text for text, _ in frame_texts]  # the captioning label, drawn whole
    for text, box in frame_texts:
        assert inside(box, 0, 0, width, height), (text, box)
    for task, picture in pictures.items():
        legend = [(text, box) for size, text, box in drawn if size == picture.size]
        assert legend, task
        for text, box in legend:
            assert inside(box, 0, 2 * height, picture.width, picture.height), (task, text, box)  # below the frames

    script = REPO / "docs" / "images" / "make_demo_picture.py"
    spec = importlib.util.spec_from_file_location("make_demo_picture", script)
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    drawn.clear()
    tasks = list(make.TASKS)
    sheet = make.sheet([pictures[task] for task in tasks], [make.TITLES[task] for task in tasks])
    cell_width, cell_height = max(p.width for p in pictures.values()), max(p.height for p in pictures.values())
    titles = [(text, box) for size, text, box in drawn if size == sheet.size]
    assert [text for text, _ in titles] == [make.TITLES[task] for task in tasks]
    for index, (text, box) in enumerate(titles):
        left, top = (index % 2) * (cell_width + make.GAP), (index // 2) * (cell_height + make.TITLE_HEIGHT + make.GAP)
        assert inside(box, left, top, left + cell_width, top + make.TITLE_HEIGHT), (text, box)

    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # the figure, kept open to measure its texts
    rng = np.random.default_rng(0)
    gate_heatmap([rng.random(4 * 80) for _ in range(4)], [(8, 10)] * 4, Path(tempfile.mkdtemp()) / "gates.png")
    (figure,) = figures
    renderer = figure.canvas.get_renderer()
    texts = [text for text in figure.findobj(Text) if text.get_visible() and text.get_text()]
    assert "main (VGGT ⊕ ViT out)" in [text.get_text() for text in texts]
    for text in texts:
        box = text.get_window_extent(renderer)
        assert inside((box.x0, box.y0, box.x1, box.y1), 0, 0, figure.bbox.width, figure.bbox.height), text.get_text()
    plt.close(figure)


def test_the_grounding_picture_marks_the_reference_box_of_the_query_s_object():
    """On a bundled room asked its own query, the query's object's reference box is drawn in its own colour, thicker,
    and named in the legend; another query (whose object no reference names) gets neither."""
    scene = synthetic_scene(EXAMPLE_SEEDS["synthetic room A"])
    result = readme_results(scene)["grounding"]
    entry = ("box", QUERY_REFERENCE, "reference box of the query's object")
    query_box = scene.example_inputs["grounding"]["box"]
    assert query_reference_box(scene, result.query) == query_box
    assert entry in legend_entries(scene, result.boxes, task="grounding", query_box=query_box)
    frames = np.asarray(answer_picture(scene, result))[: 2 * 128]
    marked = (frames == QUERY_REFERENCE).all(axis=-1)
    # on the query's box's edges only: the pixels in that colour of the frames drawn without the answer's box
    alone = frames_with_boxes(scene, [], query_box=query_box)
    expected = np.vstack([np.hstack([np.asarray(alone[0]), np.asarray(alone[1])]),
                          np.hstack([np.asarray(alone[2]), np.asarray(alone[3])])])
    assert marked.sum() > 50 and (marked <= (expected == QUERY_REFERENCE).all(axis=-1)).all()

    other = TaskResult("grounding", "", None, boxes=result.boxes, query="the chair by the window")
    assert query_reference_box(scene, other.query) is None
    assert not (np.asarray(answer_picture(scene, other)) == QUERY_REFERENCE).all(axis=-1).any()
    assert entry not in legend_entries(scene, other.boxes, task="grounding")


def test_a_picture_of_frames_without_poses_says_the_boxes_are_drawn_on_frame_0_only(monkeypatch):
    """A user's frames have no poses: the boxes are drawn on frame 0 alone, and the legend says so and which it is,
    in lines that end inside the sheet; one frame, or a room with poses, needs no such line."""
    frames = [Image.new("RGB", (160, 128), (128, 128, 128)) for _ in range(8)]
    chair = Box3D.from_list([0, 0, 2, 0.5, 0.5, 0.5, 0, 0, 0], label="chair")
    result = TaskResult("detection", "", None, boxes=[chair])
    note = "boxes drawn on frame 0 (top left) only, of 8 frames: the others have no known camera pose"
    drawn = record_texts(monkeypatch)
    picture = answer_picture(scene_from_frames(frames), result)
    legend = [(text, box) for size, text, box in drawn if size == picture.size]
    assert [text for text, _ in legend] == ["predicted boxes", "boxes drawn on frame 0 (top left) only, of 8 frames: "
                                            "the others have", "no known camera pose"]  # wrapped at 320 pixels
    assert all(inside(box, 0, 4 * 128, picture.width, picture.height) for _, box in legend)
    assert ("note", None, note) in legend_entries(scene_from_frames(frames), result.boxes)
    assert not [e for e in legend_entries(scene_from_frames(frames[:1]), result.boxes) if e[0] == "note"]
    scene = synthetic_scene(EXAMPLE_SEEDS["synthetic room A"])
    assert not [e for e in legend_entries(scene, result.boxes) if e[0] == "note"]


def test_the_readme_picture_caption_says_where_the_point_is_drawn():
    """The demo picture's marker panel (`gap-mllm demo` on "synthetic room A", constrained as the demo decodes): the
    predicted point lies beyond three of the four frames (a wedge each) and behind the camera of the second (nothing
    drawn), as the caption says."""
    from gap_mllm.cli.loading import load_model_and_processor
    from gap_mllm.cli.scenes import EXAMPLE_SEEDS, synthetic_scene
    from gap_mllm.cli.tasks import TaskRequest, run_task
    from gap_mllm.cli.visualize import point_marks

    model, processor, _ = load_model_and_processor("mini")
    scene = synthetic_scene(EXAMPLE_SEEDS["synthetic room A"])
    request = TaskRequest("reconstruction", marker=scene.example_inputs["reconstruction"]["marker"])
    result = run_task(model, processor, scene.views, request)
    assert [None if mark is None else mark[0] for mark in point_marks(scene, result.point)] == [
        "wedge", None, "wedge", "wedge"]
    caption = " ".join((REPO / "README.md").read_text(encoding="utf-8").split())
    assert "here it lies beyond three of the four frames and behind the camera of the second" in caption
    assert "beyond all four frames" not in caption


# --------------------------------------------------------------------------- what the picture cannot draw, it says


def test_a_point_behind_every_camera_is_said_in_the_legend_and_by_predict(tmp_path, monkeypatch, capsys):
    """A reconstruction answer behind the camera of every frame it could be drawn in (frame 0 alone, for frames
    without poses) is drawn nowhere: the legend says so and why (not the wedge's words), and `gap-mllm predict` prints
    the same line; a point drawn in some frame keeps the wedge's entry."""
    import dataclasses

    from gap_mllm.cli import predict
    from gap_mllm.cli.main import main as gap_mllm
    from gap_mllm.cli.visualize import hidden_point_note

    frames = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (96, 128, 3), dtype=np.uint8)) for i in range(3)]
    uploads = scene_from_frames(frames)  # no poses: drawn on frame 0 only
    behind = (0.0, 0.0, -1.0)
    note = ("predicted 3D point [0.00, 0.00, -1.00] is not drawn: it lies behind frame 0's camera "
            "(depth -1.00 m in frame 0's camera, under 0.05 m)")
    assert hidden_point_note(uploads, behind) == note
    entries = legend_entries(uploads, [], point=behind)
    assert ("note", None, note) in entries and not [entry for entry in entries if entry[0] == "circle"]
    posed = Scene(views=frames[:2], intrinsics=uploads.intrinsics, cam_to_first=np.stack([np.eye(4)] * 2))
    assert "it lies behind the camera of every frame (depth -1.00 m" in hidden_point_note(posed, behind)
    assert hidden_point_note(uploads, [1.0, 0.0, 1.0]) is None  # beyond the frame, in front: a wedge
    assert ("circle", MARKER, "predicted 3D point (wedge: beyond the frame)") in legend_entries(uploads, [], point=[1, 0, 1])

    answer = predict.run_task

    def behind_the_camera(*args, **kwargs):
        return dataclasses.replace(answer(*args, **kwargs), point=behind)

    monkeypatch.setattr(predict, "run_task", behind_the_camera)
    paths = []
    for index, frame in enumerate(frames):
        paths.append(str(tmp_path / f"f{index}.png"))
        frame.save(paths[-1])
    assert gap_mllm(["predict", "--model", "tiny", "--images", *paths, "--task", "reconstruction", "--marker", "0",
                     "60", "40", "--max-new-tokens", "4", "--out", str(tmp_path / "out"), "--formats", "png"]) in (0, 3)
    assert f"note: {note}" in capsys.readouterr().out.splitlines()


def test_a_single_frame_picture_is_one_frame_wide():
    """One frame: the sheet is that frame's width (no blank second column), its legend below it."""
    frame = Image.new("RGB", (160, 128), (128, 128, 128))
    chair = Box3D.from_list([0, 0, 2, 0.5, 0.5, 0.5, 0, 0, 0], label="chair")
    picture = answer_picture(scene_from_frames([frame]), TaskResult("detection", "", None, boxes=[chair]))
    assert picture.width == 160 and picture.height > 128
    two = answer_picture(scene_from_frames([frame, frame]), TaskResult("detection", "", None, boxes=[chair]))
    assert two.width == 320


def test_predict_and_the_picture_say_alike_where_boxes_are_drawn_with_estimated_cameras(tmp_path, capsys):
    """Uploaded frames with VGGT's heads: the cameras are estimated, the other frames' poses in normalised scale, so
    boxes are drawn on frame 0 only; `gap-mllm predict` prints the legend's own sentence, never that boxes are drawn
    with the estimated camera while the picture says the others have no known pose."""
    from gap_mllm.cli.main import main as gap_mllm
    from gap_mllm.cli.space_backend import build_space_tiny
    from gap_mllm.cli.visualize import frame_zero_note

    estimated = Scene(views=[Image.new("RGB", (160, 128))] * 3, intrinsics=np.eye(3), camera="estimated")
    note = frame_zero_note(estimated)
    assert note == ("boxes drawn on frame 0 (top left) only, of 3 frames, with the camera VGGT's heads estimated for "
                    "it: the other frames' estimated poses are in VGGT's normalised scale, not the boxes' metres")
    chair = Box3D.from_list([0, 0, 2, 0.5, 0.5, 0.5, 0, 0, 0], label="chair")
    assert ("note", None, note) in legend_entries(estimated, [chair])
    assert "no known camera pose" in frame_zero_note(Scene(views=estimated.views, intrinsics=np.eye(3)))

    model = build_space_tiny(tmp_path / "model")  # the tiny model with camera and depth heads
    frames = []
    for index in range(3):
        frames.append(tmp_path / f"f{index}.png")
        Image.fromarray(np.random.default_rng(index).integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(frames[-1])
    assert gap_mllm(["predict", "--model", str(model), "--images", *map(str, frames), "--task", "detection",
                     "--max-new-tokens", "4", "--out", str(tmp_path / "out"), "--formats", "png"]) in (0, 3)
    printed = capsys.readouterr().out
    (line,) = [line for line in printed.splitlines() if line.startswith("point cloud: ")]
    assert line.endswith("; " + note) and "boxes drawn with the estimated camera" not in line
