"""The frames the `gap_mllm` model sees for an upstream lmms-eval document's visuals (`doc_to_visual`).

What a task's `doc_to_visual` may return, and what GAP-MLLM gets (every frame one view of one scene):

    one video path (.mp4 .webm .mov .avi .mkv)   `max_frames` frames at evenly spaced indices over the whole video
                                                  (`round(linspace(0, n - 1, max_frames))`, all n when n <= max_frames,
                                                  in order), decoded with PyAV (cli/uploads.py, the Space's and
                                                  `gap-mllm predict`'s decoder)
    image paths or PIL images                    every image, in order; more than `max_frames` are sampled down the
                                                  same way

Count: `max_frames` (a model argument) defaults to 32, the frame count of the official GAP-MLLM multi-view tasks
(ScanRefer and Scan2Cap inference, 32 views; VG-LLM evaluates VSI-Bench with 32 frames too). Size: frames are passed
as decoded; the checkpoint's processor resizes them as the official inference does for its frames (its
`preprocessing_mode`: "official_inference" for a converted official checkpoint: JPEG q75 round trip, VGGT crop to
width 518, then 416x544 for a 4:3 frame, 221 visual tokens; "grid": smart_resize within the image processor's pixel
limits; docs/method.md §2.3), and frames of another size than the first are resized to it (VGGT attends across them):
frames of another aspect ratio are refused, never stretched (gap_mllm.processing_gap_mllm `check_one_aspect_ratio`).

Documents of one video are one scene: their frames are decoded once (`FrameCache`) and carry one `scene` name, so
scene reuse encodes the video once for all its questions (evaluation/scene_generation.py).
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path

import PIL.Image

from gap_mllm.cli.uploads import CLI_WORDS, IMAGE_SUFFIXES, VIDEO_SUFFIXES, UploadLimits, load_frames, uniform_indices

DEFAULT_MAX_FRAMES = 32  # the official multi-view frame count (ScanRefer / Scan2Cap inference)
# Reading a document's own files: no upload limits on size or length (a benchmark's videos run for minutes), and no
# resize (the processor's job); a video is still sampled down to max_frames.
UNLIMITED = {"max_file_bytes": 1 << 40, "max_side": 1 << 20, "max_video_seconds": float("inf"), "max_video_frames": 1 << 30}


def _is_video(visual) -> bool:
    return isinstance(visual, (str, os.PathLike)) and Path(visual).suffix.lower() in VIDEO_SUFFIXES


def _describe(visual) -> str:
    return type(visual).__name__ if not isinstance(visual, (str, os.PathLike)) else repr(str(visual))


def check_visuals(visuals, where: str) -> list:
    """The document's visuals as a list: one video path, or image paths / PIL images; a ValueError naming `where`
    for anything else (audio, no visual, a video among other visuals)."""
    if isinstance(visuals, (str, os.PathLike, PIL.Image.Image)):
        visuals = [visuals]
    visuals = list(visuals or [])
    if not visuals:
        raise ValueError(f"{where}: doc_to_visual gave no image or video; gap_mllm answers questions about frames")
    videos = [v for v in visuals if _is_video(v)]
    if videos and len(visuals) > 1:
        raise ValueError(f"{where}: doc_to_visual gave a video with {len(visuals) - 1} other visual(s); gap_mllm reads "
                         "one video or a list of images as the views of one scene")
    for visual in visuals:
        is_image_path = isinstance(visual, (str, os.PathLike)) and Path(visual).suffix.lower() in IMAGE_SUFFIXES
        if not (_is_video(visual) or is_image_path or isinstance(visual, PIL.Image.Image)):
            raise ValueError(f"{where}: doc_to_visual gave {_describe(visual)}; gap_mllm reads images (PIL or "
                             f"{', '.join(sorted(IMAGE_SUFFIXES))}) or one video ({', '.join(sorted(VIDEO_SUFFIXES))})")
    return visuals


def scene_name(visuals: list, max_frames: int) -> str:
    """A name for the frames of `visuals` (checked), the same for documents that show the same video or images:
    files by path, size and modification time, in-memory images by a hash of their pixels."""
    parts = []
    for visual in visuals:
        if isinstance(visual, PIL.Image.Image):
            digest = hashlib.sha1(f"{visual.mode}{visual.size}".encode())
            digest.update(visual.tobytes())
            parts.append(f"pixels:{digest.hexdigest()}")
        else:
            path = Path(visual).resolve()
            stat = path.stat() if path.exists() else None  # a missing file is named when its frames are read
            parts.append(f"file:{path}:{stat.st_size if stat else '-'}:{stat.st_mtime_ns if stat else '-'}")
    return f"frames<={max_frames}|" + "|".join(parts)


def read_frames(visuals: list, max_frames: int) -> list[PIL.Image.Image]:
    """The views of `visuals` (checked): see the module docstring."""
    limits = UploadLimits(max_files=1, max_frames=max_frames, **UNLIMITED)
    if _is_video(visuals[0]):
        return load_frames([visuals[0]], limits, words=CLI_WORDS)
    if len(visuals) > max_frames:
        visuals = [visuals[i] for i in uniform_indices(len(visuals), max_frames)]
    return [v.convert("RGB") if isinstance(v, PIL.Image.Image) else load_frames([v], limits, words=CLI_WORDS)[0]
            for v in visuals]


class FrameCache:
    """Frames of the last `capacity` scenes read (a scene's documents come together, so each video is decoded once)."""

    def __init__(self, max_frames: int = DEFAULT_MAX_FRAMES, capacity: int = 4):
        if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1:
            raise ValueError(f"max_frames must be a positive number of frames, got {max_frames!r}")
        self.max_frames, self.capacity = max_frames, capacity
        self._frames: OrderedDict[str, list[PIL.Image.Image]] = OrderedDict()
        self.reads = 0  # scenes decoded (a test counts them)

    def frames(self, name: str, visuals: list) -> list[PIL.Image.Image]:
        """The frames of `visuals`, whose `scene_name` is `name`."""
        if name in self._frames:
            self._frames.move_to_end(name)
            return self._frames[name]
        frames = read_frames(visuals, self.max_frames)
        self.reads += 1
        self._frames[name] = frames
        while len(self._frames) > self.capacity:
            self._frames.popitem(last=False)
        return frames
