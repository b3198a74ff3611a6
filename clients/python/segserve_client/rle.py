"""COCO run-length encoding -> boolean masks, in numpy (what pycocotools' ``mask.decode`` does).

A COCO RLE is ``{"size": [H, W], "counts": ...}``: alternating runs of 0s and 1s (starting with 0s)
over the mask read column by column. ``counts`` is a list of run lengths (uncompressed) or COCO's
compact string: each run is a signed integer in 5-bit groups, least significant first, one character
(``48 + group``) per group, bit 0x20 set on every character but a value's last, bit 0x10 of the last
the sign; from the fourth run on, a value is stored as its difference to the run two places back.
"""

from __future__ import annotations

import numpy as np

# A run never exceeds H * W < 2**62: 12 groups of 5 bits hold it, and the shifts below cannot overflow.
_MAX_GROUPS = 12


def decode_rle(rle: dict) -> np.ndarray:
    """COCO RLE (``counts`` a compact ``str``/``bytes``, or a list of run lengths) -> bool ``[H, W]``.

    Raises ``ValueError`` for a malformed string or runs that do not add up to ``H * W``.
    """
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    runs = np.asarray(counts, np.int64) if isinstance(counts, list) else runs_from_string(counts)
    if runs.ndim != 1 or (runs < 0).any() or int(runs.sum()) != height * width:
        raise ValueError(f"RLE runs do not cover a {height}x{width} mask")
    values = np.arange(runs.size, dtype=np.int64) % 2 == 1  # runs alternate 0s and 1s
    return np.repeat(values, runs).reshape(width, height).T  # column-major -> [H, W]


def runs_from_string(counts: str | bytes) -> np.ndarray:
    """COCO's compact RLE string -> int64 run lengths (the inverse of pycocotools' ``rleToString``)."""
    data = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    codes = np.frombuffer(data, np.uint8).astype(np.int64) - 48
    if codes.size == 0:
        return np.zeros(0, np.int64)
    if (codes < 0).any() or (codes > 63).any() or codes[-1] & 0x20:
        raise ValueError("not a COCO RLE string")
    ends = np.flatnonzero((codes & 0x20) == 0)  # the last character of each value
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > _MAX_GROUPS:
        raise ValueError("not a COCO RLE string (a run longer than any mask)")
    position = np.arange(codes.size) - np.repeat(starts, lengths)  # group index within its value
    values = np.add.reduceat((codes & 0x1F) << (5 * position), starts)
    negative = (codes[ends] & 0x10) != 0
    values[negative] -= np.int64(1) << (5 * lengths[negative])  # sign-extend
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])  # runs 3, 5, ... are stored as differences to runs 1, 3, ...
    runs[2::2] = np.cumsum(values[2::2])  # runs 4, 6, ... to runs 2, 4, ...
    return runs
