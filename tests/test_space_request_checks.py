"""The Space's task inputs are checked before the model runs, and a bad one is the page's user error (the toast,
`USER_ERRORS`) naming the input: an object that is not one of the room's, a box that is no box (negative sizes,
numbers that overflow the drawing), a query that is no text. `predict` and the processor apply the same box rule."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from gap_mllm.cli import space_backend
from gap_mllm.cli.main import main as gap_mllm
from gap_mllm.cli.scenes import EXAMPLE_SEEDS
from gap_mllm.cli.space_backend import USER_ERRORS, SpaceBackend, SpaceSettings
from gap_mllm.cli.tasks import MAX_BOX_VALUE, TaskRequest
from gap_mllm.cli.uploads import UploadError

from .conftest import make_views

CAPTIONING = "3D dense captioning (pick an object)"
GROUNDING = "3D visual grounding (text query)"
EXAMPLE = sorted(EXAMPLE_SEEDS)[0]


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    return SpaceBackend(SpaceSettings(model="tiny", max_new_tokens=2), work_dir=tmp_path_factory.mktemp("space"))


@pytest.fixture
def no_model(backend, monkeypatch):
    """Every way `run` reaches the model fails the test: the checks must come first."""

    def model_ran(*args, **kwargs):
        raise AssertionError("the model ran before the inputs were checked")

    monkeypatch.setattr(space_backend, "run_task", model_ran)
    monkeypatch.setattr(space_backend, "reconstructed_scene", model_ran)


@pytest.fixture
def uploads(tmp_path, monkeypatch):
    """Two frames inside a fresh upload folder (GRADIO_TEMP_DIR)."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    paths = []
    for index in range(2):
        paths.append(str(tmp_path / f"frame_{index}.png"))
        Image.fromarray(np.full((84, 112, 3), 40 * index, dtype=np.uint8)).save(paths[-1])
    return paths


def user_error(backend, *args, **kwargs) -> str:
    """The message the page shows for this request (it must be one of the handler's user errors)."""
    with pytest.raises(USER_ERRORS) as excinfo:
        backend.run(*args, **kwargs)
    return str(excinfo.value)


def test_the_room_lists_its_objects(backend):
    assert backend.object_choices(EXAMPLE) == ["0: dresser", "1: dresser", "2: table", "3: stand"]


@pytest.mark.parametrize("choice", ["999: x", "-1: x", "-1: stand", "4: stand", "0: chair", "0", "abc"])
def test_an_object_that_is_not_one_of_the_room_is_refused(backend, no_model, choice):
    message = user_error(backend, None, EXAMPLE, CAPTIONING, object_choice=choice)
    assert message == (f"captioning object {choice!r} is not one of this room's objects "
                       "(0: dresser, 1: dresser, 2: table, 3: stand)")


def test_an_object_picked_on_uploaded_frames_is_refused(backend, no_model, uploads):
    message = user_error(backend, uploads, None, CAPTIONING, object_choice="0: dresser", box_text="0 0 2 1 1 1 0 0 0")
    assert message.startswith("captioning object '0: dresser': objects are picked only in a bundled example")


def test_the_listed_object_is_described_with_its_own_box(backend, monkeypatch):
    seen = []
    monkeypatch.setattr(space_backend, "run_task", lambda model, processor, views, request, **kw: seen.append(request) or 1 / 0)
    with pytest.raises(ZeroDivisionError):
        backend.run(None, EXAMPLE, CAPTIONING, object_choice="3: stand")
    assert seen[0].box == [float(v) for v in backend.example(EXAMPLE).reference_boxes[3]]


@pytest.mark.parametrize("box, expected", [
    ("0 0 2 -1 1 1 0 0 0", "captioning box has a negative size [-1.0, 1.0, 1.0] (sizes, entries 3-5, must be > 0)"),
    ("0 0 2 1 1 -0.5 0 0 0", "captioning box has a negative size [1.0, 1.0, -0.5] (sizes, entries 3-5, must be > 0)"),
    ("0 0 0 0 0 0 0 0 0", "captioning box [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0] has a size of 0 along x, y, z"),
    ("0 0 1e308 1 1 1 0 0 0", "captioning box [0.0, 0.0, 1e+308, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]: every number must lie "
                              "within ±10000 (metres; radians for the angles)"),
    ("1e308 0 2 1 1 1 0 0 0", "captioning box [1e+308, 0.0, 2.0"),
    ("0 0 2 1 1 1 10000.5 0 0", "captioning box [0.0, 0.0, 2.0, 1.0, 1.0, 1.0, 10000.5, 0.0, 0.0]: every number"),
])
def test_a_box_that_is_no_box_is_refused_before_the_model(backend, no_model, uploads, box, expected):
    for files, example in ((None, EXAMPLE), (uploads, None)):  # a bundled room and uploads (reconstruction first)
        assert user_error(backend, files, example, CAPTIONING, box_text=box).startswith(expected)


def test_boxes_at_the_bound_and_of_the_smallest_size_are_drawn(backend):
    bound = f"{MAX_BOX_VALUE:g}"
    for box in (f"{bound} -{bound} {bound} {bound} {bound} {bound} {bound} -{bound} {bound}", "0 0 1 0.01 0.01 0.01"):
        out = backend.run(None, EXAMPLE, CAPTIONING, box_text=box)
        assert out.frames and out.scene_glb.is_file()


@pytest.mark.parametrize("query", ["the chair \ud800", "the chair " + b"\xff".decode("utf-8", "surrogateescape")])
def test_a_query_that_is_not_text_is_a_user_error(backend, no_model, query):
    """A lone surrogate (JavaScript strings can hold one) or a non-UTF-8 byte read from a command line."""
    message = user_error(backend, None, EXAMPLE, GROUNDING, query=query)
    assert message.startswith("the query ") and "surrogate" in message  # the rule: gap_mllm.tasks_gap_mllm


def test_a_query_with_control_tokens_is_refused_before_the_model(backend, no_model, uploads):
    message = user_error(backend, uploads, None, GROUNDING, query="the lamp<|im_end|>")
    assert message.startswith("the query contains the tokenizer's control token(s) '<|im_end|>'")


@pytest.mark.parametrize("query", [5, ["the chair"]])
def test_a_query_that_is_not_a_string_is_refused(query):
    with pytest.raises(ValueError, match=rf"grounding needs a text query describing the object as text, got {type(query).__name__}"):
        TaskRequest("grounding", query=query).validate(2)


def test_upload_errors_are_user_errors():
    assert issubclass(UploadError, USER_ERRORS)


HANDLER = r'''
"""Call the page's Run handler (space_ui.on_run) with each request; print what it raised, one JSON list."""
import json, sys, tempfile
import gradio as gr
from gap_mllm.cli.space_backend import SpaceBackend, SpaceSettings
from gap_mllm.cli.space_ui import build_demo

backend = SpaceBackend(SpaceSettings(model="tiny", max_new_tokens=2), work_dir=tempfile.mkdtemp())
functions = build_demo(backend).fns
run = next(f.fn for f in (functions.values() if isinstance(functions, dict) else functions) if f.api_name == "run")
raised = []
for request in json.loads(sys.argv[1]):
    try:
        run(*request, None)
        raised.append(None)
    except gr.Error as error:
        raised.append(["gr.Error", error.title, error.message])
    except Exception as error:
        raised.append([type(error).__name__, None, str(error)])
print(json.dumps(raised))
'''


def test_the_page_shows_each_bad_input_as_its_message(tmp_path):
    """The gradio handler itself (in a fresh process): every bad input is a toast, never a traceback."""
    room = "synthetic room A"
    requests = [[None, room, CAPTIONING, "", "999: x", "", ""], [None, room, CAPTIONING, "", "-1: x", "", ""],
                [None, room, CAPTIONING, "", None, "0 0 1e308 1 1 1 0 0 0", ""],
                [None, room, CAPTIONING, "", None, "0 0 2 -1 1 1 0 0 0", ""],
                [None, room, GROUNDING, "the chair \ud800", None, "", ""],
                [None, room, GROUNDING, "the chair " + b"\xff".decode("utf-8", "surrogateescape"), None, "", ""]]
    (tmp_path / "handler.py").write_text(HANDLER)
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(tmp_path / "handler.py"), json.dumps(requests)], capture_output=True,
                          text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    raised = json.loads(done.stdout.strip().splitlines()[-1])
    assert [r[:2] for r in raised] == [["gr.Error", "Cannot run this request"]] * len(requests)
    choices = "(0: dresser, 1: dresser, 2: table, 3: stand)"
    assert raised[0][2] == f"captioning object '999: x' is not one of this room's objects {choices}"
    assert raised[1][2] == f"captioning object '-1: x' is not one of this room's objects {choices}"
    assert raised[2][2].startswith("captioning box [0.0, 0.0, 1e+308, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]: every number")
    assert raised[3][2].startswith("captioning box has a negative size [-1.0, 1.0, 1.0]")
    assert all(message.startswith("the query ") for _, _, message in raised[4:]), raised[4:]


# ------------------------------------------------------------------ the same box rule on the other paths


def test_predict_refuses_a_negative_size_before_loading_the_model(capsys):
    status = gap_mllm(["predict", "--model", "no-such-model", "--example", EXAMPLE, "--task", "captioning",
                       "--box", "0", "0", "2", "1", "-1", "1", "0", "0", "0"])
    assert status == 2
    assert capsys.readouterr().err.startswith("gap-mllm predict: error: captioning box has a negative size [1.0, -1.0, 1.0]")


def test_the_processor_refuses_a_negative_size(tiny_processor):
    with pytest.raises(ValueError,
                       match=r"box has a negative size \[1.0, 1.0, -2.0\] \(sizes, entries 3-5, must be > 0\)"):
        tiny_processor(images=[make_views(2)], task="captioning", box=[0, 0, 2, 1, 1, -2, 0, 0, 0])
    inputs = tiny_processor(images=[make_views(2)], task="captioning", box=[0, 0, 2, 1, 1, 0.01, 0, 0, 0],
                            return_tensors="pt")
    assert inputs["input_ids"].shape[0] == 1
