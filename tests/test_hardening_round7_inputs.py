"""Issue 83, items 3, 4, 6 and 9: frames as the user sees them, options as people write them, budgets that hold an
answer, captions that are prose.

Each test names its case and fails on the code before the issue: a cut video read as a short one, a phone photo
read sideways (and its marker refused), `A)` options answered with a number, a context too short for any answer
lowered into a cut one, a list the grammar closed for its budget, a 0x0x0 box and a caption of JSON pieces reported
as parsed. The media are made here (PIL, PyAV); the model calls run in this process on the tiny model.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest

from gap_mllm.cli import predict
from gap_mllm.cli.main import main as gap_mllm
from gap_mllm.cli.tasks import TaskRequest, run_task, task_answer
from gap_mllm.cli.uploads import CLI_WORDS, UploadError, cli_limits, load_frames, read_frames
from gap_mllm.generation_gap_mllm import highest_prompt_position
from gap_mllm.image_utils_gap_mllm import displayed_size
from gap_mllm.processing.scannet_layout import read_color
from gap_mllm.processing_gap_mllm import load_image
from gap_mllm.tasks_gap_mllm import offered_options, parse_caption, parse_grounding, spatial_answer_grammar
from gap_mllm.tiny.tiny_model import build_tiny_model
from gap_mllm.training.feature_cache import decoded_example

av = pytest.importorskip("av")  # PyAV: the demo and dev extras install it


@pytest.fixture
def no_model_load(monkeypatch):
    """`gap-mllm predict` fails the test if it loads the model's weights."""
    monkeypatch.setattr(predict, "load_model_and_processor", lambda *a, **k: pytest.fail("the model was loaded"))


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_model()


# ------------------------------------------------------------------------------ item 3: a cut video


def write_clip(path, codec: str, frames: int = 24, options=None):
    """A clip of `frames` 160x128 frames of a moving ramp at 8 fps (`options`: the container's, e.g. faststart)."""
    ramp = np.linspace(0, 255, 160, dtype=np.uint8)[None, :, None].repeat(128, 0).repeat(3, 2)
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=8)
        stream.width, stream.height, stream.pix_fmt = 160, 128, "yuv420p"
        for index in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.roll(ramp, 7 * index, axis=1), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def cut_in_half(path, name: str):
    """The first half of the file at `path`, as `name` beside it (an interrupted copy)."""
    data = path.read_bytes()
    cut = path.with_name(name)
    cut.write_bytes(data[: len(data) // 2])
    return cut


def test_a_faststart_mp4_cut_in_half_is_refused_naming_the_declared_and_the_decoded_frames(tmp_path, no_model_load,
                                                                                           capsys):
    whole = write_clip(tmp_path / "clip.mp4", "mpeg4", options={"movflags": "faststart"})
    assert len(load_frames([whole])) == 8  # the whole clip: 24 frames sampled down to 8
    cut = cut_in_half(whole, "cut.mp4")  # still declares 24 frames; 4 decode
    with pytest.raises(UploadError) as refused:
        load_frames([cut])
    assert str(refused.value) == ("cut.mp4: the video declares 24 frames but only 4 can be decoded (the file is cut "
                                  "short or damaged, e.g. an interrupted copy); please upload the whole file again.")
    assert gap_mllm(["predict", "--model", "tiny", "--images", str(cut), "--task", "detection"]) == 2
    assert capsys.readouterr().err == (f"gap-mllm predict: {cut}: the video declares 24 frames but only 4 can be "
                                       "decoded (the file is cut short or damaged, e.g. an interrupted copy); copy the "
                                       "whole file again, or give its frames as images.\n")


def test_a_webm_cut_in_half_is_refused_by_the_seconds_its_frames_cover(tmp_path):
    whole = write_clip(tmp_path / "clip.webm", "libvpx")  # WebM counts no frames: 3.0 s declared
    assert len(load_frames([whole])) == 8
    with pytest.raises(UploadError, match=r"^cut.webm: the video declares 3.0 s but only (\d+) frames covering "
                                          r"(\d\.\d) s can be decoded \(the file is cut short") as refused:
        load_frames([cut_in_half(whole, "cut.webm")])
    frames, seconds = int(refused.value.args[0].split("only ")[1].split()[0]), refused.value.args[0].split("covering ")[1]
    assert 1 <= frames <= 12 and float(seconds.split()[0]) == pytest.approx(frames / 8, abs=0.05)


# ------------------------------------------------------------------------------ item 3: EXIF orientation


def phone_photo(path):
    """A JPEG stored 160x128 with EXIF Orientation 6 (shown turned a quarter clockwise: 128x160), white in its stored
    top-left corner, which the upright photo shows in its top-right one."""
    stored = np.full((128, 160, 3), 40, dtype=np.uint8)
    stored[:32, :32] = 255
    image = PIL.Image.fromarray(stored)
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
    with PIL.Image.open(photo) as opened:  # the builders' marker check reads the header only
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


# ------------------------------------------------------------------------------ item 4: options as people write them


@pytest.mark.parametrize("lines, letters", [
    ("A) chair\nB) table\nC) bed", ("A", "B", "C")),
    ("(A) chair\n(B) table", ("A", "B")),
    ("A: chair\nB: table", ("A", "B")),
    ("a. chair\nb. table", ("a", "b")),
    ("  a) chair\n  b) table", ("a", "b")),
])
def test_option_layouts_get_the_letter_grammar(lines, letters):
    question = f"Which object is closest to the door?\n{lines}\nAnswer with the option letter."
    assert offered_options(question) == letters
    assert spatial_answer_grammar(64, None, question) == f"root ::= {' | '.join(f'{chr(34)}{x}{chr(34)}' for x in letters)}\n"


def test_a_question_asking_for_a_letter_without_options_is_refused_before_the_model_loads(no_model_load, capsys):
    question = "Which object is closest to the door? Answer with the option's letter from the given choices directly."
    assert offered_options("Q: how far is the bed from the door?") == ()  # a "Q:" line is no option
    with pytest.raises(ValueError, match="asks for an option letter but lists no options"):
        spatial_answer_grammar(64, None, question)
    assert gap_mllm(["predict", "--example", "synthetic room A", "--task", "spatial_qa", "--query", question]) == 2
    assert capsys.readouterr().err == (
        "gap-mllm predict: the question asks for an option letter but lists no options this model reads: write each "
        "option on its own line as 'A. chair', 'A) chair', '(A) chair' or 'A: chair', lettered from A\n")


# ------------------------------------------------------------------------------ item 6: budgets


def test_a_context_too_short_for_the_shortest_answer_is_refused_naming_both_numbers(tiny):
    model, processor = tiny
    frame = PIL.Image.fromarray(np.full((64, 96, 3), 120, dtype=np.uint8))
    short = processor(images=[[frame]], task="grounding", query="x", return_tensors="pt")
    highest = highest_prompt_position(model, short["input_ids"], short["attention_mask"], short["mm_token_type_ids"],
                                      short["image_grid_thw"])
    limit = model.config.get_text_config().max_position_embeddings
    # a query that leaves 20 positions (one token an "x" for the tiny tokenizer): fewer than the shortest answer's
    inputs = processor(images=[[frame]], task="grounding", query="x" * (limit - 20 - highest), return_tensors="pt")
    shortest = len(processor.tokenizer('{"bbox_3d": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]}',
                                       add_special_tokens=False)["input_ids"])
    assert shortest > 20
    with pytest.raises(ValueError, match=rf"^the prompt ends at position {limit - 21}, so at most 20 new tokens fit in "
                                         rf"the model's context of {limit} positions, fewer than the {shortest} that "
                                         r"the shortest whole grounding answer needs; use fewer"):
        model.generate(**inputs, **processor.generation_kwargs("grounding", inputs))


def test_a_constrained_list_closed_for_its_budget_is_no_success(tiny):
    model, processor = tiny
    frame = PIL.Image.fromarray(np.full((64, 96, 3), 120, dtype=np.uint8))
    result = run_task(model, processor, [frame], TaskRequest("detection"), max_new_tokens=60, constrained=True)
    assert result.raw == "```json\n[\n]```"  # well formed: the grammar closed the list at once
    assert result.parsed.reason == ("the grammar closed the list for the token budget of 60 (it keeps the last 138 "
                                    "tokens to close it), so the answer may lack entries; give it a larger token "
                                    "budget (--max-new-tokens)")


def test_a_zero_size_box_is_no_objects_box():
    # the GAP-MLLM-Mini's constrained answer to 'the chair by the window ' x 417 (a query that just fits)
    raw = '{"bbox_3d": [10.10, -10.11, -11.11, -0.0, -0.0, -0.0, -10.01, -10.01, -10.01]}'
    parsed = task_answer("grounding", raw, parse_grounding(raw))
    assert parsed.reason == ("a box of size 0x0x0 is no object's box: "
                             "[10.1, -10.11, -11.11, -0.0, -0.0, -0.0, -10.01, -10.01, -10.01]")
    raw = '{"bbox_3d": [1.0, 0.5, 2.0, 0.0, 0.4, 0.9, 0.0, 0.0, 0.0]}'  # flat, not empty: an object's box
    assert task_answer("grounding", raw, parse_grounding(raw)).reason is None


# ------------------------------------------------------------------------------ item 9: captions of JSON pieces


def test_a_free_caption_of_json_pieces_is_in_another_tasks_format():
    raw = '```json1.19, 3d": "refrigerator", "bbox_3d'
    assert parse_caption(raw).reason is None  # the tolerant parser (for scoring) reads any text
    assert task_answer("captioning", raw, parse_caption(raw)).reason == (
        "answer holds '```', a piece of a structured answer (JSON), not a caption's prose")
    assert task_answer("captioning", '3d": "refrigerator"', parse_caption('3d": "refrigerator"')).reason is not None
    prose = "It's an L-shaped (wooden) sofa, left of the TV; 2 chairs face it!"
    assert task_answer("captioning", prose, parse_caption(prose)).reason is None

