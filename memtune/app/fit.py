"""``memtune fit``: plan (or take forced values), build the batch sources, run the training
loop (:mod:`memtune.run.loop`), save atomically."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from memtune.app import plan_cache, plan_file
from memtune.app.plan_file import KeptPlan
from memtune.app.prepare import Prepared, prepare
from memtune.app.validation import Validation, at_batch, validation_feed
from memtune.app.where import Where, locate
from memtune.core.errors import MemtuneError
from memtune.core.options import Options, make_options, rows
from memtune.core.plan import Plan
from memtune.core.units import format_bytes
from memtune.data.decoded import decode_failure
from memtune.data.footprint import Footprint
from memtune.data.scan import DataInfo
from memtune.model.info import is_spec
from memtune.proc import failpoints
from memtune.proc.paths import output_file, outside_folder
from memtune.run import distribute
from memtune.run.checkpoint import Checkpoint, CheckpointDir
from memtune.run.distribute import Topology
from memtune.run.feed import KerasFeed
from memtune.run.loop import Run, Trained, train
from memtune.run.save import save_atomically
from memtune.run.sources import Order, sources


@dataclass
class FitResult:
    """What a training run did; ``to_json`` is ``fit --json``."""

    plan: Plan
    history: dict[str, list[float]]
    peak_bytes: int
    seconds: float
    samples_per_second: float
    model: Any = field(repr=False, default=None)
    saved: str | None = None
    batch_size_changes: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: str | None = None  # the final checkpoint, kept because nothing was saved

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": self.plan.to_json(),
            "history": self.history,
            "peak_bytes": self.peak_bytes,
            "seconds": round(self.seconds, 3),
            "samples_per_second": round(self.samples_per_second, 1),
            "saved": self.saved,
            "batch_size_changes": self.batch_size_changes,
            "checkpoint": self.checkpoint,
        }


def _check_save_path(save: str | None) -> Path | None:
    if save is None:
        return None
    return output_file("--save", save, (".keras",))


def _warn(message: str) -> None:
    print(f"memtune: warning: {message}", file=sys.stderr)


def _open_checkpoint(
    options: dict[str, Any], save: Path | None
) -> tuple[CheckpointDir | None, Checkpoint | None]:
    """The checkpoint folder (validated, marked as memtune's) and, with --resume, the
    checkpoint to continue from; --save may not lie inside the folder memtune cleans."""
    directory, resume = options.get("checkpoint_dir"), bool(options.get("resume"))
    if directory is None:
        if resume:
            raise MemtuneError("--resume needs --checkpoint-dir (where the earlier run saved)")
        return None, None
    if save is not None:
        outside_folder("--save", save, "--checkpoint-dir", directory)
    return CheckpointDir.open(
        "--checkpoint-dir", directory, resume=resume, warn=options.get("warn") or _warn
    )


# fit's keywords beside the planning ones: its rows of the option table, and the API's own.
_FIT_ONLY = (
    *(o.name for o in rows("fit") if o.name != "epochs"),
    "verbose",
    "shuffle",
    "callbacks",
    "initial_epoch",  # model.fit's, through memtune.fit (memtune.app.keras_fit)
    "class_weight",
    "plan_callbacks",  # plan -> callbacks: how the CLI adds its dashboard once the plan exists
    "warn",  # str -> None: where warnings go (stderr by default)
)


def fit(model: Any, data: Any, *, epochs: int, **options: Any) -> FitResult:
    """Plan, build the pipeline, train for ``epochs`` and (optionally) save the model.

    ``model``, ``data`` and the planning keywords are :func:`memtune.suggest`'s. Beside them:
    ``save`` (a ``.keras`` path, written atomically), ``checkpoint_dir`` and ``resume``
    (crash-safe epoch checkpoints; see README "What memtune promises"), ``seed`` (the
    per-epoch shuffle), ``shuffle`` (default True), ``plan`` (a :class:`Plan` from
    :func:`memtune.suggest`, or a file from ``suggest --save-plan``: trained as it is while
    nothing it depends on changed), ``callbacks`` (more Keras callbacks),
    ``verbose`` (Keras's), ``warn`` (where warnings go; stderr by default).

    Returns a :class:`FitResult` (``history``, ``peak_bytes``, ``batch_size_changes``, the
    trained ``model``). Raises :class:`MemtuneError` for bad input, :class:`NothingFits`,
    and :class:`TrainingFailed` when training fails after every recovery.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise MemtuneError(f"--epochs {epochs!r}: must be a positive integer")
    extra = {k: options.pop(k) for k in _FIT_ONLY if k in options}
    kept, options = _kept(extra.get("plan"), options)
    opts = make_options(**options)
    save = _check_save_path(extra.get("save"))
    where = _where(model, opts, bool(extra.get("checkpoint_dir")))
    store, resumed = _open_checkpoint(extra, save)
    strategy = distribute.make_strategy(where.topology)
    checked: list[Validation | None] = []  # before any trial: a typo costs no planning

    def check(options: Options, fp: Footprint, info: DataInfo) -> None:
        checked.append(validation_feed(options, fp, info))

    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        prepared = prepare(model, data, opts, where=where, kept=kept, check=check)
    if where.topology.strategy == "multiworker":
        agreed = distribute.agree_on_batch(strategy, prepared.plan.batch_size)
        if agreed != prepared.plan.batch_size:
            prepared = replace(prepared, plan=prepared.plan_at(agreed, prepared.plan.mode))
    val_layout = at_batch(checked[0], prepared.plan.batch_size)
    callbacks = list(extra.get("callbacks") or [])
    run = Run(
        epochs,
        store,
        resumed,
        extra.get("verbose"),
        extra.get("seed"),
        int(extra.get("initial_epoch") or 0),
    )
    order = Order(bool(extra.get("shuffle", True)), extra.get("seed"))
    weights = _class_weight(extra.get("class_weight"), prepared)
    made = extra.get("plan_callbacks")  # the CLI's outputs, opened once the data is ready
    trained = _train(
        prepared, val_layout, run, order, (callbacks, made), (where.topology, strategy), weights
    )
    _drift(prepared, trained.peak_bytes, (model, data))
    return _finish(prepared, trained, run, save)


def _drift(prepared: Prepared, peak: int, inputs: tuple[Any, Any]) -> None:
    """A plan made before, which this run's peak says is off: said, and (the plan cache's)
    dropped, so the next plan measures again."""
    predicted, curve = prepared.plan.predicted_peak_bytes, prepared.plan.curve
    measured = curve is not None and curve.source == "measured"  # an estimate is no baseline
    # A Plan object was made in this process, which may have grown since (a notebook):
    # what it holds now is no drift of the model's.
    kept = prepared.kept_from not in (None, "plan=")
    if not kept or not measured or not plan_cache.drifted(predicted, peak):
        return
    dropped = ""
    if prepared.kept_from == plan_cache.LABEL:
        plan_cache.forget(*inputs, prepared.options)
        dropped = "; dropped from the plan cache, the next plan measures again"
    plan_file.warn(
        f"{prepared.kept_from}: this run peaked at {format_bytes(peak)}, the plan predicted "
        f"{format_bytes(predicted)}{dropped}"
    )


def _kept(plan: Any, options: dict[str, Any]) -> tuple[KeptPlan | None, dict[str, Any]]:
    """``plan``: a plan file's path or a :class:`Plan` from :func:`memtune.suggest`; a file's
    planning options are used, unless one given here differs (then it plans again)."""
    if plan is None:
        return None, options
    if isinstance(plan, Plan):
        return KeptPlan(plan, "plan="), options
    if not isinstance(plan, str | os.PathLike):
        raise MemtuneError(f"plan {plan!r}: expected a plan file's path or a memtune Plan")
    kept = plan_file.load(plan)
    merged, change = plan_file.merged_keywords(kept, options)
    if change is not None:
        plan_file.warn(f"{kept.label}: {change}; planning again")
        return None, merged
    return kept, merged


def _where(model: Any, opts: Options, checkpoints: bool) -> Where:
    """Device, topology and budget, once; a model object was built outside any strategy's
    scope, so it trains on one device (or, with an explicit strategy, is refused)."""
    where = locate(opts)
    topology = where.topology
    if topology.active and not is_spec(model) and opts.strategy == "auto":
        where = locate(opts, where.probe, Topology())
    elif topology.active and not is_spec(model):
        raise MemtuneError(
            f"--strategy {topology.strategy}: pass the model as a .keras file or a factory "
            "(file.py:function), so it is built inside the strategy's scope"
        )
    if where.topology.strategy == "multiworker":
        if opts.validation_data is not None or opts.validation_split:
            raise MemtuneError("--strategy multiworker: validation is not supported yet")
        if checkpoints:
            raise MemtuneError("--strategy multiworker: --checkpoint-dir is not supported yet")
    return where


def _train(
    prepared: Prepared,
    val_layout: Validation | None,
    run: Run,
    order: Order,
    callbacks: tuple[list[Any], Callable[[Plan], list[Any]] | None],
    distributed: tuple[Topology, Any],
    class_weight: dict[int, float] | None = None,
) -> Trained:
    """The feed, the sources and the loop. ``callbacks``: the caller's, and a maker of the
    ones that write outputs (trace, logs), called once the sources are built, so data that
    fails there (an image damaged past its header) leaves no output behind."""
    plan, fp = prepared.plan, prepared.footprint
    flexible = frozenset(f.name for f in fp.inputs if f.flexible) if plan.buckets else frozenset()
    feed = KerasFeed(fp, flexible=flexible, class_weight=class_weight)
    fed = sources(
        plan,
        prepared.options,
        prepared.info,
        fp,
        val_layout=val_layout,
        feed=feed,
        order=order,
        topology=distributed[0],
    )
    given, make = callbacks
    every = given + (list(make(plan)) if make is not None else [])
    try:
        return train(prepared.model, plan, fed, feed, every, run, distributed)
    except Exception as exc:  # an image folder streamed undecoded fails while training
        named = decode_failure(exc, prepared.info)
        if named is None:
            raise
        raise named from None


def _finish(prepared: Prepared, trained: Trained, run: Run, save: Path | None) -> FitResult:
    """Save (then drop the checkpoint: the model is safe elsewhere), or keep the final
    checkpoint; the result."""
    saved = kept = None
    if save is not None:
        save_atomically(prepared.model, save, run.epochs)
        saved = str(save)
        failpoints.hit("save-landed", run.epochs)
        if run.store is not None:
            run.store.finish(saved)
    elif run.store is not None and not run.store.lost:
        kept = str(run.store.path)
    return FitResult(
        plan=prepared.plan,
        history=trained.history,
        peak_bytes=trained.peak_bytes,
        seconds=trained.seconds,
        samples_per_second=trained.samples_per_second,
        model=prepared.model,
        saved=saved,
        batch_size_changes=[c.to_json() for c in trained.changes],
        checkpoint=kept,
    )


def _class_weight(weights: Any, prepared: Prepared) -> dict[int, float] | None:
    """``class_weight`` (checked, and refused with a pipeline, by
    :mod:`memtune.app.keras_fit`) for a model of one target, as Keras takes it."""
    if not weights:
        return None
    targets = prepared.footprint.model_targets
    if len(targets) != 1:
        names = ", ".join(t.name for t in targets)
        raise MemtuneError(f"class_weight: only for a model with one target (this has {names})")
    return dict(weights)
