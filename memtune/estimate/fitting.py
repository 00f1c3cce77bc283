"""Reading trials: the curve fitted through them (steepened by stopped ones), how far past
them a choice may lie, and how far one trial's reading may be off. Pure."""

from __future__ import annotations

from memtune.core.constants import NOISE_FLOOR, NOISE_SHARE
from memtune.core.curve import MemoryCurve, Trial

# The choice may lie this far past the largest batch a trial ran. 1.0: none. At 1.25, on
# the measured slope, conv1d-series at 2 GiB was planned at batch 2,110 from a trial at
# 1,792 and peaked 2,011 MiB against 1,751 predicted (0.98 of the budget): a trial at 2,110
# itself read 1,930 MiB — memory per sample more than doubled past the last trial.
REACH = 1.0


# A larger completed trial reading more than the line below the plan's trial, this many
# times as steep, predicts marks a jump between them (a convex bend reads ~1.5x): the plan
# is not interpolated into it. embedding-lstm on 3,200 rows: 2,100 read 1,469 MiB, 2,200
# 1,845 MiB (its last batch of 1,000 rows costs oneDNN more: last_batch.unmeasured_risk).
JUMP = 2.0


def trial_noise(peak_bytes: int) -> int:
    """How far a trial reading ``peak_bytes`` may be off: trials of one batch differ
    between runs by about this much."""
    return max(NOISE_FLOOR, int(NOISE_SHARE * peak_bytes))


def fitted(prior: MemoryCurve, trials: list[Trial], whole_from: int | None = None) -> MemoryCurve:
    """The prior refitted through the trials that completed, steepened by stopped ones.

    A stopped trial's peak is a lower bound on its batch's true peak: where the curve
    predicts less there, the curve is too flat and the stopped point is added to it. Where
    it predicts more, the point says nothing new and is left out (it would flatten it).
    A trial of the whole dataset (``whole_from`` rows) holds at that batch only.
    """
    points = [(t.batch_size, t.peak_bytes) for t in trials if not t.exceeded]
    if not points:
        return prior
    curve = prior.with_points(points, whole_from)
    for t in sorted((t for t in trials if t.exceeded), key=lambda t: t.batch_size):
        if t.batch_size > max(b for b, _ in points) and t.peak_bytes > curve.peak(t.batch_size):
            points.append((t.batch_size, t.peak_bytes))
            curve = prior.with_points(points, whole_from)
    return curve


def reach(top: int, trials: list[Trial], whole_from: int | None = None) -> int:
    """The largest batch trials support: ``REACH`` past ``top`` (the largest that fitted),
    or up to a larger batch a trial completed (the curve is measured on both sides; not the
    whole dataset's, a regime of its own), and under any batch whose trial was stopped.

    Not up to that larger trial when the curve between them is not a line: a trial stopped
    under it, or it reads more than ``JUMP`` times the slope below ``top`` (plus noise)
    predicts. A batch in such a stretch may hold what the stop or the jump measured.
    """
    stopped = [t.batch_size - 1 for t in trials if t.exceeded and t.batch_size > top]
    peaks: dict[int, int] = {}
    for t in trials:
        if not t.exceeded and (whole_from is None or t.batch_size < whole_from):
            peaks[t.batch_size] = max(t.peak_bytes, peaks.get(t.batch_size, 0))
    done = max(peaks, default=top)
    if done > top and (min(stopped, default=done) < done or _jump(top, done, peaks)):
        done = top
    return max(top, min([max(int(top * REACH), done), *stopped]))


def _jump(top: int, done: int, peaks: dict[int, int]) -> bool:
    """The trial at ``done`` reads more than the line below ``top``, ``JUMP`` times as
    steep, predicts (noise allowed)."""
    below = max((b for b in peaks if b < top), default=None)
    if below is None or top not in peaks:
        return False
    slope = max(0.0, (peaks[top] - peaks[below]) / (top - below))
    expected = peaks[top] + JUMP * slope * (done - top)
    return peaks[done] > expected + max(NOISE_FLOOR, NOISE_SHARE * expected)
