"""Video uploads (Space and `gap-mllm predict`): uniform frame sampling, frame order and the limits; a video cut
short (an interrupted copy) is refused naming the frames or seconds it declares and those that decode.

The clips are written here with PyAV, one distinct solid colour per frame, so the test can tell which
source frames came back. Skipped, with the reason printed, when PyAV (`av`) is not importable.
"""

import sys

import numpy as np
import pytest

from gap_mllm.cli.main import main as gap_mllm
from gap_mllm.cli.uploads import UploadError, UploadLimits, load_frames, uniform_indices

try:
    import av
except ImportError as error:  # the space and dev extras have it
    print(f"\nSKIPPED video upload tests: PyAV is not importable ({error}); pip install av", file=sys.stderr)
    pytest.skip(f"PyAV is not importable ({error})", allow_module_level=True)

FRAMES = 12
SIZE = (64, 48)  # (width, height): multiples of 16 so no codec pads or crops
FPS = 6
# far-apart colours: survive lossy coding and YUV 4:2:0 round trips, so the nearest one identifies a frame
PALETTE = np.array([[r, g, b] for r in (30, 220) for g in (30, 130, 220) for b in (30, 220)], dtype=np.int64)


def write_clip(path, codec: str, frames: int = FRAMES, fps: int = FPS, size=SIZE):
    """A clip whose frame i is filled with PALETTE[i]."""
    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            rgb = np.broadcast_to(PALETTE[index % len(PALETTE)].astype(np.uint8), (height, width, 3)).copy()
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def source_index(image) -> int:
    """Which source frame a decoded frame shows: the palette colour nearest its mean colour."""
    mean = np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(axis=0)
    return int(np.argmin(((PALETTE - mean) ** 2).sum(axis=1)))


@pytest.mark.parametrize("suffix, codec", [(".mp4", "mpeg4"), (".webm", "libvpx")])
def test_video_is_sampled_uniformly_in_order(tmp_path, suffix, codec):
    clip = write_clip(tmp_path / f"clip{suffix}", codec)
    frames = load_frames([clip], UploadLimits(max_frames=4))
    assert [source_index(f) for f in frames] == uniform_indices(FRAMES, 4) == [0, 4, 7, 11]
    assert {f.size for f in frames} == {SIZE}


def test_short_video_keeps_every_frame_and_is_capped_in_size(tmp_path):
    clip = write_clip(tmp_path / "short.mp4", "mpeg4", frames=3)
    frames = load_frames([clip], UploadLimits(max_frames=8, max_side=32))
    assert [source_index(f) for f in frames] == [0, 1, 2]
    assert {f.size for f in frames} == {(32, 24)}  # longest side capped, aspect kept


def test_video_limits_give_clear_messages(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", "mpeg4")  # 12 frames at 6 fps: 2 s
    with pytest.raises(UploadError, match=r"clip.mp4: the video lasts 2.0 s; at most 1 s are accepted"):
        load_frames([clip], UploadLimits(max_video_seconds=1))
    with pytest.raises(UploadError, match=r"clip.mp4: the video has more than 10 frames; please upload a shorter"):
        load_frames([clip], UploadLimits(max_video_frames=10))
    with pytest.raises(UploadError, match=r"clip.mp4: .* MB is over the 0 MB limit"):
        load_frames([clip], UploadLimits(max_file_bytes=100))
    with pytest.raises(UploadError, match=r"clip.mp4: 64x48 pixels is over the limit"):
        load_frames([clip], UploadLimits(max_pixels=64 * 47))
    assert len(load_frames([clip], UploadLimits(max_video_seconds=2.5, max_video_frames=12))) == 8


def test_broken_or_mixed_video_uploads_are_refused(tmp_path):
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"\x00" * 2048)
    with pytest.raises(UploadError, match=r"fake.mp4: not a readable video"):
        load_frames([fake])
    clip = write_clip(tmp_path / "clip.webm", "libvpx", frames=2)
    with pytest.raises(UploadError, match="either one video"):
        load_frames([clip, clip])


def write_turned_clip(path, degrees: int, hflip: bool = False, frames: int = 3):
    """An mp4 of 64x48 frames, white in their stored top-left 32x24 corner, whose display matrix says: turn them
    `degrees` counter-clockwise, then mirror left-right if `hflip` (what a phone writes for a portrait clip)."""
    stored = np.zeros((48, 64, 3), dtype=np.uint8)
    stored[:24, :32] = 255
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        if not hasattr(stream, "set_display_rotation"):
            pytest.skip(f"PyAV {av.__version__} cannot write a display matrix (set_display_rotation: PyAV 17.1)")
        stream.set_display_rotation(degrees, hflip=hflip)
        for _ in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def white_corner(image) -> str:
    """Which corner of `image` holds the white quarter."""
    pixels = np.asarray(image, dtype=np.float64).mean(axis=2)
    height, width = pixels.shape
    corners = {"top-left": pixels[: height // 4, : width // 4], "top-right": pixels[: height // 4, -(width // 4):],
               "bottom-left": pixels[-(height // 4):, : width // 4],
               "bottom-right": pixels[-(height // 4):, -(width // 4):]}
    return max(corners, key=lambda corner: corners[corner].mean())


@pytest.mark.parametrize("degrees, hflip, size, corner", [
    (-90, False, (48, 64), "top-right"),  # a phone's portrait clip: turned a quarter clockwise
    (90, False, (48, 64), "bottom-left"),
    (180, False, (64, 48), "bottom-right"),
    (0, True, (64, 48), "top-right"),  # mirrored (a front camera)
    (90, True, (48, 64), "bottom-right"),  # a quarter counter-clockwise, then mirrored
])
def test_a_video_is_read_as_its_rotation_metadata_shows_it(tmp_path, degrees, hflip, size, corner):
    from gap_mllm.cli.uploads import CLI_WORDS, read_frames

    clip = write_turned_clip(tmp_path / "phone.mp4", degrees, hflip)
    read = read_frames([clip], UploadLimits(max_frames=8), words=CLI_WORDS)  # predict, the Space, lmms-eval videos
    assert read.originals == (size,) * 3 and {view.size for view in read.views} == {size}
    assert [white_corner(view) for view in read.views] == [corner] * 3


def test_a_video_turned_by_other_than_a_quarter_is_refused(tmp_path):
    clip = write_turned_clip(tmp_path / "tilted.mp4", 45)
    with pytest.raises(UploadError) as refused:
        load_frames([clip])
    assert str(refused.value) == ("tilted.mp4: the video's rotation metadata turns its frames by 45°, not a quarter "
                                  "turn; re-encode it upright (ffmpeg -i in.mp4 out.mp4 applies it), or give its "
                                  "frames as images.")


def write_late_clip(path, codec: str, start_seconds: int = 1, frames: int = FRAMES):
    """A constant-rate clip whose first frame's timestamp is `start_seconds` (a clip cut from a longer recording)."""
    from fractions import Fraction

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = *SIZE, "yuv420p"
        stream.codec_context.time_base = Fraction(1, FPS)
        for index in range(frames):
            rgb = np.broadcast_to(PALETTE[index % len(PALETTE)].astype(np.uint8), (SIZE[1], SIZE[0], 3)).copy()
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = start_seconds * FPS + index, Fraction(1, FPS)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize("suffix, codec", [(".mkv", "mpeg4"), (".webm", "libvpx")])
def test_a_clip_whose_timestamps_start_late_is_judged_by_its_own_span(tmp_path, suffix, codec):
    """Matroska counts its duration from timestamp zero: 12 frames at 6 fps from 1 s declare 3 s, and span 2 s."""
    clip = write_late_clip(tmp_path / f"late{suffix}", codec)
    frames = load_frames([clip], UploadLimits(max_frames=4, max_video_seconds=2.5))  # 2 s long, not 3 s
    assert [source_index(f) for f in frames] == [0, 4, 7, 11]
    data = clip.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(UploadError, match=rf"^cut{suffix}: the video declares 2.0 s but only \d+ frames covering "):
        load_frames([cut])  # a cut one is still refused, by the same span


# ---------------------------------------------------------------------------------------------------- a video cut short


def write_ramp_clip(path, codec: str, frames: int = 24, options=None):
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
    whole = write_ramp_clip(tmp_path / "clip.mp4", "mpeg4", options={"movflags": "faststart"})
    assert len(load_frames([whole])) == 8  # the whole clip: 24 frames sampled down to 8
    cut = cut_in_half(whole, "cut.mp4")  # still declares 24 frames; 4 decode
    with pytest.raises(UploadError) as refused:
        load_frames([cut])
    assert str(refused.value) == ("cut.mp4: the video declares 24 frames but only 4 can be decoded (the file is cut "
                                  "short or damaged, e.g. an interrupted copy); please upload the whole file again.")
    assert gap_mllm(["predict", "--model", "tiny", "--images", str(cut), "--task", "detection"]) == 2
    assert capsys.readouterr().err == (f"gap-mllm predict: error: {cut}: the video declares 24 frames but only 4 can be "
                                       "decoded (the file is cut short or damaged, e.g. an interrupted copy); copy the "
                                       "whole file again, or give its frames as images.\n")


def test_a_webm_cut_in_half_is_refused_by_the_seconds_its_frames_cover(tmp_path):
    whole = write_ramp_clip(tmp_path / "clip.webm", "libvpx")  # WebM counts no frames: 3.0 s declared
    assert len(load_frames([whole])) == 8
    with pytest.raises(UploadError, match=r"^cut.webm: the video declares 3.0 s but only (\d+) frames covering "
                                          r"(\d\.\d) s can be decoded \(the file is cut short") as refused:
        load_frames([cut_in_half(whole, "cut.webm")])
    frames, seconds = int(refused.value.args[0].split("only ")[1].split()[0]), refused.value.args[0].split("covering ")[1]
    assert 1 <= frames <= 12 and float(seconds.split()[0]) == pytest.approx(frames / 8, abs=0.05)
