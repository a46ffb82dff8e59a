"""`gap-mllm predict` and what it shares with the Space: parsed answers (an answer in another task's format is not the
task's answer: exit status 3), saved pictures, upload rules; a marker given in the frame's original pixels (a phone
photo's upright ones too), and refusals that come before the model loads (a query too long for the model's context,
a query holding `<image>`, a frame the processor cannot read, a read-only --out); a grounding stage given as the task
says how to run it; the Mini given by its path notes on the user's own frames that it knows SynthRooms rooms only."""

import argparse
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gap_mllm.cli import loading, predict
from gap_mllm.cli.main import main as gap_mllm
from gap_mllm.cli.loading import load_model_and_processor
from gap_mllm.cli.scenes import synthetic_scene
from gap_mllm.cli.tasks import TaskRequest, answer_format, run_task
from gap_mllm.cli.uploads import (CLI_WORDS, FrameShape, UploadError, UploadLimits, check_frames, cli_limits, load_frames,
                                  read_frames)
from gap_mllm.cli.visualize import box_edge_points, write_visualisations
from gap_mllm.image_utils_gap_mllm import displayed_size
from gap_mllm.point_cloud import read_ply
from gap_mllm.processing.scannet_layout import read_color
from gap_mllm.processing_gap_mllm import load_image
from gap_mllm.tasks_gap_mllm import (
    Box3D,
    CaptionResult,
    DetectionResult,
    SpatialAnswerResult,
    parse_caption,
    parse_detection,
    parse_spatial_answer,
    serialize_detection,
)
from gap_mllm.tiny.tiny_model import build_tiny_model, save_tiny_checkpoint
from gap_mllm.training.feature_cache import decoded_example

REPO = Path(__file__).resolve().parent.parent


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
    parse → draw path is checked with real values; the untrained model only emits noise), after the forward pass of
    the prompt that a real `generate` runs first (its prefill: the fusion gates the front ends show are its own)."""
    answer_ids = processor.tokenizer(answer, add_special_tokens=False, return_tensors="pt")["input_ids"]

    def generate(inputs=None, input_ids=None, **kwargs):  # transformers' signature: `inputs` first
        model(input_ids=input_ids, **{name: kwargs[name] for name in processor.model_input_names if name in kwargs})
        return torch.cat([input_ids, answer_ids.expand(input_ids.shape[0], -1)], dim=1)

    model.generate = generate


def test_predict_prints_parsed_answer_and_saves_pictures(checkpoint, frames, tmp_path, capsys):
    out = tmp_path / "vis"
    code = predict.main(parse(["--model", str(checkpoint), "--images", *map(str, frames), "--task", "detection",
                               "--max-new-tokens", "8", "--out", str(out), "--free"]))
    captured = capsys.readouterr()
    printed = captured.out
    # decoded freely, the untrained model's answer does not parse: a script sees it in the exit status, the answer is
    # still there (constrained, the default, 8 tokens hold only the empty list "```json\n[\n]```", which parses)
    assert code == predict.PARSE_FAILURE_STATUS == 3
    saved = json.loads((out / "answer.json").read_text())
    assert saved["task"] == "detection" and saved["boxes"] == [] and saved["reason"].startswith("no detection entries")
    assert f"parse problem: {saved['reason']}" in printed and f"saved answer: {out / 'answer.json'}" in printed
    assert captured.err.strip().splitlines()[-1] == (f"gap-mllm predict: the answer did not parse as a detection answer "
                                                     f"({saved['reason']}); exit status 3")
    assert "task       : detection on 3 frame(s)" in printed and "parsed     : " in printed
    assert "mean gate  : level 0:" in printed and "assumed 60° pinhole" in printed
    # the untrained model answers with blank lines, which stop generation: no box, no point, no cloud
    assert "answer     : (no answer: the model generated" in printed and "\n\n\n\n" not in printed
    assert "not saved ply: no point cloud" in printed and "glb" not in printed  # glb: only with --formats ... glb
    assert "this model's geometry encoder has no camera and depth heads" in printed  # why there is no cloud
    assert "held-out" not in printed and "truth" not in printed  # the user's own frames: no reference
    # the answer, its pictures, and the marker that makes the folder predict's own (processing/output_folder.py)
    assert {p.name for p in out.iterdir()} == {"answer.json", "frames_with_boxes.png", "fusion_gates.png",
                                               ".gap-mllm-output.json"}
    sheet = Image.open(out / "frames_with_boxes.png")
    assert sheet.size[0] == 2 * 80 and sheet.size[1] > 2 * 60  # 3 frames on a 2-column sheet, legend below


@pytest.fixture(scope="module")
def mini():
    """GAP-MLLM-Mini loaded once, the way `gap-mllm predict` loads it (Auto classes, trust_remote_code)."""
    return load_model_and_processor("mini")


def preload(monkeypatch, loaded):
    """`gap-mllm predict` answering with an already loaded `(model, processor, is_tiny)`, wherever predict reads
    `load_model_and_processor` from (its module or `loading`)."""
    monkeypatch.setattr(loading, "load_model_and_processor", lambda model="mini", *a, **k: loaded)
    monkeypatch.setattr(predict, "load_model_and_processor", lambda model="mini", *a, **k: loaded, raising=False)


@pytest.fixture
def preloaded_mini(mini, monkeypatch):
    """`gap-mllm predict --model mini` answering with the already loaded model (the loading itself is the same
    `load_model_and_processor` call, covered by test_mini_default.py)."""
    preload(monkeypatch, mini)
    return mini


def test_predict_reconstructs_your_own_frames_with_the_mini(preloaded_mini, tmp_path, capsys):
    """SynthRooms frames given as plain files (no geometry): the mini's camera and depth heads reconstruct them."""
    paths = []
    for index, view in enumerate(synthetic_scene(1, num_frames=3).views):
        paths.append(tmp_path / f"frame_{index}.png")
        view.save(paths[-1])
    out = tmp_path / "out"
    code = predict.main(parse(["--images", *map(str, paths), "--task", "detection", "--max-new-tokens", "1",
                               "--out", str(out), "--formats", "png", "glb", "ply"]))  # glb: asked for
    assert code == predict.PARSE_FAILURE_STATUS  # a 1-token answer is no detection answer
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


def test_predict_counts_the_ply_vertices_it_writes(preloaded_mini, monkeypatch, tmp_path, capsys):
    """The PLY holds the reconstructed cloud and the points sampled along the answer's box edges: the message
    gives both numbers, as the files hold them (the GLB draws the boxes as tubes: its cloud is the cloud alone)."""
    model, processor, _ = preloaded_mini
    boxes = [Box3D.from_list([0.1, 0.2, 2.0, 0.5, 0.5, 0.9, 0.0, 0.0, 0.0], label="chair"),
             Box3D.from_list([-0.4, 0.1, 2.5, 0.6, 0.8, 0.6, 0.3, 0.0, 0.0], label="table")]
    answer_ids = processor.tokenizer(serialize_detection(boxes), add_special_tokens=False, return_tensors="pt")["input_ids"]
    monkeypatch.setattr(model, "generate", lambda inputs=None, input_ids=None, **k: torch.cat([input_ids, answer_ids], dim=1))
    paths = []
    for index, view in enumerate(synthetic_scene(1, num_frames=3).views):
        paths.append(tmp_path / f"frame_{index}.png")
        view.save(paths[-1])
    out = tmp_path / "out"
    assert predict.main(parse(["--images", *map(str, paths), "--task", "detection", "--out", str(out),
                               "--formats", "png", "glb", "ply"])) == 0  # glb only when asked for
    printed = capsys.readouterr().out
    points, _ = read_ply(out / "scene.ply")
    import trimesh

    cloud = [g for g in trimesh.load(out / "scene.glb").geometry.values() if type(g).__name__ == "PointCloud"][0]
    edges = 2 * 12 * 24  # 2 boxes, 12 edges, 24 points per edge (box_edge_points)
    assert len(points) == len(cloud.vertices) + edges
    assert f"point cloud: {len(cloud.vertices):,} points in the glb and ply (" in printed
    assert printed.splitlines()[-1].endswith(f"; the ply holds {len(points):,} vertices: these {len(cloud.vertices):,} "
                                             f"points + {edges:,} sampled along the answer's box edges")


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
    assert held_out_scores(default_model_path(), constrained=True).line("reconstruction") + "\n" in printed


def test_predict_example_of_a_task_without_inputs_prints_no_empty_input_line(checkpoint, capsys):
    """Detection takes no query, box or marker: no `input      :` line with nothing after it (as the demo)."""
    predict.main(parse(["--model", str(checkpoint), "--example", "synthetic room A", "--task", "detection",
                        "--max-new-tokens", "2"]))
    printed = capsys.readouterr().out
    assert "task       : detection on 4 frame(s)" in printed and "truth      : " in printed
    assert not [line for line in printed.splitlines() if line.startswith("input")]


def test_predict_json_on_a_bundled_example(checkpoint, capsys):
    code = predict.main(parse(["--model", str(checkpoint), "--example", "synthetic room A", "--task", "reconstruction",
                               "--marker", "1", "100", "80", "--max-new-tokens", "6", "--json", "--free"]))
    result = json.loads(capsys.readouterr().out)
    # decoded freely (--free): the untrained model's blank lines
    assert code == predict.PARSE_FAILURE_STATUS and result["reason"] == "empty answer"
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


@pytest.mark.parametrize("suffix, options, cut_read_as", [(".png", {}, "animated PNG"),  # a cut WebP's header
                                                        (".webp", {"lossless": True}, "image")])  # says no animation
def test_an_animated_png_or_webp_is_sampled_as_a_gif_is(tmp_path, frames, suffix, options, cut_read_as):
    animated = tmp_path / f"clip{suffix}"
    images = [Image.new("RGB", (64, 48), (i * 20, 0, 0)) for i in range(12)]
    images[0].save(animated, save_all=True, append_images=images[1:], **options)
    loaded = load_frames([animated], UploadLimits(max_frames=4))
    assert [im.getpixel((0, 0))[0] for im in loaded] == [0, 80, 140, 220]  # frames 0, 4, 7, 11, as a GIF's
    assert check_frames([animated], UploadLimits(max_frames=4)) == FrameShape(4, (64, 48), ((64, 48),) * 4)
    with pytest.raises(UploadError, match=r"^give either one video \(or animated GIF, PNG or WebP\) or several "):
        load_frames([animated, frames[0]], words=CLI_WORDS)
    broken = tmp_path / f"broken{suffix}"
    broken.write_bytes(animated.read_bytes()[: len(animated.read_bytes()) // 2])
    with pytest.raises(UploadError) as refused:
        load_frames([broken])
    assert str(refused.value) == f"broken{suffix}: not a readable {cut_read_as} (OSError)."


def test_frames_of_another_shape_are_answered_padded_and_a_strip_refused(checkpoint, tmp_path, frames, capsys, caplog):
    """A portrait frame beside landscape ones keeps its shape (never stretched): predict answers with one note (the
    processor pads the frames as VGGT's loader does), a marker on it lands on its own pixels; a 1x4000 strip, too thin
    to align, is refused by name on every path that reads frames (predict before the model, the Space)."""
    portrait = tmp_path / "portrait.png"
    Image.new("RGB", (60, 80)).save(portrait)
    given = [frames[0], portrait]
    loaded = read_frames(given, words=CLI_WORDS)
    assert [view.size for view in loaded.views] == [(80, 60), (60, 80)] and check_frames(given).originals == loaded.originals
    assert loaded.on_model_frames((1, 59, 79)) == (1, 59, 79)  # its own pixels, not the first frame's
    with caplog.at_level(logging.WARNING):  # the processor's note, on stderr through transformers' logging
        code = predict.main(parse(["--model", str(checkpoint), "--images", *map(str, given), "--task", "detection",
                                   "--max-new-tokens", "2"]))
    notes = [record for record in caplog.records if "frames of different shapes (60x80, 80x60)" in record.getMessage()]
    assert code == 3 and len(notes) == 1  # answered (3: the untrained model's 2 tokens do not parse; 2: refused)
    capsys.readouterr()
    strip = tmp_path / "strip.png"
    Image.new("RGB", (1, 4000)).save(strip)
    message = (f"{strip} is 1x4000 (portrait): too thin to align with frames of another shape (padded to VGGT's "
               "518x518 square, its shorter side would keep no pixel); crop it or leave this frame out.")
    for read in (load_frames, check_frames):
        with pytest.raises(UploadError) as refused:
            read([frames[0], strip], words=CLI_WORDS)
        assert str(refused.value) == message
    with pytest.raises(UploadError, match=r"^strip.png is 1x4000 \(portrait\): too thin"):
        load_frames([frames[0], strip])  # the Space names an upload by its file name
    assert predict.main(parse(["--model", str(checkpoint), "--images", str(frames[0]), str(strip), "--task", "detection"])) == 2
    assert capsys.readouterr().err == f"gap-mllm predict: error: {message}\n"


def test_predict_says_the_mini_knows_synthrooms_only_on_your_own_frames(frames, monkeypatch, capsys):
    """The default model on frames that are not a bundled room: one line first; on a bundled room, none."""
    model, processor = build_tiny_model()
    preload(monkeypatch, (model, processor, False))  # the note comes from --model mini, not from the weights
    predict.main(parse(["--images", *map(str, frames), "--task", "detection", "--max-new-tokens", "2"]))
    assert capsys.readouterr().err.splitlines().count(predict.MINI_OWN_FRAMES_NOTE) == 1
    assert "knows SynthRooms rooms only" in predict.MINI_OWN_FRAMES_NOTE
    predict.main(parse(["--example", "synthetic room A", "--task", "detection", "--max-new-tokens", "2"]))
    assert "SynthRooms rooms only" not in capsys.readouterr().err
    predict.main(parse(["--model", "tiny", "--images", *map(str, frames), "--task", "detection", "--max-new-tokens", "2"]))
    assert "SynthRooms rooms only" not in capsys.readouterr().err


def test_predict_json_exits_3_on_an_answer_that_does_not_parse(checkpoint, frames, capsys):
    code = predict.main(parse(["--model", str(checkpoint), "--images", *map(str, frames), "--task", "grounding",
                               "--query", "the chair", "--max-new-tokens", "2", "--json"]))
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert code == 3 and result["reason"] and result["boxes"] == [] and "raw" in result
    assert f"did not parse as a grounding answer ({result['reason']}); exit status 3" in captured.err


def test_predict_help_documents_the_exit_status(capsys):
    from gap_mllm.cli.main import main

    with pytest.raises(SystemExit) as done:
        main(["predict", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert ("Exit status: 0 the answer parsed; 2 a mistake in the command (a missing or unusable file, a bad value, a "
            "model that cannot be loaded); 3 the model's answer did not parse cleanly as the task's answer") in text
    assert "a folder of them (its images sorted by file name)" in text


def write_images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        Image.new("RGB", (40, 30), (10 * index, 0, 0)).save(folder / name, format="PNG")
    return folder


def test_predict_takes_a_folder_of_frames_sorted_by_name(checkpoint, tmp_path, capsys):
    folder = write_images(tmp_path / "myframes", ["b.png", "a.PNG", "c.jpg", ".hidden.png"])
    (folder / "notes.txt").write_text("not a frame")
    (folder / "sub.png").mkdir()  # a folder with an image's name is no frame
    assert [p.name for p in predict.frame_paths([str(folder)], 8)] == ["a.PNG", "b.png", "c.jpg"]
    code = predict.main(parse(["--model", str(checkpoint), "--images", str(folder), "--task", "detection",
                               "--max-new-tokens", "2"]))
    assert code == 3 and "task       : detection on 3 frame(s)" in capsys.readouterr().out  # untrained: no answer
    # more images than --max-frames: spread evenly in name order, as a video is sampled, and said on stderr
    many = write_images(tmp_path / "many", [f"frame_{i:02d}.png" for i in range(10)])
    assert [p.name for p in predict.frame_paths([str(many)], 4)] == [f"frame_{i:02d}.png" for i in (0, 3, 6, 9)]
    assert capsys.readouterr().err == f"{many}: 10 images; 4 of them, spread evenly in name order, are used (--max-frames 4)\n"


def test_predict_names_the_full_path_of_a_file_it_cannot_use(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "clip.txt").write_text("x")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "broken.png").write_text("not an image")
    cases = [
        ("empty", f"{empty}: no image files in this folder (looked for .bmp, .jpeg, .jpg, .png, .webp; a video or GIF "
                  "is given as the file itself)"),
        ("myframes", f"{tmp_path / 'myframes'}: no such file or folder"),
        ("notes.txt", f"{tmp_path / 'notes.txt'}: unsupported file type .txt; allowed: .avi, .bmp, .gif, .jpeg, .jpg, "
                      ".mkv, .mov, .mp4, .png, .webm, .webp."),
        ("broken.png", f"{tmp_path / 'broken.png'}: not a readable image (UnidentifiedImageError)."),
    ]
    for given, message in cases:  # relative paths given, the full path named; refused before any model is loaded
        assert predict.main(parse(["--model", str(checkpoint), "--images", given, "--task", "detection"])) == 2
        assert capsys.readouterr().err == f"gap-mllm predict: error: {message}\n"
    # the Space keeps its own words: an upload named by its file name only
    with pytest.raises(UploadError, match=r"^myframes: not found \(uploads expire; please upload it again\)\.$"):
        load_frames([tmp_path / "myframes"])


def test_a_frame_or_save_dir_that_is_a_link_loop_is_refused_before_the_model(checkpoint, frames, tmp_path,
                                                                              monkeypatch, capsys):
    """A frame that is a link loop (Path.resolve raises RuntimeError) and an output folder that is one are each one
    line before any model is loaded (processing/path_containment.py broken_link), never a crash or a failure after
    the model ran."""
    from gap_mllm.cli.main import main as gap_mllm

    monkeypatch.setattr(loading, "load_model_and_processor", lambda *a, **k: pytest.fail("the model was loaded"))
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    for run in (gap_mllm, lambda argv: predict.main(parse(argv[1:]))):  # the command line, the module
        assert run(["predict", "--model", str(checkpoint), "--images", str(loop), "--task", "detection"]) == 2
        assert capsys.readouterr().err == (f"gap-mllm predict: error: {loop}: this is a symbolic link loop (following its "
                                           "links leads back to itself); give the file itself\n")
    save_dir = tmp_path / "saved"
    save_dir.symlink_to(save_dir)
    assert gap_mllm(["predict", "--model", str(checkpoint), "--images", *map(str, frames), "--task", "detection",
                     "--out", str(save_dir)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"gap-mllm predict: error: --out {save_dir} is a symbolic link loop (following its links leads back to "
        "itself); give a folder (a new name, or a link to a real one)"]


# ---------------------------------------------------------- a marker in original pixels; a query too long for the model


def save_frames(folder: Path, count: int, width: int, height: int) -> list[Path]:
    """`count` smooth frames of `width`x`height` (small PNGs, whatever their size)."""
    folder.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None].repeat(height, 0).repeat(3, 2)
    paths = []
    for index in range(count):
        paths.append(folder / f"f{index}.png")
        Image.fromarray(np.roll(ramp, 7 * index, axis=1)).save(paths[-1])
    return paths


def test_predict_marker_takes_original_pixels_on_a_frame_the_model_gets_resized(tiny_checkpoint, tmp_path,  # noqa: F811
                                                                                monkeypatch, capsys):
    frames = [str(p) for p in save_frames(tmp_path / "frames", 3, 1280, 1024)]
    asked = []

    def answered(model, processor, views, request, **kwargs):  # the call the model gets, then the real answer
        asked.append(([view.size for view in views], request.marker))
        return run_task(model, processor, views, request, **kwargs)

    run_task = predict.run_task
    monkeypatch.setattr(predict, "run_task", answered)
    argv = ["predict", "--model", str(tiny_checkpoint), "--images", *frames, "--task", "reconstruction",
            "--max-new-tokens", "4", "--marker"]
    for given, on_model_frame in (("568 600", (2, 284, 300)), ("284 300", (2, 142, 150)), ("1279 1023", (2, 639, 511))):
        assert gap_mllm([*argv, "2", *given.split()]) in (0, 3)  # the untrained model's answer may not parse
        assert asked.pop() == ([(640, 512)] * 3, on_model_frame)  # the original pixel, on the 640x512 frame
    capsys.readouterr()
    assert gap_mllm([*argv, "2", "1280", "600"]) == 2
    assert capsys.readouterr().err == ("gap-mllm predict: error: marker view 2: marker pixel (x=1280, y=600) is outside the "
                                       "1280x1024 view (x must be in [0, 1279], y in [0, 1023], in the view's original "
                                       "pixel grid)\n")
    assert asked == []


def test_a_query_that_does_not_fit_the_models_context_or_leaves_no_room_for_the_answer_is_refused_before_loading(
        tiny_checkpoint, tmp_path, no_model_load, capsys):  # noqa: F811
    frame = str(save_frames(tmp_path / "frames", 1, 96, 64)[0])
    argv = ["predict", "--model", str(tiny_checkpoint), "--images", frame, "--task", "grounding", "--query"]
    refusal = re.compile(r"gap-mllm predict: error: the query is too long for the model: ([\d,]+) characters, ([\d,]+) tokens, "
                         r"do not fit in the model's context of 4,096 positions \(text_config\.max_position_embeddings\): "
                         r"the prompt with its 1 frame\(s\) ends at position ([\d,]+), and the grounding answer needs "
                         r"up to 192 more; shorten it by at least ([\d,]+) tokens\n")

    def refused(query: str) -> tuple[int, int, int, int]:
        assert gap_mllm([*argv, query]) == 2
        found = refusal.fullmatch(capsys.readouterr().err)
        assert found, "not the refusal"
        return tuple(int(value.replace(",", "")) for value in found.groups())

    # 10,000 characters (one token each for the tiny tokenizer): past the context itself
    characters, tokens, ends, shorten = refused("x" * 10_000)
    assert (characters, tokens) == (10_000, 10_000) and ends > 4095 and shorten == ends + 192 - 4095
    # a query that fits but leaves the answer 100 positions of its 192: the last position is 4,095
    query = "x" * (4095 - 100 - (ends - tokens))
    assert refused(query) == (len(query), len(query), 4095 - 100, 92)


# -------------------------------------------------------------------------------------- refusals before the model loads


def read_only(folder: Path, monkeypatch) -> None:
    """`folder` made read-only; for root, whom the kernel lets write anyway, `os.access` says what it says to a user."""
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:
        access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: (not mode & os.W_OK and access(path, mode, **kw))
                            if Path(path).resolve() == folder.resolve() else access(path, mode, **kw))


@pytest.mark.parametrize("case", ["a query holding <image>", "a 20000x4 frame", "a read-only --save-dir"])
def test_refusals_that_came_after_the_model_loaded_come_before_it(case, tiny_checkpoint, tmp_path, monkeypatch,  # noqa: F811
                                                                  no_model_load, capsys):
    frame = str(save_frames(tmp_path / "frames", 1, 96, 64)[0])
    argv = ["predict", "--model", str(tiny_checkpoint), "--images", frame, "--task", "grounding", "--query", "the chair"]
    if case == "a query holding <image>":
        argv[-1] = "the <image> chair"
        refusal = ("gap-mllm predict: error: the query must not contain '<image>' (the placeholder of a view in the prompt); "
                   "remove it from the text")
    elif case == "a 20000x4 frame":
        argv[4] = str(save_frames(tmp_path / "thin", 1, 20000, 4)[0])
        refusal = (f"gap-mllm predict: error: {argv[4]}: 20000x4 px, 640x1 px as the model gets it: the model's processor "
                   "cannot read it (absolute aspect ratio must be smaller than 200, got 640.0); crop or resize the "
                   "frames")
    else:
        read_only(tmp_path / "ro", monkeypatch)
        argv += ["--out", str(tmp_path / "ro" / "out")]
        refusal = (f"gap-mllm predict: error: --out {tmp_path / 'ro' / 'out'} cannot be written: "
                   f"{tmp_path / 'ro'} grants no write permission; give a folder you can write to")
    assert gap_mllm(argv) == 2
    assert capsys.readouterr().err.splitlines()[0] == refusal  # the one line (a hint to --debug may follow)


# ------------------------------------------------------------------------------------- a phone photo's EXIF orientation


def phone_photo(path):
    """A JPEG stored 160x128 with EXIF Orientation 6 (shown turned a quarter clockwise: 128x160), white in its stored
    top-left corner, which the upright photo shows in its top-right one."""
    stored = np.full((128, 160, 3), 40, dtype=np.uint8)
    stored[:32, :32] = 255
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(path, exif=exif.tobytes(), quality=95)
    return path


def upright(image) -> bool:
    """The image is the phone photo shown upright: 128x160, white in its top-right corner only."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64).mean(axis=2)
    return image.size == (128, 160) and pixels[:24, -24:].mean() > 240 and pixels[:24, :24].mean() < 60


def test_every_image_reader_gives_the_photo_upright(tmp_path):
    photo = phone_photo(tmp_path / "phone.jpg")
    frames = read_frames([photo], cli_limits([photo], 8), words=CLI_WORDS)  # predict and the Space
    assert frames.originals == ((128, 160),) and upright(frames.views[0])
    assert upright(load_image(photo))  # the processor, given a path
    assert upright(read_color(photo))  # the dataset builders
    encoded = {"images": [{"bytes": photo.read_bytes(), "path": None}, {"bytes": None, "path": str(photo)}]}
    assert all(upright(view) for view in decoded_example(encoded)["images"])  # the training cache
    with Image.open(photo) as opened:  # the builders' marker check reads the header only
        assert displayed_size(opened) == (128, 160) and opened.size == (160, 128)


def test_a_marker_in_the_upright_photo_is_accepted_and_moved_onto_the_model_frame(tmp_path, monkeypatch, capsys):
    photo = str(phone_photo(tmp_path / "phone.jpg"))
    asked = []

    def answered(model, processor, views, request, **kwargs):  # the call the model gets, then the real answer
        asked.append(([view.size for view in views], request.marker, upright(views[0])))
        return run_task(model, processor, views, request, **kwargs)

    monkeypatch.setattr(predict, "run_task", answered)
    argv = ["predict", "--model", "tiny", "--images", photo, "--task", "reconstruction", "--max-new-tokens", "4"]
    assert gap_mllm([*argv, "--marker", "0", "2", "150"]) in (0, 3)  # y = 150: inside the 160 rows shown
    assert asked == [([(128, 160)], (0, 2, 150), True)]
    capsys.readouterr()
    assert gap_mllm([*argv, "--marker", "0", "150", "2"]) == 2  # x = 150: outside the 128 columns shown
    assert "outside the 128x160 view" in capsys.readouterr().err and len(asked) == 1


# ----------------------------------------------------------------------------------- an answer in another task's format


GROUNDING_ANSWER = '{"bbox_3d": [0.1, 0.2, 1.5, 0.4, 0.5, 0.6, 0.0, 0.0, 0.0]}'


@pytest.mark.parametrize("task, raw, parser, found", [
    ("detection", GROUNDING_ANSWER, parse_detection, "grounding"),
    ("captioning", GROUNDING_ANSWER, parse_caption, "grounding"),
    ("spatial_qa", '{"pointmap": "couch', parse_spatial_answer, "reconstruction"),  # truncated: read by its keys
])
def test_an_answer_in_another_tasks_format_is_not_the_tasks_answer(task, raw, parser, found):
    from gap_mllm.cli.predict import PARSE_FAILURE_STATUS, _exit_status
    from gap_mllm.cli.tasks import TaskResult, task_answer

    assert getattr(parser(raw), "reason") is None  # the tolerant parser alone takes it (evaluate keeps that)
    parsed = task_answer(task, raw, parser(raw))
    assert type(parsed) in (DetectionResult, CaptionResult, SpatialAnswerResult)
    assert parsed.reason.startswith(f"answer in {found}'s format") and parsed.reason.endswith(f"not {task}'s")
    result = TaskResult(task=task, raw=raw, parsed=parsed)
    assert "box(es)\n  (no label)" not in result.summary() and f"{found}'s format" in result.summary()
    assert result.to_dict()["caption"] is None and result.to_dict()["answer"] is None
    assert _exit_status(result) == PARSE_FAILURE_STATUS


def test_an_answer_in_the_tasks_own_format_is_kept():
    from gap_mllm.cli.tasks import task_answer

    detection = '```json\n[{"label": "desk", "bbox_3d": [0, 0, 1, 1, 1, 1, 0, 0, 0]}]\n```'
    assert answer_format(detection) == "detection"
    assert task_answer("detection", detection, parse_detection(detection)).boxes
    assert answer_format("a pink dresser against the wall.") is None and answer_format("3.5") is None
    assert answer_format(GROUNDING_ANSWER) == "grounding"


# ---------------------------------------------------------------------- the Mini on your own frames; grounding's stages


def saved_views(folder: Path, count: int = 3) -> list[str]:
    """The first `count` views of a bundled room as PNG files: frames given as the user's own (no geometry)."""
    from gap_mllm.cli.scenes import synthetic_scene

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, view in enumerate(synthetic_scene(1, num_frames=count).views):
        paths.append(str(folder / f"frame_{index}.png"))
        view.save(paths[-1])
    return paths


def test_predict_on_own_frames_notes_that_the_mini_knows_synthrooms_only_when_given_by_path(tmp_path, capsys):
    from gap_mllm.cli.main import main
    from gap_mllm.cli.predict import MINI_OWN_FRAMES_NOTE
    from gap_mllm.mini import SHIPPED_DIR

    frames = saved_views(tmp_path / "frames")
    status = main(["predict", "--model", str(SHIPPED_DIR), "--images", *frames, "--task", "detection",
                   "--max-new-tokens", "4"])
    assert status in (0, 3)
    assert capsys.readouterr().err.splitlines().count(MINI_OWN_FRAMES_NOTE) == 1
    assert "knows SynthRooms rooms only" in MINI_OWN_FRAMES_NOTE and "the default" not in MINI_OWN_FRAMES_NOTE


@pytest.mark.parametrize("stage", ["grounding_stage1", "grounding_stage2"])
def test_a_grounding_stage_given_to_predict_says_how_to_run_it(stage, capsys):
    """The README's snippet asks the stages one at a time; predict runs grounding whole: the refusal says so, and the
    README says how to run the stages."""
    from gap_mllm.cli.main import main

    with pytest.raises(SystemExit) as stop:
        main(["predict", "--example", "synthetic room A", "--task", stage])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert (f"'{stage}' is one stage of grounding, which this command runs as one call (the last stage's prompt on "
            f"every frame): --task grounding; one stage at a time: processor(images=frames, task='{stage}', ...)") in err
    assert "gap-mllm evaluate --task grounding" in err
    readme = " ".join((REPO / "README.md").read_text(encoding="utf-8").split())
    assert "grounding's two stages one at a time are the snippet's `ask(\"grounding_stage1\", ...)`" in readme


def test_answer_json_writes_a_box_under_the_models_own_key():
    """answer.json and `--json` write each box under `bbox_3d`, the key the model's answers use."""
    from gap_mllm.cli.tasks import TaskResult
    from gap_mllm.tasks_gap_mllm import BOX_KEY, Box3D, DetectionResult

    box = Box3D.from_list([1.0, 2.0, 0.5, 0.4, 0.4, 0.8, 0.0, 0.0, 0.0], label="chair")
    result = TaskResult(task="detection", raw="", parsed=DetectionResult(boxes=[box]), boxes=[box])
    assert BOX_KEY == "bbox_3d"
    assert result.to_dict()["boxes"] == [{"label": "chair", "bbox_3d": [1.0, 2.0, 0.5, 0.4, 0.4, 0.8, 0.0, 0.0, 0.0]}]
