"""One pass from frames to answer, on every answer path: for one request the processor (`GapMllmProcessor.__call__`)
runs once, the geometry encoder's forward once per scene (the fusion gates predict prints and the Space draws are
those of that forward, not of a second one with `output_gates=True`), the model source is resolved once
(cli/model_source.py `resolve_model_source`, `check_model_source`) and the request validated once at the edge
(`TaskRequest.validate`). The paths: `gap-mllm predict`, `gap-mllm demo`, the Space's backend, `gap-mllm evaluate` and
the README's Python snippet, on the shipped GAP-MLLM-Mini (few frames, few tokens). The counters wrap the real
functions; nothing on a path is replaced."""

import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from gap_mllm import checks
from gap_mllm.cli import demo, early_checks, evaluate, loading, model_source, predict, space_backend  # noqa: F401
from gap_mllm.cli.main import main as gap_mllm
from gap_mllm.cli.scenes import synthetic_scene
from gap_mllm.cli.space_backend import SpaceBackend, SpaceSettings
from gap_mllm.cli.task_request import TaskRequest
from gap_mllm.cli.tasks import run_task
from gap_mllm.modeling_vggt import GapMllmGeometryEncoder
from gap_mllm.processing_gap_mllm import GapMllmProcessor
from gap_mllm.tiny.tiny_model import build_tiny_model

from .conftest import make_views
from .test_docs_snippets import README, snippets_by_heading

RESOLVERS = ("resolve_model_source", "check_model_source")
EXAMPLE = "synthetic room A"
GROUNDING = "3D visual grounding (text query)"
DETECTION = "3D object detection"


@pytest.fixture
def calls(monkeypatch) -> Counter:
    """The calls made from here on: "processor" (`GapMllmProcessor.__call__`; "processor_text" those given no
    frames), "encoder" (the geometry encoder's forwards, but the one of a load's probe), "validate" (`TaskRequest.validate`), each model-source
    resolver (`RESOLVERS`, wherever a module of the package bound it) and "default_model_path" (the Mini's folder)."""
    counted = Counter()

    def counting(key, function):
        def wrapped(*args, **kwargs):
            counted[key] += 1
            return function(*args, **kwargs)
        return wrapped

    processor_call = GapMllmProcessor.__call__

    def processor(self, images=None, *args, **kwargs):
        counted["processor"] += 1
        counted["processor_text"] += images is None
        return processor_call(self, images, *args, **kwargs)

    monkeypatch.setattr(GapMllmProcessor, "__call__", processor)
    encoder_forward, probe = GapMllmGeometryEncoder.forward, checks.refuse_weights_that_compute_nan
    probing = []

    def encoder(*args, **kwargs):
        counted["encoder"] += not probing  # the load's probe forward (checks.py) runs no request
        return encoder_forward(*args, **kwargs)

    def probed(*args, **kwargs):
        probing.append(True)
        try:
            return probe(*args, **kwargs)
        finally:
            probing.pop()

    monkeypatch.setattr(GapMllmGeometryEncoder, "forward", encoder)
    monkeypatch.setattr(checks, "refuse_weights_that_compute_nan", probed)
    monkeypatch.setattr(TaskRequest, "validate", counting("validate", TaskRequest.validate))
    for name in (*RESOLVERS, "default_model_path"):
        original = getattr(model_source, name)
        wrapped = counting(name, original)
        for module in list(sys.modules.values()):
            if getattr(module, "__name__", "").startswith("gap_mllm") and getattr(module, name, None) is original:
                monkeypatch.setattr(module, name, wrapped)
    return counted


def counts(counted: Counter) -> dict:
    """The counters that counted something (a missing key is 0)."""
    return {key: value for key, value in counted.items() if value}


ONE_SOURCE = {"resolve_model_source": 1, "check_model_source": 1, "default_model_path": 1}


def test_predict_runs_the_processor_and_the_encoder_once_and_prints_that_forwards_gates(calls, capsys):
    """The processor's output that measured the prompt against the context is the one generated from; the mean gates
    printed are those of the generation's prefill."""
    assert gap_mllm(["predict", "--example", EXAMPLE, "--task", "grounding"]) == 0
    assert "mean gate  : level 0: " in capsys.readouterr().out
    assert counts(calls) == {"processor": 1, "encoder": 1, "validate": 1, **ONE_SOURCE}


def test_demo_runs_the_processor_and_the_encoder_once_per_task(calls, tmp_path, capsys):
    """Four requests (detection, grounding, captioning, the marker task): one processor call, one encoder forward and
    one validation each; the geometry section reconstructs the room from a request's processor output."""
    assert gap_mllm(["demo", "--out", str(tmp_path / "demo"), "--max-new-tokens", "2"]) == 0
    assert "cloud  : " in capsys.readouterr().out
    assert counts(calls) == {"processor": 4, "encoder": 4, "validate": 4, **ONE_SOURCE}


def test_the_space_answers_a_request_in_one_pass(calls, tmp_path, monkeypatch):
    """The server resolves its model once; a request is one processor call (its check's), one encoder forward (none
    for the next question about the session's scene) and one validation, with or without the scene store, and
    uploaded frames are reconstructed from the request's own VGGT input."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    backend = SpaceBackend(SpaceSettings(model="mini", max_new_tokens=2), work_dir=tmp_path / "space")
    assert counts(calls) == ONE_SOURCE
    calls.clear()
    first = backend.run(None, EXAMPLE, GROUNDING, session="a")
    assert first.gates_png is not None and counts(calls) == {"processor": 1, "encoder": 1, "validate": 1}
    calls.clear()
    backend.run(None, EXAMPLE, DETECTION, session="a")  # the same frames: the session's encoded scene
    assert counts(calls) == {"processor": 1, "validate": 1}

    paths = []
    for index, view in enumerate(synthetic_scene(1, num_frames=2).views):
        paths.append(str(tmp_path / f"frame_{index}.png"))
        view.save(paths[-1])
    backend.scenes = None  # every request encoded anew: the gates come from the generation's prefill
    calls.clear()
    upload = backend.run(paths, None, DETECTION)
    assert "point cloud" in upload.status and upload.gates_png is not None
    assert counts(calls) == {"processor": 1, "encoder": 1, "validate": 1}


def test_evaluate_encodes_each_scene_once_and_processes_each_batch_once(calls, synth_data, tmp_path, capsys):
    """The rule of evaluate's batching (evaluation/batched_answers.py): a scene asked several questions is one
    processor call with its frames and one encoder forward, and each batch of its questions one processor call of
    text; scenes asked once are batched together, one processor call and one encoder forward a batch. Captioning's
    first 3 samples at a batch of 2: samples 0 and 1 describe objects of the same frames (one scene, one batch of
    questions), sample 2 is a scene of its own."""
    out = tmp_path / "eval"
    assert gap_mllm(["evaluate", "--task", "captioning", "--model", "mini", "--data", str(synth_data), "--out",
                     str(out), "--limit", "3", "--batch-size", "2", "--max-new-tokens", "2", "--no-meteor",
                     "--no-plots", "--quiet"]) == 0
    assert "(3 samples) ->" in capsys.readouterr().out
    assert counts(calls) == {"processor": 3, "processor_text": 1, "encoder": 2, **ONE_SOURCE}


def test_the_readme_snippet_asks_in_one_pass(calls):
    """The README's Python snippet (its "Use" block, run as written up to its first question), then one question:
    one processor call and one encoder forward; it names the Mini's folder itself, the front ends' resolvers are not
    on its path."""
    (code,) = [code for heading, code in snippets_by_heading(README) if heading == "## Use"]
    setup = code[: code.index("\nprint(ask(")]
    namespace = {"__name__": "readme_snippet"}
    exec(compile(setup, str(README), "exec"), namespace)
    assert counts(calls) == {"default_model_path": 1}
    calls.clear()
    result = namespace["ask"]("grounding", query=namespace["query"])
    assert type(result).__name__ == "GroundingResult"
    assert counts(calls) == {"processor": 1, "encoder": 1}


def test_the_gates_are_those_of_the_forward_that_answers(calls):
    """`run_task`'s gates, taken from the generation's prefill, are exactly those of a forward with
    `output_gates=True` on the same inputs."""
    model, processor = build_tiny_model()
    views = make_views(2)
    result = run_task(model, processor, views, TaskRequest("detection"), max_new_tokens=2)
    assert counts(calls) == {"processor": 1, "encoder": 1, "validate": 1}
    with torch.no_grad():
        expected = model(**processor(images=[views], task="detection", return_tensors="pt"), output_gates=True)
    assert len(result.gates) == len(expected.fusion_gates) == 4
    for gate, own in zip(result.gates, expected.fusion_gates, strict=True):
        np.testing.assert_array_equal(gate, own.float().numpy())


def test_the_argument_check_imports_no_metric():
    """The light argument check every command runs first (cli/early_checks.py) reads the evaluation folder's lock
    rule, not its metrics (METEOR's scorer among them)."""
    code = ("import sys; import gap_mllm.cli.early_checks; "
            "print(sorted(m for m in sys.modules if m.endswith(('_metrics', 'meteor')) or 'pycocoevalcap' in m))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
