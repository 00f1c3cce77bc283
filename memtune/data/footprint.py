"""Which columns feed which model input or output, and the exact bytes of one sample.

Pure: works from a :class:`ModelSignature` (names, shapes, dtypes read off a model) and a
:class:`~memtune.data.scan.DataInfo`, so it is tested without TensorFlow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from memtune.core.errors import MemtuneError
from memtune.core.options import Maxlen
from memtune.core.signatures import ModelSignature, TensorSpec
from memtune.data.python import WEIGHT  # the feed of per-row loss weights: a batch's third part

if TYPE_CHECKING:  # the data readers (pandas, Arrow) stay out of a trial child
    from memtune.data.scan import DataInfo

# What a feed's element takes; N-D samples keep their own narrower types.
ITEM_BYTES = {
    "int32": 4, "float32": 4, "uint8": 1, "int8": 1, "int16": 2, "uint16": 2, "float16": 2,
}  # fmt: skip
DEFAULT_TARGET = "answer"  # the seed article's convention


@dataclass(frozen=True)
class Feed:
    """One array of a batch: the columns it is built from and its per-sample shape."""

    name: str
    role: Literal["input", "target"]
    columns: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str
    sequence: bool
    flexible: bool = False  # the model declares its length None: it may be bucketed

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * ITEM_BYTES[self.dtype]

    @property
    def length(self) -> int:
        """A sequence feed's values a row: its padded length (a fixed-size list reshaped to
        an N-D input: all its values)."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class Footprint:
    """All feeds of one sample after padding, and what padding did."""

    inputs: tuple[Feed, ...]
    targets: tuple[Feed, ...]
    notes: list[str] = field(default_factory=list)

    @property
    def per_sample_bytes(self) -> int:
        return sum(f.nbytes for f in (*self.inputs, *self.targets))

    @property
    def feeds(self) -> tuple[Feed, ...]:
        return (*self.inputs, *self.targets)

    @property
    def model_targets(self) -> tuple[Feed, ...]:
        """The targets the model's outputs are trained on (the row weights are not one)."""
        return tuple(t for t in self.targets if t.name != WEIGHT)

    @property
    def weighted(self) -> bool:
        return len(self.model_targets) < len(self.targets)

    def unweighted(self) -> Footprint:
        """This footprint without the row weights (validation data has none)."""
        return Footprint(self.inputs, self.model_targets, self.notes)


def _columns_text(info: DataInfo) -> str:
    names = list(info.columns)
    shown = ", ".join(names[:8]) + (", …" if len(names) > 8 else "")
    return f"columns of {info.source.label}: {shown}"


def resolve_targets(
    signature: ModelSignature, info: DataInfo, targets: Sequence[str] | None
) -> dict[str, str]:
    """Model output name → target column."""
    outputs = [o.name for o in signature.outputs]
    inputs = {i.name for i in signature.inputs}
    for t in targets or ():
        if t not in info.columns:
            raise MemtuneError(f"--target {t!r} is not a column ({_columns_text(info)})")
        scalar_outputs = all(o.shape[1:] in ((), (1,)) for o in signature.outputs)
        if t in inputs and t not in outputs and info.columns[t].sequence and scalar_outputs:
            # An autoencoder's target may be its input; a sequence as a scalar's target is
            # a slip that would train on its first value.
            raise MemtuneError(
                f"--target {t!r} is the model's input, not what it predicts (its outputs: "
                f"{', '.join(outputs)})"
            )
    if targets:
        if len(outputs) == 1:
            if len(targets) > 1:
                raise MemtuneError(
                    f"--target given {len(targets)} times but the model has one output"
                )
            return {outputs[0]: targets[0]}
        unmatched = [t for t in targets if t not in outputs]
        if unmatched:
            raise MemtuneError(
                f"--target {unmatched[0]!r} names no model output (outputs: {', '.join(outputs)})"
            )
        missing = [o for o in outputs if o not in targets]
        if missing:
            raise MemtuneError(f"model output {missing[0]!r} has no --target column")
        return {o: o for o in outputs}
    by_name = {o: o for o in outputs if o in info.columns}
    if len(by_name) == len(outputs):
        return by_name
    if len(outputs) == 1 and DEFAULT_TARGET in info.columns:
        return {outputs[0]: DEFAULT_TARGET}
    unnamed = next(o for o in outputs if o not in info.columns)
    raise MemtuneError(
        f"no --target given and model output {unnamed!r} matches no column; pass --target COLUMN"
    )


def _sequence_length(
    name: str, column: str, declared: int | None, info: DataInfo, maxlen: Maxlen, notes: list[str]
) -> int:
    longest = info.columns[column].max_len
    if declared is not None:
        length, why = declared, f"the model declares {declared}"
    elif column in maxlen:
        length, why = maxlen[column], f"--maxlen {column}={maxlen[column]}"
    elif None in maxlen:
        length, why = maxlen[None], f"--maxlen {maxlen[None]}"
    else:
        length, why = max(longest, 1), "the longest in the data"
    if longest > length:
        notes.append(f"{column}: sequences up to {longest} long are truncated to {length} ({why})")
    else:
        notes.append(f"{column}: padded to {length} ({why})")
    return length


def _sequence_feed(
    spec: TensorSpec,
    column: str,
    role: Literal["input", "target"],
    info: DataInfo,
    maxlen: Maxlen,
    notes: list[str],
) -> Feed:
    dims = spec.shape[1:]
    what = f"model {role if role == 'input' else 'output'} {spec.name!r}"
    if len(dims) >= 2 and None not in dims and not (len(dims) == 2 and dims[1] == 1):
        return _reshaped_lists(spec, column, role, info, notes)
    if len(dims) == 0 or len(dims) > 2 or (len(dims) == 2 and dims[1] not in (1, None)):
        raise MemtuneError(
            f"{what} has shape {_shape_text(spec.shape)} but column {column!r} holds sequences "
            "(expected (batch, length) or (batch, length, 1))"
        )
    if info.columns[column].max_len == 0:
        raise MemtuneError(
            f"column {column!r}, fed to {what}: every row is an empty sequence (nothing to "
            "train on)"
        )
    length = _sequence_length(spec.name, column, dims[0], info, maxlen, notes)
    shape = (length,) if len(dims) == 1 else (length, 1)
    dtype = info.columns[column].dtype
    return Feed(spec.name, role, (column,), shape, dtype, True, flexible=dims[0] is None)


def _reshaped_lists(
    spec: TensorSpec,
    column: str,
    role: Literal["input", "target"],
    info: DataInfo,
    notes: list[str],
) -> Feed:
    """A list column feeding an N-D input (an image, frames): every row must hold exactly
    as many values as the input, which are reshaped to it (padding would shift pixels)."""
    shape = tuple(int(d) for d in spec.shape[1:] if d is not None)
    size, found = math.prod(shape), info.columns[column]
    shortest = (
        int(found.lengths.min()) if found.lengths is not None and found.lengths.size else size
    )
    if found.max_len != size or shortest != size:
        held = f"{shortest:,} to {found.max_len:,}" if shortest != found.max_len else ""
        raise MemtuneError(
            f"column {column!r} holds lists of {held or f'{found.max_len:,}'} values; model "
            f"{role} {spec.name!r} of shape {_shape_text(spec.shape)} needs exactly {size:,} "
            "in each row"
        )
    notes.append(f"{column}: lists of {size:,} values reshaped to {shape}")
    return Feed(spec.name, role, (column,), shape, found.dtype, True)


def _scalar_feed(
    spec: TensorSpec, columns: Sequence[str], role: Literal["input", "target"], info: DataInfo
) -> Feed:
    dims = spec.shape[1:]
    width = len(columns)
    what = f"model {role if role == 'input' else 'output'} {spec.name!r}"
    if not ((dims == () and width == 1) or (len(dims) == 1 and dims[0] in (width, None))):
        cols = ", ".join(columns)
        raise MemtuneError(
            f"{what} has shape {_shape_text(spec.shape)} but is fed {width} scalar "
            f"column(s) ({cols})"
        )
    dtype = "int32" if all(info.columns[c].is_int for c in columns) else "float32"
    shape: tuple[int, ...] = () if dims == () else (width,)
    return Feed(spec.name, role, tuple(columns), shape, dtype, False)


def _tensor_feed(
    spec: TensorSpec,
    column: str,
    role: Literal["input", "target"],
    info: DataInfo,
    notes: list[str],
) -> Feed:
    """A fixed N-D sample (images, audio frames): fed at its own shape where the model's
    declared dims agree (None takes the data's), or reshaped when they hold as many values."""
    dims, data = spec.shape[1:], info.columns[column].shape
    shape: tuple[int, ...] = data
    agrees = len(dims) == len(data) and all(d in (None, s) for d, s in zip(dims, data, strict=True))
    if not agrees:
        if None in dims or math.prod(d or 0 for d in dims) != math.prod(data):
            what = f"model {role if role == 'input' else 'output'} {spec.name!r}"
            raise MemtuneError(
                f"{what} has shape {_shape_text(spec.shape)} but {column!r} holds samples of "
                f"shape {_shape_text(data)}"
            )
        shape = tuple(d for d in dims if d is not None)
        notes.append(f"{column}: samples of shape {_shape_text(data)} reshaped to {shape}")
    return Feed(spec.name, role, (column,), shape, info.columns[column].dtype, False)


def _shape_text(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def footprint(
    signature: ModelSignature,
    info: DataInfo,
    *,
    targets: Sequence[str] | None = None,
    maxlen: Maxlen | None = None,
    weight: str | None = None,
) -> Footprint:
    """Match model inputs and outputs to columns and size one padded sample exactly;
    ``weight``: the column of per-row loss weights, if any."""
    maxlen = maxlen or {}
    for column in maxlen:
        if column is not None and column not in info.columns:
            raise MemtuneError(f"--maxlen {column}=…: {column!r} is not a column")
    target_of = resolve_targets(signature, info, targets)
    notes: list[str] = []
    skip = {*target_of.values(), *([weight] if weight else [])}
    inputs = _input_feeds(signature, info, skip, maxlen, notes)
    for spec in signature.inputs:
        if spec.dtype in ("int64", "float64"):
            small = "int32" if spec.dtype == "int64" else "float32"
            notes.append(
                f"{spec.name}: declared {spec.dtype}; memtune feeds {small} (4 B a value, as "
                "counted here) and Keras casts it inside the model"
            )
    target_feeds: list[Feed] = []
    for spec in signature.outputs:
        column = target_of[spec.name]
        if info.columns[column].tensor:
            target_feeds.append(_tensor_feed(spec, column, "target", info, notes))
        elif info.columns[column].sequence:
            target_feeds.append(_sequence_feed(spec, column, "target", info, maxlen, notes))
        else:
            dims = spec.shape[1:]
            shape: tuple[int, ...] = (1,) if dims and dims[-1] == 1 and len(dims) == 1 else ()
            dtype = info.columns[column].dtype
            target_feeds.append(Feed(spec.name, "target", (column,), shape, dtype, False))
    if weight is not None:
        target_feeds.append(_weight_feed(weight, info, notes))
    return Footprint(tuple(inputs), tuple(target_feeds), notes)


def _input_feeds(
    signature: ModelSignature, info: DataInfo, skip: set[str], maxlen: Maxlen, notes: list[str]
) -> list[Feed]:
    """Each model input's feed: its own column, or (one unnamed input) every scalar column
    but the targets' and the weights' (``skip``)."""
    inputs: list[Feed] = []
    named = [s for s in signature.inputs if s.name in info.columns]
    for spec in signature.inputs:
        if spec.name in info.columns:
            if info.columns[spec.name].tensor:
                inputs.append(_tensor_feed(spec, spec.name, "input", info, notes))
            elif info.columns[spec.name].sequence:
                inputs.append(_sequence_feed(spec, spec.name, "input", info, maxlen, notes))
            else:
                inputs.append(_scalar_feed(spec, [spec.name], "input", info))
        elif len(signature.inputs) == 1 and not named:
            scalars = [
                c.name
                for c in info.columns.values()
                if not c.sequence and not c.tensor and c.name not in skip
            ]
            if not scalars:
                raise MemtuneError(
                    f"model input {spec.name!r} has no column and DATA has no scalar "
                    f"feature columns ({_columns_text(info)})"
                )
            inputs.append(_scalar_feed(spec, scalars, "input", info))
            notes.append(f"{spec.name}: fed the scalar columns {', '.join(scalars)}")
        else:
            raise MemtuneError(
                f"model input {spec.name!r} has no column of that name ({_columns_text(info)})"
            )
    return inputs


def _weight_feed(column: str, info: DataInfo, notes: list[str]) -> Feed:
    """Per-row loss weights from one scalar column of numbers."""
    what = "--sample-weight" if column != WEIGHT else "sample_weight"
    if column not in info.columns:
        raise MemtuneError(f"{what} {column!r} is not a column ({_columns_text(info)})")
    if info.columns[column].sequence:
        raise MemtuneError(f"{what} {column!r} holds sequences; expected one number a row")
    if column != WEIGHT:
        notes.append(f"{column}: each row's loss weight (as model.fit's sample_weight)")
    return Feed(WEIGHT, "target", (column,), (), "float32", False)
