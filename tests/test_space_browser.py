"""The Space in a real browser: start examples/space/app.py on 127.0.0.1 in the tests' own environment (gradio,
spaces and Playwright: setup.py's dev extra), drive it in headless Chromium (Debian's `chromium`, installed with
apt-get if missing), run a bundled example and an upload, and check that the page shows what the model answered,
with the GPU work wrapped by the real `spaces` package (a no-op off ZeroGPU: the server log states no GPU duration).
Screenshots are kept under `test-artifacts/space_browser/` (or $GAP_MLLM_TEST_ARTIFACTS).

Skipped, with the reason printed, only when Chromium cannot be installed."""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SPACE = REPO / "examples" / "space"
ARTIFACTS = Path(os.environ.get("GAP_MLLM_TEST_ARTIFACTS", REPO / "test-artifacts")) / "space_browser"
CLEAR_COLOUR = np.array([26, 26, 26])  # gr.Model3D clear_color (0.1, 0.1, 0.1)


def skip_with_reason(reason: str):
    print(f"\nSKIPPED browser test: {reason}", file=sys.stderr)
    pytest.skip(reason)


def ensure_chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if shutil.which("apt-get") is None:
        skip_with_reason("chromium is not installed and apt-get is not available")
    install = ["apt-get", "install", "-y", "chromium"]
    done = subprocess.run(install, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:  # a fresh machine's package lists may be missing or old: read them, then once more
        subprocess.run(["apt-get", "update"], capture_output=True, text=True, timeout=600)
        done = subprocess.run(install, capture_output=True, text=True, timeout=600)
    found = shutil.which("chromium")
    if done.returncode != 0 or not found:
        skip_with_reason(f"apt-get install chromium failed (rc {done.returncode}): {done.stderr.strip()[-300:]}")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, process, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@contextlib.contextmanager
def running_app(command: list[str], env: dict, log_path: Path, port: int, timeout: float):
    """Run `command` (an app serving on 127.0.0.1:`port`) until the block ends; fail with its log if it
    never answers; always stop it."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}/"
    try:
        try:
            wait_for_http(url, process, timeout=timeout)
        except (RuntimeError, TimeoutError) as error:
            pytest.fail(f"{error}\n{log_path.read_text()[-3000:]}")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    chromium = ensure_chromium()
    port = free_port()
    logs = tmp_path_factory.mktemp("space") / "app.log"
    env = {**os.environ, "GAP_MLLM_HOST": "127.0.0.1", "GAP_MLLM_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    env.pop("SPACE_ID", None)
    env.pop("GAP_MLLM_MAX_TOKENS", None)  # as a Space runs: each task's own budget
    with running_app([sys.executable, str(SPACE / "app.py")], env, logs, port, timeout=120) as url:
        yield {"url": url, "chromium": chromium, "log": logs}


def expected_detection() -> tuple[str, str]:
    """What the page must show: the same request run in this process on the Space's default model (the
    embedded GAP-MLLM-Mini) with the task's own budget, and the mini's held-out line of the task."""
    from gap_mllm.cli.model_scores import held_out_scores
    from gap_mllm.cli.scenes import EXAMPLE_SEEDS, synthetic_scene
    from gap_mllm.cli.space_backend import load_space_model
    from gap_mllm.cli.tasks import TaskRequest, run_task
    from gap_mllm.mini import default_model_path

    model, processor, _ = load_space_model("mini")
    scene = synthetic_scene(EXAMPLE_SEEDS["synthetic room A"])
    summary = run_task(model, processor, scene.views, TaskRequest("detection")).summary()
    return summary, held_out_scores(default_model_path(), constrained=True).line("detection")


def test_space_runs_tasks_in_headless_chromium(space, tmp_path):
    frames = []
    rng = np.random.default_rng(0)
    for index in range(2):
        frames.append(tmp_path / f"frame_{index}.png")
        Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(frames[-1])
    photos = []  # eight 400×270 "photos" (the size): the most views a request takes
    for index in range(8):
        photos.append(tmp_path / f"photo_{index}.png")
        Image.fromarray(rng.integers(0, 256, (270, 400, 3), dtype=np.uint8)).save(photos[-1])
    scenarios = [
        {"name": "example_detection", "example": "synthetic room A", "task": "3D object detection"},
        {"name": "upload_grounding", "files": [str(f) for f in frames], "task": "3D visual grounding (text query)",
         "query": "the red chair"},
        {"name": "photos_marker", "files": [str(f) for f in photos], "task": "marker point reconstruction",
         "marker": "2 200 135"},
    ]
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    done = subprocess.run(
        [sys.executable, str(SPACE / "drive_in_browser.py"), "--url", space["url"], "--out", str(ARTIFACTS),
         "--chromium", space["chromium"], "--scenarios", json.dumps(scenarios), "--timeout", "120"],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    example, upload, marked = report["runs"]

    assert "GAP-MLLM-Mini" in report["notice"] and "trained by this package" in report["notice"]
    # the real `spaces` package (the dev extra installs it) wraps the GPU work; off ZeroGPU it is a no-op, and the
    # log states no GPU duration for a request (ZeroGPU's durations: test_space_gpu.py)
    log = space["log"].read_text()
    assert "GPU: spaces 0.51.3, not on ZeroGPU: @spaces.GPU is a no-op" in log
    assert "request 1: detection\n" in log and "request 2: grounding\n" in log and "duration" not in log
    assert example["status"].startswith("detection on 4 frame(s); exact synthetic geometry")
    summary, held_out = expected_detection()
    assert example["parsed"] == summary and "parse problem" not in summary  # the whole answer, not cut
    assert "truth: " in example["reference"] and example["reference"].endswith(held_out)
    assert upload["reference"] == ""
    assert example["gallery_images"] == 4 and example["gates_image"] == 1 and example["canvas"] == 1

    assert upload["status"].startswith("grounding on 2 frame(s); uploaded frames")
    assert "point cloud (" in upload["status"] and "not metric" in upload["status"]  # the trained VGGT-style heads of GAP-MLLM-Mini
    assert upload["parsed"] and upload["gallery_images"] == 2 and upload["gates_image"] == 1

    # every view whole (its image element has the frame's own aspect ratio, contain) and in sight: the whole grid
    # inside the 1280×800 window with the page at its top, nothing scrolling inside the gallery; the marked view first
    marked_order = ["frame 2 (marked)", "frame 0", "frame 1", *[f"frame {i}" for i in range(3, 8)]]
    for run, size, captions in ((example, (160, 128), [f"frame {i}" for i in range(4)]),
                                (upload, (128, 96), ["frame 0", "frame 1"]), (marked, (400, 270), marked_order)):
        shown, name = run["frames"], run["name"]
        assert shown["viewport"] == [1280, 800] and shown["grid_scrolls"] is False, name
        # nothing lies on a frame: the gallery's label ends above the first row, each caption starts under its frame
        assert shown["label_bottom"] is not None and shown["label_bottom"] <= min(f["y"] for f in shown["frames"]), name
        assert all(f["caption_top"] >= f["y"] + f["height"] - 0.5 for f in shown["frames"]), name
        assert [frame["caption"] for frame in shown["frames"]] == captions, name
        ratio = size[0] / size[1]
        for frame in shown["frames"]:
            assert frame["natural"] == list(size) and frame["fit"] == "contain", (name, frame)
            # the rendered box has the frame's aspect ratio, within a pixel of rounding on its height
            assert frame["width"] / frame["height"] == pytest.approx(ratio, abs=ratio / frame["height"]), (name, frame)
            assert 0 <= frame["x"] and frame["x"] + frame["width"] <= 1280, (name, frame)
            assert 0 <= frame["y"] and frame["y"] + frame["height"] <= 800, (name, frame)
    assert marked["status"].startswith("reconstruction on 8 frame(s); uploaded frames")
    assert marked["gallery_images"] == 8

    # the WebGL canvas really drew the point cloud and boxes, not only its clear colour
    canvas = np.asarray(Image.open(ARTIFACTS / "example_detection_scene3d.png").convert("RGB")).reshape(-1, 3)
    drawn = np.abs(canvas.astype(int) - CLEAR_COLOUR).sum(axis=1) > 30
    assert drawn.mean() > 0.02, f"only {drawn.mean():.3%} of the 3D canvas differs from the background"
    assert example["canvas_drawn_fraction"] == pytest.approx(drawn.mean())
    for name in ("loaded.png", "example_detection_page.png", "upload_grounding_page.png"):
        assert (ARTIFACTS / name).stat().st_size > 10_000
    print(f"\nscreenshots: {ARTIFACTS}")


def test_server_refuses_files_outside_the_upload_folder(space, tmp_path):
    """A crafted API call naming a server path must not make the app read it."""
    secret = tmp_path / "secret.png"
    Image.new("RGB", (32, 32)).save(secret)
    body = {"data": [[{"path": str(secret), "meta": {"_type": "gradio.FileData"}}], "(my uploaded files)",
                     "3D object detection", "", None, "", ""]}
    request = urllib.request.Request(space["url"] + "gradio_api/call/run", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    event = json.load(urllib.request.urlopen(request, timeout=30))["event_id"]
    stream = urllib.request.urlopen(space["url"] + f"gradio_api/call/run/{event}", timeout=60).read().decode()
    assert "event: error" in stream and "not uploaded by a user" in stream
    assert "event: complete" not in stream
