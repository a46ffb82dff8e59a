"""The Gradio interface of the Space (imports gradio; see space.py for why it is optional).

Layout: input column (files or a bundled example, task, task inputs, Run) and output column
(status, frames with projected boxes, 3D view, raw answer, parsed result, on a bundled room the exact
answer and the model's held-out score of the task, fusion gate heat map). The frames are shown whole, all in
sight, the marked view first (frame_grid.py).
Uploads get a point cloud and an estimated camera only when the model has VGGT's camera and depth
heads; the page says which (and how to get them). Every request is logged with its start and end time.
Safety: uploads are checked by uploads.py against the gradio upload folder only; gradio serves no
other path (`allowed_paths` is not widened); requests are queued (`concurrency` at once, at most
`max_queue` waiting); gradio itself refuses files above the size limit.
Files: a request's pictures and GLB are handed to gradio's cache and the backend's own removed as it is answered
(`SpaceBackend.served`); gradio deletes what it holds, the copies it serves and every upload, `CACHE_AGE_SECONDS`
after it was written (`delete_cache`), and all of it at the server's stop, which a SIGTERM (a Space stopped) makes
clean as Ctrl-C does; the upload folder the server made and the backend's work folder go with it (`launch`).

The page opens on a bundled room (the default GAP-MLLM-Mini knows SynthRooms rooms only) and offers every task the
command line answers (space_backend.py `TASK_LABELS`, from the task registry). Uploaded frames, when given, are the
scene (picking a bundled room clears them). Scripts call the `/run` endpoint with gradio_client by name
(docs/usage.md, "The Space from a script"): `client.predict(example=..., task=..., api_name="/run")`, the
parameters named as `on_run`'s below; those not given take the page's defaults.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading

from .frame_grid import FRAMES_CSS, MIN_COLUMNS
from .space_backend import LOG, NO_EXAMPLE, TASK_LABELS, USER_ERRORS, SpaceBackend, SpaceSettings
from .scenes import EXAMPLE_SEEDS
from .uploads import GIF_SUFFIXES, IMAGE_SUFFIXES, VIDEO_SUFFIXES

INTRO = """# GAP-MLLM: 3D perception from RGB frames
Pick a bundled synthetic room (the page opens on one) or upload a few frames of one scene (or one short video; frames
are sampled), choose a task and press **Run**. Boxes are in the first frame's camera (x right, y down, z forward)."""


# how long gradio keeps a file it serves or an upload (a page may run again on the same uploads), and how often it
# looks: gr.Blocks(delete_cache=(CACHE_CHECK_SECONDS, CACHE_AGE_SECONDS))
CACHE_AGE_SECONDS, CACHE_CHECK_SECONDS = 3600, 300


DEFAULT_EXAMPLE = next(iter(EXAMPLE_SEEDS))  # what the page opens on: a bundled room, which the Mini knows


def query_label() -> str:
    """The query field's label: the tasks that read it (the registry's, as the task list)."""
    titles = [label for label, spec in TASK_LABELS.items() if "query" in spec.parameters]
    return "Query: " + "; ".join(titles) if titles else "Query"


def build_demo(backend: SpaceBackend):
    import gradio as gr  # here, not at the top: launch() sets GRADIO_TEMP_DIR before gradio is imported (space.py)

    def on_example_change(example_name):
        # a bundled room prefills its own requests (their exact answers are known: the reference panel shows them)
        defaults = backend.example_defaults(example_name)
        return (gr.update(choices=backend.object_choices(example_name), value=defaults["object"]),
                defaults["query"], defaults["marker"])

    def on_task_change(example_name, task_label):
        # on a bundled room the query field holds the chosen task's own query (none: empty), never another task's
        spec = TASK_LABELS.get(task_label)
        if spec is None or "query" not in spec.parameters or not example_name or example_name == NO_EXAMPLE:
            return gr.update()
        own = backend.example(example_name).example_inputs.get(spec.name, {}).get("query")
        return own or ""

    def on_run(frames=None, example=DEFAULT_EXAMPLE, task=next(iter(TASK_LABELS)), query=None, caption_object=None,
               box=None, marker=None, request: gr.Request = None):
        """Answer one request of a scene: uploaded frames or a bundled room.

        Args:
            frames: image or video files of one scene (`gradio_client.handle_file(path)` each); when given, they are
                the scene, whatever `example` says.
            example: a bundled room ("synthetic room A", ...), used when no frames are given.
            task: the task's label, as the page's task list shows it ("3D object detection", ...).
            query: grounding's description of the object, or spatial QA's question; empty on a bundled room: its own.
            caption_object: captioning on a bundled room: one of its objects, "<index>: <label>".
            box: captioning: the object's box, 6 or 9 numbers "cx cy cz sx sy sz [yaw pitch roll]" (first camera).
            marker: the marker task's pixel "view x y"; empty: the room's own, or the centre of frame 0.

        Returns:
            (frames with the answer drawn, 3D scene (GLB), raw answer, parsed result, fusion gate map, status line,
            on a bundled room the exact answer and the model's held-out score)
        """
        # gradio fills `request`; its session hash keys the session's encoded scene (scene_store.py)
        session = getattr(request, "session_hash", None)
        if frames:  # uploads are the scene: the example list only chooses when none are sent
            example = NO_EXAMPLE
        try:
            out = backend.run(frames, example, task, query, caption_object, box, marker, session=session)
        except USER_ERRORS as error:  # the backend logged it in one line; gradio prints no traceback for it
            raise gr.Error(str(error), title="Cannot run this request", print_exception=False) from error
        # gradio's own copies (its cache, emptied on `delete_cache`'s schedule), the backend's removed now
        out = backend.served(out, keep=scene.move_resource_to_block_cache)
        # every frame whole, in a grid that shows them all (frame_grid.py), the marked view first
        shown = gr.update(value=[(str(path), caption) for path, caption in zip(out.frames, out.captions)],
                          columns=out.columns)
        return (shown, str(out.scene_glb), out.raw, out.parsed,
                str(out.gates_png) if out.gates_png else None, out.status, out.reference)

    # gradio finds the request parameter by its type hint; this module's postponed annotations are strings
    # naming a local import, which gradio cannot resolve, so give it the class itself
    on_run.__annotations__["request"] = gr.Request

    limits = backend.settings.limits
    accepted = sorted(IMAGE_SUFFIXES | GIF_SUFFIXES | VIDEO_SUFFIXES)
    with gr.Blocks(title="GAP-MLLM demo", delete_cache=(CACHE_CHECK_SECONDS, CACHE_AGE_SECONDS)) as demo:
        gr.Markdown(INTRO)
        gr.Markdown(f"**{backend.notice}**", elem_id="model-notice")
        gr.Markdown(backend.geometry_notice, elem_id="geometry-notice")
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(label=(f"Frames or a video (≤ {limits.max_files} files, ≤ {limits.max_file_bytes // 2**20} MB "
                                       f"each; a video ≤ {limits.max_video_seconds:g} s, {limits.max_frames} frames sampled)"),
                                file_count="multiple", file_types=accepted, type="filepath", elem_id="uploads")
                example = gr.Dropdown([*EXAMPLE_SEEDS, NO_EXAMPLE], value=DEFAULT_EXAMPLE, label="or a bundled example",
                                      elem_id="example")
                task = gr.Radio(list(TASK_LABELS), value=next(iter(TASK_LABELS)), label="Task", elem_id="task")
                query = gr.Textbox(label=query_label(), placeholder="the chair next to the desk", elem_id="query")
                object_choice = gr.Dropdown([], label="Captioning: object (bundled examples)", elem_id="object")
                box_text = gr.Textbox(label="Captioning: or a box cx cy cz sx sy sz [yaw pitch roll] (first camera)", elem_id="box")
                marker_text = gr.Textbox(label="Reconstruction: marker 'view x y' (empty: centre of frame 0)", elem_id="marker")
                run_button = gr.Button("Run", variant="primary", elem_id="run")
            with gr.Column(scale=2):
                status = gr.Markdown(elem_id="status")
                frames = gr.Gallery(label="Frames with projected 3D boxes (red: answer)", columns=MIN_COLUMNS,
                                    height="auto", object_fit="contain", fit_columns=False, elem_id="frames")
                scene = gr.Model3D(label="3D view (point cloud and boxes)", clear_color=(0.1, 0.1, 0.1, 1.0),
                                   height=360, elem_id="scene3d")
                with gr.Row():
                    raw = gr.Textbox(label="Raw answer", lines=4, elem_id="raw")
                    parsed = gr.Textbox(label="Parsed result", lines=4, elem_id="parsed")
                reference = gr.Textbox(label="Bundled room: the exact answer, and the model's held-out score of the "
                                             "task next to a trivial baseline", lines=4, elem_id="reference")
                gates = gr.Image(label="Fusion gate per level (share of the Qwen feature)", type="filepath",
                                 elem_id="gates")
        prefilled = [object_choice, query, marker_text]
        demo.load(on_example_change, example, prefilled, api_visibility="private")  # the room the page opens on
        example.change(on_example_change, example, prefilled, api_visibility="private")
        # the page shows one scene: a room picked drops the uploads, an upload shows "(my uploaded files)"
        example.input(lambda name: gr.update() if name == NO_EXAMPLE else None, example, files,
                      api_visibility="private")
        files.upload(lambda uploaded: NO_EXAMPLE, files, example, api_visibility="private")
        task.change(on_task_change, [example, task], query, api_visibility="private")
        run_button.click(on_run, [files, example, task, query, object_choice, box_text, marker_text],
                         [frames, scene, raw, parsed, gates, status, reference], api_name="run")
    return demo


# each line starts with the local clock time to the millisecond, e.g. "14:03:22.418 gap_mllm.space: request 3 started"
LOG_FORMAT = logging.Formatter("%(asctime)s.%(msecs)03d %(name)s: %(message)s", datefmt="%H:%M:%S")


def log_requests_to_stderr() -> None:
    """Show the backend's per-request lines (start, end) in the server log, once."""
    if not LOG.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(LOG_FORMAT)
        LOG.addHandler(handler)
        LOG.setLevel(logging.INFO)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM (how a Space or a service manager stops the server) raised as KeyboardInterrupt in the main thread, as
    Ctrl-C is, so that the server stops cleanly (gradio empties its cache, `launch` removes its folders); Python's
    default would end the process at once, leaving every file."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def launch(settings: SpaceSettings, host: str = "127.0.0.1", port: int = 7860, **launch_kwargs):
    """Build the backend and the interface, queue requests, and serve (blocks); at the stop (Ctrl-C, SIGTERM) remove
    the backend's files and the upload folder made here."""
    log_requests_to_stderr()
    # A dedicated upload folder: uploads.py only reads files inside it. Set before gradio is imported,
    # since gradio reads GRADIO_TEMP_DIR at import time; one given is the caller's, not removed.
    made = None
    if not os.environ.get("GRADIO_TEMP_DIR"):
        made = os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="gap-mllm-uploads-")
    backend = None
    try:
        backend = SpaceBackend(settings)
        demo = build_demo(backend)
        demo.queue(default_concurrency_limit=settings.concurrency, max_size=settings.max_queue)
        limit = f"{settings.limits.max_file_bytes // 2**20}mb"
        with sigterm_as_interrupt():
            demo.launch(server_name=host, server_port=port, max_file_size=limit, show_error=True, css=FRAMES_CSS,
                        **launch_kwargs)
    finally:
        if not launch_kwargs.get("prevent_thread_lock"):  # else the server still runs: its caller stops it
            if backend is not None:
                backend.close()
            if made is not None:
                shutil.rmtree(made, ignore_errors=True)
