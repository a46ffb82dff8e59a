"""The Space's GPU work for ZeroGPU: each request's model work is one call (`SpaceBackend._answer`), wrapped in the
real `spaces` package's `@spaces.GPU(duration=...)` (a no-op off ZeroGPU: checked in the gradio environment, where
`spaces` is installed), with a duration from the task's token budget; on ZeroGPU its arguments and result cross a
process boundary, so they must pickle, and the session scene store is off."""

import json
import os
import pickle
import subprocess
from pathlib import Path

import pytest
import torch

from gap_mllm.cli import space_backend, space_gpu
from gap_mllm.cli.space_backend import SpaceBackend, SpaceSettings
from gap_mllm.cli.space_gpu import gpu_function, gpu_seconds, move_to_gpu
from gap_mllm.tasks_gap_mllm import CAPTIONING, DETECTION, GROUNDING, RECONSTRUCTION
from tests.test_space_browser import ensure_demo_python
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
    scene, request, session = calls[0]
    assert len(calls) == 1 and request.task == "grounding" and request.query == "the chair" and session == "s1"
    assert len(scene.views) == 4 and out.status.startswith("grounding on 4 frame(s)") and out.raw is not None
    assert backend.gpu_seconds(scene, request) == gpu_seconds(GROUNDING, 2)  # the Space's cap of 2 tokens


def test_on_zero_gpu_the_session_scene_store_is_off(tmp_path, monkeypatch, backend):  # noqa: F811
    assert backend.scenes is not None  # off ZeroGPU the next question about the same frames reuses the encoding
    monkeypatch.setattr(space_backend, "on_zero_gpu", lambda: True)
    loaded = (backend.model, backend.processor, backend.is_tiny)
    assert SpaceBackend(SpaceSettings(model="tiny"), work_dir=tmp_path, loaded=loaded).scenes is None


def test_without_spaces_the_call_is_the_function(monkeypatch):
    monkeypatch.setattr(space_gpu, "spaces_version", lambda: None)

    def work(x):
        return x

    assert gpu_function(work, lambda x: 1) is work
    assert "spaces is not installed" in space_gpu.gpu_line()


def test_the_model_stays_where_it_is_without_cuda(backend):  # noqa: F811
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the model would move")
    assert move_to_gpu(backend.model) == torch.device("cpu") and backend.model.device.type == "cpu"


SPACES_CHECK = """
import json, spaces
from gap_mllm.cli import space_gpu
from gap_mllm.cli.space_backend import SpaceBackend, SpaceSettings

backend = SpaceBackend(SpaceSettings(model="tiny", max_new_tokens=2))
out = backend.run([], "synthetic room A", "3D object detection")
print(json.dumps({"version": spaces.__version__ if hasattr(spaces, "__version__") else space_gpu.spaces_version(),
                  "zero": space_gpu.on_zero_gpu(), "line": space_gpu.gpu_line(),
                  "unchanged": backend._answer_on_gpu == backend._answer, "status": out.status}))
"""


def test_with_the_real_spaces_package_off_zero_gpu_the_decorator_is_a_no_op():
    """In the gradio environment, which installs `spaces` (examples/space/build_demo_venv.py: built when missing, and
    an environment built before spaces was added gets it)."""
    python = ensure_demo_python()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    env.pop("SPACES_ZERO_GPU", None)
    done = subprocess.run([str(python), "-c", SPACES_CHECK], capture_output=True, text=True, env=env, timeout=300,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["version"] == "0.51.3" and report["zero"] is False and report["unchanged"] is True
    assert report["line"].startswith("GPU: spaces 0.51.3, not on ZeroGPU: @spaces.GPU is a no-op")
    assert report["status"].startswith("detection on 4 frame(s)")
