"""Read and write the ScanNet `posed_images` layout (docs/method.md §7.4).

    <data_root>/scannet/posed_images/<scene_id>/
        00000.jpg  00010.jpg ...   colour; name = 5-digit raw frame number (every 10th frame)
        00000.png  ...             depth, 16-bit (uint16) millimetres, 0 = no measurement; an 8-bit
                                   PNG is refused (its values are not millimetres)
        00000.txt  ...             4x4 camera-to-world pose (ScanNet raw world), OpenCV camera
        intrinsic.txt              4x4 (or 3x3) colour intrinsics
        depth_intrinsic.txt        4x4 (or 3x3) depth intrinsics (optional; colour ones otherwise)
        axis_align_matrix.txt      4x4 raw -> axis-aligned world (optional; ScanNet keeps it in
                                   scans/<scene>/<scene>.txt, the official JSONs carry it per sample)

Annotation JSONs list images relative to the posed_images folder ("scene0362_00/00350.jpg"); depth
and pose files are found next to the image by stem. Depth may also be a `.npy` of float metres (an integer
array has no unit of its own and is read only with an explicit depth scale; bool, complex and other arrays are
refused), which takes precedence over the PNG.
Every reader raises `DataError` naming the file.

Paths in annotation files must stay inside the media root: `media_path` refuses absolute paths, `..`
that climbs out, and paths that leave it through a symbolic link (resolved, so a link pointing at
another disk is refused; link or mount the whole data folder instead, or set the builders'
`media_root=`), and names a symbolic link loop as one. The builders, the evaluation runner and its
plots use it; the Space's upload check uses the same `resolve_inside`.
"""

from __future__ import annotations

import errno
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image

from gap_mllm.files import kind_of
from gap_mllm.image_utils_gap_mllm import check_marker_inside, displayed_size, pil_to_rgb, read_image_file

from .coordinates import check_rigid, intrinsics_3x3
from .errors import DataError
from .path_containment import resolve_inside  # noqa: F401 - part of this module's path rules

POSED_IMAGES_SUBDIR = Path("scannet") / "posed_images"
DEPTH_SCALE = 1000.0  # ScanNet depth PNGs are millimetres
INTRINSIC_FILE = "intrinsic.txt"
DEPTH_INTRINSIC_FILE = "depth_intrinsic.txt"
AXIS_ALIGN_FILE = "axis_align_matrix.txt"


def posed_images_dir(data_root) -> Path:
    """`<data_root>/scannet/posed_images`, the folder annotation image paths are relative to."""
    return Path(data_root) / POSED_IMAGES_SUBDIR


def frame_name(raw_frame: int) -> str:
    """ScanNet posed-image stem of a raw frame number: 5 digits, zero padded (350 -> "00350")."""
    return f"{int(raw_frame):05d}"


# ------------------------------------------------------------------------------------------- paths


def media_path(media_root, relative, sample=None) -> Path:
    """The file an annotation path names, `media_root / relative`, or a `DataError` naming the sample
    and the path when it would leave `media_root`: an absolute path, `..` climbing out, or a symbolic
    link resolving outside. The returned path is the unresolved `media_root / relative` (error messages
    and stored paths stay as the user wrote them)."""
    text = str(relative)
    if not text:
        raise DataError("empty image path", sample=sample)
    if Path(text).is_absolute() or Path(text).drive:
        raise DataError(f"image path {text!r} is absolute; annotation paths must be relative to the media root "
                        f"{str(media_root)!r}", sample=sample)
    try:
        inside = resolve_inside(media_root, text)
    except OSError as error:
        raise DataError(f"image path {text!r} under the media root {str(media_root)!r} cannot be resolved "
                        f"({error.strerror}: {error.filename})", sample=sample) from error
    if inside is None:
        raise DataError(f"image path {text!r} leaves the media root {str(media_root)!r} (through '..' or a "
                        "symbolic link); keep the data under that folder (link or mount the whole folder instead)",
                        sample=sample)
    return Path(media_root) / text


# ----------------------------------------------------------------------------------------- readers


def existing_file(path, what: str) -> Path:
    """`path` if it is a readable regular file, else a `DataError` that says why: not found, a symbolic
    link loop, or what it is instead of a regular file (a FIFO, a device, a folder: gap_mllm.processing_gap_mllm)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise DataError(f"{what} not found", path=path) from None
    except OSError as error:
        loop = error.errno == errno.ELOOP
        raise DataError(f"{what} is a symbolic link loop" if loop else f"cannot read {what} ({error.strerror})", path=path) from None
    kind = kind_of(mode)
    if kind is not None:
        raise DataError(f"{what} is {kind}, not a regular file", path=path)
    return path


def read_color(path) -> PIL.Image.Image:
    """An RGB colour image, fully decoded and upright (a truncated or corrupt file raises `DataError` here)."""
    path = existing_file(path, "colour image")
    try:
        # upright (EXIF orientation applied: gap_mllm.processing_gap_mllm); 16-bit frames are scaled, not clipped to white
        return pil_to_rgb(read_image_file(path), str(path))
    except PIL.Image.DecompressionBombError as err:
        raise DataError(f"refused as a possible decompression bomb ({err})", path=path) from err
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"cannot decode colour image ({err})", path=path) from err


def check_marked_pixel(media_root, images, coords, name: str, sample=None) -> None:
    """`DataError` naming the sample (and the frame) when the marker `coords` `(view, x, y)` (`name` in the message)
    names no frame of `images` (a record's paths under `media_root`) or a pixel outside the upright frame it names:
    the pixels of the frame the processor gets (its header is read, not its pixels)."""
    view, x, y = (int(value) for value in coords)
    if not 0 <= view < len(images):
        raise DataError(f"{name} view {view} out of range for {len(images)} image(s)", sample=sample)
    path = existing_file(media_path(media_root, images[view], sample), "colour image")
    try:
        with PIL.Image.open(path) as frame:
            width, height = displayed_size(frame)  # the pixels of the upright frame, as every reader gives it
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"cannot read colour image ({err})", path=path, sample=sample) from err
    try:
        check_marker_inside(x, y, width, height, name)
    except ValueError as err:
        raise DataError(str(err), path=path, sample=sample) from err


# PIL modes of a single-channel 16-bit image (PNG depth maps open as "I;16"; older Pillow gave "I")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _array_metres(values: np.ndarray, path: Path, depth_scale: float | None) -> np.ndarray:
    """Metres of a `.npy` depth array (the PNG rule, for arrays): float values are metres; integer values have no
    unit of their own (uint16 1500 may be millimetres) and are read only as `value / depth_scale`, with the scale
    given; any other dtype (bool, complex, strings) is refused. `DataError` naming the file."""
    if values.dtype.kind == "f":
        return values.astype(np.float32)
    if values.dtype.kind in "iu" and depth_scale is not None:
        return values.astype(np.float32) / depth_scale
    if values.dtype.kind in "iu":
        raise DataError(
            f"depth array is {values.dtype}: integer depth has no unit (1500 may be millimetres or metres), so it is "
            f"not read as metres; save float32 metres, or uint16 millimetres as {path.with_suffix('.png').name}, or "
            "read it with an explicit depth_scale (units per metre, e.g. 1000 for millimetres)",
            path=path,
        )
    raise DataError(f"depth array is {values.dtype}, not numbers of metres; save float32 metres", path=path)


def read_depth(path, depth_scale: float | None = None) -> np.ndarray:
    """Depth `[H, W]` float32 metres; 0 marks "no measurement" (ScanNet).

    PNG: uint16 / `depth_scale` (default `DEPTH_SCALE`: ScanNet's millimetres). A depth PNG must be single-channel
    16-bit: an 8-bit (or colour) PNG cannot hold millimetres, and reading its value 200 as 0.200 m would be
    silently wrong, so it raises `DataError` saying what to write instead.
    `.npy`: float values are metres; integer values only with an explicit `depth_scale` (units per metre), any
    other dtype raises `DataError` (`_array_metres`). Any NaN, inf or negative value raises `DataError`.
    """
    if depth_scale is not None and not (isinstance(depth_scale, (int, float)) and math.isfinite(depth_scale) and depth_scale > 0):
        raise ValueError(f"depth_scale must be a positive number of units per metre, got {depth_scale!r}")
    path = existing_file(path, "depth file")
    try:
        if path.suffix == ".npy":
            depth = _array_metres(np.load(path, allow_pickle=False), path, depth_scale)
        else:
            scale = DEPTH_SCALE if depth_scale is None else depth_scale
            with PIL.Image.open(path) as image:
                image.load()
                mode = image.mode
                values = np.asarray(image)
            if mode not in SIXTEEN_BIT_MODES or (mode == "I" and values.size and (values.min() < 0 or values.max() > 65535)):
                raise DataError(
                    f"depth PNG is {mode!r} ({values.dtype}), not 16-bit: ScanNet depth PNGs are uint16 millimetres "
                    f"(read / {scale:g}); write uint16 millimetres, or float32 metres as {path.with_suffix('.npy').name}",
                    path=path,
                )
            depth = values.astype(np.float32) / scale
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"cannot decode depth ({err})", path=path) from err
    if depth.ndim != 2:
        raise DataError(f"depth must be a 2-D map, got shape {depth.shape}", path=path)
    if not np.all(np.isfinite(depth)):
        raise DataError(f"depth contains {int((~np.isfinite(depth)).sum())} NaN/inf value(s)", path=path)
    if np.any(depth < 0):
        raise DataError("depth contains negative values", path=path)
    return depth


def read_matrix(path, shape=(4, 4), what: str = "matrix") -> np.ndarray:
    """A whitespace-separated float matrix; finite and of `shape` (else `DataError` naming the file)."""
    path = existing_file(path, f"{what} file")
    try:
        matrix = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"cannot parse {what} ({err})", path=path) from err
    if matrix.shape != tuple(shape):
        raise DataError(f"{what} must be {shape[0]}x{shape[1]}, got shape {matrix.shape}", path=path)
    if not np.all(np.isfinite(matrix)):
        # ScanNet marks frames with failed tracking by -inf poses; they cannot be used.
        raise DataError(f"{what} contains NaN/inf (invalid frame)", path=path)
    return matrix


def read_pose(path) -> np.ndarray:
    """Camera-to-world pose `[4, 4]` (OpenCV camera), as stored; must be a rigid motion up to
    `coordinates.RIGID_TOLERANCE` (stored poses are rounded; box transforms orthonormalise them)."""
    pose = read_matrix(path, (4, 4), "pose")
    try:
        return check_rigid(pose, "pose")
    except ValueError as err:
        raise DataError(str(err), path=path) from err


def read_intrinsics(path) -> np.ndarray:
    """3x3 `K` from a ScanNet 4x4 (or a 3x3) intrinsic file."""
    path = existing_file(path, "intrinsics file")
    try:
        matrix = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (ValueError, UnicodeDecodeError) as err:  # a non-number, ragged rows, a binary file
        raise DataError(f"cannot parse intrinsics as a whitespace-separated 3x3 or 4x4 matrix ({err})", path=path) from err
    if matrix.shape not in ((3, 3), (4, 4)) or not np.all(np.isfinite(matrix)):
        raise DataError(f"intrinsics must be a finite 3x3 or 4x4 matrix, got shape {matrix.shape}", path=path)
    return intrinsics_3x3(matrix).copy()


@dataclass
class SceneViews:
    """Views of one sample read from disk.

    images: V PIL RGB images; depth `[V, H, W]` float32 metres (or None); cam_to_world `[V, 4, 4]`
    (or None); intrinsics `[V, 3, 3]` colour K (or None); depth_intrinsics `[V, 3, 3]` (or None).
    """

    images: list
    depth: np.ndarray | None
    cam_to_world: np.ndarray | None
    intrinsics: np.ndarray | None
    depth_intrinsics: np.ndarray | None


def companion_path(image_path: Path, suffix: str) -> Path:
    """The depth (".png"/".npy") or pose (".txt") file next to a colour frame."""
    return image_path.with_suffix(suffix)


def read_views(media_root, image_paths, load_depth: bool = True, load_poses: bool = True) -> SceneViews:
    """Read the colour frames listed in an annotation (paths relative to `media_root`, checked by
    `media_path`) and, on request, their depth maps, poses and intrinsics from the posed_images layout."""
    media_root = Path(media_root)
    paths = [media_path(media_root, p) for p in image_paths]
    images = [read_color(p) for p in paths]
    depth = poses = intrinsics = depth_intrinsics = None
    if load_depth:
        maps = []
        for p in paths:
            npy = companion_path(p, ".npy")
            maps.append(read_depth(npy if npy.is_file() else companion_path(p, ".png")))
        if len({m.shape for m in maps}) != 1:
            raise DataError(f"depth maps of one sample differ in size: {sorted({m.shape for m in maps})}", path=paths[0])
        depth = np.stack(maps)
    if load_poses:
        poses = np.stack([read_pose(companion_path(p, ".txt")) for p in paths])
        intrinsics = np.stack([read_intrinsics(p.parent / INTRINSIC_FILE) for p in paths])
        depth_intrinsics = np.stack(
            [read_intrinsics(p.parent / DEPTH_INTRINSIC_FILE) if (p.parent / DEPTH_INTRINSIC_FILE).is_file() else k for p, k in zip(paths, intrinsics)]
        )
    return SceneViews(images, depth, poses, intrinsics, depth_intrinsics)


def read_axis_align(scene_dir) -> np.ndarray | None:
    """`axis_align_matrix.txt` of a scene folder (4x4), or None when the scene has none."""
    path = Path(scene_dir) / AXIS_ALIGN_FILE
    return read_matrix(path, (4, 4), "axis_align_matrix") if path.is_file() else None


# ----------------------------------------------------------------------------------------- writers


def _write_matrix(path: Path, matrix) -> None:
    # %.17g round-trips float64 exactly, so poses read back bit-identical.
    np.savetxt(path, np.asarray(matrix, dtype=np.float64), fmt="%.17g")


def write_scene_meta(scene_dir, intrinsics, depth_intrinsics=None, axis_align_matrix=None) -> None:
    """Write the per-scene intrinsics (as ScanNet 4x4) and, if given, the axis-alignment matrix."""
    scene_dir = Path(scene_dir)
    scene_dir.mkdir(parents=True, exist_ok=True)
    for name, k in ((INTRINSIC_FILE, intrinsics), (DEPTH_INTRINSIC_FILE, depth_intrinsics)):
        if k is None:
            continue
        full = np.eye(4)
        full[:3, :3] = intrinsics_3x3(k)
        _write_matrix(scene_dir / name, full)
    if axis_align_matrix is not None:
        _write_matrix(scene_dir / AXIS_ALIGN_FILE, axis_align_matrix)


def write_frame(scene_dir, name: str, rgb: np.ndarray, depth=None, cam_to_world=None, jpeg_quality: int = 95) -> None:
    """Write one posed frame: `<name>.jpg` (RGB uint8 `[H, W, 3]`), `<name>.png` (depth metres `[H, W]`
    stored as uint16 millimetres, rounded to the nearest mm; > 65.535 m is an error) and `<name>.txt`."""
    scene_dir = Path(scene_dir)
    scene_dir.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(scene_dir / f"{name}.jpg", quality=jpeg_quality)
    if depth is not None:
        depth = np.asarray(depth, dtype=np.float64)
        if not np.all(np.isfinite(depth)) or np.any(depth < 0) or np.any(depth * DEPTH_SCALE > 65535):
            raise DataError("depth must be finite, >= 0 and < 65.536 m to be stored as uint16 mm", path=scene_dir / f"{name}.png")
        millimetres = np.round(depth * DEPTH_SCALE).astype(np.uint16)
        PIL.Image.fromarray(millimetres).save(scene_dir / f"{name}.png")
    if cam_to_world is not None:
        _write_matrix(scene_dir / f"{name}.txt", cam_to_world)
