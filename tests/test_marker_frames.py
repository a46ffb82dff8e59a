"""A marker `(view, x, y)` is checked against the frames the processor will see, whatever their source: image files,
a GIF and a video given to `gap-mllm predict` (in the frame's original pixels, the numbers typed), the Space's
uploads (each frame as the model gets it, frames of another shape keeping their own size), and the records
`gap-mllm evaluate` answers (the upright frame of the record, refused by sample before the model loads). A refusal
is one line naming the view or the pixel as given, never a traceback and never a marker moved to the frame's edge."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from gap_mllm.cli import predict, space_backend
from gap_mllm.cli.main import main as gap_mllm
from gap_mllm.cli.space_backend import USER_ERRORS, SpaceBackend, SpaceSettings
from gap_mllm.evaluation.in_memory import EvaluationSlice
from gap_mllm.evaluation.runner import run_evaluation
from gap_mllm.processing.annotation_files import find_annotation_file
from gap_mllm.processing.errors import DataError

from .conftest import no_model_load, synth_data, tiny_checkpoint  # noqa: F401

av = pytest.importorskip("av", reason="PyAV reads the video source (the space and dev extras have it)")

WIDTH, HEIGHT = 64, 48


def write_clip(path, frames: int = 12, size=(WIDTH, HEIGHT)):
    """An mp4 of `frames` grey frames of `size` `(width, height)`."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=6)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for index in range(frames):
            rgb = np.full((size[1], size[0], 3), 20 * index, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_gif(path, frames: int = 3):
    views = [Image.new("RGB", (WIDTH, HEIGHT), colour) for colour in ("red", "blue", "green", "white")[:frames]]
    views[0].save(path, save_all=True, append_images=views[1:], duration=100)
    return path


def write_images(folder, count: int = 3):
    folder.mkdir(exist_ok=True)
    paths = [folder / f"f{index}.png" for index in range(count)]
    for index, path in enumerate(paths):
        Image.new("RGB", (WIDTH, HEIGHT), (40 * index, 0, 0)).save(path)
    return paths


def outside(x: int, y: int, view: int = 0) -> str:
    return (f"gap-mllm predict: error: marker view {view}: marker pixel (x={x}, y={y}) is outside the {WIDTH}x{HEIGHT} "
            f"view (x must be in [0, {WIDTH - 1}], y in [0, {HEIGHT - 1}], in the view's original pixel grid)\n")


SOURCES = {  # the frames given, and how many the model gets
    "video": (lambda tmp: [write_clip(tmp / "clip.mp4")], 8),
    "gif": (lambda tmp: [write_gif(tmp / "clip.gif")], 3),
    "images": (lambda tmp: write_images(tmp / "frames"), 3),
}


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_predict_refuses_a_marker_outside_its_frames_in_the_numbers_given(source, tmp_path, no_model_load,  # noqa: F811
                                                                          capsys):
    make, count = SOURCES[source]
    argv = ["predict", "--model", "tiny", "--images", *map(str, make(tmp_path)), "--task", "reconstruction", "--marker"]
    for marker, refusal in ((("0", "5000", "10"), outside(5000, 10)), (("0", "-5", "10"), outside(-5, 10)),
                            (("0", "10", str(HEIGHT)), outside(10, HEIGHT)),
                            (("99", "10", "10"), f"gap-mllm predict: error: marker view 99 is out of range: there are "
                                                 f"{count} views\n")):
        assert gap_mllm([*argv, *marker]) == 2, marker
        assert capsys.readouterr().err == refusal


def test_predict_moves_a_marker_inside_a_video_frame_onto_the_frame_the_model_gets(tmp_path, monkeypatch):
    clip = write_clip(tmp_path / "wide.mp4", frames=3, size=(1280, 720))  # the model gets 640x360 frames
    asked = []
    monkeypatch.setattr(predict, "run_task", lambda model, processor, views, request, **_: asked.append(
        ([view.size for view in views], request.marker)) or pytest.skip("the call the model gets is what is checked"))
    with pytest.raises(pytest.skip.Exception):
        gap_mllm(["predict", "--model", "tiny", "--images", str(clip), "--task", "reconstruction", "--marker", "2",
                  "1279", "719"])
    assert asked == [([(640, 360)] * 3, (2, 639, 359))]


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    return SpaceBackend(SpaceSettings(model="tiny", max_new_tokens=2), work_dir=tmp_path_factory.mktemp("space"))


def space_refusal(backend, monkeypatch, files, marker: str) -> str:
    """The page's message for a reconstruction request with `marker` on `files`; the model must not run."""
    monkeypatch.setattr(space_backend, "run_task", lambda *a, **k: pytest.fail("the model ran before the marker check"))
    with pytest.raises(USER_ERRORS) as refused:
        backend.run(files, None, "marker point reconstruction", marker_text=marker)
    return str(refused.value)


def test_the_space_checks_a_marker_against_the_frame_it_names(backend, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    wide, tall = tmp_path / "wide.png", tmp_path / "tall.png"
    Image.new("RGB", (WIDTH, HEIGHT), "red").save(wide)
    Image.new("RGB", (HEIGHT, WIDTH), "blue").save(tall)  # another shape: it keeps its own 48x64
    files = [str(wide), str(tall)]
    # x = 50 is inside frame 0's 64 columns, not inside frame 1's 48
    assert space_refusal(backend, monkeypatch, files, "1 50 10") == (
        "marker view 1: marker pixel (x=50, y=10) is outside the 48x64 view (x must be in [0, 47], y in [0, 63], in "
        "the view's original pixel grid)")
    assert space_refusal(backend, monkeypatch, files, "2 1 1") == "marker view 2 is out of range: there are 2 views"
    clip = write_clip(tmp_path / "clip.mp4")
    assert space_refusal(backend, monkeypatch, [str(clip)], "0 5000 10").startswith(
        "marker view 0: marker pixel (x=5000, y=10) is outside the 64x48 view")
    assert space_refusal(backend, monkeypatch, [str(clip)], "99 1 1") == "marker view 99 is out of range: there are 8 views"


@pytest.mark.parametrize(("coords", "refusal"), [
    ([0, 5000, 10], "'pixel_coords': marker pixel (x=5000, y=10) is outside the 64x48 view"),
    ([0, -5, 10], "'pixel_coords': marker pixel (x=-5, y=10) is outside the 64x48 view"),
    ([99, 1, 1], "'pixel_coords' view 99 out of range for 4 image(s)"),
])
def test_evaluate_refuses_a_record_whose_marker_is_outside_its_frames_before_the_model_loads(
        coords, refusal, synth_data, tiny_checkpoint, tmp_path, capsys):  # noqa: F811
    path = find_annotation_file(synth_data, "reconstruction", "val")
    records = json.loads(path.read_text())
    records[1]["pixel_coords"] = coords
    edited = tmp_path / path.name
    edited.write_text(json.dumps(records))
    sample = records[1]["id"]
    out = tmp_path / "out"
    assert gap_mllm(["evaluate", "--task", "reconstruction", "--data", str(synth_data), "--out", str(out),
                     "--model", str(tiny_checkpoint), "--annotation-file", str(edited), "--limit", "2", "--no-plots",
                     "--quiet", "--max-new-tokens", "2"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"gap-mllm evaluate: error: sample {sample!r}") and refusal in error
    assert len(error.splitlines()) == 1 and not out.exists()  # nothing generated, nothing written
    with pytest.raises(DataError, match=rf"^sample {sample!r}"):
        run_evaluation("reconstruction", synth_data, out, model_dir=tiny_checkpoint, annotation_file=edited,
                       limit=2, max_new_tokens=2, progress=False, plots=False)
    data = tmp_path / "data"  # training's evaluation reads the data root's own file
    shutil.copytree(synth_data, data)
    shutil.copy(edited, find_annotation_file(data, "reconstruction", "val"))
    with pytest.raises(DataError, match=rf"^sample {sample!r}"):
        EvaluationSlice("reconstruction", data, split="val")
