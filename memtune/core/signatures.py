"""A model's inputs and outputs as plain data: names, declared shapes, dtypes (read off a
model in a child process, used where the data is matched to them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: its name and declared shape (batch dimension first)."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str = "float32"


@dataclass(frozen=True)
class ModelSignature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
