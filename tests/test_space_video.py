"""Video uploads (Space and `gap-mllm predict`): uniform frame sampling, frame order and the limits.

The clips are written here with PyAV, one distinct solid colour per frame, so the test can tell which
source frames came back. Skipped, with the reason printed, when PyAV (`av`) is not importable.
"""

import sys

import numpy as np
import pytest

from gap_mllm.cli.uploads import UploadError, UploadLimits, load_frames, uniform_indices

try:
    import av
except ImportError as error:  # the demo extra has it; the dev environment may not
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
