"""Length buckets' batches: how many rows of each bucket one step takes, and what the
largest of those batches holds in full-length samples' memory. Pure, as :mod:`choose`."""

from __future__ import annotations

import math

from memtune.core.constants import BLOCK_ROWS, MIN_BUCKET_STEPS
from memtune.core.pipeline_memory import Mode
from memtune.core.plan import Bucket, PlanOptions

MIN_STEPS = 16  # a default plan keeps at least this many training steps per epoch


def bucket_batches(
    batch: int, fits: int, mode: Mode, num_samples: int, options: PlanOptions
) -> list[Bucket]:
    """Each bucket's batch: as many of its samples as take the memory the longest bucket's
    batch may take — the memory bound (``fits`` samples at the full length), the trials'
    reach and the step floor, each divided by the bucket's memory share — then capped by
    ``--max-batch-size``, a share of the bucket's samples that makes MIN_BUCKET_STEPS steps
    and, when streaming, the block a batch is cut from. Never below the longest bucket's
    batch."""
    equal = [fits]  # in samples at the full length
    plain = []  # in samples of the bucket
    if options.verified_cap is not None:
        equal.append(options.verified_cap)
    if options.max_batch_size is not None:
        plain.append(options.max_batch_size)
    else:
        equal.append(max(1, num_samples // MIN_STEPS))
    if mode == "streaming":
        plain.append(max(BLOCK_ROWS, batch))
    out = []
    for (length, samples), scale in zip(options.buckets, options.bucket_scale, strict=True):
        share = min(1.0, max(scale, 1e-6))
        steps = max(1, math.ceil(samples / MIN_BUCKET_STEPS))  # never one giant step
        limit = [math.floor(e / share) for e in equal] + plain + [steps]
        out.append(Bucket(length, max(batch, min(limit)), samples))
    last = out[-1]
    out[-1] = Bucket(last.length, batch, last.samples)
    return out


def bucketed_rows(buckets: list[Bucket], o: PlanOptions) -> int | None:
    """The most full-length samples' memory one bucketed batch holds: a bucket's batch is
    at most its rows, each at its memory share. None: not bucketed, or validation runs
    unbucketed at the plan's batch (the trials measured that)."""
    if not buckets or o.validating:
        return None
    shares = zip(buckets, o.bucket_scale, strict=True)
    return max(math.ceil(min(b.batch_size, b.samples) * min(1.0, s)) for b, s in shares)
