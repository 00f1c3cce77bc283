"""The options every command shares: one table (:data:`OPTIONS`), a row per option, from
which the CLI's flags, ``[tool.memtune]``'s keys, the Python API's keyword check and its
docstring list all come; and :func:`make_options`, which validates them once into
:class:`Options`. Adding an option is a row here and, for a new kind of value, a field of
:class:`Options`."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from memtune.core.constants import DEFAULT_BUCKETS
from memtune.core.errors import MemtuneError
from memtune.core.plan import Mode, PlanOptions
from memtune.core.units import parse_size

STRATEGIES = ("auto", "none", "mirrored", "multiworker")
_SIDES = ("pre", "post")
_MODES = ("in-memory", "streaming")
_COLORS = ("rgb", "grayscale", "rgba")

Maxlen = Mapping[str | None, int]  # column → length; the None key applies to every column
Kind = Literal["value", "int", "float", "switch", "repeat"]
Scope = Literal["input", "plan", "fit", "cli"]


@dataclass(frozen=True)
class Options:
    """Validated options; build with :func:`make_options`."""

    target: tuple[str, ...] = ()
    maxlen: dict[str | None, int] = field(default_factory=dict)
    padding: str = "pre"
    truncating: str = "pre"
    budget_bytes: int | None = None  # None: auto
    gpu_memory_bytes: int | None = None  # plan for a GPU of this size (maybe not present)
    safety: float = 0.10
    device: str = "auto"
    effective_batch_size: int | None = None
    max_batch_size: int | None = None
    batch_size: int | None = None
    mode: Mode | None = None
    force: bool = False
    analytic: bool = False
    no_cache: bool = False
    validation_data: Any = None
    validation_split: float | None = None
    strategy: str = "auto"
    cpu_replicas: int | None = None
    # Length buckets of a None-length input: at most this many; 0: off; None: the default
    # (up to DEFAULT_BUCKETS, off when the target depends on length)
    buckets: int | None = None
    allow_nonfinite: bool = False  # train on NaN / inf in float columns (refused by default)
    sample_weight: str | None = None  # the column of per-row loss weights
    image_size: tuple[int, int] | None = None  # an image folder's images resized to this
    color_mode: str | None = None  # an image folder's channels (None: the model's, else rgb)

    def plan_options(self, has_sequences: bool, has_tensors: bool = False) -> PlanOptions:
        return PlanOptions(
            safety=self.safety,
            effective_batch_size=self.effective_batch_size,
            max_batch_size=self.max_batch_size,
            batch_size=self.batch_size,
            mode=self.mode,
            force=self.force,
            has_sequences=has_sequences,
            has_tensors=has_tensors,
            validating=self.validation_split is not None or self.validation_data is not None,
        )


@dataclass(frozen=True)
class Option:
    """One option. ``scope``: ``input`` (model, data: flags and config keys, not keywords),
    ``plan`` (every planning command, a keyword of the API, a config key when ``toml``
    says what TOML types it takes), ``fit`` (``fit``'s flag and keyword) or ``cli`` (a
    ``fit`` flag only). ``parse`` turns a keyword's value (``default`` when absent) into
    :class:`Options`' ``field`` (the name, unless given), raising one line on bad input."""

    name: str
    help: str
    scope: Scope = "plan"
    kind: Kind = "value"
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    default: Any = None
    toml: tuple[type, ...] = ()
    parse: Callable[[Any], Any] | None = None
    field: str | None = None
    doc: str = ""  # the API's words for the value, in its docstring

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def attribute(self) -> str:
        return self.field or self.name


def _positive(flag: str) -> Callable[[Any], int | None]:
    def parse(value: Any) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise MemtuneError(f"{flag} {value!r}: must be a positive integer")
        return value

    return parse


def _targets(value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _budget(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise MemtuneError(f"--budget {value}: a size must be positive")
        return value
    if value is None or str(value).strip().lower() == "auto":
        return None
    return parse_size(str(value), what="--budget")


def _gpu_memory(value: Any) -> int | None:
    return None if value is None else parse_size(str(value), what="--gpu-memory")


def _safety(value: Any) -> float:
    try:
        safety = float(value)
    except (TypeError, ValueError):
        raise MemtuneError(f"--safety {value!r}: must be a number in [0, 1)") from None
    if not 0 <= safety < 1:
        raise MemtuneError(f"--safety {safety}: must be in [0, 1)")
    return safety


def _side(name: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in _SIDES:
            raise MemtuneError(f"--{name} {value!r}: expected pre or post")
        return str(value)

    return parse


def _mode(value: Any) -> Mode | None:
    if value is not None and value not in _MODES:
        raise MemtuneError(f"--mode {value!r}: expected in-memory or streaming")
    return value


def _split(value: Any) -> float | None:
    if value is not None and not 0 < float(value) < 1:
        raise MemtuneError(f"--validation-split {value}: must be in (0, 1)")
    return None if value is None else float(value)


def _strategy(value: Any) -> str:
    strategy = str(value or "auto").strip().lower()
    if strategy not in STRATEGIES:
        raise MemtuneError(f"--strategy {strategy!r}: expected {', '.join(STRATEGIES)}")
    return strategy


def _maxlen(value: Any) -> dict[str | None, int]:
    if isinstance(value, dict):
        return parse_maxlen([f"{k}={v}" if k else str(v) for k, v in value.items()])
    return parse_maxlen([value] if isinstance(value, str) else value)


def parse_maxlen(values: Sequence[str | int] | int | None) -> dict[str | None, int]:
    """``--maxlen 100`` and ``--maxlen history=50`` (repeatable) into one mapping."""
    if values is None:
        return {}
    if isinstance(values, int):
        values = [values]
    out: dict[str | None, int] = {}
    for value in values:
        column, _, number = str(value).rpartition("=")
        try:
            n = int(number)
        except ValueError:
            raise MemtuneError(f"--maxlen {value!r}: expected N or COLUMN=N") from None
        if n <= 0:
            raise MemtuneError(f"--maxlen {value!r}: the length must be positive")
        out[column or None] = n
    return out


def _column(flag: str) -> Callable[[Any], str | None]:
    def parse(value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise MemtuneError(f"{flag} {value!r}: expected a column name")
        return value

    return parse


def _buckets(value: Any) -> int | None:
    """``--buckets N`` (at most N buckets), ``off`` (or False), True (the default count,
    asked for), or None (the default); 0 is refused like any other count under 1, not read
    as off."""
    if value is None:
        return None
    if value is True:
        return DEFAULT_BUCKETS
    if value is False or str(value).strip().lower() == "off":
        return 0
    try:
        count = int(str(value).strip())
    except ValueError:
        raise MemtuneError(f"--buckets {value!r}: expected a positive integer or off") from None
    if count < 1:
        raise MemtuneError(f"--buckets {value!r}: expected a positive integer or off")
    return count


def _image_size(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    parts = value if isinstance(value, tuple | list) else str(value).replace("x", ",").split(",")
    wrong = f"--image-size {value!r}: expected H,W (two positive integers)"
    try:
        height, width = (int(str(p).strip()) for p in parts)
    except ValueError:
        raise MemtuneError(wrong) from None
    if height < 1 or width < 1:
        raise MemtuneError(wrong)
    return height, width


def _color_mode(value: Any) -> str | None:
    if value is None or value in _COLORS:
        return value
    raise MemtuneError(f"--color-mode {value!r}: expected one of {', '.join(_COLORS)}")


OPTIONS: tuple[Option, ...] = (
    Option("model", "a .keras file, FILE.py:FUNCTION or MODULE:FUNCTION", "input", toml=(str,)),
    Option("data", "a .csv / .parquet file, a folder of shards, or of images in class folders",
           "input", toml=(str,)),
    Option("target", "target column (repeatable)", kind="repeat", metavar="COL",
           toml=(str, list), parse=_targets, doc="str or list: target columns"),
    Option("maxlen", "pad length where the model says None", kind="repeat",
           metavar="N|COL=N", toml=(int, str, list, dict), parse=_maxlen,
           doc='int, ``{column: int}`` or ``"COL=N"`` strings'),
    Option("padding", "where zeros go in a short sequence (pre, as keras.utils.pad_sequences)",
           choices=_SIDES, default="pre", toml=(str,), parse=_side("padding"),
           doc='``"pre"`` | ``"post"``'),
    Option("truncating", "which end of a long sequence is cut (pre: keep the end)",
           choices=_SIDES, default="pre", toml=(str,), parse=_side("truncating"),
           doc='``"pre"`` | ``"post"``'),
    Option("budget", "e.g. 8GiB; auto: what is free now", metavar="SIZE|auto", default="auto",
           toml=(str,), parse=_budget, field="budget_bytes",
           doc='``"8GiB"``, int bytes, or ``"auto"``'),
    Option("safety", "fraction of the budget kept free (0.10)", kind="float", metavar="F",
           default=0.10, toml=(float, int), parse=_safety, doc="fraction kept free, 0.10"),
    Option("device", "where to train (auto: the GPU with most free memory, else the CPU)",
           metavar="auto|cpu|gpu|gpu:I", default="auto", toml=(str,), parse=str,
           doc='``"auto"`` | ``"cpu"`` | ``"gpu"`` | ``"gpu:I"``'),
    Option("gpu_memory", "plan for a GPU of this size, present or not", metavar="SIZE",
           toml=(str,), parse=_gpu_memory, field="gpu_memory_bytes",
           doc="plan for a GPU of this size"),
    Option("effective_batch_size",
           "samples per optimizer step; gradient accumulation makes up what memory cannot",
           kind="int", metavar="N", toml=(int,), parse=_positive("--effective-batch-size")),
    Option("max_batch_size",
           "never plan a larger batch (default: keep at least 16 steps per epoch)",
           kind="int", metavar="N", toml=(int,), parse=_positive("--max-batch-size")),
    Option("batch_size", "force the batch size", kind="int", metavar="N", toml=(int,),
           parse=_positive("--batch-size"), doc="force"),
    Option("mode", "force the data mode", choices=_MODES, toml=(str,), parse=_mode,
           doc="force"),
    Option("force", "accept a forced batch or mode that is predicted not to fit", kind="switch",
           default=False, parse=bool),
    Option("validation_data", "validate on this data (same form as --data)", metavar="D",
           toml=(str,), parse=lambda v: v),
    Option("validation_split", "hold out this fraction (the last rows / shards) for validation",
           kind="float", metavar="F", toml=(float,), parse=_split),
    Option("analytic", "estimate from the model alone, no trials", kind="switch",
           default=False, toml=(bool,), parse=bool, doc="no trials"),
    Option("no_cache", "run trials even when cached", kind="switch", default=False,
           toml=(bool,), parse=bool),
    Option("strategy",
           "tf.distribute (auto: mirrored on several GPUs, multiworker under TF_CONFIG)",
           choices=STRATEGIES, default="auto", toml=(str,), parse=_strategy,
           doc='``"auto"`` | ``"none"`` | ``"mirrored"`` | ``"multiworker"``'),
    Option("cpu_replicas", "split the CPU into N logical devices", kind="int", metavar="N",
           toml=(int,), parse=_positive("--cpu-replicas")),
    Option("buckets",
           "length buckets for a None-length input (default: up to 8, off when the target "
           "depends on length; off: pad all alike)",
           metavar="N|off", toml=(int, str), parse=_buckets, doc='int, or ``"off"``'),
    Option("sample_weight", "a column of per-row loss weights (as model.fit's sample_weight)",
           metavar="COLUMN", toml=(str,), parse=_column("--sample-weight"),
           doc="a column name (``memtune.fit`` also takes an array)"),
    Option("image_size", "an image folder's images resized to H,W (default: the model's size)",
           metavar="H,W", toml=(str, list), parse=_image_size,
           doc='``"H,W"`` or ``(H, W)``'),
    Option("color_mode", "an image folder's channels (default: the model's, else rgb)",
           choices=_COLORS, toml=(str,), parse=_color_mode,
           doc='``"rgb"`` | ``"grayscale"`` | ``"rgba"``'),
    Option("allow_nonfinite", "train on NaN / inf values in float columns (refused by default)",
           kind="switch", default=False, toml=(bool,), parse=bool),
    Option("epochs", "epochs to train", "fit", kind="int", metavar="N"),
    Option("plan", "train on a plan kept by suggest --save-plan (made again, saying why, "
           "if what it depends on changed)", "fit", metavar="FILE"),
    Option("save", "write the trained model here (.keras), atomically", "fit", metavar="PATH"),
    Option("checkpoint_dir", "back up each epoch here (resumable)", "fit", metavar="DIR"),
    Option("resume", "continue from --checkpoint-dir", "fit", kind="switch", default=False),
    Option("seed", "seed for the per-epoch shuffle", "fit", kind="int"),
    Option("no_dashboard", "Keras's own progress lines", "cli", kind="switch", default=False),
    Option("trace", "memory samples and step events", "cli", metavar="FILE.jsonl"),
    Option("report", "memory over time, drawn at the end", "cli", metavar="FILE.png"),
    Option("tensorboard", "memory scalars beside Keras's own logs", "cli", metavar="DIR"),
)  # fmt: skip


def rows(*scopes: Scope) -> list[Option]:
    """The table's rows of these scopes, in order."""
    return [o for o in OPTIONS if o.scope in scopes]


def config_keys() -> dict[str, tuple[type, ...]]:
    """``[tool.memtune]``'s keys and the TOML types each takes."""
    return {o.name: o.toml for o in OPTIONS if o.toml}


def keywords_doc(width: int = 88) -> str:
    """The API's keywords and what they take, as its docstrings list them."""
    words = [f"``{o.name}``" + (f" ({o.doc})" if o.doc else "") for o in rows("plan")]
    return textwrap.fill(", ".join(words) + ".", width=width)


def make_options(**kwargs: Any) -> Options:
    """Options from keyword arguments (the Python API and the CLI share this): each row of
    :data:`OPTIONS` parses its keyword, or its default when the keyword is absent."""
    table = {o.name: o for o in rows("plan")}
    strategy = table.get("strategy")
    if strategy is not None and strategy.parse is not None:  # a bad strategy is named first
        strategy.parse(kwargs.get("strategy", strategy.default))
    for key in kwargs:
        if key not in table:
            raise MemtuneError(f"unknown option {key!r}")
    values: dict[str, Any] = {}
    for name, row in table.items():
        if row.parse is not None:
            values[row.attribute] = row.parse(kwargs.get(name, row.default))
    return Options(**values)
