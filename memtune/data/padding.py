"""Padding and truncation with exactly the semantics of ``keras.utils.pad_sequences``."""

from __future__ import annotations

from typing import Literal

import numpy as np

from memtune.data.cells import Ragged

Side = Literal["pre", "post"]


def pad(
    ragged: Ragged,
    maxlen: int,
    *,
    dtype: np.dtype | type = np.float32,
    padding: Side = "pre",
    truncating: Side = "pre",
    value: float = 0.0,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Pad / truncate every row to ``maxlen`` into one 2-D array (or into ``out``)."""
    n = len(ragged)
    if out is None:
        out = np.full((n, maxlen), value, dtype=dtype)
    else:
        out[...] = value
    if n == 0 or maxlen == 0:
        return out
    lengths = ragged.lengths
    kept = np.minimum(lengths, maxlen)
    starts = ragged.offsets[:-1]
    src_start = starts + (lengths - kept if truncating == "pre" else 0)
    dst_start = maxlen - kept if padding == "pre" else np.zeros_like(kept)
    total = int(kept.sum())
    within = np.arange(total) - np.repeat(np.cumsum(kept) - kept, kept)
    rows = np.repeat(np.arange(n), kept)
    out[rows, np.repeat(dst_start, kept) + within] = ragged.values[
        np.repeat(src_start, kept) + within
    ]
    return out
