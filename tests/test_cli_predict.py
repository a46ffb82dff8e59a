"""`gap-mllm predict` and what it shares with the Space: parsed answers, saved pictures, upload rules."""

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from gap_mllm.cli import loading, predict
from gap_mllm.cli.loading import load_model_and_processor
from gap_mllm.cli.scenes import synthetic_scene
from gap_mllm.cli.tasks import TaskRequest, run_task
from gap_mllm.cli.uploads import UploadError, UploadLimits, load_frames
from gap_mllm.cli.visualize import box_edge_points, write_visualisations
from gap_mllm.point_cloud import read_ply
from gap_mllm.target_format import Box3D, serialize_detection
from gap_mllm.tiny.tiny_model import build_tiny_model, save_tiny_checkpoint


def parse(argv):
    parser = argparse.ArgumentParser()
    predict.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("predict") / "ckpt")


@pytest.fixture
def frames(tmp_path):
    paths = []
    for index in range(3):
        paths.append(tmp_path / f"f{index}.png")
        Image.fromarray(np.random.default_rng(index).integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def scripted_generate(model, processor, answer: str):
    """Make `model.generate` return the prompt followed by the tokens of `answer` (a known reply, so the
    parse → draw path is checked with real values; the untrained model only emits noise)."""
    answer_ids = processor.tokenizer(answer, add_special_tokens=False, return_tensors="pt")["input_ids"]

    def generate(input_ids=None, **kwargs):
        return torch.cat([input_ids, answer_ids.expand(input_ids.shape[0], -1)], dim=1)

    model.generate = generate


def test_predict_prints_parsed_answer_and_saves_pictures(checkpoint, frames, tmp_path, capsys):
    out = tmp_path / "vis"
    code = predict.main(parse(["--model", str(checkpoint), "--images", *map(str, frames), "--task", "detection",
                               "--max-new-tokens", "8", "--save-dir", str(out)]))
    assert code == 0
    printed = capsys.readouterr().out
    assert "task       : detection on 3 frame(s)" in printed and "parsed     : " in printed
    assert "mean gate  : level 0:" in printed and "assumed 60° pinhole" in printed
    # the untrained model answers with blank lines, which stop generation: no box, no point, no cloud
    assert "answer     : (no answer: the model generated" in printed and "\n\n\n\n" not in printed
    assert "not saved glb: no point cloud" in printed and "not saved ply: no point cloud" in printed
    assert "this model's geometry encoder has no camera and depth heads" in printed  # why there is no cloud
    assert "held-out" not in printed and "truth" not in printed  # the user's own frames: no reference
    assert {p.name for p in out.iterdir()} == {"frames_with_boxes.png", "fusion_gates.png"}
    sheet = Image.open(out / "frames_with_boxes.png")
    assert sheet.size[0] == 2 * 80 and sheet.size[1] > 2 * 60  # 3 frames on a 2-column sheet, legend below


@pytest.fixture(scope="module")
def mini():
    """GAP-MLLM-Mini loaded once, the way `gap-mllm predict` loads it (Auto classes, trust_remote_code)."""
    return load_model_and_processor("mini")


@pytest.fixture
def preloaded_mini(mini, monkeypatch):
    """`gap-mllm predict --model mini` answering with the already loaded model (the loading itself is the same
    `load_model_and_processor` call, covered by test_mini_default.py)."""
    monkeypatch.setattr(loading, "load_model_and_processor", lambda model="mini", *a, **k: mini)
    return mini


def test_predict_reconstructs_your_own_frames_with_the_mini(preloaded_mini, tmp_path, capsys):
    """SynthRooms frames given as plain files (no geometry): the mini's camera and depth heads reconstruct them."""
    paths = []
    for index, view in enumerate(synthetic_scene(1, num_frames=3).views):
        paths.append(tmp_path / f"frame_{index}.png")
        view.save(paths[-1])
    out = tmp_path / "out"
    code = predict.main(parse(["--images", *map(str, paths), "--task", "detection", "--max-new-tokens", "1",
                               "--save-dir", str(out)]))
    assert code == 0
    printed = capsys.readouterr().out
    assert f"saved ply: {out / 'scene.ply'}" in printed and f"saved glb: {out / 'scene.glb'}" in printed
    points, colors = read_ply(out / "scene.ply")  # a 1-token answer has no box: the cloud alone
    assert len(points) > 1000 and np.isfinite(points).all() and colors.shape == points.shape
    assert f"point cloud: {len(points):,} points in the glb and ply" in printed
    assert points[:, 2].std() > 0 and np.abs(points).max() < 1e3  # a cloud with depth, not a degenerate plane
    import trimesh

    cloud = [g for g in trimesh.load(out / "scene.glb").geometry.values() if type(g).__name__ == "PointCloud"]
    assert len(cloud) == 1 and len(cloud[0].vertices) == len(points)
    assert "held-out" not in printed  # own frames: no held-out line


def test_predict_example_prints_the_reference_and_the_held_out_score(preloaded_mini, capsys):
    from gap_mllm.cli.model_scores import held_out_scores
    from gap_mllm.mini import default_model_path

    code = predict.main(parse(["--example", "synthetic room A", "--task", "reconstruction"]))
    assert code == 0
    printed = capsys.readouterr().out
    given = synthetic_scene(0).example_inputs["reconstruction"]
    view, x, y = given["marker"]
    assert f"input      : marker=(view {view}, x {x}, y {y})" in printed
    assert f"truth      : point: [{', '.join(f'{v:.2f}' for v in given['point'])}] label: {given['label']}" in printed
    assert "score      : " in printed
    assert held_out_scores(default_model_path()).line("reconstruction") + "\n" in printed


def test_predict_json_on_a_bundled_example(checkpoint, capsys):
    code = predict.main(parse(["--model", str(checkpoint), "--example", "synthetic room A", "--task", "reconstruction",
                               "--marker", "1", "100", "80", "--max-new-tokens", "6", "--json"]))
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["task"] == "reconstruction" and len(result["mean_gate_per_level"]) == 4
    assert set(result) >= {"raw", "boxes", "point", "label", "reason"}


@pytest.mark.parametrize("argv, message", [
    (["--task", "grounding"], "grounding needs a text query"),
    (["--task", "captioning"], "captioning needs the object's 3D box"),
    (["--task", "reconstruction", "--marker", "7", "1", "1"], "marker view 7 is out of range"),
])
def test_predict_rejects_incomplete_requests(checkpoint, frames, capsys, argv, message):
    assert predict.main(parse(["--model", str(checkpoint), "--images", *map(str, frames), *argv])) == 2
    assert message in capsys.readouterr().err


def test_scripted_detection_answer_is_parsed_drawn_and_exported(tmp_path):
    model, processor = build_tiny_model()
    scene = synthetic_scene(0)
    truth = [Box3D.from_list(scene.reference_boxes[i], label=scene.reference_labels[i]) for i in range(2)]
    scripted_generate(model, processor, serialize_detection(truth))
    result = run_task(model, processor, scene.views, TaskRequest("detection"))
    assert [b.label for b in result.boxes] == [b.label for b in truth]
    np.testing.assert_allclose([b.to_list() for b in result.boxes], [b.rounded().to_list() for b in truth])
    assert "2 box(es)" in result.summary()

    written = write_visualisations(scene, result, tmp_path)
    points, colors = read_ply(written["ply"])
    edges = box_edge_points(result.boxes)
    assert len(points) == len(scene.points) + len(edges)
    np.testing.assert_allclose(points[-len(edges):], edges, atol=1e-5)  # the boxes are in the PLY, in red
    assert (colors[-len(edges):] == [230, 40, 40]).all()
    import trimesh

    loaded = trimesh.load(written["glb"])
    kinds = sorted(type(g).__name__ for g in loaded.geometry.values())
    assert "PointCloud" in kinds and kinds.count("Trimesh") == 12 * (2 + len(scene.reference_boxes))


def test_scripted_answers_for_grounding_captioning_and_reconstruction():
    model, processor = build_tiny_model()
    scene = synthetic_scene(1)
    scripted_generate(model, processor, '{"bbox_3d": [0.1, 0.2, 2.0, 0.5, 0.5, 0.9, 0.0, 0.0, 0.0]}')
    grounded = run_task(model, processor, scene.views, TaskRequest("grounding", query="the lamp"))
    assert grounded.boxes[0].to_list() == [0.1, 0.2, 2.0, 0.5, 0.5, 0.9, 0.0, 0.0, 0.0]
    scripted_generate(model, processor, "a brown wooden desk by the wall")
    box = list(scene.reference_boxes[0])
    captioned = run_task(model, processor, scene.views, TaskRequest("captioning", box=box))
    assert captioned.parsed.caption == "a brown wooden desk by the wall" and captioned.parsed.reason is None
    np.testing.assert_allclose(captioned.boxes[0].to_list(), box)
    scripted_generate(model, processor, '{"pointmap": [0.5, -0.25, 3.0], "label": "wall"}')
    pointed = run_task(model, processor, scene.views, TaskRequest("reconstruction", marker=(0, 10, 10)))
    assert pointed.point == (0.5, -0.25, 3.0) and pointed.to_dict()["label"] == "wall"


def test_upload_rules(tmp_path, frames):
    limits = UploadLimits(max_files=2, max_file_bytes=50_000)
    with pytest.raises(UploadError, match="Too many files: 3"):
        load_frames(frames, limits)
    with pytest.raises(UploadError, match="not in the upload folder"):
        load_frames(frames[:1], UploadLimits(), allowed_roots=[tmp_path / "uploads"])
    link_root = tmp_path / "uploads"
    link_root.mkdir()
    (link_root / "escape.png").symlink_to(frames[0])  # a link out of the folder is followed, then refused
    with pytest.raises(UploadError, match="not in the upload folder"):
        load_frames([link_root / "escape.png"], UploadLimits(), allowed_roots=[link_root])
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(big)
    with pytest.raises(UploadError, match="MB limit"):
        load_frames([big], limits)
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    with pytest.raises(UploadError, match="not a readable image"):
        load_frames([fake])
    script = tmp_path / "run.sh"
    script.write_text("echo")
    with pytest.raises(UploadError, match="unsupported file type .sh"):
        load_frames([script])
    with pytest.raises(UploadError, match="at least one"):
        load_frames([])


def test_gif_is_sampled_and_frames_share_one_size(tmp_path, frames):
    gif = tmp_path / "clip.gif"
    images = [Image.new("RGB", (64, 48), (i * 20, 0, 0)) for i in range(12)]
    images[0].save(gif, save_all=True, append_images=images[1:])
    loaded = load_frames([gif], UploadLimits(max_frames=4))
    assert len(loaded) == 4 and {im.size for im in loaded} == {(64, 48)}
    assert [im.getpixel((0, 0))[0] for im in loaded] == [0, 80, 140, 220]  # frames 0, 4, 7, 11
    mixed = [frames[0], tmp_path / "other.png"]
    Image.new("RGB", (40, 30)).save(mixed[1])
    assert {im.size for im in load_frames(mixed)} == {(80, 60)}
    with pytest.raises(UploadError, match="either one video"):
        load_frames([gif, frames[0]])
