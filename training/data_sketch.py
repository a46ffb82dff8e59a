"""Whether a run continues on the data it trained on: a compact, position-sensitive sketch of every file of a data root.

A run records the sketch of its data root (training/run_state.py: in the run state, `data_sketch.safetensors`; and in
its output folder, `.gap-mllm-data.sketch`), and a resume, from the state or from a checkpoint of the output
folder, sketches the data root it is given and continues only when every file is the same file, in this sense:

* every file the run trained on is there, and no other (by relative path). A symbolic link inside the root is
  followed and what it reaches is digested as if it lay there (a linked `scannet/posed_images`, files outside the
  root reached through a link); a link loop is walked once; a link to nothing holds no data and is not a file.
* an image (.png, .jpg, .jpeg) has the same bytes, or the same decoded pixels (another Pillow or zlib encodes the
  same pixels otherwise): every image's pixels, no sampling.
* a binary array (.npy, .npz, .exr) has the same bytes.
* any other file (records, poses, intrinsics: text) has the same bytes, or the same text around its decimal numbers,
  as many of them, and each number, in its place, equal to the recorded one within what another CPU's float maths
  changes: |x' - x| <= REL*|x| + FLOOR (the rule, shared with the evaluation's run record:
  processing/decimal_numbers.py). (Measured: 8 Mini scenes written under three settings of
  NPY_DISABLE_CPU_FEATURES differ in 154 of 18,678 numbers, by at most 192 ulp: 4e-14 relative, 1.3e-15 absolute;
  their sketches compare as the same data.)

The numbers are not stored. Each text file's decimal numbers x_0..x_{n-1} are cut into blocks of BLOCK, and each
block keeps K position-weighted sums s_k = sum_i w_k(i) x_i, with weights w_k(i) in [1, 2) drawn by a hash of (the
file's path, k, i), and the sum A of its |x_i|. Numbers within the per-number bound move each sum by at most
sum_i w_k(i)(REL|x_i| + FLOOR) <= 2(REL*A + FLOOR*m) (m numbers in the block): a block is accepted when all its K
sums are within that bound (A: the larger of the recorded and the current one; the float64 rounding of a sum of
BLOCK products, under BLOCK*2^-53 of 2A, lies far inside REL*A). So data written again on another CPU continue.

A change beyond the bound is missed only when it keeps all K sums. Let one number of a block change by D (others
anyhow): sum k changes by w_k(j)*D + (the rest), and w_k(j) is uniform over [1, 2) and unrelated to the change, so it
stays within the bound with probability at most 2*bound/D, and all K sums (independent weights) with probability at
most (2*bound/D)^K. A swap of two unequal numbers (x and y of a box, two records' targets, fx and cx) changes sum k
by (w_k(i) - w_k(j))(x_i - x_j), a +d/-d pair by d(w_k(i) - w_k(j)): the same case. With numbers up to 100 a block's
bound is under 1.3e-8: a change of 1e-4 is missed with probability under 1e-14, one of 1e-6 under 1e-6. Two files
swapped are two files whose numbers changed (the weights follow the path). The bound does not grow with the root:
it is a block's (at most BLOCK numbers), not the data's.

The weights are public (a hash, not a secret): the sketch guards against other data given by mistake (another seed,
a shuffled, edited or regenerated file, a stale copy) as a file's sha256 guards against damage; whoever edits data
to keep K sums could as well edit the recorded sketch.

Size: per file two 16-byte digests and a count, per block K+1 float64; the Mini's 420-scene root (42,013 files,
951,772 numbers, 275 MB) takes 3.1 MB. A run state keeps it in a file of its own, which
stays the same from state to state of one run (git stores it once).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
from safetensors import SafetensorError
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

from gap_mllm.processing.decimal_numbers import FLOOR, REL, K, blocks_beyond_last_digits, text_and_numbers
from gap_mllm.processing.decimal_numbers import block_sums as _block_sums

logger = logging.getLogger(__name__)

VERSION = 1  # of the sketch (its weights, blocks and digests); a sketch of another version is not compared
BLOCK = 64  # numbers per block (K sums per block, the per-number bound REL and FLOOR: processing/decimal_numbers.py)
DIGEST_BYTES = 16  # of each sha256 kept
# the sketch of the data a training output folder's run trains on (a safetensors file, named so that no "*.safetensors"
# rule takes it for weights: `gap-mllm push` uploads an output folder's *.safetensors)
RECORD_FILE = ".gap-mllm-data.sketch"

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
BINARY_SUFFIXES = (".npy", ".npz", ".exr")
TEXT, IMAGE, BINARY = 0, 1, 2  # the kinds of file
_TENSORS = ("names", "kinds", "raw", "content", "counts", "blocks", "sums", "absolute", "settings")


@dataclass
class DataSketch:
    """The sketch of a data root (module docstring): per file (in `names` order) its kind, the digests of its bytes
    (`raw`) and of its content (images: the decoded pixels; text: the text around the numbers; binary: the bytes),
    its count of decimal numbers and the range `blocks[f]:blocks[f + 1]` of its blocks' `sums` [*, K] and
    `absolute` [*]. `folder` and `links` describe the root (not compared)."""

    names: list[str]
    kinds: np.ndarray
    raw: np.ndarray
    content: np.ndarray
    counts: np.ndarray
    blocks: np.ndarray
    sums: np.ndarray
    absolute: np.ndarray
    settings: np.ndarray = field(default_factory=lambda: np.array([VERSION, K, BLOCK], dtype=np.int64))
    folder: str = ""
    links: int = 0
    _encoded: bytes | None = field(default=None, repr=False)

    def encode(self) -> bytes:
        """The sketch as a safetensors file (no pickle: it may come from a shared repository). A sketch read from
        a file encodes to that file's bytes, so one run's states and output folder hold the same file."""
        if self._encoded is None:
            tensors = {name: np.ascontiguousarray(getattr(self, name)) for name in _TENSORS if name != "names"}
            names = "\0".join(self.names).encode("utf-8", "surrogateescape")  # any name the file system gives
            tensors["names"] = np.frombuffer(zlib.compress(names, 9), dtype=np.uint8)
            tensors["folder"] = np.frombuffer(self.folder.encode("utf-8", "surrogateescape"), dtype=np.uint8)
            tensors["links"] = np.array([self.links], dtype=np.int64)
            self._encoded = save_tensors(tensors)
        return self._encoded

    def digest(self) -> str:
        """sha256 of `encode()`: the sketch's name in a run state's record."""
        return hashlib.sha256(self.encode()).hexdigest()

    def summary(self) -> dict:
        """What a run state's run_state.json says of the data: folder, files, links followed, numbers, the
        sketch's digest."""
        return {"folder": self.folder, "files": len(self.names), "links": self.links,
                "numbers": int(self.counts.sum()), "sketch": self.digest()}


class DamagedSketch(ValueError):
    """A file that is not a data sketch of this package (truncated, edited, another format)."""


def decode_sketch(data: bytes) -> DataSketch:
    """The sketch `DataSketch.encode` wrote.

    Raises:
        DamagedSketch: not one (what is wrong, in words)."""
    try:
        tensors = load_tensors(data)
        names = zlib.decompress(tensors["names"].tobytes()).decode("utf-8", "surrogateescape")
        folder, links = tensors["folder"].tobytes().decode("utf-8", "surrogateescape"), int(tensors["links"][0])
    except (KeyError, IndexError, ValueError, zlib.error, SafetensorError) as error:  # UnicodeDecodeError: a ValueError
        raise DamagedSketch(f"not a data sketch ({type(error).__name__}: {error})") from error
    names = names.split("\0") if names else []
    sketch = DataSketch(names, **{name: tensors.get(name) for name in _TENSORS if name != "names"}, folder=folder,
                        links=links, _encoded=bytes(data))
    fault = _shape_fault(sketch)
    if fault is not None:
        raise DamagedSketch(f"not a data sketch ({fault})")
    return sketch


def _shape_fault(sketch: DataSketch) -> str | None:
    """What in a decoded sketch is not of a sketch's shape, or None."""
    files = len(sketch.names)
    expected = {"kinds": ((files,), np.uint8), "raw": ((files, DIGEST_BYTES), np.uint8),
                "content": ((files, DIGEST_BYTES), np.uint8), "counts": ((files,), np.int64),
                "blocks": ((files + 1,), np.int64), "settings": ((3,), np.int64), "absolute": (None, np.float64),
                "sums": (None, np.float64)}
    for name, (shape, dtype) in expected.items():
        value = getattr(sketch, name)
        if value is None or (shape is not None and value.shape != shape) or value.dtype != dtype:
            return f"{name} is missing or not {dtype.__name__}{list(shape or [])}"
    blocks = sketch.blocks
    if blocks[0] != 0 or np.any(np.diff(blocks) < 0):
        return "its block ranges are not increasing"
    if sketch.sums.shape != (blocks[-1], int(sketch.settings[1])) or sketch.absolute.shape != (blocks[-1],):
        return "its sums do not match its block ranges"
    return None


def read_sketch(path) -> DataSketch | None:
    """The sketch in file `path` (None when there is none).

    Raises:
        DamagedSketch: the file is not a sketch (the message names it)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return decode_sketch(path.read_bytes())
    except DamagedSketch as error:
        raise DamagedSketch(f"{path}: {error}") from error


def write_sketch(sketch: DataSketch, path) -> None:
    """Write `sketch` to `path` (written beside it and renamed: a kill leaves the old file or the new one)."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(sketch.encode())
    os.replace(partial, path)


# ------------------------------------------------------------------------------------------ sketching a root

def data_files(root) -> tuple[list[tuple[str, Path]], int]:
    """`([(relative posix name, path)], links followed)`: every regular file under `root`, in name order at each
    level, symbolic links followed (to files and folders, inside the root or out of it; a folder already on the way
    down, a loop, is not entered again). A link to nothing, or in a loop of links, is not a file."""
    files, links = [], 0

    def walk(folder: Path, prefix: str, above: frozenset) -> None:
        nonlocal links
        with os.scandir(folder) as entries:
            ordered = sorted(entries, key=lambda entry: entry.name)
        for entry in ordered:
            try:
                is_dir, is_file = entry.is_dir(), entry.is_file()
            except OSError:  # a loop of links: no file there
                continue
            name, link = prefix + entry.name, entry.is_symlink()
            if is_dir:
                real = os.path.realpath(entry.path)
                if real not in above:
                    links += link
                    walk(Path(entry.path), name + "/", above | {real})
            elif is_file:
                links += link
                files.append((name, Path(entry.path)))

    walk(Path(root), "", frozenset({os.path.realpath(root)}))
    return files, links


def _short(digest) -> np.ndarray:
    return np.frombuffer(digest.digest()[:DIGEST_BYTES], dtype=np.uint8)


def _pixels_digest(content: bytes) -> np.ndarray:
    """The digest of an image's decoded pixels (mode, size, values, and the palette and transparency that give a
    palette image's values their colours); an image Pillow cannot decode is digested by its bytes (it differs from
    any decodable one)."""
    digest = hashlib.sha256()
    try:
        with PIL.Image.open(io.BytesIO(content)) as image:
            pixels = image.tobytes()  # decoded, in the image's mode
            palette = bytes(image.getpalette() or [])
            digest.update(f"{image.mode}|{image.size}|{image.info.get('transparency')!r}|{len(palette)}|".encode())
        digest.update(palette + pixels)
    except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError):
        digest.update(b"undecodable|" + content)
    return _short(digest)


def block_sums(name: str, numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(`[blocks, K]` weighted sums, `[blocks]` absolute sums) of a file's numbers, BLOCK numbers a block."""
    return _block_sums(name, numbers, BLOCK)


def _text_parts(content: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(the short digest of the text around the decimal numbers, the numbers in order) of a text file."""
    text, numbers = text_and_numbers(content)
    return np.frombuffer(text[:DIGEST_BYTES], dtype=np.uint8), numbers


def kind_of(name: str) -> int:
    suffix = os.path.splitext(name)[1].lower()
    return IMAGE if suffix in IMAGE_SUFFIXES else BINARY if suffix in BINARY_SUFFIXES else TEXT


def sketch_data_root(root) -> DataSketch:
    """The sketch of every file under data root `root` (module docstring)."""
    root = Path(root)
    files, links = data_files(root)
    kinds, raw, content, counts, blocks = [], [], [], [], [0]
    sums, absolute = [np.zeros((0, K))], [np.zeros(0)]
    for name, path in files:
        data = path.read_bytes()
        kind = kind_of(name)
        kinds.append(kind)
        raw.append(_short(hashlib.sha256(data)))
        numbers = np.zeros(0)
        if kind == IMAGE:
            content.append(_pixels_digest(data))
        elif kind == BINARY:
            content.append(raw[-1])
        else:
            text, numbers = _text_parts(data)
            content.append(text)
            file_sums, file_absolute = block_sums(name, numbers)
            sums.append(file_sums)
            absolute.append(file_absolute)
        counts.append(numbers.size)
        blocks.append(blocks[-1] + -(-numbers.size // BLOCK))
    files_count = len(files)
    return DataSketch(
        names=[name for name, _ in files], kinds=np.array(kinds, dtype=np.uint8),
        raw=np.array(raw, dtype=np.uint8).reshape(files_count, DIGEST_BYTES),
        content=np.array(content, dtype=np.uint8).reshape(files_count, DIGEST_BYTES),
        counts=np.array(counts, dtype=np.int64), blocks=np.array(blocks, dtype=np.int64),
        sums=np.concatenate(sums), absolute=np.concatenate(absolute), folder=root.name, links=links)


# ------------------------------------------------------------------------------------------ comparing

@dataclass
class DataComparison:
    """How the current data differ from the recorded ones: `differences` ((path, what), in name order: other data;
    an empty path: the sketches cannot be compared), `reencoded` (images with other bytes and the same pixels),
    `last_digits` (text files whose numbers differ within the per-number bound)."""

    differences: list[tuple[str, str]]
    reencoded: list[str]
    last_digits: list[str]

    def same(self) -> bool:
        return not self.differences

    def first(self, data_root) -> str:
        """The first difference, its file named under `data_root`, and how many more files differ: one line."""
        name, what = self.differences[0]
        more = len(self.differences) - 1
        tail = f" (and {more} more file{'s differ' if more > 1 else ' differs'})" if more else ""
        where = f"{Path(data_root) / name if data_root else name}: " if name else ""
        return f"{where}{what}{tail}"


def _number_difference(recorded: DataSketch, i: int, current: DataSketch, j: int) -> str | None:
    """Why file i of `recorded` and file j of `current` (text, other bytes, same text around the numbers and as
    many numbers) are other numbers: the first block whose sums moved beyond the bound; None when none did."""
    first, last = int(recorded.blocks[i]), int(recorded.blocks[i + 1])
    now = int(current.blocks[j])
    beyond = blocks_beyond_last_digits(recorded.sums[first:last], current.sums[now:now + last - first],
                                       recorded.absolute[first:last], current.absolute[now:now + last - first],
                                       int(recorded.counts[i]), BLOCK)
    if not beyond.any():
        return None
    start = int(np.argmax(beyond)) * BLOCK
    count = int(recorded.counts[i])
    return (f"its decimal numbers {start + 1}-{min(start + BLOCK, count)} of {count} are not the recorded ones (they "
            f"differ by more than another CPU's last digits, {REL:g} relative)")


def _file_difference(recorded: DataSketch, i: int, current: DataSketch, j: int) -> tuple[str, str | None]:
    """("same" | "reencoded" | "last_digits" | "differs", what differs in words) of one file present in both."""
    if np.array_equal(recorded.raw[i], current.raw[j]) and recorded.kinds[i] == current.kinds[j]:
        return "same", None
    kind = int(recorded.kinds[i])
    if kind == IMAGE:
        same_pixels = np.array_equal(recorded.content[i], current.content[j])
        return ("reencoded", None) if same_pixels else ("differs", "its pixels differ")
    if kind == BINARY:
        return "differs", "its bytes differ"
    if not np.array_equal(recorded.content[i], current.content[j]):
        return "differs", "its text differs (beyond the digits of its decimal numbers)"
    if recorded.counts[i] != current.counts[j]:
        return "differs", f"it holds {int(current.counts[j])} decimal numbers, {int(recorded.counts[i])} then"
    what = _number_difference(recorded, i, current, j)
    return ("differs", what) if what is not None else ("last_digits", None)


def compare_data(recorded: DataSketch, current: DataSketch) -> DataComparison:
    """Compare the data a run trained on (`recorded`) with those it is given (`current`), file by file."""
    if not np.array_equal(recorded.settings, current.settings):
        return DataComparison([("", f"the data were recorded by another version of the data check (version, sums, "
                                    f"block size {recorded.settings.tolist()}; this version "
                                    f"{current.settings.tolist()}), which this version cannot compare")], [], [])
    index = {name: j for j, name in enumerate(current.names)}
    found: list[tuple[str, str]] = []
    reencoded, last_digits = [], []
    for i, name in enumerate(recorded.names):
        j = index.pop(name, None)
        if j is None:
            found.append((name, "missing (the run trained on it)"))
            continue
        status, what = _file_difference(recorded, i, current, j)
        if status == "differs":
            found.append((name, what))
        elif status == "reencoded":
            reencoded.append(name)
        elif status == "last_digits":
            last_digits.append(name)
    found += [(name, "not in the data the run trained on") for name in index]
    found.sort(key=lambda item: item[0].split("/"))
    return DataComparison(found, reencoded, last_digits)


def log_accepted(comparison: DataComparison, where) -> None:
    """Say which files were accepted though their bytes differ (`where`: the state or checkpoint continued)."""
    if comparison.reencoded:
        logger.info("%s: %d image(s) of the data are encoded otherwise than when the run trained on them, with the "
                    "same pixels (another Pillow or zlib), e.g. %s; continuing", where, len(comparison.reencoded),
                    comparison.reencoded[0])
    if comparison.last_digits:
        logger.info("%s: %d file(s) of the data differ from those the run trained on only in the last digits of their "
                    "numbers (each within %g relative: another CPU's float maths), e.g. %s; continuing", where,
                    len(comparison.last_digits), REL, comparison.last_digits[0])
