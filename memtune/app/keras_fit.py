"""``memtune.fit`` as a Keras user calls ``model.fit``: its keywords, checked before any
planning, and a Keras ``History`` back (:mod:`memtune.app.fit` does the work)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from memtune.app import fit as fitting
from memtune.core.errors import MemtuneError
from memtune.data.python import WEIGHT, is_dataset, is_pair, row_weights
from memtune.proc import tf as _tf

# model.fit keywords memtune cannot honour, and why
_REFUSED = {
    "steps_per_epoch": "memtune trains every sample once an epoch (--max-batch-size sets "
    "the steps); drop steps_per_epoch",
    "validation_steps": "memtune validates on every held-out sample; drop validation_steps",
    "validation_batch_size": "memtune validates at the training batch; drop it",
    "validation_freq": "memtune validates every epoch; drop validation_freq",
}


def fit(
    model: Any,
    data: Any,
    *,
    epochs: int = 1,
    validation_data: Any = None,
    class_weight: Mapping[Any, float] | None = None,
    initial_epoch: int = 0,
    **options: Any,
) -> Any:
    """Plan, train and return a ``keras.callbacks.History``, as ``model.fit`` does.

    ``model``, ``data`` and the planning keywords are :func:`memtune.suggest`'s; the rest
    are :func:`memtune.app.fit.fit`'s (``save``, ``checkpoint_dir``, ``resume``, ``seed``,
    ``shuffle``, ``plan``, ``callbacks``, ``verbose``, ``warn``). From ``model.fit``:
    ``epochs`` (default 1), ``initial_epoch``, ``validation_data`` (any form ``data``
    takes), ``class_weight`` (one target), ``sample_weight`` (an array, one
    number a row, or a column's name; also as ``(x, y, sample_weight)``). Every keyword is
    checked before planning starts. The History also carries memtune's result: ``plan``,
    ``peak_bytes``, ``batch_size_changes``, ``samples_per_second``, ``seconds``, ``saved``,
    ``checkpoint`` and ``to_json()`` (``fit --json``).
    """
    for key, why in _REFUSED.items():
        if key in options:
            raise MemtuneError(f"{key}: {why}")
    _check_epochs(epochs, initial_epoch)
    data = _with_row_weights(data, options)
    if validation_data is not None:
        options["validation_data"] = validation_data
    weights = _class_weight(class_weight, data)
    result = fitting.fit(
        model, data, epochs=epochs, initial_epoch=initial_epoch, class_weight=weights, **options
    )
    return keras_history(result, initial_epoch)


def _with_row_weights(data: Any, options: dict[str, Any]) -> Any:
    """``sample_weight`` given as an array: joined to the data as the column WEIGHT (a new
    dict or frame: the caller's data is not modified), the option naming that column."""
    import pandas as pd

    weights = options.get("sample_weight")
    if weights is None or isinstance(weights, str):
        return data
    if is_dataset(data):
        raise MemtuneError("sample_weight with a tf.data / PyDataset DATA is not supported")
    if is_pair(data):
        if len(data) == 3:
            raise MemtuneError("sample_weight given twice: as a keyword and in (x, y, w)")
        del options["sample_weight"]
        return (*data, weights)
    options["sample_weight"] = WEIGHT
    if isinstance(data, pd.DataFrame):
        return data.assign(**{WEIGHT: row_weights(weights, len(data))})
    if isinstance(data, Mapping):
        rows = len(next(iter(data.values()))) if data else 0
        return {**data, WEIGHT: row_weights(weights, rows)}
    raise MemtuneError(
        "sample_weight as an array needs in-memory data ((x, y), a dict or a DataFrame); "
        "for files, name the weights' column: sample_weight='COLUMN' (--sample-weight)"
    )


def _check_epochs(epochs: Any, initial_epoch: Any) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise MemtuneError(f"epochs {epochs!r}: must be a positive integer")
    bad = isinstance(initial_epoch, bool) or not isinstance(initial_epoch, int)
    if bad or not 0 <= initial_epoch < epochs:
        raise MemtuneError(
            f"initial_epoch {initial_epoch!r}: must be an integer from 0 to epochs - 1 "
            f"({epochs - 1}); epochs is the last epoch's number, as in model.fit"
        )


def _class_weight(value: Mapping[Any, float] | None, data: Any) -> dict[int, float] | None:
    """``class_weight`` as class id → float, each id a non-negative integer."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or not value:
        raise MemtuneError("class_weight: expected a dict of class id → weight")
    if is_dataset(data):
        raise MemtuneError("class_weight with a tf.data / PyDataset DATA is not supported yet")
    out: dict[int, float] = {}
    for key, weight in value.items():
        try:
            index, number = int(key), float(weight)
        except (TypeError, ValueError):
            raise MemtuneError(
                f"class_weight {{{key!r}: {weight!r}}}: expected class id → weight"
            ) from None
        if index != key or index < 0 or not number >= 0:
            raise MemtuneError(
                f"class_weight {{{key!r}: {weight!r}}}: a class id is an integer ≥ 0, a "
                "weight a number ≥ 0"
            )
        out[index] = number
    return out


def keras_history(result: fitting.FitResult, initial_epoch: int = 0) -> Any:
    """A ``keras.callbacks.History`` of the run, carrying memtune's result beside it."""
    keras = _tf.keras()
    history = keras.callbacks.History()
    history.history = result.history
    epochs = len(next(iter(result.history.values()), []))
    history.epoch = list(range(initial_epoch, initial_epoch + epochs))
    history.params = {"epochs": initial_epoch + epochs, "verbose": 0}
    if result.model is not None:
        history.set_model(result.model)
    for name in ("plan", "peak_bytes", "seconds", "samples_per_second", "saved", "checkpoint"):
        setattr(history, name, getattr(result, name))
    history.batch_size_changes = result.batch_size_changes
    history.to_json = result.to_json
    return history
