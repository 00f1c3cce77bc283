"""Length buckets for a plan: the None-length input's lengths cut into buckets, or why there
are none."""

from __future__ import annotations

from memtune.core.options import Options
from memtune.data.buckets import LengthBuckets
from memtune.data.footprint import Footprint
from memtune.data.scan import DataInfo
from memtune.run.distribute import Topology


def length_buckets(
    info: DataInfo, fp: Footprint, options: Options, topology: Topology, train_samples: int
) -> tuple[LengthBuckets | None, str | None]:
    """The length buckets of the model's None-length input, or why there are none (a reason
    line; None when there is nothing to bucket or they are turned off)."""
    flexible = [f for f in fp.feeds if f.flexible]
    if not flexible or not options.buckets:
        return None, None
    why = None
    if len(flexible) > 1 or flexible[0].role != "input":
        why = "more than one None-length feed (or a None-length target)"
    elif options.batch_size is not None:
        why = "--batch-size is forced: one batch serves every length"
    elif options.effective_batch_size is not None:
        why = "--effective-batch-size needs one batch for every step"
    elif topology.active:
        why = f"--strategy {topology.strategy} is not bucketed yet"
    elif info.source.kind == "dataset":
        why = "a tf.data pipeline is padded as it comes"
    if why is not None:
        return None, f"no length buckets: {why}"
    feed = flexible[0]
    (column,) = feed.columns
    lengths = info.column(column).lengths
    if lengths is None:
        return None, None
    buckets = LengthBuckets.cut(
        feed.name, column, lengths, feed.shape[0], options.buckets, training=train_samples
    )
    if len(buckets.boundaries) < 2:
        return None, f"no length buckets: every {column!r} row pads to {feed.shape[0]}"
    return buckets, None
