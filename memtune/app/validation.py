"""``--validation-data``, read and checked against the training feeds right after the model
is read — before any trial runs — and batched at the plan's batch once there is one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from memtune.core.errors import MemtuneError
from memtune.core.options import Options
from memtune.data.arrays import ArrayBatches, has_nd, validation_info, validation_source
from memtune.data.footprint import Footprint
from memtune.data.images import ImageFolder, is_image_folder, read_folder
from memtune.data.layout import Layout, layout_for
from memtune.data.npy import is_npy_folder, read_npy
from memtune.data.python import is_dataset, is_pair, name_pair
from memtune.data.scan import DataInfo, scan
from memtune.data.tfdata import DatasetBatches, dataset_source, is_batched, scan_dataset

Validation = Layout | DatasetBatches | ArrayBatches


def validation_feed(opts: Options, fp: Footprint, training: DataInfo) -> Validation | None:
    """The validation data fed and padded exactly like the training data (``fp``): an
    ``(x, y)`` pair named after the model's inputs and targets; a pipeline read once to
    count it; arrays, image folders and ``.npy`` shards as their training kinds are. Its
    batch is set by :func:`at_batch` once the plan has one."""
    if opts.validation_data is None:
        return None
    data = opts.validation_data
    fp = fp.unweighted()  # validation is not weighted by rows
    if is_dataset(data):
        inputs, targets = [f.name for f in fp.inputs], [f.name for f in fp.targets]
        batched = is_batched(data, [(f.name, (None, *f.shape)) for f in fp.inputs])
        return dataset_source(scan_dataset(data, inputs, targets, batched), fp, opts, 1)
    if is_image_folder(data):  # at the training images' size and channels
        folder = ImageFolder(Path(data), None, opts.color_mode)
        image, label = fp.inputs[0], fp.model_targets[0]
        info = read_folder(folder, image.name, (None, *image.shape), label.columns[0])
        return dataset_source(info, fp, opts, 1)
    if is_npy_folder(data):
        return validation_source(read_npy(Path(data), allow_nonfinite=opts.allow_nonfinite), fp, 1)
    if has_nd(data) or training.source.kind == "arrays":
        info = validation_info(data, fp, allow_nonfinite=opts.allow_nonfinite)
        return validation_source(info, fp, 1)
    return _table(data, fp, opts)


def _table(data: Any, fp: Footprint, opts: Options) -> Layout:
    if is_pair(data):
        inputs, targets = [f.name for f in fp.inputs], [f.name for f in fp.targets]
        data, _ = name_pair(data, inputs, targets, targets)
    info = scan(data)
    for feed in fp.feeds:
        for column in feed.columns:
            if column not in info.columns:
                raise MemtuneError(
                    f"--validation-data {info.source.label!r} has no column {column!r}"
                )
    return layout_for(info, fp, opts)


def at_batch(validation: Validation | None, batch_size: int) -> Validation | None:
    """The validation source at the plan's batch (a layout is cut into batches later)."""
    if isinstance(validation, DatasetBatches | ArrayBatches):
        validation.batch_size = batch_size
    return validation
