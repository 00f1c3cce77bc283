"""How much a scalar column depends on a sequence column's length, gathered in the scan.

Length buckets put rows of one length range in a batch. When the target depends on length
(long reviews tend to be positive, say), such a batch holds mostly one class, and training
on it teaches the class of a length rather than of a row. The scan keeps, per sequence
column and scalar column, a few sums per length bin — enough to say what share of the
scalar's variation the length explains (the correlation ratio η² for numbers; Goodman and
Kruskal's τ, the same share for class labels) — in memory independent of the rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

BINS = 128  # quarter-octave length bins: 1, 2, 3, 4, 5-6, … up to 2**32
MAX_CLASSES = 64  # an integer column with more values is a number, not a class label
CHANCE_SPREADS = 4  # a share within this many of chance's standard deviations reads as 0


def length_bins(lengths: np.ndarray) -> np.ndarray:
    """Each length's bin: four per doubling, so the bins are fine where lengths are short."""
    scaled = np.floor(4 * np.log2(lengths.astype(np.float64) + 1))
    return np.clip(scaled, 0, BINS - 1).astype(np.int64)


@dataclass
class LengthLink:
    """Per length bin: rows, sum and sum of squares of the scalar, and for a column of few
    integer values, rows per value (None once it has too many, or is not integer)."""

    rows: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))
    sums: np.ndarray = field(default_factory=lambda: np.zeros(BINS))
    squares: np.ndarray = field(default_factory=lambda: np.zeros(BINS))
    classes: dict[int, np.ndarray] | None = field(default_factory=dict)

    def add(self, lengths: np.ndarray, values: np.ndarray) -> None:
        """One chunk: each row's sequence length and its scalar value (same rows)."""
        keep = np.isfinite(values) if values.dtype.kind == "f" else slice(None)
        bins, numbers = length_bins(lengths[keep]), values[keep].astype(np.float64)
        self.rows += np.bincount(bins, minlength=BINS)
        self.sums += np.bincount(bins, weights=numbers, minlength=BINS)
        self.squares += np.bincount(bins, weights=numbers * numbers, minlength=BINS)
        if self.classes is None:
            return
        if values.dtype.kind not in "iub":
            self.classes = None
            return
        kinds, which = np.unique(values, return_inverse=True)
        if len(kinds) > MAX_CLASSES:
            self.classes = None
            return
        table = np.bincount(which * BINS + bins, minlength=len(kinds) * BINS)
        for value, counts in zip(kinds, table.reshape(len(kinds), BINS), strict=True):
            self.classes.setdefault(int(value), np.zeros(BINS, np.int64))
            self.classes[int(value)] += counts
        if len(self.classes) > MAX_CLASSES:
            self.classes = None

    def explained(self) -> float:
        """The share (0-1) of the scalar's variation the length bin explains, less what
        chance alone gives with this many bins and rows; 0 while it is within chance's
        spread (CHANCE_SPREADS standard deviations), so a few hundred rows of a label that
        ignores length never read as dependent."""
        total = int(self.rows.sum())
        used = int(np.count_nonzero(self.rows))
        if total < 2 or used < 2:
            return 0.0
        if self.classes is not None and len(self.classes) >= 2:
            share = _tau(np.stack(list(self.classes.values())), self.rows, total)
        else:
            share = _eta_squared(self.rows, self.sums, self.squares, total)
        chance = (used - 1) / (total - 1)
        if chance >= 1:
            return 0.0
        beyond = (share - chance) / (1 - chance)
        # Under independence, rows × share is about χ² with (bins - 1) degrees of freedom
        spread = CHANCE_SPREADS * math.sqrt(2 * (used - 1)) / total
        return float(beyond) if beyond > spread else 0.0


def _eta_squared(rows: np.ndarray, sums: np.ndarray, squares: np.ndarray, total: int) -> float:
    """Between-bin variance over total variance."""
    mean = sums.sum() / total
    spread = squares.sum() - total * mean * mean
    if spread <= 0:
        return 0.0
    seen = rows > 0
    between = float((sums[seen] ** 2 / rows[seen]).sum() - total * mean * mean)
    return min(1.0, max(0.0, between / spread))


def _tau(counts: np.ndarray, rows: np.ndarray, total: int) -> float:
    """Goodman-Kruskal τ: how much knowing the bin cuts the chance of guessing the class
    wrong (``counts``: classes × bins)."""
    overall = counts.sum(axis=1)
    wrong = total - float((overall.astype(np.float64) ** 2).sum()) / total
    if wrong <= 0:
        return 0.0
    seen = rows > 0
    right = float((counts[:, seen].astype(np.float64) ** 2 / rows[seen]).sum())
    return min(1.0, max(0.0, (right - (total - wrong)) / wrong))
