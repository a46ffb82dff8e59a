"""The decimal numbers of a text file, and the rule that says two files hold the same numbers up to another CPU.

Data written again on another CPU (a synthetic scene's records, poses and boxes, an annotation file) differ from the
first copy in the last digits of some of their decimal numbers: float maths that takes another path (another SIMD
width) rounds otherwise. Measured: 8 Mini scenes written under three settings of NPY_DISABLE_CPU_FEATURES differ in
154 of 18,678 numbers, by at most 192 ulp: 4e-14 relative, 1.3e-15 absolute. Such data are the same data, so
two consumers compare text files by the text around their numbers (exact) and by the numbers within a bound:

    training/data_sketch.py           a training run continues only on the data it trained on (every file)
    evaluation/run_fingerprint.py     an evaluation resumes only answers made on the same annotation file

Neither keeps the numbers. Both keep, per block of numbers, K position-weighted sums s_k = sum_i w_k(i) x_i (weights
in [1, 2) drawn by a hash of the file's name, k and i) and the sum A of the |x_i|: numbers that each moved by at most
|x' - x| <= REL*|x| + FLOOR move each sum by at most 2(REL*A + FLOOR*m) (m numbers in the block), while a change D of
one number (or a swap of two) keeps all K sums within that bound with probability at most (2*bound/D)^K
(training/data_sketch.py works the bound and the odds out).
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

K = 4  # weighted sums per block
REL = 1e-12  # per number: the relative difference that is still "the last digits" (measured: 4e-14)
FLOOR = 1e-12  # per number: the absolute one, for numbers near 0 (a cancellation's leftover; measured: 1.3e-15)
# a decimal number of a text file: digits, a point, digits, or an exponent; not part of a word, a name or a version
# ("00010.jpg", "1.2.3" and "v1.5" are text); a split keeps the text around the numbers and the numbers apart
NUMBER = re.compile(rb"(?<![\w.])(-?(?:\d+\.\d+(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+))(?![\w.])")


def text_and_numbers(content: bytes) -> tuple[bytes, np.ndarray]:
    """(sha256 of the text around the decimal numbers, the numbers in order [n] float64) of a text file's bytes. The
    text is digested piece by piece with each piece's length, so no piece can pass for a number or the reverse."""
    parts = NUMBER.split(content)
    digest = hashlib.sha256()
    for piece in parts[0::2]:
        digest.update(len(piece).to_bytes(8, "little") + piece)
    numbers = np.fromiter(map(float, parts[1::2]), dtype=np.float64, count=len(parts) // 2)
    return digest.digest(), numbers


def number_weights(name: str, count: int) -> np.ndarray:
    """[K, count] weights in [1, 2) of the numbers of file `name`: splitmix64 of (a hash of the name and k) + the
    position, its top 53 bits as the fraction. Integer arithmetic: the same on every CPU."""
    positions = np.arange(count, dtype=np.uint64)
    rows = []
    with np.errstate(over="ignore"):
        for k in range(K):
            key = hashlib.sha256(f"{name}\0{k}".encode("utf-8", "surrogateescape")).digest()
            seed = np.uint64(int.from_bytes(key[:8], "little"))
            z = positions + seed + np.uint64(0x9E3779B97F4A7C15)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z = z ^ (z >> np.uint64(31))
            rows.append(1.0 + (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53)
    return np.stack(rows)


def block_sums(name: str, numbers: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(`[blocks, K]` weighted sums, `[blocks]` absolute sums) of file `name`'s numbers [n], `block` numbers a block
    (the last one shorter)."""
    blocks = -(-numbers.size // block)
    padded = np.zeros(blocks * block)
    padded[:numbers.size] = numbers
    weighted = np.zeros((K, blocks * block))
    weighted[:, :numbers.size] = number_weights(name, numbers.size) * numbers
    return (weighted.reshape(K, blocks, block).sum(axis=2).T.copy(),
            np.abs(padded).reshape(blocks, block).sum(axis=1))


def blocks_beyond_last_digits(recorded_sums: np.ndarray, current_sums: np.ndarray, recorded_absolute: np.ndarray,
                              current_absolute: np.ndarray, count: int, block: int) -> np.ndarray:
    """[blocks] bool: the blocks of a file of `count` numbers whose sums ([blocks, K] each) moved by more than numbers
    within the per-number bound can move them (A: the larger of the recorded and the current absolute sum; NaN, an
    infinity on both sides, counts as moved)."""
    absolute = np.maximum(recorded_absolute, current_absolute)
    sizes = np.minimum(block, count - block * np.arange(len(absolute)))
    bound = 2.0 * (REL * absolute + FLOOR * sizes)
    moved = np.abs(recorded_sums - current_sums)
    return ~np.all(moved <= bound[:, None], axis=1)


__all__ = ["FLOOR", "K", "NUMBER", "REL", "block_sums", "blocks_beyond_last_digits", "number_weights",
           "text_and_numbers"]
