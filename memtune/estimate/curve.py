"""A memory curve: peak bytes of the whole training process as a function of the batch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

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

    def with_points(self, points: list[tuple[int, int]]) -> MemoryCurve:
        """This curve refitted through measured (batch, peak) points."""
        by_batch: dict[int, int] = {}
        for b, p in points:
            by_batch[b] = max(p, by_batch.get(b, 0))
        return replace(self, source="measured", points=tuple(sorted(by_batch.items())))

    def peak(self, batch_size: int) -> int:
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

    def slope_at(self, batch_size: int) -> float:
        """Bytes one more sample adds around ``batch_size``."""
        return float(self.peak(batch_size + 1) - self.peak(batch_size))

    def largest_batch(self, usable_bytes: int, extra: Callable[[int], int] | None = None) -> int:
        """Largest b with ``peak(b) + extra(b) <= usable_bytes``; 0 if none.

        ``extra`` (non-decreasing in b) is what the data pipeline adds beside training.
        """

        def fits(b: int) -> bool:
            return self.peak(b) + (extra(b) if extra else 0) <= usable_bytes

        if not fits(1):
            return 0
        lo, hi = 1, 2
        while hi < UNBOUNDED and fits(hi):
            lo, hi = hi, hi * 2
        if hi >= UNBOUNDED and fits(UNBOUNDED):
            return UNBOUNDED
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return lo
