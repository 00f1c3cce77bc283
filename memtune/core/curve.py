"""A memory curve: peak bytes of the whole training process as a function of the batch, and
the trials that measure it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

UNBOUNDED = 2**40  # "any batch fits": callers cap it by the dataset's size


@dataclass(frozen=True)
class MemoryCurve:
    """``peak(b)``: what training at batch b reaches, in bytes.

    Analytic: the line ``fixed_bytes + per_sample_bytes * b``. Measured: piecewise linear
    through the trial ``points`` (so a measured batch predicts what was measured), extended
    beyond them by the outer segments — or by ``per_sample_bytes`` when there is a single
    point. Slopes are never negative, and no batch predicts less than a smaller measured
    one: noise must not promise free memory.
    """

    fixed_bytes: int
    per_sample_bytes: int
    source: Literal["analytic", "measured"] = "analytic"
    points: tuple[tuple[int, int], ...] = ()
    # The whole dataset as one batch, measured: (batch, peak). A regime of its own (one step
    # an epoch, the arrays served as a view, not copied), so it holds from that batch on and
    # never bends the line through the other points: wide-mlp read 943 MiB at batch 2,621
    # and 1,051 MiB for all 8,000 rows, and batch 5,441 on that line peaked 1,170 MiB.
    whole: tuple[int, int] | None = None

    def with_points(
        self, points: list[tuple[int, int]], whole_from: int | None = None
    ) -> MemoryCurve:
        """This curve refitted through measured (batch, peak) points; one at ``whole_from``
        or beyond (the dataset's size) is the whole-dataset point (kept if not given)."""
        by_batch: dict[int, int] = {}
        whole = self.whole if whole_from is None else None
        for b, p in points:
            if whole_from is not None and b >= whole_from:
                whole = (b, max(p, whole[1] if whole else 0))
            else:
                by_batch[b] = max(p, by_batch.get(b, 0))
        if whole is not None and not by_batch:  # nothing else measured: an ordinary point
            by_batch, whole = {whole[0]: whole[1]}, None
        return replace(self, source="measured", points=tuple(sorted(by_batch.items())), whole=whole)

    def peak(self, batch_size: int) -> int:
        if self.whole is not None and batch_size >= self.whole[0]:
            n, p = self.whole  # and past it (never planned: the dataset caps), the line's growth
            return p + self._line(batch_size) - self._line(n)
        return self._line(batch_size)

    def _line(self, batch_size: int) -> int:
        pts = self.points
        if not pts:
            return self.fixed_bytes + self.per_sample_bytes * batch_size
        if len(pts) == 1:
            (b0, p0) = pts[0]
            return max(0, p0 + self.per_sample_bytes * (batch_size - b0))
        if batch_size <= pts[0][0]:
            (b0, p0), (b1, p1) = pts[0], pts[1]
        elif batch_size >= pts[-1][0]:
            (b0, p0), (b1, p1) = pts[-2], pts[-1]
        else:
            k = next(i for i in range(1, len(pts)) if pts[i][0] >= batch_size)
            (b0, p0), (b1, p1) = pts[k - 1], pts[k]
        slope = max(0.0, (p1 - p0) / (b1 - b0))
        # Never below a smaller batch's measurement: a dip is noise, not free memory.
        floor = max(p for b, p in pts if b <= batch_size) if batch_size >= pts[0][0] else 0
        return max(0, floor, round(p0 + slope * (batch_size - b0)))

    def to_json(self) -> dict[str, Any]:
        return {
            "fixed_bytes": self.fixed_bytes,
            "per_sample_bytes": self.per_sample_bytes,
            "source": self.source,
            "points": [list(p) for p in self.points],
            "whole": list(self.whole) if self.whole else None,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> MemoryCurve:
        """The inverse of :meth:`to_json`; a malformed value raises KeyError / TypeError /
        ValueError for the caller to name."""
        source = value["source"]
        if source not in ("analytic", "measured"):
            raise ValueError(f"source {source!r}")
        points = tuple((_count(b), _count(p)) for b, p in value["points"])
        whole = value.get("whole")
        return cls(
            _count(value["fixed_bytes"]),
            _count(value["per_sample_bytes"]),
            source,
            points,
            (_count(whole[0]), _count(whole[1])) if whole else None,
        )

    def slope_at(self, batch_size: int) -> float:
        """Bytes one more sample adds around ``batch_size``."""
        return float(self.peak(batch_size + 1) - self.peak(batch_size))

    def largest_batch(self, usable_bytes: int, extra: Callable[[int], int] | None = None) -> int:
        """Largest b with ``peak(b) + extra(b) <= usable_bytes``; 0 if none.

        ``extra`` (non-decreasing in b) is what the data pipeline adds beside training.
        """

        def fits(b: int) -> bool:
            return self.peak(b) + (extra(b) if extra else 0) <= usable_bytes

        if self.whole is not None:  # each side of the whole dataset is monotone on its own
            n = self.whole[0]
            if fits(n):
                return _largest(fits, n)
            return min(n - 1, _largest(fits, 1))
        return _largest(fits, 1)


def _largest(fits: Callable[[int], bool], lo: int) -> int:
    """Largest b >= ``lo`` that fits, for ``fits`` true up to some batch and false past it;
    0 if not even ``lo`` fits."""
    if not fits(lo):
        return 0
    hi = lo * 2
    while hi < UNBOUNDED and fits(hi):
        lo, hi = hi, hi * 2
    if hi >= UNBOUNDED and fits(UNBOUNDED):
        return UNBOUNDED
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


@dataclass(frozen=True)
class Trial:
    """One measured training run: its batch and the peak it reached.

    ``exceeded``: the run passed its limit and was stopped, so the true peak is higher.
    """

    batch_size: int
    peak_bytes: int
    exceeded: bool = False
    length: int | None = None  # a length bucket's trial: the input padded to this, not all


def _count(value: Any) -> int:
    """A non-negative int from JSON, or ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{value!r} is not a count")
    return value
