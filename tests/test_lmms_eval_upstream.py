"""How the `gap_mllm` lmms-eval model reads an upstream task's documents: frames of a video or of images (sampled to
`max_frames`), one scene name per video, the task's generation settings (greedy only, its budget and stop strings)."""

import av
import numpy as np
import pytest
import torch
from PIL import Image

from gap_mllm.evaluation.lmms_eval_plugin.models.gap_mllm import (
    DEFAULT_MAX_NEW_TOKENS,
    FrameCache,
    UpstreamGeneration,
    check_visuals,
    cut_at_stop_strings,
    generation_of,
    read_frames,
    scene_name,
    upstream_request,
)

FRAMES = 10


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """A 10-frame lossless video (libx264rgb, qp 0) of random 32x48 frames, and the frames."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (32, 48, 3), dtype=np.uint8) for _ in range(FRAMES)]
    path = tmp_path_factory.mktemp("video") / "scene.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb", rate=2)
        stream.width, stream.height, stream.pix_fmt, stream.options = 48, 32, "rgb24", {"qp": "0"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path, frames


@pytest.mark.parametrize(("max_frames", "indices"), [(4, [0, 3, 6, 9]), (3, [0, 4, 9]), (32, list(range(FRAMES)))])
def test_a_video_gives_max_frames_evenly_spaced_frames(video, max_frames, indices):
    path, frames = video
    read = read_frames(check_visuals([str(path)], "doc"), max_frames)
    assert len(read) == len(indices)
    assert all(np.array_equal(np.asarray(image), frames[i]) for image, i in zip(read, indices))


def test_images_are_sampled_down_and_kept_in_order(tmp_path):
    images = [Image.new("RGB", (8, 6), (i, 0, 0)) for i in range(5)]
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"{i}.png")
        images[i].save(paths[-1])
    assert [im.getpixel((0, 0))[0] for im in read_frames(images, 3)] == [0, 2, 4]
    assert [im.getpixel((0, 0))[0] for im in read_frames([str(p) for p in paths], 8)] == [0, 1]


@pytest.mark.parametrize(("visuals", "message"), [
    ([], "gave no image or video"),
    ([{"array": [0.1], "sampling_rate": 16000}], "gave dict"),
    (["clip.mp4", Image.new("RGB", (4, 4))], r"gave a video with 1 other visual\(s\)"),
    (["notes.txt"], "gave 'notes.txt'"),
])
def test_visuals_gap_mllm_cannot_read_are_refused_by_document(visuals, message):
    with pytest.raises(ValueError, match=f"task 'x', document 3: doc_to_visual {message}"):
        check_visuals(visuals, "task 'x', document 3")


def test_documents_of_one_video_share_a_scene_and_decode_it_once(video, tmp_path):
    path, _ = video
    copy = tmp_path / "other.mp4"
    copy.write_bytes(path.read_bytes())
    name = scene_name([str(path)], 32)
    assert name == scene_name([path], 32) != scene_name([str(copy)], 32) != scene_name([str(path)], 8)
    red, red_again = Image.new("RGB", (4, 4), "red"), Image.new("RGB", (4, 4), "red")
    assert scene_name([red], 32) == scene_name([red_again], 32) != scene_name([Image.new("RGB", (4, 4), "blue")], 32)
    cache = FrameCache(max_frames=4)
    first = cache.frames(name, [str(path)])
    assert cache.frames(name, [str(path)]) is first and cache.reads == 1
    with pytest.raises(ValueError, match="max_frames must be a positive number of frames, got 0"):
        FrameCache(max_frames=0)


def test_generation_settings_are_the_tasks_greedy_ones():
    vsibench = {"max_new_tokens": 16, "temperature": 0, "top_p": 1.0, "num_beams": 1, "do_sample": False, "until": ["\n\n"]}
    assert generation_of(vsibench, "vsibench", None) == UpstreamGeneration(16, ())  # lmms-eval's default delimiter
    assert generation_of(vsibench, "vsibench", 4) == UpstreamGeneration(4, ())  # the model argument caps it
    assert generation_of({"until": "ANSWER"}, "t", None) == UpstreamGeneration(DEFAULT_MAX_NEW_TOKENS, ("ANSWER",))
    for kwargs, message in (({"do_sample": True}, "sampling"), ({"temperature": 0.7}, "sampling"),
                            ({"num_beams": 4}, "beam search"), ({"max_new_tokens": 0}, "max_new_tokens=0"),
                            ({"until": [""]}, "stop strings")):
        with pytest.raises(ValueError, match=f"task 't' .*{message}"):
            generation_of(kwargs, "t", None)
    assert cut_at_stop_strings("B. chair\nC", ("\n", ".")) == "B" and cut_at_stop_strings("3 m", ("\n",)) == "3 m"


def test_the_request_puts_the_views_before_the_tasks_text():
    frames = [Image.new("RGB", (4, 4))] * 2
    request = upstream_request("These are frames of a video.\nHow many?", frames, "scene-1", UpstreamGeneration(16, ()), "doc 0")
    assert request.prompt == "<image><image>These are frames of a video.\nHow many?"
    assert (request.scene, request.max_new_tokens, request.task, request.stop_at_answer_end) == ("scene-1", 16, None, False)
    with pytest.raises(ValueError, match="doc 0: the prompt holds '<image>'"):
        upstream_request("<image> What is this?", frames, "scene-1", UpstreamGeneration(16, ()), "doc 0")


def test_the_model_arguments_are_checked_before_the_model_loads():
    from gap_mllm.evaluation.lmms_eval_plugin.models.gap_mllm import GapMllm

    with pytest.raises(ValueError, match="max_frames must be at least 1, got '0'"):
        GapMllm(max_frames="0")
    if not torch.cuda.is_available():  # the real VSI-Bench command names device=cuda: on a CPU machine, one line
        with pytest.raises(ValueError, match="device=cuda but this machine has no CUDA GPU"):
            GapMllm(device="cuda")
