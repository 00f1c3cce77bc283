"""The analytic prior: training memory from the model's structure alone.

Counted: weights, gradients, the optimizer's slot variables, every layer's output per
sample (kept for the backward pass), recurrent layers' per-step state, the input batch, and
the framework's resident baseline. Allocator slack and fused-kernel temporaries are not
visible here; measured trials refine this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from memtune.estimate.curve import MemoryCurve
from memtune.footprint import Footprint

# Resident memory of a process that has imported TensorFlow and run one training step on a
# tiny model (measured on CPU, TF 2.21); the CUDA context on a GPU.
CPU_BASELINE_BYTES = 640 * 1024**2
GPU_CONTEXT_BYTES = 512 * 1024**2
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
# Layer outputs live through forward, their gradients through backward, plus temporaries.
ACTIVATION_FACTOR = 3
INPUT_COPIES = 2  # the numpy batch and its tensor copy


@dataclass(frozen=True)
class ModelProfile:
    """Everything the analytic estimate needs from a model, in bytes and elements."""

    param_bytes: int
    trainable_bytes: int
    optimizer_bytes: int
    activation_elems_per_sample: int
    recurrent_elems_per_sample: int


def _nbytes(variables: Any) -> int:
    total = 0
    for v in variables:
        itemsize = 2 if "16" in str(v.dtype) else 8 if "64" in str(v.dtype) else 4
        total += math.prod(int(d) for d in v.shape) * itemsize
    return total


def _resolve(shape: Any, default_len: int) -> int:
    dims = [default_len if d is None else int(d) for d in tuple(shape)[1:]]
    return math.prod(dims)


def _layer_shapes(layer: Any, attr: str) -> list[Any]:
    try:
        value = getattr(layer, attr)
    except (AttributeError, ValueError):
        return []
    values = value if isinstance(value, list | tuple) else [value]
    return [v.shape for v in values if hasattr(v, "shape")]


def profile_model(model: Any, footprint: Footprint) -> ModelProfile:
    """Read weights, optimizer slots and per-sample layer outputs off a Keras model."""
    lengths = [f.shape[0] for f in footprint.inputs if f.sequence]
    default_len = max(lengths, default=1)
    activations = 0
    recurrent = 0
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer":
            continue
        for shape in _layer_shapes(layer, "output"):
            activations += _resolve(shape, default_len)
        factor = _RNN_STATE_FACTOR.get(type(layer).__name__)
        if factor is not None:
            for shape in _layer_shapes(layer, "input"):
                steps = shape[1] if len(shape) > 1 and shape[1] is not None else default_len
                recurrent += int(steps) * int(layer.units) * factor
    trainable = _nbytes(model.trainable_weights)
    optimizer = model.optimizer
    if getattr(optimizer, "built", False):
        opt_bytes = _nbytes(optimizer.variables)
    else:
        opt_bytes = trainable * _SLOTS.get(type(optimizer).__name__, 2)
    return ModelProfile(
        param_bytes=_nbytes(model.weights),
        trainable_bytes=trainable,
        optimizer_bytes=opt_bytes,
        activation_elems_per_sample=activations,
        recurrent_elems_per_sample=recurrent,
    )


def analytic_curve(profile: ModelProfile, footprint: Footprint, *, gpu: bool) -> MemoryCurve:
    """The prior ``peak(b)``: fixed state plus what each sample of a batch adds."""
    state = profile.param_bytes + profile.trainable_bytes + profile.optimizer_bytes
    baseline = GPU_CONTEXT_BYTES if gpu else CPU_BASELINE_BYTES
    per_sample = (
        ACTIVATION_FACTOR
        * 4
        * (profile.activation_elems_per_sample + profile.recurrent_elems_per_sample)
        + INPUT_COPIES * footprint.per_sample_bytes
    )
    return MemoryCurve(baseline + state, per_sample, "analytic")
