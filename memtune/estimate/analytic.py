"""The analytic prior: training memory from the model's structure alone.

Counted: weights, gradients, the optimizer's slot variables, every layer's output per
sample (kept for the backward pass), recurrent layers' per-step state, the input batch, and
the framework's resident baseline. Allocator slack and fused-kernel temporaries are not
visible here; measured trials refine this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from memtune.core.curve import MemoryCurve
from memtune.data.footprint import Footprint
from memtune.model.shape import ModelShape

# What a trial process holds (anonymous memory, the budget's measure) once it has imported
# TensorFlow and fit's data readers and trained a tiny model a few steps: the demo's model
# read 337 MiB at batch 8 (CPU, TF 2.21; its RSS, with the libraries' code, ~740 MiB). The
# CUDA context on a GPU.
CPU_BASELINE_BYTES = 330 * 1024**2
GPU_CONTEXT_BYTES = 512 * 1024**2
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


def profile(shape: ModelShape, footprint: Footprint) -> ModelProfile:
    """The model's profile once the data's padded lengths are known. Pure."""
    lengths = [f.shape[0] for f in footprint.inputs if f.sequence]
    default_len = max(lengths, default=1)
    activations = sum(
        math.prod(default_len if d is None else d for d in dims) for dims in shape.outputs
    )
    recurrent = sum(
        (default_len if steps is None else steps) * units * factor
        for steps, units, factor in shape.recurrent
    )
    return ModelProfile(
        param_bytes=shape.param_bytes,
        trainable_bytes=shape.trainable_bytes,
        optimizer_bytes=shape.optimizer_bytes,
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
