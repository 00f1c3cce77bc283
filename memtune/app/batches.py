"""``memtune.batches``: one epoch of the numpy batches ``fit`` trains on, without training;
and a tf.data pipeline given as DATA as a batch source."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from memtune.app.inputs import named, scan_data
from memtune.core.errors import MemtuneError
from memtune.core.options import Options, make_options
from memtune.core.signatures import ModelSignature, TensorSpec
from memtune.data.bucketed import Bucketing
from memtune.data.footprint import Footprint, footprint
from memtune.data.layout import layout_for
from memtune.data.scan import DataInfo, scan
from memtune.data.tfdata import dataset_source


def batches(
    data: Any,
    *,
    target: str | list[str],
    batch_size: int,
    model: Any = None,
    mode: str = "streaming",
    shuffle: bool = False,
    seed: int | None = None,
    maxlen: Any = None,
    padding: str = "pre",
    truncating: str = "pre",
    buckets: Any = None,
    image_size: Any = None,
    color_mode: str | None = None,
) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """One epoch of ``(inputs, targets)`` numpy batches, dicts keyed by name.

    With a model, inputs and targets are named and padded as the model declares; without
    one, every non-target column is an input named after itself. ``data``: anything
    :func:`suggest` takes (arrays, pipelines and image folders need the model). ``mode``:
    ``"streaming"`` reads shards a block at a time, ``"in-memory"`` loads them first;
    ``shuffle`` / ``seed`` reshuffle per epoch (each sample once). Every batch holds
    ``batch_size`` samples but the last.

    ``buckets``: a plan's ``buckets`` (:class:`~memtune.core.plan.Bucket` or the JSON's dicts):
    each batch then holds rows of one bucket, at most its ``batch_size`` of them, padded to
    its ``length`` — the batches ``fit`` trains on (``batch_size`` is the longest bucket's).
    ``image_size`` / ``color_mode``: an image folder's (``--image-size``, ``--color-mode``).
    """
    from memtune.data.epoch import batches as _batches

    given = dict(target=target, maxlen=maxlen, padding=padding, truncating=truncating)
    images = dict(image_size=image_size, color_mode=color_mode)
    options = make_options(**given, **images, batch_size=batch_size)
    info, sig, options = _read(data, model, options)
    fp = footprint(sig, info, targets=options.target, maxlen=options.maxlen)
    if info.source.kind == "dataset":
        if buckets:
            raise MemtuneError("batches(buckets=): a tf.data pipeline is not bucketed")
        return dataset_source(info, fp, options, batch_size).numpy()
    if info.source.kind == "arrays":  # N-D arrays: batched where they are
        from memtune.data.arrays import array_sources

        source, _ = array_sources(
            info, fp, batch_size, training=info.num_samples, shuffle=shuffle, seed=seed
        )
        return iter(source)
    return _batches(
        layout_for(info, fp, options),
        batch_size,
        mode=mode,
        shuffle=shuffle,
        seed=seed,
        bucketing=_bucketing(fp, buckets, batch_size) if buckets else None,
    )


def _read(data: Any, model: Any, options: Options) -> tuple[DataInfo, ModelSignature, Options]:
    """The data read as the model names it (without one: each column its own input)."""
    if model is None:
        info = scan(data)
        return info, _columns_signature(info, options.target), options
    from memtune.model import load as model_mod

    sig = model_mod.signature(model_mod.load_model(model))
    data, options = named(data, sig, options)
    return scan_data(data, sig, options), sig, options


def _bucketing(fp: Footprint, buckets: Any, batch_size: int) -> Bucketing:
    """``batches(buckets=...)`` as the pipeline's ``Bucketing``, checked."""
    from memtune.data.bucketed import Bucketing

    flexible = [f for f in fp.inputs if f.flexible]
    if len(flexible) != 1:
        raise MemtuneError(
            f"batches(buckets=): needs exactly one input of None length, found {len(flexible)}"
        )

    def positive(b: Any, key: str) -> int:
        value = b.get(key) if isinstance(b, dict) else getattr(b, key, None)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise MemtuneError(f"batches(buckets=): {key} {value!r} must be a positive integer")
        return value

    pairs = sorted((positive(b, "length"), positive(b, "batch_size")) for b in buckets)
    if pairs[-1][1] != batch_size:
        raise MemtuneError(
            f"batches(buckets=): batch_size {batch_size} is not the longest bucket's "
            f"({pairs[-1][1]})"
        )
    if pairs[-1][0] > flexible[0].shape[0]:
        raise MemtuneError(
            f"batches(buckets=): bucket length {pairs[-1][0]} is past the padded length "
            f"{flexible[0].shape[0]} of {flexible[0].name!r}"
        )
    feed = flexible[0]
    return Bucketing(
        feed.name, feed.columns[0], tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)
    )


def _columns_signature(info: DataInfo, targets: tuple[str, ...]) -> ModelSignature:
    """A stand-in signature: each column its own input, lengths left to the data."""
    if not targets:
        raise MemtuneError("batches(): name the target column(s) with target=")

    def spec(name: str) -> TensorSpec:
        sequence = info.columns[name].sequence if name in info.columns else False
        return TensorSpec(name, (None, None) if sequence else (None,))

    inputs = tuple(spec(c) for c in info.columns if c not in targets)
    return ModelSignature(inputs, tuple(spec(t) for t in targets))
