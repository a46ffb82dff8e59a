"""Checking and loading user uploads (Space and `gap-mllm predict`): limits, allowed folders, frames.

Rules, each failing with a message meant for the user:
- count: at most `max_files` files per request;
- size: at most `max_file_bytes` per file and `max_pixels` per frame (decompression bombs);
- type: images (.png .jpg .jpeg .webp .bmp), an animation (a GIF, an animated PNG or WebP), or a video (.mp4 .webm
  .mov .avi .mkv, needs PyAV); the content must decode as that type, not only carry its extension;
- place: with `allowed_roots`, every path must resolve (symlinks followed) inside one of them, so a
  crafted request cannot make the server read any other file.
- length: a video may last at most `max_video_seconds` (read from its header, before decoding) and
  hold at most `max_video_frames` frames (counted while decoding, for headers that lie or say nothing);
- whole: the frames that decode must be the frames the file declares (its frame count, or where it has none its
  duration, from the stream's first timestamp to its end), so a cut file (an interrupted copy) is refused, not read as
  a shorter clip;
- shape: frames of different shapes (a portrait photo beside landscape ones) are never stretched: the processor pads
  them as VGGT's loader does (gap_mllm.image_utils_gap_mllm `vggt_pad_boxes`, one note); a frame too thin for that
  (a 1x4000 strip) is refused by name.
Videos and animations are sampled uniformly down to `max_frames`; frames of the first frame's shape are resized to its
size (VGGT attends across frames, so they must share one size), the others keep theirs; all are capped at `max_side`.
Frames are read as a viewer shows them: an image upright, its EXIF orientation applied (gap_mllm.processing_gap_mllm), a
video turned and mirrored as its display matrix says (its rotation metadata: a phone's portrait clip stands upright).
A marker pixel (`gap-mllm predict --marker VIEW X Y`) is given in its frame's original pixels, as the photo is
shown (upright), checked there, and moved onto the resized frame the model gets (`Frames.on_model_frames`).

Each surface words the errors its own way (`UploadWords`): the Space names an upload by its file name (the server's
paths are its own) and speaks of uploading; `gap-mllm predict` names the full path of what the user gave and
speaks of giving files (`CLI_WORDS`), and also takes folders of frames (`images_in_folder`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from gap_mllm.image_utils_gap_mllm import one_aspect_ratio, pil_to_rgb, read_image_file, vggt_pad_boxes
from gap_mllm.processing.path_containment import broken_link, resolve_inside

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
GIF_SUFFIXES = {".gif"}
ANIMATED_IMAGE_SUFFIXES = {".png", ".webp"}  # an image, or an animation (APNG, animated WebP) as a GIF is
VIDEO_SUFFIXES = {".mp4", ".webm", ".mov", ".avi", ".mkv"}


class UploadError(ValueError):
    """An upload that breaks a rule; the message is shown to the user as is."""


@dataclass(frozen=True)
class UploadWords:
    """How the rules' messages speak on one surface (see the module docstring); the rules are the same.

    Attributes:
        full_paths: name a file by its full path (the CLI) rather than its file name (the Space).
        none_given / too_many ({count}, {limit}) / missing ({name}) / not_a_file ({name}) / mixed / no_pyav:
            whole messages; too_long / too_many_frames / truncated: what to do, after the video's numbers.
    """

    full_paths: bool
    none_given: str
    too_many: str
    missing: str
    not_a_file: str
    mixed: str
    no_pyav: str
    too_long: str
    too_many_frames: str
    truncated: str

    def name(self, path: Path) -> str:
        """How a message names `path`."""
        return str(path) if self.full_paths else path.name


SPACE_WORDS = UploadWords(
    full_paths=False,
    none_given="Please upload at least one image or a short video, or pick an example.",
    too_many="Too many files: {count} uploaded, at most {limit} are accepted.",
    missing="{name}: not found (uploads expire; please upload it again).",
    not_a_file="{name}: not found (uploads expire; please upload it again).",
    mixed="Upload either one video (or animated GIF, PNG or WebP) or several images, not both.",
    no_pyav="Video upload needs PyAV on the server (pip install av); upload frames as images instead.",
    too_long="trim it, or upload a few frames as images",
    too_many_frames="please upload a shorter clip",
    truncated="please upload the whole file again",
)
CLI_WORDS = UploadWords(
    full_paths=True,
    none_given="no frames given: give image files, a folder of images, or one video",
    too_many="{count} files given, at most {limit} are accepted",
    missing="{name}: no such file or folder",
    not_a_file="{name}: not a regular file (give image files, a folder of images, or one video)",
    mixed="give either one video (or animated GIF, PNG or WebP) or several images, not both",
    no_pyav="reading a video needs PyAV (pip install av); or give the frames as image files or a folder of images",
    too_long="trim it, or give a few frames as images",
    too_many_frames="give a shorter clip",
    truncated="copy the whole file again, or give its frames as images",
)


@dataclass(frozen=True)
class UploadLimits:
    max_files: int = 8  # images per request; a video is one file, sampled down to max_frames
    max_file_bytes: int = 20 * 1024 * 1024
    max_frames: int = 8
    max_pixels: int = 4096 * 4096
    max_side: int = 640
    max_video_seconds: float = 60.0
    max_video_frames: int = 1800  # 60 s at 30 fps


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(resolve_inside(root, path) is not None for root in roots)


def check_paths(paths, limits: UploadLimits, allowed_roots=None, words: UploadWords = SPACE_WORDS) -> list[Path]:
    """Resolve and check upload paths (count, place, existence, size, type); returns the resolved paths."""
    paths = [Path(os.fspath(p)) for p in paths]
    if not paths:
        raise UploadError(words.none_given)
    if len(paths) > limits.max_files:
        raise UploadError(words.too_many.format(count=len(paths), limit=limits.max_files))
    roots = [Path(r).resolve() for r in allowed_roots] if allowed_roots is not None else None
    resolved = []
    for path in paths:
        leads_nowhere = broken_link(path)  # a link loop: not "missing", and no RuntimeError from resolve()
        if leads_nowhere is not None:
            raise UploadError(f"{words.name(path)}: this is {leads_nowhere}; give the file itself")
        real = path.resolve()
        name = words.name(real)
        if roots is not None and not _inside(real, roots):
            raise UploadError(f"{name}: this file is not in the upload folder and cannot be read.")
        if not real.is_file():
            raise UploadError((words.not_a_file if real.exists() else words.missing).format(name=name))
        suffix = real.suffix.lower()
        if suffix not in IMAGE_SUFFIXES | GIF_SUFFIXES | VIDEO_SUFFIXES:
            allowed = ", ".join(sorted(IMAGE_SUFFIXES | GIF_SUFFIXES | VIDEO_SUFFIXES))
            raise UploadError(f"{name}: unsupported file type {suffix or '(none)'}; allowed: {allowed}.")
        size = real.stat().st_size
        if size > limits.max_file_bytes:
            raise UploadError(f"{name}: {size / 2**20:.1f} MB is over the {limits.max_file_bytes / 2**20:.0f} MB limit.")
        resolved.append(real)
    videos = [p for p in resolved if p.suffix.lower() in VIDEO_SUFFIXES or is_animation(p)]
    if videos and len(resolved) > 1:
        raise UploadError(words.mixed)
    return resolved


def is_animation(path: Path) -> bool:
    """Whether `path` is read as an animation: a GIF, or a PNG / WebP of more than one frame (its header says so);
    an unreadable PNG / WebP is not (the image reader names it)."""
    suffix = path.suffix.lower()
    if suffix in GIF_SUFFIXES:
        return True
    if suffix not in ANIMATED_IMAGE_SUFFIXES:
        return False
    try:
        with Image.open(path) as image:
            return bool(getattr(image, "is_animated", False))
    except Exception:  # PIL raises many types for corrupt or mislabelled files
        return False


def images_in_folder(folder, words: UploadWords = CLI_WORDS) -> list[Path]:
    """The image files directly inside `folder` (the `IMAGE_SUFFIXES`, any case; hidden files skipped), sorted by
    file name: the frames of one scene in order. An UploadError naming the folder when it holds none."""
    folder = Path(os.fspath(folder))
    images = sorted((p for p in folder.iterdir()
                     if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()),
                    key=lambda p: p.name)
    if not images:
        raise UploadError(f"{words.name(folder.resolve())}: no image files in this folder (looked for "
                          f"{', '.join(sorted(IMAGE_SUFFIXES))}; a video or GIF is given as the file itself)")
    return images


def frame_paths(images: list[str], max_frames: int, report=None) -> list[Path]:
    """The files `gap-mllm predict --images` names, in order: a folder stands for its image files sorted by file name
    (`images_in_folder`; one without images is an UploadError naming it), sampled evenly down to `max_frames` as a
    video is (`report`, if given, gets the line that says so); anything else is kept as given, for `check_paths`."""
    paths = []
    for given in images:
        path = Path(given)
        if not path.is_dir():
            paths.append(path)
            continue
        found = images_in_folder(path, CLI_WORDS)
        kept = [found[i] for i in uniform_indices(len(found), max_frames)]
        if len(kept) < len(found) and report is not None:
            report(f"{path.resolve()}: {len(found)} images; {len(kept)} of them, spread evenly in name order, are used "
                   f"(--max-frames {max_frames})")
        paths.extend(kept)
    return paths


def cli_limits(paths, max_frames: int) -> UploadLimits:
    """The limits of `gap-mllm predict`'s frames: local files of the user's own choosing, so no count or folder
    restriction, only the type and size checks."""
    return UploadLimits(max_files=max(len(paths), 1), max_frames=max_frames)


def uniform_indices(total: int, count: int) -> list[int]:
    """`min(count, total)` indices spread evenly over `[0, total)`, first and last included."""
    if total <= count:
        return list(range(total))
    return [int(round(i)) for i in np.linspace(0, total - 1, count)]


def _read_image(path: Path, limits: UploadLimits, words: UploadWords) -> Image.Image:
    """The image file at `path`, decoded and upright (its EXIF orientation applied: `read_image_file`; its pixel
    count checked first); an UploadError naming it when it is not a readable image. Light (PIL only): `gap-mllm
    predict` reads its frames with it before the model (`check_frames`)."""
    name = words.name(path)

    def within_limit(image):
        if image.width * image.height > limits.max_pixels:
            raise UploadError(f"{name}: {image.width}x{image.height} pixels is over the limit.")

    try:
        return read_image_file(path, within_limit)  # upright: the photo as the user sees it (processing_gap_mllm.py)
    except UploadError:
        raise
    except Exception as error:  # PIL raises many types for corrupt or mislabelled files
        raise UploadError(f"{name}: not a readable image ({type(error).__name__}).") from error


def _rgb(image: Image.Image, name: str) -> Image.Image:
    """`image` (a file's image, or an animation's current frame) as the model's RGB (`pil_to_rgb`: 16-bit PNGs
    scaled, not clipped to white; transparency blended onto white)."""
    # imported here: image_alignment imports torch, and `gap-mllm predict` checks its frames (check_frames) before torch

    try:
        return pil_to_rgb(image, name)
    except ValueError as error:  # a float image: the message says what to do
        raise UploadError(f"{error}.") from error


def _open_image(path: Path, limits: UploadLimits, words: UploadWords) -> Image.Image:
    return _rgb(_read_image(path, limits, words), words.name(path))


def _animation_kind(path: Path) -> str:
    return {".gif": "GIF", ".png": "animated PNG", ".webp": "animated WebP"}.get(path.suffix.lower(), "animation")


def _animation_frames(path: Path, limits: UploadLimits, words: UploadWords) -> list[Image.Image]:
    """Uniformly sampled frames of an animation (a GIF, an animated PNG or WebP), each as RGB as an image is
    (`_rgb`)."""
    name = words.name(path)
    try:
        with Image.open(path) as animation:
            if animation.width * animation.height > limits.max_pixels:
                raise UploadError(f"{name}: {animation.width}x{animation.height} pixels is over the limit.")
            total = getattr(animation, "n_frames", 1)
            frames = []
            for index in uniform_indices(total, limits.max_frames):
                animation.seek(index)
                frames.append(_rgb(animation, name))
            return frames
    except UploadError:
        raise
    except Exception as error:
        raise UploadError(f"{name}: not a readable {_animation_kind(path)} ({type(error).__name__}).") from error


def _video_seconds(container, stream) -> float | None:
    """The clip's length from its header, from the stream's first timestamp to its end (the stream's duration, else
    the container's), or None when not recorded. FFmpeg gives a container's duration as the span of its streams,
    except where the demuxer reads it from the file: Matroska's (and WebM's) segment duration runs from timestamp
    zero, so a stream whose timestamps start at 1 s has its span there less that second."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is None:
        return None
    seconds = container.duration / 1_000_000  # av.time_base: microseconds
    if "matroska" in container.format.name.split(",") and stream.start_time is not None and stream.time_base:
        seconds -= float(stream.start_time * stream.time_base)
    return seconds


def _open_video_stream(av, path: Path, limits: UploadLimits, words: UploadWords):
    """Open `path` and check its first video stream's size and header length; returns `(container, stream)`."""
    name = words.name(path)
    container = av.open(str(path))
    try:
        if not container.streams.video:
            raise UploadError(f"{name}: the file has no video stream.")
        stream = container.streams.video[0]
        if stream.width * stream.height > limits.max_pixels:
            raise UploadError(f"{name}: {stream.width}x{stream.height} pixels is over the limit.")
        seconds = _video_seconds(container, stream)
        if seconds is not None and seconds > limits.max_video_seconds:
            raise UploadError(f"{name}: the video lasts {seconds:.1f} s; at most {limits.max_video_seconds:g} s "
                              f"are accepted ({words.too_long}).")
    except BaseException:
        container.close()
        raise
    return container, stream


# A container may hide a frame or two that it counts (an mp4 edit list trims the start), and its duration is rounded:
# a shortfall within this many frame intervals is not a cut.
VIDEO_SHORTFALL_FRAMES = 2


def _frame_interval(stream, count: int, span: float | None) -> float | None:
    """Seconds between frames: the stream's frame rate, else the decoded frames' own spacing; None when unknown."""
    rate = stream.guessed_rate or stream.average_rate
    if rate:
        return 1 / float(rate)
    return span / (count - 1) if span and count > 1 else None


def _check_whole_video(container, stream, count: int, span: float | None, name: str, words: UploadWords) -> None:
    """An UploadError when the `count` frames decoded fall short of what the file declares: its frame count, or,
    where it counts none (WebM, Matroska), its duration against the time the decoded frames cover (`span`: from the
    first frame's time to the last one's). A cut file (an interrupted copy) still declares the whole clip and decodes
    its first part only: sampled "evenly" it would give the model the first seconds as if they were all of it."""
    declared = stream.frames
    if declared:
        if count + VIDEO_SHORTFALL_FRAMES < declared:
            raise UploadError(f"{name}: the video declares {declared} frames but only {count} can be decoded (the "
                              f"file is cut short or damaged, e.g. an interrupted copy); {words.truncated}.")
        return
    seconds, interval = _video_seconds(container, stream), _frame_interval(stream, count, span)
    if seconds is None or interval is None or span is None:
        return  # the file says neither how many frames nor how long: nothing to hold the frames against
    covered = span + interval
    if covered + VIDEO_SHORTFALL_FRAMES * interval < seconds:
        raise UploadError(f"{name}: the video declares {seconds:.1f} s but only {count} frames covering "
                          f"{covered:.1f} s can be decoded (the file is cut short or damaged, e.g. an interrupted "
                          f"copy); {words.truncated}.")


def _span(times: list[float]) -> float | None:
    """Seconds from the first decoded frame's time to the last one's; None when the frames carry no times."""
    return max(times) - min(times) if times else None


def _count_video_frames(av, path: Path, limits: UploadLimits, words: UploadWords) -> int:
    """Decode once to count frames exactly (variable frame rates), stopping past `max_video_frames`; the count is
    held against what the file declares (`_check_whole_video`), so a cut file is refused, not read as a short one."""
    container, stream = _open_video_stream(av, path, limits, words)
    with container:
        count, times = 0, []
        try:
            for frame in container.decode(stream):
                count += 1
                times += [frame.time] if frame.time is not None else []
                if count > limits.max_video_frames:
                    raise UploadError(f"{words.name(path)}: the video has more than {limits.max_video_frames} frames; "
                                      f"{words.too_many_frames}.")
        except av.error.FFmpegError:
            # damaged data after some frames: refused as cut when they fall short, else as not readable
            if count:
                _check_whole_video(container, stream, count, _span(times), words.name(path), words)
            raise
        _check_whole_video(container, stream, count, _span(times), words.name(path), words)
    return count


# How to show a frame as its display matrix says (libavutil/display.h: a pixel (x, y) is shown at
# (a·x + c·y, b·x + d·y), y downwards), keyed by the signs of the matrix's (a, b, c, d): the eight quarter turns and
# mirrors, as FFmpeg's own `autorotate` shows them. PyAV's `VideoFrame.rotation` gives the turn only, not the mirror,
# so the matrix itself is read.
DISPLAY_TRANSPOSES = {
    (1, 0, 0, 1): None,
    (-1, 0, 0, 1): Image.Transpose.FLIP_LEFT_RIGHT,
    (1, 0, 0, -1): Image.Transpose.FLIP_TOP_BOTTOM,
    (-1, 0, 0, -1): Image.Transpose.ROTATE_180,
    (0, -1, 1, 0): Image.Transpose.ROTATE_90,  # a quarter turn counter-clockwise (VideoFrame.rotation 90)
    (0, 1, -1, 0): Image.Transpose.ROTATE_270,  # a quarter turn clockwise (rotation -90): a phone held upright
    (0, 1, 1, 0): Image.Transpose.TRANSPOSE,
    (0, -1, -1, 0): Image.Transpose.TRANSVERSE,
}


def _displayed(frame, name: str) -> Image.Image:
    """A decoded video frame as RGB, turned and mirrored as its display matrix (the container's rotation metadata,
    which FFmpeg attaches to every decoded frame) says it is shown; an UploadError for a matrix that is no quarter
    turn or mirror (a 45° tilt)."""
    image = frame.to_image().convert("RGB")
    matrix = frame.side_data.get("DISPLAYMATRIX")
    if matrix is None:
        return image
    a, b, _, c, d = np.frombuffer(bytes(matrix), dtype=np.int32)[:5].astype(np.float64)  # 16.16 fixed point
    scale = max(abs(a), abs(b), abs(c), abs(d))
    if not scale:
        return image  # an empty matrix says nothing (FFmpeg ignores it too)
    signs = tuple(int(v) for v in np.rint(np.array([a, b, c, d]) / scale))
    if signs not in DISPLAY_TRANSPOSES:
        degrees = round(float(np.degrees(np.arctan2(-b, a))))  # counter-clockwise, as VideoFrame.rotation gives it
        raise UploadError(f"{name}: the video's rotation metadata turns its frames by {degrees}°, not a "
                          "quarter turn; re-encode it upright (ffmpeg -i in.mp4 out.mp4 applies it), or give its "
                          "frames as images.")
    transpose = DISPLAY_TRANSPOSES[signs]
    return image if transpose is None else image.transpose(transpose)


def _decode_video_frames(av, path: Path, limits: UploadLimits, words: UploadWords, wanted: list[int]) -> list[Image.Image]:
    """Decode again and keep only the frames at `wanted` indices (so a clip is never held in memory whole), each as
    it is shown (`_displayed`)."""
    container, stream = _open_video_stream(av, path, limits, words)
    keep, frames = set(wanted), []
    with container:
        for index, frame in enumerate(container.decode(stream)):
            if index in keep:
                frames.append(_displayed(frame, words.name(path)))
            if index >= wanted[-1]:
                break
    return frames


def _video_frames(path: Path, limits: UploadLimits, words: UploadWords) -> list[Image.Image]:
    """Uniformly sampled frames of a video (see the module docstring for the limits)."""
    try:  # here, not at the top: PyAV is optional (the demo extra), only video uploads need it
        import av
    except ImportError as error:
        raise UploadError(words.no_pyav) from error
    try:
        total = _count_video_frames(av, path, limits, words)
        if not total:
            raise UploadError(f"{words.name(path)}: the video has no frames.")
        return _decode_video_frames(av, path, limits, words, uniform_indices(total, limits.max_frames))
    except UploadError:
        raise
    except Exception as error:
        raise UploadError(f"{words.name(path)}: not a readable video ({type(error).__name__}).") from error


def common_size(first: tuple[int, int], max_side: int) -> tuple[int, int]:
    """`(width, height)` of every frame the model gets: the first frame's size, scaled down to `max_side` at most."""
    width, height = first
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _one_shape(sizes, names) -> None:
    """The frames' shape rule (gap_mllm.image_utils_gap_mllm `vggt_pad_boxes`: too thin to align) as an UploadError."""
    try:
        vggt_pad_boxes(sizes, names)
    except ValueError as error:
        raise UploadError(f"{error}.") from error


def _common_size(frames: list[Image.Image], max_side: int) -> list[Image.Image]:
    """The first frame's shape at its capped size (`common_size`); a frame of another shape at its own, capped."""
    first = frames[0].size
    sizes = [common_size(first if one_aspect_ratio([first, f.size]) else f.size, max_side) for f in frames]
    return [f if f.size == size else f.resize(size, Image.Resampling.BICUBIC) for f, size in zip(frames, sizes)]


@dataclass(frozen=True)
class FrameShape:
    """How many frames `load_frames` gives the model and their common `(width, height)`, and each frame's original
    `(width, height)` (the photo as shown, upright: the pixels a marker names); None where reading it would mean
    decoding a video."""

    count: int | None
    size: tuple[int, int] | None
    originals: tuple[tuple[int, int], ...] | None = None

    def original_size(self, view) -> tuple[int, int] | None:
        """The original `(width, height)` of frame `view`; None when not known or `view` is not a frame (the
        request's own check names a view out of range)."""
        return original_size(self.originals, view)


def original_size(originals, view) -> tuple[int, int] | None:
    """`originals[view]` when `view` is one of the frames, else None."""
    if originals is None or view is None or not 0 <= int(view) < len(originals):
        return None
    return tuple(originals[int(view)])


def on_model_frame(marker, original: tuple[int, int], size: tuple[int, int]) -> tuple[int, int, int]:
    """The marker `(view, x, y)` of a frame of `original` `(width, height)` pixels, on that frame resized to `size`:
    the resized pixel that covers the original one's centre (1280x1024 -> 640x512: (568, 600) -> (284, 300))."""
    view, x, y = (int(v) for v in marker)
    (width, height), (new_width, new_height) = original, size
    return (view, min(new_width - 1, int((x + 0.5) * new_width / width)),
            min(new_height - 1, int((y + 0.5) * new_height / height)))


@dataclass(frozen=True)
class Frames:
    """The frames the model gets (`views`, `_common_size`) and each one's original `(width, height)`."""

    views: list
    originals: tuple[tuple[int, int], ...]

    def on_model_frames(self, marker) -> tuple[int, int, int]:
        """A marker given in original pixels (checked inside its frame first), on the frames the model gets."""
        return on_model_frame(marker, original_size(self.originals, marker[0]), self.views[int(marker[0])].size)


def check_frames(paths, limits: UploadLimits = UploadLimits(), allowed_roots=None,
                 words: UploadWords = SPACE_WORDS) -> FrameShape:
    """What `load_frames` checks, without torch and without decoding a video: the paths (`check_paths`), every image
    decoded (a corrupt one is an UploadError naming it), a GIF's header; returns the frames' `FrameShape`, so that
    a marker can be checked against them before any model runs (`gap-mllm predict`'s early check)."""
    resolved = check_paths(paths, limits, allowed_roots, words)
    suffix = resolved[0].suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return FrameShape(None, None)
    if is_animation(resolved[0]):
        name = words.name(resolved[0])
        try:
            with Image.open(resolved[0]) as animation:
                if animation.width * animation.height > limits.max_pixels:
                    raise UploadError(f"{name}: {animation.width}x{animation.height} pixels is over the limit.")
                count = len(uniform_indices(getattr(animation, "n_frames", 1), limits.max_frames))
                first = animation.size
        except UploadError:
            raise
        except Exception as error:
            raise UploadError(f"{name}: not a readable {_animation_kind(resolved[0])} ({type(error).__name__}).") \
                from error
        return FrameShape(count, common_size(first, limits.max_side), (first,) * count)
    sizes = [_read_image(path, limits, words).size for path in resolved]
    _one_shape(sizes, [words.name(path) for path in resolved])
    return FrameShape(len(sizes), common_size(sizes[0], limits.max_side), tuple(sizes))


def load_frames(paths, limits: UploadLimits = UploadLimits(), allowed_roots=None,
                words: UploadWords = SPACE_WORDS) -> list[Image.Image]:
    """Check `paths` (see the module docstring) and return the frames to feed the model; errors are worded by
    `words` (the Space's by default)."""
    return read_frames(paths, limits, allowed_roots, words).views


def read_frames(paths, limits: UploadLimits = UploadLimits(), allowed_roots=None,
                words: UploadWords = SPACE_WORDS) -> Frames:
    """`load_frames`, with each frame's original size kept (`Frames`): what a marker in original pixels needs."""
    resolved = check_paths(paths, limits, allowed_roots, words)
    suffix = resolved[0].suffix.lower()
    if suffix in VIDEO_SUFFIXES or is_animation(resolved[0]):
        frames = (_video_frames if suffix in VIDEO_SUFFIXES else _animation_frames)(resolved[0], limits, words)
        names = [f"{words.name(resolved[0])}, sampled frame {index + 1} of {len(frames)}"
                 for index in range(len(frames))]
    else:
        frames = [_open_image(p, limits, words) for p in resolved]
        names = [words.name(path) for path in resolved]
    sizes = [frame.size for frame in frames]
    _one_shape(sizes, names)
    return Frames(_common_size(frames, limits.max_side), tuple(sizes))
