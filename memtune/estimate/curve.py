"""A memory curve: peak bytes of the whole training process as a function of the batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

UNBOUNDED = 2**62  # "any batch fits": callers cap it by the dataset's size


@dataclass(frozen=True)
class MemoryCurve:
    """``peak(b) = fixed_bytes + per_sample_bytes * b`` — what training at batch b reaches.

    ``source`` says whether it was derived from the model alone ("analytic") or fitted to
    measured trials ("measured").
    """

    fixed_bytes: int
    per_sample_bytes: int
    source: Literal["analytic", "measured"] = "analytic"

    def peak(self, batch_size: int) -> int:
        return self.fixed_bytes + self.per_sample_bytes * batch_size

    def largest_batch(self, usable_bytes: int, extra_per_sample: int = 0) -> int:
        """Largest b with ``peak(b) + extra_per_sample * b <= usable_bytes``; 0 if none."""
        room = usable_bytes - self.fixed_bytes
        slope = self.per_sample_bytes + extra_per_sample
        if room < slope:
            return 0
        if slope <= 0:
            return UNBOUNDED
        return room // slope
