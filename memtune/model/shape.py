"""What the analytic estimate reads off a Keras model: weights, optimizer slots, every layer's
output shape, recurrent state. Read where the model is loaded (a child process when
planning), as plain data; used where the data's lengths are known
(:mod:`memtune.estimate.analytic`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# Per-step values kept for backprop by recurrent cells, as multiples of the units.
_RNN_STATE_FACTOR = {"LSTM": 6, "GRU": 5, "SimpleRNN": 2}


# Slot variables per trainable weight for optimizers whose slots are not built yet.
_SLOTS = {
    "SGD": 1,
    "Adam": 2,
    "AdamW": 2,
    "Adamax": 2,
    "Nadam": 2,
    "RMSprop": 2,
    "Adagrad": 1,
    "Adadelta": 2,
    "Adafactor": 2,
    "Ftrl": 2,
    "Lion": 1,
    "Lamb": 2,
    "Muon": 2,
}


Shape = tuple[int | None, ...]


@dataclass(frozen=True)
class ModelShape:
    """What the analytic estimate reads off a Keras model, as plain data: read where the
    model is loaded (a child process when planning), used where the data's lengths are known.

    ``outputs``: each layer's output shapes without the batch axis (``None``: the sequence
    length). ``recurrent``: ``(steps, units, factor)`` per recurrent layer input.
    """

    param_bytes: int
    trainable_bytes: int
    optimizer_bytes: int
    outputs: tuple[Shape, ...]
    recurrent: tuple[tuple[int | None, int, int], ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "param_bytes": self.param_bytes,
            "trainable_bytes": self.trainable_bytes,
            "optimizer_bytes": self.optimizer_bytes,
            "outputs": [list(s) for s in self.outputs],
            "recurrent": [list(r) for r in self.recurrent],
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ModelShape:
        return cls(
            int(raw["param_bytes"]),
            int(raw["trainable_bytes"]),
            int(raw["optimizer_bytes"]),
            tuple(tuple(s) for s in raw["outputs"]),
            tuple((r[0], int(r[1]), int(r[2])) for r in raw["recurrent"]),
        )


def _nbytes(variables: Any) -> int:
    total = 0
    for v in variables:
        itemsize = 2 if "16" in str(v.dtype) else 8 if "64" in str(v.dtype) else 4
        total += math.prod(int(d) for d in v.shape) * itemsize
    return total


def _layer_shapes(layer: Any, attr: str) -> list[Any]:
    try:
        value = getattr(layer, attr)
    except (AttributeError, ValueError):
        return []
    values = value if isinstance(value, list | tuple) else [value]
    return [v.shape for v in values if hasattr(v, "shape")]


def describe(model: Any) -> ModelShape:
    """Read weights, optimizer slots and layer output shapes off a Keras model."""
    outputs: list[Shape] = []
    recurrent: list[tuple[int | None, int, int]] = []
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer":
            continue
        for shape in _layer_shapes(layer, "output"):
            outputs.append(tuple(None if d is None else int(d) for d in tuple(shape)[1:]))
        factor = _RNN_STATE_FACTOR.get(type(layer).__name__)
        if factor is not None:
            for shape in _layer_shapes(layer, "input"):
                steps = int(shape[1]) if len(shape) > 1 and shape[1] is not None else None
                recurrent.append((steps, int(layer.units), factor))
    trainable = _nbytes(model.trainable_weights)
    optimizer = model.optimizer
    if getattr(optimizer, "built", False):
        opt_bytes = _nbytes(optimizer.variables)
    else:
        opt_bytes = trainable * _SLOTS.get(type(optimizer).__name__, 2)
    return ModelShape(
        _nbytes(model.weights), trainable, opt_bytes, tuple(outputs), tuple(recurrent)
    )
