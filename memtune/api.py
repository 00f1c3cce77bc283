"""The Python API: validate the options, then do the work in the rooms that own it."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from memtune import distribute, heap, progress
from memtune.data.blocks import whole_blocks
from memtune.data.buckets import LengthBuckets
from memtune.data.scan import DataInfo, scan
from memtune.distribute import Topology
from memtune.errors import MemtuneError
from memtune.estimate.curve import MemoryCurve
from memtune.footprint import Footprint, ModelSignature, TensorSpec, footprint
from memtune.options import Options, make_options
from memtune.plan import (
    Budget,
    Mode,
    Plan,
    PlanOptions,
    Trial,
    make_plan,
    resolve_budget,
    resolve_device,
)
from memtune.probe import Probe
from memtune.probe import probe as _probe

if TYPE_CHECKING:  # the pipelines import numpy-heavy readers: loaded when batches are made
    from memtune.data.pipeline import Bucketing

# A measured plan aims at this share of the usable budget, not all of it: ``fit``'s long run
# peaks 1-4 % above a few-step trial (bench_estimate), and a verification aimed at the very
# edge overshoots often, spending a trial to step down.
MEASURED_AIM = 0.95


@dataclass(frozen=True)
class Prepared:
    """What suggest and fit share: data, model, footprint and the plan.

    ``model_source`` is what the user gave; :attr:`model` loads it on first use, after
    planning, so the planning process never holds TensorFlow for a model given as a spec.
    """

    options: Options
    info: DataInfo
    model_source: Any
    footprint: Footprint
    probe: Probe
    plan: Plan
    curve: MemoryCurve
    budget: Budget
    plan_options: PlanOptions
    notes: list[str]
    # One more trial at a batch, its peak as fit's process reaches it (None: no trials).
    trial_at: Callable[[int], Trial | None] | None = None

    @cached_property
    def model(self) -> Any:
        """The compiled Keras model (loaded here the first time it is asked for)."""
        from memtune import model as model_mod

        return model_mod.load_model(self.model_source)

    def plan_at(
        self, batch_size: int, mode: Mode | None = None, curve: MemoryCurve | None = None
    ) -> Plan:
        """The plan for a given batch (and mode) on the same curve — what ``check`` judges."""
        return make_plan(
            self.budget,
            curve or self.curve,
            num_samples=self.info.num_samples - self.plan_options.held_out,
            per_sample_bytes=self.footprint.per_sample_bytes,
            options=replace(self.plan_options, batch_size=batch_size, mode=mode, force=True),
            trials=self.plan.trials,
            notes=self.notes,
        )


def probe() -> Probe:
    """Host RAM and GPU memory as seen now."""
    return _probe()


def prepare(
    model: Any,
    data: Any,
    options: Options,
    *,
    probe_result: Probe | None = None,
    topology: Topology | None = None,
) -> Prepared:
    """Scan the data, read the model, size one sample, estimate and plan.

    A model given as a spec is read in a child process (``memtune.modelinfo``): this process
    loads TensorFlow only when ``fit`` asks for :attr:`Prepared.model`, after planning.
    """
    from memtune import _tf, modelinfo
    from memtune.estimate.analytic import analytic_curve, profile

    seen = probe_result or _probe()
    # A bad --device or --strategy fails before any work.
    device = resolve_device(seen, options.device, virtual=options.gpu_memory_bytes is not None)
    if topology is None:
        topology = distribute.resolve(
            options.strategy, options.cpu_replicas, seen, device, options.device
        )
    if topology.active:
        device = distribute.tightest_device(topology, seen, device)
        if options.effective_batch_size is not None:
            raise MemtuneError(
                "--effective-batch-size needs gradient accumulation, which Keras 3 does not run "
                f"under tf.distribute ({topology.strategy}); the global batch is the per-replica "
                "batch × replicas"
            )
    from memtune.data.python import is_dataset, is_pair

    by_model = is_pair(data) or is_dataset(data)  # named after the model's inputs / outputs
    info = None if by_model else _scanned(lambda: scan(data))  # bad data fails before TF loads
    progress.report("stage", what="reading the model")
    model_info, loaded = modelinfo.read(model, debug=_tf.debug_enabled())
    sig = model_info.signature
    if info is None:
        data, options = _named(data, sig, options)
        info = _scanned(lambda: _scan(data, sig, options))
    fp = footprint(sig, info, targets=options.target, maxlen=options.maxlen)
    virtual = device != "cpu" and not seen.gpus  # --gpu-memory: a GPU this machine lacks
    if options.budget_bytes is None and options.gpu_memory_bytes is not None and device != "cpu":
        budget = resolve_budget(seen, device, options.gpu_memory_bytes, "--gpu-memory")
    else:
        budget = resolve_budget(seen, device, options.budget_bytes)
    prior = analytic_curve(profile(model_info.shape, fp), fp, gpu=device != "cpu")
    cpu_replicas = topology.local_replicas if device == "cpu" else 1
    if cpu_replicas > 1:  # replicas on one CPU share its RAM: each step is the global batch
        prior = replace(prior, per_sample_bytes=prior.per_sample_bytes * cpu_replicas)
    notes = list(info.warnings) + fp.notes
    if topology.active and device != "cpu" and len(topology.devices) > 1:
        notes.append(f"planned per replica against {device}, the GPU with the least free memory")
    plan_options = options.plan_options(any(f.sequence for f in fp.feeds))
    if info.source.kind == "dataset":
        why = f"the {info.source.label[1:-1]} (memtune streams it)"
        plan_options = replace(plan_options, mode="streaming", mode_why=why)
    train_samples = _train_samples(info, options)
    whole = whole_blocks(info.source)
    plan_options = replace(
        plan_options,
        whole_blocks=(whole.smallest_rows, whole.largest_rows, whole.largest_decoded_bytes),
        held_out=info.num_samples - train_samples,
        local_replicas=topology.local_replicas,
        strategy=topology.strategy,
        replicas=topology.replicas,
        workers=topology.workers,
        worker_index=topology.worker_index,
    )

    buckets, why_not = _length_buckets(info, fp, options, topology, train_samples)
    if why_not:
        notes.append(why_not)
    if buckets is not None:
        plan_options = replace(
            plan_options,
            buckets=tuple(zip(buckets.boundaries, buckets.samples, strict=True)),
            bucket_scale=tuple(b / buckets.pad_length for b in buckets.boundaries),
            pad_length=buckets.pad_length,
            real_tokens=buckets.real_tokens,
        )

    def plan_for(
        curve: MemoryCurve,
        verified: int | None,
        extra: list[str] | None = None,
        within: int | None = None,
        scale: tuple[float, ...] | None = None,
    ) -> Plan:
        """The plan on ``curve``; ``within``: a tighter bound (bytes) for a measured choice;
        ``scale``: the buckets' measured memory shares."""
        aim = MEASURED_AIM if curve.source == "measured" else 1.0
        if within is not None and curve.source == "measured":
            aim = min(aim, within / int(budget.budget_bytes * (1 - options.safety)))
        chosen = replace(plan_options, verified_cap=verified, aim=aim)
        if scale is not None:
            chosen = replace(chosen, bucket_scale=scale)
        return make_plan(
            budget,
            curve,
            num_samples=train_samples,
            per_sample_bytes=fp.per_sample_bytes,
            options=chosen,
            notes=notes if extra is None else extra,
        )

    curve = prior
    trial_at = None
    if options.analytic:
        notes = [*notes, "no trials (--analytic): the plan is unverified"]
        plan = plan_for(prior, None)
    elif virtual:
        from memtune.estimate import measured

        cpu_budget = resolve_budget(seen, "cpu", None)
        setup = measured.setup(
            model_info, fp, options, cpu_budget, seen, _train_samples(info, options)
        )
        curve, trials = measured.slope_from_cpu(model, setup, prior)
        notes = [
            *notes,
            f"estimate: this machine has no {device}; the peak is the analytic device state "
            "plus the per-sample growth measured in CPU trials",
        ]
        plan = replace(plan_for(curve, None), trials=trials)
    else:
        from memtune.estimate import measured

        setup = measured.setup(
            model_info,
            fp,
            options,
            budget,
            seen,
            _train_samples(info, options) // topology.workers,
            cpu_replicas=cpu_replicas,
            rows=_trial_rows(info, fp, options),
        )
        if options.batch_size is not None:  # forced: earlier trials may still inform the peak
            curve, trials = measured.cached_curve(setup, prior)
            why = f"{len(trials)} cached trial(s) used" if trials else "the plan is unverified"
            notes = [*notes, f"no new trials (--batch-size is forced); {why}"]
            plan = replace(plan_for(curve, None), trials=trials)
        else:
            lengths = None
            if buckets is not None:
                lengths = measured.LengthTrial(
                    buckets.feed,
                    buckets.boundaries[0],
                    buckets.pad_length,
                    buckets.boundaries,
                    buckets.samples[0],
                    _trial_rows(info, fp, options, (buckets.feed, buckets.boundaries[0])),
                )
            plan, curve = measured.measured_plan(model, setup, prior, plan_for, notes, lengths)
            trial_at = functools.partial(measured.one_trial, model, setup)
    source = model if loaded is None else loaded
    return Prepared(
        options, info, source, fp, seen, plan, curve, budget, plan_options, notes, trial_at
    )


def _trial_rows(
    info: DataInfo, fp: Footprint, options: Options, bucket: tuple[str, int] | None = None
) -> Callable[[int, Path], Path] | None:
    """Writes the user's rows for a trial batch (None for a tf.data pipeline: synthetic);
    ``bucket`` (input, length): rows no longer than that, cut to it."""
    if info.source.kind == "dataset":
        return None
    from memtune.data.sample import write_trial_rows

    layout = layout_for(info, fp, options)
    return lambda batch, path: write_trial_rows(layout, batch, path, bucket=bucket)


def _length_buckets(
    info: DataInfo, fp: Footprint, options: Options, topology: Topology, train_samples: int
) -> tuple[LengthBuckets | None, str | None]:
    """The length buckets of the model's None-length input, or why there are none (a reason
    line; None when there is nothing to bucket or they are turned off)."""
    flexible = [f for f in fp.feeds if f.flexible]
    if not flexible or not options.buckets:
        return None, None
    why = None
    if len(flexible) > 1 or flexible[0].role != "input":
        why = "more than one None-length feed (or a None-length target)"
    elif options.batch_size is not None:
        why = "--batch-size is forced: one batch serves every length"
    elif options.effective_batch_size is not None:
        why = "--effective-batch-size needs one batch for every step"
    elif topology.active:
        why = f"--strategy {topology.strategy} is not bucketed yet"
    elif info.source.kind == "dataset":
        why = "a tf.data pipeline is padded as it comes"
    if why is not None:
        return None, f"no length buckets: {why}"
    feed = flexible[0]
    (column,) = feed.columns
    lengths = info.column(column).lengths
    if lengths is None:
        return None, None
    buckets = LengthBuckets.cut(
        feed.name, column, lengths, feed.shape[0], options.buckets, training=train_samples
    )
    if len(buckets.boundaries) < 2:
        return None, f"no length buckets: every {column!r} row pads to {feed.shape[0]}"
    return buckets, None


def _scanned(read: Callable[[], DataInfo]) -> DataInfo:
    """Scan with progress reported around it."""
    progress.report("stage", what="reading the data once (rows, lengths)")
    info = read()
    # What the scan freed goes back now, before the model is read in a child beside this
    # process: a 1.6 GiB Parquet stream left enough here for fit's tree to pass 1.25 GiB.
    heap.release()
    progress.report("scanned", rows=info.num_samples, shards=len(info.source.shards))
    return info


def _named(data: Any, sig: ModelSignature, options: Options) -> tuple[Any, Options]:
    """``(x, y)`` as a dict of columns named after the model's inputs and outputs; ``y``'s
    names become the targets. Anything else passes through."""
    from memtune.data.python import is_pair, name_pair

    if not is_pair(data):
        return data, options
    inputs, outputs = [s.name for s in sig.inputs], [s.name for s in sig.outputs]
    columns, targets = name_pair(data, inputs, outputs, options.target)
    return columns, replace(options, target=targets)


def _scan(data: Any, sig: ModelSignature, options: Options) -> DataInfo:
    """:func:`scan` for files and tables; one pass over a tf.data / PyDataset pipeline."""
    from memtune.data.python import is_dataset

    if not is_dataset(data):
        return scan(data)
    from memtune.data.tfdata import is_batched, scan_dataset

    if options.validation_split or options.validation_data is not None:
        raise MemtuneError(
            "validation with a tf.data pipeline as DATA is not supported yet; "
            "pass the data as a file, a table or (x, y) arrays to validate"
        )
    inputs = [s.name for s in sig.inputs]
    targets = list(options.target) or [s.name for s in sig.outputs]
    batched = is_batched(data, [(s.name, s.shape) for s in sig.inputs])
    return scan_dataset(data, inputs, targets, batched)


def _train_samples(info: DataInfo, options: Options) -> int:
    """Samples one training epoch sees (a validation split holds some out)."""
    if options.validation_split and options.validation_data is None:
        return int(info.num_samples * (1 - options.validation_split))
    return info.num_samples


def suggest(model: Any, data: Any, **options: Any) -> Plan:
    """The largest safe batch and the data mode for training ``model`` on ``data``.

    ``model``: a compiled ``keras.Model``, a ``.keras`` path, or ``"file.py:function"`` /
    ``"package.module:function"`` returning one. ``data``: a ``.csv`` / ``.parquet`` path or
    a folder of shards, a pandas DataFrame, a dict of arrays, an ``(x, y)`` pair of numpy
    arrays (or of dicts keyed by input / output name), or a ``tf.data.Dataset`` /
    ``keras.utils.PyDataset`` yielding ``(x, y)``.

    Keywords (the CLI flags in snake_case): ``target`` (str or list: target columns),
    ``maxlen`` (int, ``{column: int}`` or ``"COL=N"`` strings), ``padding`` / ``truncating``
    (``"pre"`` | ``"post"``), ``budget`` (``"8GiB"``, int bytes, or ``"auto"``), ``safety``
    (fraction kept free, 0.10), ``device`` (``"auto"`` | ``"cpu"`` | ``"gpu"`` | ``"gpu:I"``),
    ``gpu_memory`` (plan for a GPU of this size), ``effective_batch_size``,
    ``max_batch_size``, ``batch_size`` and ``mode`` (force), ``force``, ``validation_data``,
    ``validation_split``, ``analytic`` (no trials), ``no_cache``, ``strategy``
    (``"auto"`` | ``"none"`` | ``"mirrored"`` | ``"multiworker"``), ``cpu_replicas``.

    Raises :class:`MemtuneError` (one line) for bad input and :class:`NothingFits` when even
    batch 1 exceeds the usable budget.
    """
    return prepare(model, data, make_options(**options)).plan


def layout_for(
    info: DataInfo, fp: Footprint, options: Options
) -> Any:  # -> memtune.data.pipeline.Layout (kept lazy: pipelines import numpy-heavy code)
    from memtune.data.pipeline import Layout

    return Layout(fp, info, options.padding, options.truncating)  # type: ignore[arg-type]


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
) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """One epoch of ``(inputs, targets)`` numpy batches, dicts keyed by name.

    With a model, inputs and targets are named and padded as the model declares; without
    one, every non-target column is an input named after itself. ``data`` is anything
    :func:`suggest` takes (an ``(x, y)`` pair or a tf.data / PyDataset pipeline needs the
    model, for the names). ``mode``: ``"streaming"`` reads shards a block at a time,
    ``"in-memory"`` loads them first; ``shuffle`` / ``seed`` shuffle per epoch (every
    sample still exactly once). Every batch holds ``batch_size`` samples but the last.

    ``buckets``: a plan's ``buckets`` (:class:`~memtune.plan.Bucket` or the JSON's dicts):
    each batch then holds rows of one bucket, at most its ``batch_size`` of them, padded to
    its ``length`` — the batches ``fit`` trains on (``batch_size`` is the longest bucket's).
    """
    from memtune.data.pipeline import batches as _batches

    options = make_options(
        target=target, maxlen=maxlen, padding=padding, truncating=truncating, batch_size=batch_size
    )
    if model is not None:
        from memtune import model as model_mod

        sig = model_mod.signature(model_mod.load_model(model))
        data, options = _named(data, sig, options)
        info = _scan(data, sig, options)
    else:
        info = scan(data)
        sig = _columns_signature(info, options.target)
    fp = footprint(sig, info, targets=options.target, maxlen=options.maxlen)
    if info.source.kind == "dataset":
        if buckets:
            raise MemtuneError("batches(buckets=): a tf.data pipeline is not bucketed")
        yield from dataset_source(info, fp, options, batch_size).numpy()
        return
    yield from _batches(
        layout_for(info, fp, options),
        batch_size,
        mode=mode,
        shuffle=shuffle,
        seed=seed,
        bucketing=_bucketing(fp, buckets, batch_size) if buckets else None,
    )


def _bucketing(fp: Footprint, buckets: Any, batch_size: int) -> Bucketing:
    """``batches(buckets=...)`` as the pipeline's ``Bucketing``, checked."""
    from memtune.data.pipeline import Bucketing

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


def dataset_source(info: DataInfo, fp: Footprint, options: Options, batch_size: int) -> Any:
    """The user's tf.data / PyDataset pipeline as a batch source at ``batch_size``."""
    from memtune.data.tfdata import DatasetBatches

    shard = info.source.shards[0]
    return DatasetBatches(
        shard.dataset,
        fp,
        batch_size,
        num_samples=info.num_samples,
        batched=shard.batched,
        padding=options.padding,
        truncating=options.truncating,
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
