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
* any other file (records, poses, intrinsics: text) has the same bytes, or the same text: the same text around its
  decimal numbers, as many numbers, each written in the same form, and each equal to the recorded one up to its last
  digits. The form of a number is its sign and digits before the point, its count of digits after it, and its
  notation (exponent and its digits): `0.4` re-exported as `0.40`, `3.66` as `366e-2`, are other texts, so other
  data (refused as reformatted). A number written at a float's full precision (FULL_PRECISION or more significant
  digits: a shortest round-trip repr, whose length follows its last bit) keeps its form whatever its count of digits
  after the point. Each number may differ by |x' - x| <= REL*|x| + FLOOR (processing/decimal_numbers.py), its own
  bound. (Measured: 8 Mini scenes written with NumPy's X86_V3/V4 kernels and without them differ in 148 of 18,678
  numbers, all at full precision, by at most 3.9e-14 relative; their sketches compare as the same data.)

The numbers are not stored. Each text file's numbers x_i are divided by the largest bound a number of their form can
have, a_i = REL*10^(d_i + e_i) + FLOOR (d_i digits before the point but leading zeros, e_i its exponent: |x_i| <
10^(d_i + e_i)), so that each number within its own bound moves y_i = x_i / a_i by at most 1; the form is the same on
both sides, so a_i is too. The y_i are cut into blocks of BLOCK, and each block keeps K position-weighted sums
s_k = sum_i w_k(i) y_i, with weights w_k(i) in [1, 2) drawn by a hash of (the file's path, k, i), and the sum A of its
|y_i|. Numbers each within their own bound move each sum by at most 2m (m numbers in the block): a block is accepted
when all its K sums are within that (plus 2^-40 A for the float64 rounding of the sums). One number's bound is never
lent to another: a 1e10 beside a 2-decimal target widens nothing.

A change beyond the bound is missed only when it keeps all K sums. Let number j of a block change by D (others
within their bounds): sum k changes by w_k(j)*D/a_j + (at most 2m), and w_k(j) is uniform over [1, 2) and unrelated
to the change, so it stays within the bound with probability at most 8m*a_j/D, and all K sums (independent weights)
with probability at most (8m*a_j/D)^K. A swap of two unequal numbers changes sum k by (w_k(i) - w_k(j))(y_i - y_j):
the same case. For a number near 1 (a_j = 2e-12), a change of 1e-6 is missed with probability under 1e-13, one of
1e-4 under 1e-21. Two files swapped are two files whose numbers changed (the weights follow the path).

The weights are public (a hash, not a secret): the sketch guards against other data given by mistake (another seed,
a shuffled, edited or regenerated file, a stale copy) as a file's sha256 guards against damage; whoever edits data
to keep K sums could as well edit the recorded sketch.

Size: per file three 16-byte digests and a count, per block K+1 float64; the Mini's 420-scene root (42,013 files,
951,772 numbers, 275 MB) takes about 3.8 MB. A run state keeps it in a file of its own, which
stays the same from state to state of one run (git stores it once). A sketch of version 1 (before the numbers'
forms, summing them per block) is still read: its files of the same bytes or pixels compare as before, and a text
file of other bytes is other data (that sketch cannot tell a reformatted number); two version-1 sketches compare
by their own rule (mini/arm_provenance.py compares the archived runs' states).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
from safetensors import SafetensorError
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

from gap_mllm.processing.decimal_numbers import FLOOR, NUMBER, REL, K, blocks_beyond_last_digits, text_and_numbers
from gap_mllm.processing.decimal_numbers import block_sums as _block_sums

logger = logging.getLogger(__name__)

VERSION = 2  # of the sketch: 2, the numbers' forms and per-number bounds; 1, per-block bounds (still compared)
LEGACY_VERSION = 1
FULL_PRECISION = 12  # significant digits from which a number is written at a float's precision (module docstring)
BLOCK = 64  # numbers per block (K sums per block, the per-number bound REL and FLOOR: processing/decimal_numbers.py)
DIGEST_BYTES = 16  # of each sha256 kept
# the sketch of the data a training output folder's run trains on (a safetensors file, named so that no "*.safetensors"
# rule takes it for weights: `gap-mllm push` uploads an output folder's *.safetensors)
RECORD_FILE = ".gap-mllm-data.sketch"

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
BINARY_SUFFIXES = (".npy", ".npz", ".exr")
TEXT, IMAGE, BINARY = 0, 1, 2  # the kinds of file
_TENSORS = ("names", "kinds", "raw", "content", "counts", "blocks", "sums", "absolute", "settings", "forms")
# a decimal number's parts (processing/decimal_numbers.py NUMBER): sign, digits before the point, after it, exponent
_PARTS = re.compile(rb"(-?)(\d+)(?:\.(\d+))?(?:([eE])([-+]?\d+))?")


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
    forms: np.ndarray | None = None  # [files, DIGEST_BYTES]: the digest of a text file's numbers' forms (version 2)
    folder: str = ""
    links: int = 0
    _encoded: bytes | None = field(default=None, repr=False)

    def encode(self) -> bytes:
        """The sketch as a safetensors file (no pickle: it may come from a shared repository). A sketch read from
        a file encodes to that file's bytes, so one run's states and output folder hold the same file."""
        if self._encoded is None:
            tensors = {name: np.ascontiguousarray(getattr(self, name)) for name in _TENSORS
                       if name != "names" and getattr(self, name) is not None}
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
    if sketch.settings is not None and sketch.settings.shape == (3,) and int(sketch.settings[0]) != LEGACY_VERSION:
        expected["forms"] = ((files, DIGEST_BYTES), np.uint8)
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


def number_forms(content: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(the short digest of the written forms of a text file's decimal numbers, [n] the largest bound a_i of a number
    of each form: module docstring). A form: sign, digits before the point, count after it (or "*" at a float's full
    precision), exponent as written."""
    digest, exponents = hashlib.sha256(), []
    for token in NUMBER.findall(content):
        sign, whole, fraction, mark, exponent = _PARTS.fullmatch(token).groups()
        fraction = fraction or b""
        precise = len((whole + fraction).lstrip(b"0")) >= FULL_PRECISION
        count = b"*" if precise else str(len(fraction)).encode() if b"." in token else b"-"
        digest.update(b"%s%s.%s%s%s|" % (sign, whole, count, mark or b"", exponent or b""))
        exponents.append(len(whole.lstrip(b"0")) + int(exponent or 0))
    powers = np.power(10.0, np.clip(np.array(exponents, dtype=np.float64), -300, 300))
    return _short(digest), REL * powers + FLOOR


def _text_parts(name: str, content: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(the short digest of the text around the decimal numbers, of the numbers' forms, the numbers [n], their
    blocks' weighted sums of x_i / a_i [blocks, K] and absolute sums [blocks]) of a text file."""
    text, numbers = text_and_numbers(content)
    forms, bounds = number_forms(content)
    sums, absolute = block_sums(name, numbers / bounds)
    return np.frombuffer(text[:DIGEST_BYTES], dtype=np.uint8), forms, numbers, sums, absolute


def kind_of(name: str) -> int:
    suffix = os.path.splitext(name)[1].lower()
    return IMAGE if suffix in IMAGE_SUFFIXES else BINARY if suffix in BINARY_SUFFIXES else TEXT


def sketch_data_root(root) -> DataSketch:
    """The sketch of every file under data root `root` (module docstring)."""
    root = Path(root)
    files, links = data_files(root)
    kinds, raw, content, forms, counts, blocks = [], [], [], [], [], [0]
    sums, absolute = [np.zeros((0, K))], [np.zeros(0)]
    for name, path in files:
        data = path.read_bytes()
        kind = kind_of(name)
        kinds.append(kind)
        raw.append(_short(hashlib.sha256(data)))
        numbers, form = np.zeros(0), raw[-1]
        if kind == IMAGE:
            content.append(_pixels_digest(data))
        elif kind == BINARY:
            content.append(raw[-1])
        else:
            text, form, numbers, file_sums, file_absolute = _text_parts(name, data)
            content.append(text)
            sums.append(file_sums)
            absolute.append(file_absolute)
        forms.append(form)
        counts.append(numbers.size)
        blocks.append(blocks[-1] + -(-numbers.size // BLOCK))
    files_count = len(files)
    return DataSketch(
        names=[name for name, _ in files], kinds=np.array(kinds, dtype=np.uint8),
        raw=np.array(raw, dtype=np.uint8).reshape(files_count, DIGEST_BYTES),
        content=np.array(content, dtype=np.uint8).reshape(files_count, DIGEST_BYTES),
        forms=np.array(forms, dtype=np.uint8).reshape(files_count, DIGEST_BYTES),
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


def _blocks_beyond(recorded: DataSketch, first: int, last: int, current: DataSketch, now: int, count: int) -> np.ndarray:
    """[blocks] bool: the blocks of one file (recorded blocks first:last, current from `now`) whose sums moved beyond
    what numbers each within its own bound can move them (module docstring); a version-1 pair by its block bound."""
    if int(recorded.settings[0]) == LEGACY_VERSION:
        return blocks_beyond_last_digits(recorded.sums[first:last], current.sums[now:now + last - first],
                                         recorded.absolute[first:last], current.absolute[now:now + last - first],
                                         count, BLOCK)
    absolute = np.maximum(recorded.absolute[first:last], current.absolute[now:now + last - first])
    sizes = np.minimum(BLOCK, count - BLOCK * np.arange(last - first))
    bound = 2.0 * sizes + 2.0 ** -40 * absolute
    moved = np.abs(recorded.sums[first:last] - current.sums[now:now + last - first])
    return ~np.all(moved <= bound[:, None], axis=1)  # NaN, or an infinity on both sides, counts as moved


def _number_difference(recorded: DataSketch, i: int, current: DataSketch, j: int) -> str | None:
    """Why file i of `recorded` and file j of `current` (text, other bytes, same text around the numbers and as
    many numbers, of the same forms) are other numbers: the first block whose sums moved beyond the bound; None when
    none did."""
    first, last = int(recorded.blocks[i]), int(recorded.blocks[i + 1])
    count = int(recorded.counts[i])
    beyond = _blocks_beyond(recorded, first, last, current, int(current.blocks[j]), count)
    if not beyond.any():
        return None
    start = int(np.argmax(beyond)) * BLOCK
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
    if recorded.forms is None and current.forms is not None:
        return "differs", ("its bytes differ, and the run recorded its data with version 1 of the data check, which "
                           "cannot tell a reformatted number from last digits")
    what = _number_difference(recorded, i, current, j)  # a number's bound follows its magnitude, not its form
    if what is None and recorded.forms is not None and not np.array_equal(recorded.forms[i], current.forms[j]):
        what = ("its decimal numbers are reformatted: the same values written in another form (another count of "
                "digits after the point, other digits before it, or another notation, e.g. 0.40 for 0.4 or 366e-2 "
                "for 3.66), so the text the model trains on differs")
    return ("differs", what) if what is not None else ("last_digits", None)


def _comparable(recorded: DataSketch, current: DataSketch) -> bool:
    """The same sketch version, or a version-1 recording against this version (same sums and block size)."""
    if np.array_equal(recorded.settings, current.settings):
        return True
    return (int(recorded.settings[0]) == LEGACY_VERSION and int(current.settings[0]) == VERSION
            and np.array_equal(recorded.settings[1:], current.settings[1:]))


def compare_data(recorded: DataSketch, current: DataSketch) -> DataComparison:
    """Compare the data a run trained on (`recorded`) with those it is given (`current`), file by file."""
    if not _comparable(recorded, current):
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
        logger.info("%s: %d file(s) of the data differ from those the run trained on only in the last digits of "
                    "numbers written in the same form (each within %g relative of its own value, as another CPU's "
                    "float maths changes them), e.g. %s; continuing", where, len(comparison.last_digits), REL,
                    comparison.last_digits[0])
