"""Reading what the user gave: the data scanned (with progress), an ``(x, y)`` pair named
after the model, a tf.data pipeline read once, the samples one epoch trains on, and the
layout rows are padded by."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from memtune.core.errors import MemtuneError
from memtune.core.options import Options
from memtune.core.signatures import ModelSignature
from memtune.data.scan import DataInfo, scan
from memtune.proc import heap, progress


def scanned(read: Callable[[], DataInfo]) -> DataInfo:
    """Scan with progress reported around it."""
    progress.report("stage", what="reading the data once (rows, lengths)")
    info = read()
    # What the scan freed goes back now, before the model is read in a child beside this
    # process: a 1.6 GiB Parquet stream left enough here for fit's tree to pass 1.25 GiB.
    heap.release()
    progress.report("scanned", rows=info.num_samples, shards=len(info.source.shards))
    return info


def named(data: Any, sig: ModelSignature, options: Options) -> tuple[Any, Options]:
    """``(x, y)`` as a dict of columns named after the model's inputs and outputs; ``y``'s
    names become the targets, an ``(x, y, w)``'s ``w`` the row weights. Anything else
    passes through."""
    from memtune.data.python import WEIGHT, is_pair, name_pair

    if not is_pair(data):
        return data, options
    inputs, outputs = [s.name for s in sig.inputs], [s.name for s in sig.outputs]
    columns, targets = name_pair(data, inputs, outputs, options.target)
    weight = WEIGHT if WEIGHT in columns else options.sample_weight
    return columns, replace(options, target=targets, sample_weight=weight)


def scan_data(data: Any, sig: ModelSignature, options: Options) -> DataInfo:
    """:func:`scan` for files and tables; one pass over a tf.data / PyDataset pipeline."""
    from memtune.data.python import is_dataset

    if not is_dataset(data):
        return scan(data)
    from memtune.data.tfdata import is_batched, scan_dataset

    if options.validation_split or options.validation_data is not None:
        raise MemtuneError(
            "validation with a tf.data pipeline as DATA is not supported yet; "
            "pass the data as a file, a table or (x, y) arrays to validate"
        )
    inputs = [s.name for s in sig.inputs]
    targets = list(options.target) or [s.name for s in sig.outputs]
    batched = is_batched(data, [(s.name, s.shape) for s in sig.inputs])
    return scan_dataset(data, inputs, targets, batched)


def train_samples(info: DataInfo, options: Options) -> int:
    """Samples one training epoch sees (a validation split holds some out)."""
    split, rows = options.validation_split, info.num_samples
    if split and options.validation_data is None:
        training = int(rows * (1 - split))
        if training < 1 or training >= rows:
            what = "no training row" if training < 1 else "no row for validation"
            raise MemtuneError(f"--validation-split {split}: leaves {what} of the {rows:,}")
        return training
    return rows
