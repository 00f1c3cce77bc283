"""Reading what the user gave: the data scanned (with progress), an ``(x, y)`` pair named
after the model, a tf.data pipeline read once, the samples one epoch trains on, and the
layout rows are padded by."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
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
    from memtune.data.arrays import CallerArrays, has_nd
    from memtune.data.images import ImageFolder, is_image_folder
    from memtune.data.python import WEIGHT, as_array, is_pair, name_pair

    if is_image_folder(data):
        return ImageFolder(Path(data), options.image_size, options.color_mode), options
    nd = has_nd(data)
    if nd and not is_pair(data):  # a dict holding N-D arrays: its keys name the columns
        columns = {str(k): as_array(v, f"data[{k!r}]", True) for k, v in data.items()}
        return CallerArrays(columns), options
    if not is_pair(data):
        return data, options
    inputs, outputs = [s.name for s in sig.inputs], [s.name for s in sig.outputs]
    columns, targets = name_pair(data, inputs, outputs, options.target, nd=nd)
    weight = WEIGHT if WEIGHT in columns else options.sample_weight
    options = replace(options, target=targets, sample_weight=weight)
    return (CallerArrays(columns) if nd else columns), options


def scan_data(data: Any, sig: ModelSignature, options: Options) -> DataInfo:
    """:func:`scan` for files and tables; one pass over a tf.data / PyDataset pipeline."""
    from memtune.data.arrays import CallerArrays, arrays_info
    from memtune.data.images import ImageFolder
    from memtune.data.npy import is_npy_folder, read_npy
    from memtune.data.python import is_dataset

    if isinstance(data, CallerArrays):
        return arrays_info(data.columns, allow_nonfinite=options.allow_nonfinite)
    if isinstance(data, ImageFolder):
        return folder_info(data, sig, options)
    if is_npy_folder(data):
        return read_npy(Path(data), allow_nonfinite=options.allow_nonfinite)
    if not is_dataset(data):
        return scan(data)
    from memtune.data.tfdata import is_batched, scan_dataset

    if options.validation_split:
        raise MemtuneError(
            "--validation-split with a tf.data pipeline as DATA is not supported yet; "
            "pass validation_data, or the data as a file, a table or (x, y) arrays"
        )
    inputs = [s.name for s in sig.inputs]
    targets = list(options.target) or [s.name for s in sig.outputs]
    batched = is_batched(data, [(s.name, s.shape) for s in sig.inputs])
    return scan_dataset(data, inputs, targets, batched)


def folder_info(folder: Any, sig: ModelSignature, options: Options) -> DataInfo:
    """An image folder read for a model of one image input and one output."""
    from memtune.data.images import read_folder

    if len(sig.inputs) != 1 or len(sig.outputs) != 1:
        raise MemtuneError(
            f"data {str(folder.path)!r}: an image folder feeds a model of one input and one "
            f"output (this one has {len(sig.inputs)} and {len(sig.outputs)})"
        )
    target = options.target[0] if options.target else sig.outputs[0].name
    return read_folder(folder, sig.inputs[0].name, sig.inputs[0].shape, target)


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
