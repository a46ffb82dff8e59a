"""The Space keeps no file of a request: the backend's pictures and GLB of a request are removed once the front end
holds its own copies (`SpaceBackend.served`), and what is left at the stop (`SpaceBackend.close`); the server
(`gap-mllm space`, the console script) hands its outputs to gradio's cache, which gradio empties itself
(`delete_cache`), uploads included, and after a clean stop (SIGTERM, as a Space is stopped) its temporary folder holds
nothing at all."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gap_mllm.cli.space_backend import SpaceBackend, SpaceSettings
from tests.test_space_browser import free_port, running_app

GAP_MLLM = Path(sys.executable).with_name("gap-mllm")  # the console script of the environment the tests run in
DETECTION, RECONSTRUCTION = "3D object detection", "marker point reconstruction"
TINY_MODEL = "gap-mllm-space-tiny-"  # the Space's tiny model folder, made at its start, removed at its exit


def files_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if not path.is_dir()) if folder.exists() else []


def write_uploads(folder: Path, count: int = 2) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        paths.append(folder / f"frame_{index}.png")
        pixels = np.random.default_rng(index).integers(0, 256, (84, 112, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(paths[-1])
    return [str(path) for path in paths]


def test_the_backend_removes_each_requests_files_once_served_and_the_rest_at_close(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where the backend makes its work folder
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "uploads"))
    uploads = write_uploads(tmp_path / "uploads")
    served = tmp_path / "served"  # stands for gradio's cache: the copies the front end serves
    served.mkdir()
    backend = SpaceBackend(SpaceSettings(model="tiny", max_new_tokens=2))
    work = backend.work_dir
    assert work.parent == tmp_path / "tmp"
    requests = [(uploads, None, DETECTION), (uploads, None, RECONSTRUCTION), (None, "synthetic room A", DETECTION)]
    for number, (files, example, task) in enumerate(requests):
        out = backend.run(files, example, task)
        written = [*out.frames, out.scene_glb, *([out.gates_png] if out.gates_png else [])]
        assert written and all(path.is_file() and path.is_relative_to(work) for path in written)
        kept = backend.served(out, keep=lambda path: shutil.copy(path, served / f"{number}_{path.name}"))
        assert files_under(work) == []  # nothing of the request stays with the backend
        assert [path.read_bytes() for path in [*kept.frames, kept.scene_glb]] == [
            (served / f"{number}_{path.name}").read_bytes() for path in [*out.frames, out.scene_glb]]
        assert all(path.parent == served for path in [*kept.frames, kept.scene_glb])
    left = backend.run(uploads, None, DETECTION)  # a request never served: removed at the stop
    assert files_under(work) and left.folder.is_dir()
    backend.close()
    # left: the tiny model's folder only, which the process removes at its exit (tests/test_model_folders.py)
    assert not work.exists() and [path.name[:20] for path in (tmp_path / "tmp").iterdir()] == [TINY_MODEL]
    assert files_under(tmp_path / "uploads") == [Path(p) for p in uploads]  # the uploads are gradio's to delete


def test_a_request_whose_serving_fails_leaves_no_file_either(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "uploads"))
    backend = SpaceBackend(SpaceSettings(model="tiny", max_new_tokens=2), work_dir=tmp_path / "work")
    out = backend.run(write_uploads(tmp_path / "uploads"), None, DETECTION)

    def cache_full(path):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        backend.served(out, keep=cache_full)
    assert files_under(tmp_path / "work") == []
    backend.close()
    assert (tmp_path / "work").is_dir()  # a work folder given is the caller's: emptied, kept


CLIENT_REQUESTS = 4


def test_the_server_keeps_no_request_file_while_it_runs_and_nothing_after_a_clean_stop(tmp_path):
    """`gap-mllm space` in a process of its own whose temporary folder is a fresh one: requests through
    gradio_client (uploads and a bundled room); while it runs, its work folder holds nothing (gradio holds the
    copies it serves, and the uploads); after SIGTERM, the folder holds nothing at all."""
    from gradio_client import Client, handle_file

    server_tmp = tmp_path / "server_tmp"
    server_tmp.mkdir()
    port = free_port()
    env = {**os.environ, "TMPDIR": str(server_tmp), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    for name in ("GRADIO_TEMP_DIR", "SPACE_ID"):
        env.pop(name, None)
    uploads = write_uploads(tmp_path / "mine")
    command = [str(GAP_MLLM), "space", "--model", "tiny", "--port", str(port), "--max-new-tokens", "2"]
    log = tmp_path / "server.log"
    with running_app(command, env, log, port, timeout=180) as url:
        client = Client(url, verbose=False, download_files=str(tmp_path / "client"))
        for number in range(CLIENT_REQUESTS):
            frames = [handle_file(path) for path in uploads] if number % 2 == 0 else None
            result = client.predict(frames, "synthetic room A", DETECTION if number < 2 else RECONSTRUCTION, "",
                                    None, "", "", api_name="/run")
            assert Path(result[1]).is_file()  # the GLB, fetched from the server's cache
            work_dirs = [path for path in server_tmp.glob("gap-mllm-space-*") if TINY_MODEL not in path.name]
            assert len(work_dirs) == 1 and files_under(work_dirs[0]) == [], files_under(work_dirs[0])
        # what it holds while it runs: gradio's copies and the uploads, and the tiny model's folder
        (gradio_folder,) = server_tmp.glob("gap-mllm-uploads-*")
        held = [path for path in files_under(server_tmp) if TINY_MODEL not in str(path)]
        assert held and all(path.is_relative_to(gradio_folder) for path in held)
        assert {path.name for path in held} >= {"frame_0.png", "frame_1.png", "scene.glb"}
    # running_app ends with process.terminate(): SIGTERM, as a Space is stopped
    assert list(server_tmp.iterdir()) == [], (files_under(server_tmp), log.read_text()[-3000:])
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
