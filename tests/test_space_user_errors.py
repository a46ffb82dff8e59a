"""A user error of the Space (an empty request, a .txt upload) is a toast on the page and ONE line in the server log,
"request N refused: <message>", with no traceback: the backend logs it at INFO and the page's handler raises the
toast with gradio's `print_exception=False`. A bug (any other exception) is not turned into a toast and keeps its
traceback."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gap_mllm.cli.space_backend import SpaceBackend, SpaceSettings
from gap_mllm.cli.uploads import UploadError

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_FREE = "(my uploaded files)"


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    return SpaceBackend(SpaceSettings(model="tiny", max_new_tokens=2), work_dir=tmp_path_factory.mktemp("space"))


def test_a_user_error_is_one_log_line_without_traceback(backend, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a frame")
    for files in ([], [str(text_file)]):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="gap_mllm.space"), pytest.raises(UploadError) as error:
            backend.run(files, EXAMPLE_FREE, "3D object detection")
        refused = [r for r in caplog.records if "refused" in r.getMessage()]
        assert len(refused) == 1 and refused[0].levelno == logging.INFO
        number = refused[0].getMessage().split()[1]
        assert refused[0].getMessage() == f"request {number} refused: {' '.join(str(error.value).split())}"
        assert all(record.exc_info is None for record in caplog.records)


def test_a_bug_is_not_logged_as_refused(backend, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(backend, "_run", broken)
    with caplog.at_level(logging.INFO, logger="gap_mllm.space"), pytest.raises(RuntimeError, match="a bug"):
        backend.run([], EXAMPLE_FREE, "3D object detection")
    assert not [r for r in caplog.records if "refused" in r.getMessage()]


HANDLER = """
import json
from types import SimpleNamespace

import gradio as gr

from gap_mllm.cli.space_ui import build_demo
from gap_mllm.cli.uploads import UploadError, UploadLimits


def backend_raising(error):
    def run(*args, **kwargs):
        raise error
    return SimpleNamespace(settings=SimpleNamespace(limits=UploadLimits()), notice="", geometry_notice="", run=run,
                           example_defaults=lambda name: {"object": None, "query": "", "marker": ""},
                           object_choices=lambda name: [])


def on_run(backend):
    demo = build_demo(backend)
    return next(block.fn for block in demo.fns.values() if getattr(block.fn, "__name__", "") == "on_run")


report = {}
try:
    on_run(backend_raising(UploadError("no frames: upload images or pick an example")))([], None, None, "", None, "", "", None)
except gr.Error as error:
    report["user"] = {"message": error.message, "print_exception": error.print_exception}
try:
    on_run(backend_raising(RuntimeError("a bug")))([], None, None, "", None, "", "", None)
except Exception as error:
    report["bug"] = type(error).__name__
print(json.dumps(report))
"""


def test_the_page_shows_the_user_error_without_printing_its_traceback():
    """With gradio (in a fresh process): the handler's toast for a user error asks gradio not to print a traceback; a
    bug stays the bug's own exception (gradio prints its traceback)."""
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", HANDLER], capture_output=True, text=True, env=env, timeout=300,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "user": {"message": "no frames: upload images or pick an example", "print_exception": False}, "bug": "RuntimeError"}


SCENE_CHOICE = """
import json
from types import SimpleNamespace

from gap_mllm.cli.space_ui import build_demo
from gap_mllm.cli.uploads import UploadLimits

asked = []
output = SimpleNamespace(frames=[], captions=[], columns=4, scene_glb="s.glb", raw="", parsed="", gates_png=None,
                         status="", reference="")
backend = SimpleNamespace(settings=SimpleNamespace(limits=UploadLimits()), notice="", geometry_notice="",
                          run=lambda files, example, *rest, session=None: asked.append([files, example]) or output,
                          example_defaults=lambda name: {"object": None, "query": "", "marker": ""},
                          object_choices=lambda name: [], served=lambda out, keep=None: out)
demo = build_demo(backend)
on_run = next(block.fn for block in demo.fns.values() if getattr(block.fn, "__name__", "") == "on_run")
example = next(block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "example")
on_run(["/uploads/a.png"], "synthetic room B", "3D object detection")  # uploads sent with a room: the uploads
on_run([], "synthetic room B", "3D object detection")  # none: the room
on_run(task="3D object detection")  # a script naming the task only: the room the page opens on
print(json.dumps({"asked": asked, "opens_on": example.value}))
"""


def test_the_page_opens_on_a_bundled_room_and_uploads_sent_are_the_scene():
    """The example list opens on a bundled room (GAP-MLLM-Mini knows no other), and `/run` answers on uploaded frames
    whenever some are sent, the room only without them (a script that names only the task gets the opening room)."""
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", SCENE_CHOICE], capture_output=True, text=True, env=env, timeout=300,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "asked": [[["/uploads/a.png"], "(my uploaded files)"], [[], "synthetic room B"], [None, "synthetic room A"]],
        "opens_on": "synthetic room A"}
