"""Length buckets for a plan: the None-length input's lengths cut into buckets, or why there
are none."""

from __future__ import annotations

from memtune.core.constants import DEFAULT_BUCKETS, LENGTH_DEPENDENCE
from memtune.core.options import Options
from memtune.data.buckets import LengthBuckets
from memtune.data.footprint import Feed, Footprint
from memtune.data.scan import DataInfo
from memtune.run.distribute import Topology


def length_buckets(
    info: DataInfo, fp: Footprint, options: Options, topology: Topology, train_samples: int
) -> tuple[LengthBuckets | None, str | None]:
    """The length buckets of the model's None-length input, or why there are none (a reason
    line; None when there is nothing to bucket or they are turned off). Kept against a
    length-dependent target because ``--buckets N`` asked, the line says so."""
    flexible = [f for f in fp.feeds if f.flexible]
    if not flexible or options.buckets == 0:
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
    linked = length_linked(info, fp, column)
    if linked is not None and options.buckets is None:
        return None, f"no length buckets: {linked}; --buckets N turns them on"
    count = options.buckets or DEFAULT_BUCKETS
    buckets = LengthBuckets.cut(
        feed.name, column, lengths, feed.shape[0], count, training=train_samples
    )
    if len(buckets.boundaries) < 2:
        return None, f"no length buckets: every {column!r} row pads to {feed.shape[0]}"
    if linked is not None:
        return buckets, f"warning: {linked}; length buckets kept as --buckets asks"
    return buckets, None


def length_linked(info: DataInfo, fp: Footprint, column: str) -> str | None:
    """Why batches of one length would mislead training — a target whose values depend on
    ``column``'s length (a share of its variation at least LENGTH_DEPENDENCE) — or None."""
    scalar: list[Feed] = [t for t in fp.model_targets if len(t.columns) == 1 and not t.sequence]
    shares = {t.columns[0]: info.length_dependence(column, t.columns[0]) for t in scalar}
    strong = {name: share for name, share in shares.items() if share >= LENGTH_DEPENDENCE}
    if not strong:
        return None
    name, share = max(strong.items(), key=lambda item: item[1])
    return (
        f"target {name!r} depends on the length of {column!r} (length explains {share:.0%} of "
        f"it; buckets stop at {LENGTH_DEPENDENCE:.0%}): a batch of one length would hold mostly "
        "one kind of target"
    )
