"""The Space's GPU work for ZeroGPU: each request's model work is one call (`SpaceBackend._answer`), wrapped in the
real `spaces` package's `@spaces.GPU(duration=...)` (a no-op off ZeroGPU: checked with the `spaces` the dev extra
installs), with a duration from the task's token budget; on ZeroGPU its arguments and result cross a process boundary,
so they must pickle, and the session scene store is off. The server log states that duration only on ZeroGPU."""

import json
import logging
import os
import pickle
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gap_mllm.cli import space_backend
from gap_mllm.cli.space_backend import SpaceBackend, SpaceSettings, gpu_function, gpu_seconds, move_to_gpu, request_line
from gap_mllm.cli.space_ui import LOG_FORMAT
from gap_mllm.tasks_gap_mllm import CAPTIONING, DETECTION, GROUNDING, RECONSTRUCTION
from tests.test_space_user_errors import backend  # noqa: F401  (module fixture: the tiny model's Space backend)

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = "synthetic room A"


def test_durations_come_from_the_task_budgets():
    # ceil(1.5 * (10 s + budget / 28 tokens/s)): detection 1,280 tokens, captioning 256, grounding 192, reconstruction 96
    assert {task.name: gpu_seconds(task) for task in (DETECTION, CAPTIONING, GROUNDING, RECONSTRUCTION)} == {
        "detection": 84, "captioning": 29, "grounding": 26, "reconstruction": 21}
    assert gpu_seconds(DETECTION, max_new_tokens=64) == 19 and gpu_seconds(RECONSTRUCTION, max_new_tokens=4096) == 21


def test_the_model_work_is_one_call_whose_arguments_and_result_pickle(backend, monkeypatch):  # noqa: F811
    calls = []
    answer = backend._answer_on_gpu

    def recorded(*args):
        calls.append(pickle.loads(pickle.dumps(args)))  # what ZeroGPU sends to its worker
        return pickle.loads(pickle.dumps(answer(*args)))  # and what it sends back

    monkeypatch.setattr(backend, "_answer_on_gpu", recorded)
    out = backend.run([], EXAMPLE, "3D visual grounding (text query)", query="the chair", session="s1")
    scene, request, inputs, session = calls[0]
    assert len(calls) == 1 and request.task == "grounding" and request.query == "the chair" and session == "s1"
    assert len(scene.views) == 4 and out.status.startswith("grounding on 4 frame(s)") and out.raw is not None
    # the request's processor output, made before the call (the request's check measured it against the context)
    assert inputs["input_ids"].shape[0] == 1 and inputs["image_grid_thw"].shape[0] == 4
    assert backend.gpu_seconds(scene, request, inputs) == gpu_seconds(GROUNDING, 2)  # the Space's cap of 2 tokens


def test_on_zero_gpu_the_session_scene_store_is_off(tmp_path, monkeypatch, backend):  # noqa: F811
    assert backend.scenes is not None  # off ZeroGPU the next question about the same frames reuses the encoding
    monkeypatch.setattr(space_backend, "on_zero_gpu", lambda: True)
    loaded = (backend.model, backend.processor, backend.is_tiny)
    assert SpaceBackend(SpaceSettings(model="tiny"), work_dir=tmp_path, loaded=loaded).scenes is None


def test_the_log_states_a_gpu_duration_only_on_zero_gpu(backend, monkeypatch, caplog):  # noqa: F811
    """Off ZeroGPU no duration is asked for, so a request's line names its task alone; on ZeroGPU it adds the duration
    the call asks for (the same `gpu_seconds` the decorator is given)."""
    with caplog.at_level(logging.INFO, logger="gap_mllm.space"):
        backend.run([], EXAMPLE, "3D object detection")
    messages = [record.getMessage() for record in caplog.records]
    number = int(messages[0].split()[1])
    assert messages[:2] == [f"request {number} started", f"request {number}: detection"]
    assert re.fullmatch(rf"request {number} finished \(\d+\.\d\d s\)", messages[-1]), messages
    assert not [message for message in messages if "duration" in message]
    if not torch.cuda.is_available():
        assert space_backend.gpu_line().endswith("is a no-op, requests run in this process, on the CPU (no CUDA)")
    assert request_line(7, DETECTION) == "request 7: detection"

    monkeypatch.setattr(space_backend, "on_zero_gpu", lambda: True)
    assert request_line(7, DETECTION) == "request 7: detection, ZeroGPU duration 84 s"
    capped = gpu_seconds(GROUNDING, 2)
    assert request_line(8, GROUNDING, max_new_tokens=2) == f"request 8: grounding, ZeroGPU duration {capped} s"
    assert space_backend.gpu_line() == ("GPU: spaces 0.51.3, ZeroGPU: every request runs inside @spaces.GPU with the "
                                        "duration its line states (cli/space_backend.py)")


def test_the_server_log_stamps_each_line_with_the_local_clock_time(backend, caplog):  # noqa: F811
    """Local clock time to the millisecond (e.g. 14:03:22.418), not seconds since the epoch."""
    with caplog.at_level(logging.INFO, logger="gap_mllm.space"):
        backend.run([], EXAMPLE, "marker point reconstruction")
    started = caplog.records[0]
    line = LOG_FORMAT.format(started)
    number = started.getMessage().split()[1]
    clock = time.strftime("%H:%M:%S", time.localtime(started.created)) + f".{int(started.msecs):03d}"
    assert line == f"{clock} gap_mllm.space: request {number} started"
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} gap_mllm\.space: request \d+ started", line)


def test_without_spaces_the_call_is_the_function(monkeypatch):
    monkeypatch.setattr(space_backend, "spaces_version", lambda: None)

    def work(x):
        return x

    assert gpu_function(work, lambda x: 1) is work
    assert "spaces is not installed" in space_backend.gpu_line()


def test_the_model_stays_where_it_is_without_cuda(backend):  # noqa: F811
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the model would move")
    assert move_to_gpu(backend.model) == torch.device("cpu") and backend.model.device.type == "cpu"


SPACES_CHECK = """
import json, spaces
from gap_mllm.cli import space_backend
from gap_mllm.cli.space_backend import SpaceBackend, SpaceSettings

backend = SpaceBackend(SpaceSettings(model="tiny", max_new_tokens=2))
out = backend.run([], "synthetic room A", "3D object detection")
print(json.dumps({"version": spaces.__version__ if hasattr(spaces, "__version__") else space_backend.spaces_version(),
                  "zero": space_backend.on_zero_gpu(), "line": space_backend.gpu_line(),
                  "unchanged": backend._answer_on_gpu == backend._answer, "status": out.status}))
"""


def test_with_the_real_spaces_package_off_zero_gpu_the_decorator_is_a_no_op():
    """With the real `spaces` package (setup.py's space extra, in the dev extra), in a fresh process."""
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    env.pop("SPACES_ZERO_GPU", None)
    done = subprocess.run([sys.executable, "-c", SPACES_CHECK], check=False, capture_output=True, text=True, env=env,
                          timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["version"] == "0.51.3" and report["zero"] is False and report["unchanged"] is True
    assert report["line"].startswith("GPU: spaces 0.51.3, not on ZeroGPU: @spaces.GPU is a no-op")
    assert report["status"].startswith("detection on 4 frame(s)")
