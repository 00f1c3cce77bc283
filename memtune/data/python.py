"""Data a Keras user holds in Python, named the way memtune reads columns.

``(x, y)`` as ``model.fit`` takes it — numpy arrays, or dicts of arrays keyed by input /
output name — becomes a dict of columns named after the model's inputs and outputs, and
``y``'s names become the targets. DataFrames, dicts of arrays and paths pass through.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from memtune.core.errors import MemtuneError

# The column row weights given as an array become (data.footprint's feed of them, too).
WEIGHT = "__sample_weight__"

KINDS = (
    "a .csv / .parquet path or folder, a pandas DataFrame, a dict of arrays, an (x, y) pair "
    "of numpy arrays (or of dicts keyed by input / output name), or a tf.data.Dataset / "
    "keras.utils.PyDataset yielding (x, y)"
)


def is_pair(data: Any) -> bool:
    """``(x, y)`` or ``(x, y, sample_weight)``: a tuple (or list) of array-likes or dicts,
    not a path."""
    return isinstance(data, tuple | list) and len(data) in (2, 3) and not isinstance(data[0], str)


def check_kind(data: Any) -> None:
    """One clear line for anything memtune cannot read as a table of columns (a path, a
    DataFrame, a dict of arrays): ``(x, y)`` and pipelines are named by a model first."""
    import pandas as pd

    if isinstance(data, str | os.PathLike | pd.DataFrame | Mapping):
        return
    if is_pair(data) or is_dataset(data):
        what = "an (x, y) pair" if is_pair(data) else "a tf.data / PyDataset pipeline"
        raise MemtuneError(
            f"data: {what} is named after a model's inputs and outputs; pass the model (model=...)"
        )
    raise MemtuneError(f"data: expected {KINDS}; got {type(data).__name__}")


def is_dataset(data: Any) -> bool:
    """A ``tf.data.Dataset`` or ``keras.utils.PyDataset`` (checked without importing TF)."""
    import sys

    tf, keras = sys.modules.get("tensorflow"), sys.modules.get("keras")
    if tf is not None and isinstance(data, tf.data.Dataset):
        return True
    return keras is not None and isinstance(data, keras.utils.PyDataset)


def name_pair(
    data: Any,
    inputs: Sequence[str],
    outputs: Sequence[str],
    targets: Sequence[str],
    *,
    nd: bool = False,
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """``(x, y)`` → a dict of columns keyed by input / target name, and the target names;
    ``(x, y, w)`` adds the row weights as the column :data:`WEIGHT`. ``nd``: arrays of any
    number of axes are taken (images, audio), else at most 2-D or ragged."""
    x, y, *weights = data
    columns = _named(x, inputs, "x", nd)
    labels = _named(y, list(targets) or outputs, "y", nd)
    clash = sorted(set(columns) & set(labels))
    if clash:
        raise MemtuneError(f"(x, y): {clash[0]!r} names both an input and a target")
    if weights:
        columns[WEIGHT] = row_weights(weights[0], len(next(iter(labels.values()))))
    return {**columns, **labels}, tuple(labels)


def row_weights(value: Any, rows: int) -> np.ndarray:
    """``sample_weight`` as model.fit takes it: one number ≥ 0 per row."""
    try:
        weights = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise MemtuneError("sample_weight: expected one number per row") from None
    if weights.ndim != 1 or weights.shape[0] != rows:
        raise MemtuneError(
            f"sample_weight has shape {weights.shape}; expected one number for each of the "
            f"{rows:,} rows"
        )
    bad = np.flatnonzero(~np.isfinite(weights) | (weights < 0))
    if bad.size:
        raise MemtuneError(
            f"sample_weight row {int(bad[0])}: {weights[bad[0]]} (a weight is a finite number ≥ 0)"
        )
    return weights.astype(np.float32)


def by_name(
    value: Any, names: Sequence[str], what: str, where: str, *, only: bool = False
) -> dict[str, Any]:
    """``x`` or ``y`` as Keras takes it — a dict, a tuple in the model's order, or one array
    for one name — keyed by name. ``only``: a dict must hold every name; the rest is dropped.
    Works on numpy arrays, tensors and tensor specs alike."""
    if isinstance(value, Mapping):
        if not only:
            return {str(k): v for k, v in value.items()}
        missing = [n for n in names if n not in value]
        if missing:
            raise MemtuneError(f"{where}: {what} has no key {missing[0]!r} ({', '.join(value)})")
        return {n: value[n] for n in names}
    if isinstance(value, tuple | list) and len(names) > 1:
        if len(value) != len(names):
            raise MemtuneError(f"{where}: {what} holds {len(value)} arrays for {len(names)} names")
        return dict(zip(names, value, strict=True))
    if len(names) != 1:
        raise MemtuneError(
            f"{where}: {what} is one array for {len(names)} names ({', '.join(names)}); "
            "give a dict keyed by name"
        )
    return {names[0]: value}


def _named(value: Any, names: Sequence[str], what: str, nd: bool) -> dict[str, np.ndarray]:
    named = by_name(value, names, what, "(x, y)")
    single = len(named) == 1 and not isinstance(value, Mapping)
    return {k: as_array(v, what if single else f"{what}[{k!r}]", nd) for k, v in named.items()}


def as_array(value: Any, what: str, nd: bool = False) -> np.ndarray:
    """One array of ``(x, y)``, checked to hold one value, sequence (or, ``nd``, N-D sample)
    of numbers per row."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise MemtuneError(f"(x, y): {what} is not an array ({exc})") from None
    if array.dtype.kind == "O" and array.ndim == 1 and not nd:
        return _ragged(array, what)
    if array.dtype.kind == "O" and nd:
        raise MemtuneError(
            f"(x, y): {what} holds samples of different shapes; beside N-D arrays every array "
            "must be rectangular (pad or resize them first)"
        )
    if array.dtype.kind not in "biuf":
        raise MemtuneError(f"(x, y): {what} holds {array.dtype} values, not numbers")
    if array.ndim == 0:
        raise MemtuneError(f"(x, y): {what} is a single number, not one value per sample")
    if array.ndim > 2 and not nd:
        raise MemtuneError(
            f"(x, y): {what} has shape {array.shape}; memtune reads one number or one "
            "sequence per sample (at most 2-D arrays)"
        )
    return array


def _ragged(array: np.ndarray, what: str) -> np.ndarray:
    """A numpy object array of sequences of different lengths (as ``model.fit`` users keep
    tokenised text): each cell checked to be numbers, then read like a list column."""
    for row, cell in enumerate(array):
        values = np.asarray(cell)
        if values.ndim > 1 or values.dtype.kind not in "biuf":
            raise MemtuneError(
                f"(x, y): {what} row {row}: expected a sequence of numbers, got "
                f"{type(cell).__name__} of {values.dtype}"
            )
    return array
