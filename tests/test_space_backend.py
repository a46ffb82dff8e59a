"""The Space's backend (no gradio) on uploaded frames: VGGT reconstruction when the model has the camera
and depth heads (point cloud in the GLB, boxes drawn with the estimated camera), the old behaviour and
a how-to message when it has not, and the fallback when the camera estimate is unusable; a request on a bundled
example asks the example's own inputs (its query, object and marker) when the page sends it before they fill in."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from gap_mllm.cli import visualize
from gap_mllm.cli.loading import load_model_and_processor
from gap_mllm.cli.scenes import (
    CAMERA_ASSUMED,
    assumed_intrinsics,
    intrinsics_for_frame,
    reconstructed_scene,
    scene_from_frames,
    synthetic_scene,
)
from gap_mllm.cli.space_backend import POINT_CLOUD_HOWTO, SpaceBackend, SpaceSettings, max_new_tokens_from_environment
from gap_mllm.point_cloud import reconstruction_point_cloud
from gap_mllm.tasks_gap_mllm import DETECTION, Box3D, serialize_detection
from gap_mllm.tiny.tiny_model import build_tiny_model, save_tiny_checkpoint

# 84×112 frames: the processor's VGGT input is 84×112 too (grid mode: Qwen 96×128 → 14/16 of it), so the
# intrinsics used for drawing must be exactly the ones reconstruct returned, with no rescaling.
FRAME_HEIGHT, FRAME_WIDTH = 84, 112
ANSWER_BOX = [0.0, 0.0, 2.0, 0.6, 0.6, 0.6, 0.0, 0.0, 0.0]  # on the optical axis: projects near the centre
GLTF_FROM_OPENCV = np.diag([1.0, -1.0, -1.0])
RED = np.array(visualize.PREDICTED)


@pytest.fixture(scope="module")
def heads_backend(tmp_path_factory):
    """The Space's own tiny model (camera + depth heads)."""
    return SpaceBackend(SpaceSettings(model="tiny", max_new_tokens=4), work_dir=tmp_path_factory.mktemp("heads"))


@pytest.fixture(scope="module")
def plain_backend(tmp_path_factory):
    """The package's tiny checkpoint: aggregator only, like an official GAP checkpoint."""
    folder = save_tiny_checkpoint(tmp_path_factory.mktemp("plain") / "ckpt")
    return SpaceBackend(SpaceSettings(model="tiny", max_new_tokens=4), work_dir=tmp_path_factory.mktemp("plain_out"),
                        loaded=load_model_and_processor(str(folder)))


@pytest.fixture
def uploads(tmp_path, monkeypatch):
    """Two random frames inside a fresh upload folder (GRADIO_TEMP_DIR)."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    paths = []
    for index in range(2):
        paths.append(tmp_path / f"frame_{index}.png")
        pixels = np.random.default_rng(index).integers(0, 256, (FRAME_HEIGHT, FRAME_WIDTH, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(paths[-1])
    return [str(p) for p in paths]


def answer_with(model, processor, monkeypatch, answer: str) -> None:
    """Make `model.generate` reply `answer` after the prompt (the untrained model only emits noise)."""
    answer_ids = processor.tokenizer(answer, add_special_tokens=False, return_tensors="pt")["input_ids"]

    def generate(inputs=None, input_ids=None, **kwargs):  # transformers' signature: `inputs` first
        return torch.cat([input_ids, answer_ids.expand(input_ids.shape[0], -1)], dim=1)

    monkeypatch.setattr(model, "generate", generate)


def record_reconstructions(encoder, monkeypatch) -> list:
    """Wrap `encoder.reconstruct`; returns the list its outputs are appended to."""
    outputs, original = [], encoder.reconstruct

    def reconstruct(images, *args, **kwargs):
        outputs.append(original(images, *args, **kwargs))
        return outputs[-1]

    monkeypatch.setattr(encoder, "reconstruct", reconstruct)
    return outputs


def record_projection_cameras(monkeypatch) -> list:
    """Wrap the box projection the frames are drawn with; returns the list of intrinsics it received."""
    cameras, original = [], visualize.project_box_edges

    def project(box, intrinsics, *args, **kwargs):
        cameras.append(np.array(intrinsics, dtype=np.float64))
        return original(box, intrinsics, *args, **kwargs)

    monkeypatch.setattr(visualize, "project_box_edges", project)
    return cameras


def glb_point_clouds(path) -> list[np.ndarray]:
    import trimesh

    scene = trimesh.load(path)
    return [np.asarray(g.vertices) for g in scene.geometry.values() if isinstance(g, trimesh.PointCloud)]


def drawn_red_pixels(path, upload) -> int:
    """Pixels of the output frame `path` that differ from the `upload` and are the answer's red."""
    drawn = np.asarray(Image.open(path).convert("RGB"), dtype=np.int64)
    original = np.asarray(Image.open(upload).convert("RGB"), dtype=np.int64)
    return int(((drawn != original).any(axis=-1) & (np.abs(drawn - RED).sum(axis=-1) < 30)).sum())


def grounding_answer() -> str:
    return '{"bbox_3d": [' + ", ".join(str(v) for v in ANSWER_BOX) + "]}"


def test_upload_gets_point_cloud_and_reconstructed_camera(heads_backend, uploads, monkeypatch):
    assert heads_backend.reconstructs and "normalised, not metric" in heads_backend.geometry_notice
    model = heads_backend.model
    answer_with(model, heads_backend.processor, monkeypatch, grounding_answer())
    reconstructions = record_reconstructions(model.geometry_encoder, monkeypatch)
    cameras = record_projection_cameras(monkeypatch)

    out = heads_backend.run(uploads, None, "3D visual grounding (text query)", query="the box")

    assert len(reconstructions) == 1
    estimate = reconstructions[0]
    assert estimate.image_size == (FRAME_HEIGHT, FRAME_WIDTH)
    frame0_camera = estimate.intrinsics[0, 0].double().numpy()
    assert cameras and all(np.array_equal(k, frame0_camera) for k in cameras)
    assert not np.array_equal(frame0_camera, assumed_intrinsics(FRAME_HEIGHT, FRAME_WIDTH))
    assert drawn_red_pixels(out.frames[0], uploads[0]) > 20  # the answer box is drawn on frame 0
    assert np.array_equal(np.asarray(Image.open(out.frames[1])), np.asarray(Image.open(uploads[1])))  # no pose

    clouds = glb_point_clouds(out.scene_glb)
    assert len(clouds) == 1 and len(clouds[0]) > 0
    assert f"point cloud ({len(clouds[0])} points)" in out.status and "normalised scale, not metric" in out.status
    # the GLB holds the depth cloud moved into frame 0's camera (then glTF's y-up axes)
    cloud = reconstruction_point_cloud(estimate, source="depth", confidence_percentile=50.0, max_points=20000)
    rotation, translation = (estimate.extrinsics[0, 0, :, :3].double().numpy(),
                             estimate.extrinsics[0, 0, :, 3].double().numpy())
    expected = (cloud.points @ rotation.T + translation) @ GLTF_FROM_OPENCV.T
    np.testing.assert_allclose(clouds[0], expected, atol=1e-5)


def test_without_heads_uploads_keep_the_assumed_camera_and_say_how_to_get_a_cloud(plain_backend, uploads,
                                                                                    monkeypatch):
    assert not plain_backend.reconstructs and plain_backend.geometry_notice == POINT_CLOUD_HOWTO
    assert "use_camera_head" in POINT_CLOUD_HOWTO and "from_qwen3_vl" in POINT_CLOUD_HOWTO
    answer_with(plain_backend.model, plain_backend.processor, monkeypatch, grounding_answer())
    cameras = record_projection_cameras(monkeypatch)

    out = plain_backend.run(uploads, None, "3D visual grounding (text query)", query="the box")

    assert cameras and all(np.array_equal(k, assumed_intrinsics(FRAME_HEIGHT, FRAME_WIDTH)) for k in cameras)
    assert glb_point_clouds(out.scene_glb) == []
    assert "assumed 60° camera; no point cloud." in out.status and POINT_CLOUD_HOWTO in out.status
    assert drawn_red_pixels(out.frames[0], uploads[0]) > 20


def test_unusable_camera_estimate_falls_back_to_the_assumed_camera(heads_backend, monkeypatch):
    encoder = heads_backend.model.geometry_encoder
    original = encoder.reconstruct

    def zero_field_of_view(images, *args, **kwargs):  # what an untrained head's ReLU often gives
        output = original(images, *args, **kwargs)
        output.intrinsics[..., 0, 0] = float("inf")
        return output

    monkeypatch.setattr(encoder, "reconstruct", zero_field_of_view)
    views = [Image.new("RGB", (FRAME_WIDTH, FRAME_HEIGHT), (90, 120, 30))] * 2
    scene = reconstructed_scene(heads_backend.model, heads_backend.processor, views)
    assert scene.camera == CAMERA_ASSUMED and scene.points is None
    assert "unusable" in scene.note
    np.testing.assert_array_equal(scene.intrinsics, scene_from_frames(views).intrinsics)


def test_estimated_intrinsics_are_rescaled_to_the_frame_size():
    camera = np.array([[100.0, 0.0, 56.0], [0.0, 90.0, 42.0], [0.0, 0.0, 1.0]])  # for a 84×112 VGGT input
    scaled = intrinsics_for_frame(camera, (84, 112), (224, 126))  # frame: 224 wide, 126 high
    np.testing.assert_allclose(scaled, [[200.0, 0.0, 112.0], [0.0, 135.0, 63.0], [0.0, 0.0, 1.0]])


def test_intrinsics_of_a_padded_frame_lose_the_padding():
    """Frames of different shapes were padded into VGGT's 518 square (frame 0, 640x480, at rows 63..455), and the square
    resized to the 448×448 VGGT input: the square's centre is the frame's centre, focal lengths scale per axis."""
    camera = np.array([[100.0, 0.0, 224.0], [0.0, 100.0, 224.0], [0.0, 0.0, 1.0]])
    scaled = intrinsics_for_frame(camera, (448, 448), (640, 480), (0, 63, 518, 392))
    np.testing.assert_allclose(scaled, [[100 * 640 / 448, 0.0, 320.0], [0.0, 100 * 518 * 480 / (448 * 392), 240.0],
                                        [0.0, 0.0, 1.0]])


def test_frames_of_different_shapes_reconstruct_without_their_padding(heads_backend):
    """A portrait frame beside a landscape one: reconstructed (not refused), and no point of the white padding is in
    the cloud (every frame is green; a white point could only come from the padding)."""
    views = [Image.new("RGB", (FRAME_WIDTH, FRAME_HEIGHT), (90, 120, 30)), Image.new("RGB", (60, 80), (90, 120, 30))]
    scene = reconstructed_scene(heads_backend.model, heads_backend.processor, views)
    assert scene.points is not None and len(scene.points) > 0
    assert not np.any(np.all(scene.colors == 255, axis=-1))


# ------------------------------------------------------------------ token budget, reference and held-out score


def answer_within_budget(model, processor, monkeypatch, answer: str) -> dict:
    """Make `model.generate` reply `answer` cut to the `max_new_tokens` it is given, as real generation is;
    returns the dict its last budget is recorded in."""
    answer_ids = processor.tokenizer(answer, add_special_tokens=False, return_tensors="pt")["input_ids"]
    seen = {"answer_tokens": answer_ids.shape[1]}

    def generate(inputs=None, input_ids=None, max_new_tokens=None, **kwargs):
        seen["max_new_tokens"] = max_new_tokens
        return torch.cat([input_ids, answer_ids[:, :max_new_tokens].expand(input_ids.shape[0], -1)], dim=1)

    monkeypatch.setattr(model, "generate", generate)
    return seen


def test_the_space_app_leaves_each_task_its_own_budget(monkeypatch):
    """examples/space/app.py with GAP_MLLM_MAX_TOKENS unset: no cap (each task's own budget); set: that cap."""
    import runpy
    from pathlib import Path

    from gap_mllm.cli import space_ui

    app = Path(__file__).resolve().parents[1] / "examples" / "space" / "app.py"
    launched = {}
    monkeypatch.setattr(space_ui, "launch", lambda settings, **kwargs: launched.update(settings=settings))
    monkeypatch.delenv("GAP_MLLM_MAX_TOKENS", raising=False)
    runpy.run_path(str(app), run_name="__main__")
    assert launched["settings"].max_new_tokens is None and launched["settings"].model == "mini"
    monkeypatch.setenv("GAP_MLLM_MAX_TOKENS", "300")
    runpy.run_path(str(app), run_name="__main__")
    assert launched["settings"].max_new_tokens == 300
    for bad in ("0", "-5", "many"):
        with pytest.raises(ValueError, match=f"GAP_MLLM_MAX_TOKENS={bad!r}: expected a positive whole number"):
            max_new_tokens_from_environment({"GAP_MLLM_MAX_TOKENS": bad})


def test_a_detection_answer_is_not_cut_at_128_tokens(tmp_path, monkeypatch):
    model, processor = build_tiny_model()
    scene = synthetic_scene(0)
    truth = [Box3D.from_list(box, label=label) for box, label in zip(scene.reference_boxes, scene.reference_labels)]
    answer = serialize_detection(truth)
    backend = SpaceBackend(SpaceSettings(model="tiny", max_new_tokens=max_new_tokens_from_environment({})),
                           work_dir=tmp_path, loaded=(model, processor, False))
    seen = answer_within_budget(model, processor, monkeypatch, answer)
    assert seen["answer_tokens"] > 128

    out = backend.run(None, "synthetic room A", "3D object detection", query="")  # the page sends its empty boxes

    assert seen["max_new_tokens"] == DETECTION.max_new_tokens  # the task's budget, no cap
    assert out.parsed.startswith(f"{len(truth)} box(es)") and "parse problem" not in out.parsed
    assert "4 of 4 reference box(es) found at IoU > 0.25" in out.reference and "input" not in out.reference
    # the old fixed budget of 128 tokens cuts this answer: the last boxes are lost
    capped = SpaceBackend(SpaceSettings(model="tiny", max_new_tokens=128), work_dir=tmp_path,
                          loaded=(model, processor, False)).run(None, "synthetic room A", "3D object detection")
    assert seen["max_new_tokens"] == 128 and not capped.parsed.startswith(f"{len(truth)} box(es)")


def test_a_bundled_room_shows_the_reference_and_the_held_out_score(tmp_path, monkeypatch, uploads):
    """A model folder with evaluation_results.json (a copy of the mini's): bundled rooms get the request, the
    exact answer, this answer's score and the held-out line of the task; uploads get none of it."""
    import shutil

    from gap_mllm.cli.model_scores import RESULTS_FILE, held_out_scores
    from gap_mllm.mini import default_model_path

    folder = save_tiny_checkpoint(tmp_path / "scored")
    shutil.copy(default_model_path() / RESULTS_FILE, folder / RESULTS_FILE)
    backend = SpaceBackend(SpaceSettings(model=str(folder), max_new_tokens=None), work_dir=tmp_path / "out",
                           loaded=load_model_and_processor(str(folder)))
    examples = synthetic_scene(0).example_inputs
    given = examples["captioning"]
    defaults = backend.example_defaults("synthetic room A")  # the page is prefilled with the room's own requests
    assert defaults["query"] == examples["grounding"]["query"]
    assert defaults["marker"] == " ".join(str(v) for v in examples["reconstruction"]["marker"])
    answer_within_budget(backend.model, backend.processor, monkeypatch, "a pink dresser against the wall")

    out = backend.run(None, "synthetic room A", "3D dense captioning (pick an object)", object_choice=defaults["object"])

    lines = out.reference.splitlines()
    assert lines[0] == "input: box=[" + ", ".join(f"{v:.2f}" for v in given["box"]) + "]"  # 2 decimals, not 17
    assert lines[1] == "truth: " + " | ".join(given["references"])
    assert lines[2] == held_out_scores(folder, constrained=True).line("captioning")
    assert held_out_scores(folder, constrained=True).line("captioning").startswith("held-out (")

    answer_within_budget(backend.model, backend.processor, monkeypatch, '{"pointmap": [0.0, 0.0, 1.0], "label": "wall"}')
    out = backend.run(None, "synthetic room A", "marker point reconstruction", marker_text=defaults["marker"])
    truth = examples["reconstruction"]
    expected_error = float(np.linalg.norm(np.subtract(truth["point"], [0.0, 0.0, 1.0])))
    assert f"truth: point: [{', '.join(f'{v:.2f}' for v in truth['point'])}] label: {truth['label']}" in out.reference
    assert f"score: point error {expected_error:.2f} m; label wrong" in out.reference
    assert out.reference.endswith(held_out_scores(folder, constrained=True).line("reconstruction"))
    assert backend.example_defaults("(my uploaded files)") == {"object": None, "query": "", "marker": ""}
    assert backend.run(uploads, None, "3D dense captioning (pick an object)",
                       box_text="0 0 2 0.5 0.5 0.5 0 0 0").reference == ""


def test_a_space_request_on_an_example_without_its_query_asks_the_examples_query():
    """The page sends the request before the example's query fills its field in: the backend asks the example's own
    query (and its own object and marker), not an empty one."""
    from gap_mllm.cli.space_backend import NO_EXAMPLE, TASK_LABELS, SpaceBackend

    backend = SpaceBackend.__new__(SpaceBackend)  # no model: only the request is built
    backend.processor, backend._examples = SimpleNamespace(tokenizer=None), {}
    scene = backend.example("synthetic room A")
    labels = {spec.name: label for label, spec in TASK_LABELS.items()}
    own = scene.example_inputs
    assert backend._request(labels["grounding"], "", None, "", "", scene).query == own["grounding"]["query"]
    assert backend._request(labels["grounding"], "the red lamp", None, "", "", scene).query == "the red lamp"
    marker = backend._request(labels["reconstruction"], None, None, "", "", scene).marker
    assert marker == tuple(own["reconstruction"]["marker"])
    assert list(backend._request(labels["captioning"], None, None, "", "", scene).box) == own["captioning"]["box"]
    assert NO_EXAMPLE not in own


@pytest.mark.parametrize("zero_gpu, expected", [(True, "off"), (False, "auto")])
def test_the_space_compiles_decoding_on_a_dedicated_gpu_only(monkeypatch, zero_gpu, expected):
    """ZeroGPU runs every request in a fresh worker, which would compile again: decoding stays uncompiled there;
    elsewhere it is compiled where the model is on CUDA ("auto")."""
    from gap_mllm.cli import space_backend

    monkeypatch.setattr(space_backend, "on_zero_gpu", lambda: zero_gpu)
    assert space_backend.space_compile_decoding() == expected
