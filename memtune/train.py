"""Training: plan (or take forced values), build the pipeline, run ``model.fit``, save."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil

from memtune import _tf, checkpoint, distribute, failpoints, heap
from memtune.api import Prepared, dataset_source, layout_for, prepare
from memtune.checkpoint import Checkpoint, CheckpointDir
from memtune.constants import BLOCK_ROWS
from memtune.data.blocks import Block
from memtune.data.pipeline import (
    BatchSource,
    BucketedBatches,
    Bucketing,
    EvenBatches,
    InMemoryBatches,
    Layout,
    StreamingBatches,
    blocks_of,
    bucketed_in_memory,
    bucketed_streaming,
    load_in_memory,
    row_range,
    split_blocks,
    worker_blocks,
)
from memtune.data.scan import scan
from memtune.data.tfdata import DatasetBatches
from memtune.distribute import Topology
from memtune.errors import MemtuneError, TrainingFailed
from memtune.feed import KerasFeed, set_accumulation
from memtune.options import make_options
from memtune.paths import output_file, outside_folder
from memtune.plan import Plan, resolve_device
from memtune.probe import probe, process
from memtune.watchdog import MemoryOverrun


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


def peak_held_bytes() -> int:
    """The most this process held since training began (:func:`memtune.probe.process.
    reset_peak` starts the kernel's high-water mark afresh as the run starts)."""
    return process.peak_held()


def _check_save_path(save: str | None) -> Path | None:
    if save is None:
        return None
    return output_file("--save", save, (".keras",))


_SAVE_TMP = ".memtune-tmp.keras"


def save_atomically(model: Any, path: Path, epochs: int = 0) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename: never a half-written
    model, and the old file (if any) stays whole until the new one replaces it."""
    for stale in path.parent.glob(f".{path.stem}.*{_SAVE_TMP}"):  # a killed save's leftover
        pid = stale.name[len(path.stem) + 2 : -len(_SAVE_TMP)]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}{_SAVE_TMP}")
    try:
        with _tf.native_stderr_quiet():
            model.save(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        failpoints.hit("save-written", epochs)
        os.replace(tmp, path)
        with contextlib.suppress(OSError):
            checkpoint.fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


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


_FIT_ONLY = (
    "save",
    "checkpoint_dir",
    "resume",
    "verbose",
    "seed",
    "shuffle",
    "callbacks",
    "plan_callbacks",  # plan -> callbacks: how the CLI adds its dashboard once the plan exists
    "warn",  # str -> None: where warnings go (stderr by default)
)


def fit(model: Any, data: Any, *, epochs: int, **options: Any) -> FitResult:
    """Plan, build the pipeline, train for ``epochs`` and (optionally) save the model.

    ``model``, ``data`` and the planning keywords are :func:`memtune.suggest`'s. Beside them:
    ``save`` (a ``.keras`` path, written atomically), ``checkpoint_dir`` and ``resume``
    (crash-safe epoch checkpoints; see README "What memtune promises"), ``seed`` (the
    per-epoch shuffle), ``shuffle`` (default True), ``callbacks`` (more Keras callbacks),
    ``verbose`` (Keras's), ``warn`` (where warnings go; stderr by default).

    Returns a :class:`FitResult` (``history``, ``peak_bytes``, ``batch_size_changes``, the
    trained ``model``). Raises :class:`MemtuneError` for bad input, :class:`NothingFits`,
    and :class:`TrainingFailed` when training fails after every recovery.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise MemtuneError(f"--epochs {epochs!r}: must be a positive integer")
    extra = {k: options.pop(k) for k in _FIT_ONLY if k in options}
    opts = make_options(**options)
    save = _check_save_path(extra.get("save"))
    seen = probe()
    device = resolve_device(seen, opts.device, virtual=opts.gpu_memory_bytes is not None)
    topology = distribute.resolve(opts.strategy, opts.cpu_replicas, seen, device, opts.device)
    if topology.active and not isinstance(model, str) and opts.strategy == "auto":
        topology = Topology()  # a model object was built outside any scope: one device
    if topology.active and not isinstance(model, str):
        raise MemtuneError(
            f"--strategy {topology.strategy}: pass the model as a .keras file or a factory "
            "(file.py:function), so it is built inside the strategy's scope"
        )
    multiworker = topology.strategy == "multiworker"
    if multiworker and (opts.validation_data is not None or opts.validation_split):
        raise MemtuneError("--strategy multiworker: validation is not supported yet")
    if multiworker and extra.get("checkpoint_dir"):
        raise MemtuneError("--strategy multiworker: --checkpoint-dir is not supported yet")
    store, resumed = _open_checkpoint(extra, save)
    callbacks = list(extra.get("callbacks") or [])
    strategy = distribute.make_strategy(topology)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        prepared = prepare(model, data, opts, probe_result=seen, topology=topology)
    if multiworker:
        agreed = distribute.agree_on_batch(strategy, prepared.plan.batch_size)
        if agreed != prepared.plan.batch_size:
            plan = prepared.plan_at(agreed, prepared.plan.mode)
            prepared = replace(prepared, plan=plan)
    val_layout = _validation_layout(prepared)  # checked before any output is opened
    if extra.get("plan_callbacks"):
        callbacks += list(extra["plan_callbacks"](prepared.plan))
    return _train(
        prepared,
        val_layout,
        _Run(epochs, save, store, resumed),
        callbacks,
        extra,
        (topology, strategy),
    )


@dataclass(frozen=True)
class _Run:
    """What a training run is asked for: epochs, where to save, where to checkpoint."""

    epochs: int
    save: Path | None = None
    store: CheckpointDir | None = None
    resumed: Checkpoint | None = None


def _validation_layout(prepared: Prepared) -> Layout | None:
    """``--validation-data``, fed and padded exactly like the training data."""
    opts = prepared.options
    if opts.validation_data is None:
        return None
    info = scan(opts.validation_data)
    for feed in prepared.footprint.feeds:
        for column in feed.columns:
            if column not in info.columns:
                raise MemtuneError(
                    f"--validation-data {info.source.label!r} has no column {column!r}"
                )
    return layout_for(info, prepared.footprint, opts)


def _fit_data(
    prepared: Prepared,
    val_layout: Layout | None,
    feed: KerasFeed,
    shuffle: bool,
    seed: int | None,
    topology: Topology,
) -> tuple[dict[str, Any], BatchSource]:
    """``model.fit`` keyword arguments for validation, and the training batch source.

    Under a strategy the source's batch is this process's share of the global batch (every
    local replica's); a multi-worker source holds this worker's share of the data only.
    """
    plan, opts = prepared.plan, prepared.options
    if prepared.info.source.kind == "dataset":
        if topology.active:
            raise MemtuneError("--strategy with a tf.data pipeline as DATA is not supported yet")
        return {}, dataset_source(prepared.info, prepared.footprint, opts, plan.batch_size)
    layout = layout_for(prepared.info, prepared.footprint, opts)
    split = opts.validation_split if val_layout is None else None
    batch = plan.batch_size * topology.local_replicas
    bucketing = _bucketing(prepared)
    block_rows = max(batch, BLOCK_ROWS, *(bucketing.sizes if bucketing else ()))
    workers, index = topology.workers, topology.worker_index
    blocks = worker_blocks(prepared.info, workers, index, block_rows)
    if workers > 1:
        shares = [
            sum(b.rows for b in worker_blocks(prepared.info, workers, k, block_rows))
            for k in range(workers)
        ]
        steps = max(math.ceil(n / batch) for n in shares)
        mine = (
            InMemoryBatches(*load_in_memory(layout, blocks), batch, shuffle=shuffle, seed=seed)
            if plan.mode == "in-memory"
            else StreamingBatches(layout, blocks, batch, shuffle=shuffle, seed=seed)
        )
        return {}, EvenBatches(mine, steps)
    if plan.mode == "in-memory":
        inputs, targets = load_in_memory(layout, blocks)
        n = cut = prepared.info.num_samples
        if split:  # the last rows, as Keras's validation_split takes them
            cut = int(n * (1 - split))
        train: BatchSource = (
            bucketed_in_memory(
                layout,
                blocks,
                row_range(inputs, 0, cut),
                row_range(targets, 0, cut),
                bucketing,
                shuffle=shuffle,
                seed=seed,
            )
            if bucketing is not None
            else InMemoryBatches(
                row_range(inputs, 0, cut),
                row_range(targets, 0, cut),
                batch,
                shuffle=shuffle,
                seed=seed,
            )
        )
        held: BatchSource | None = None
        if split:
            held = InMemoryBatches(row_range(inputs, cut), row_range(targets, cut), batch)
    else:
        held_blocks: list[Block] = []
        if split:  # whole trailing shards
            blocks, held_blocks = split_blocks(blocks, split)
        train = (
            bucketed_streaming(layout, blocks, bucketing, shuffle=shuffle, seed=seed)
            if bucketing is not None
            else StreamingBatches(layout, blocks, batch, shuffle=shuffle, seed=seed)
        )
        held = StreamingBatches(layout, held_blocks, batch) if held_blocks else None
    kwargs: dict[str, Any] = {}
    if held is not None:
        kwargs["validation_data"] = feed.stream(held)
    if val_layout is not None:
        val_blocks = blocks_of(val_layout.info, block_rows)
        source: BatchSource = (
            InMemoryBatches(*load_in_memory(val_layout, val_blocks), batch)
            if plan.mode == "in-memory"
            else StreamingBatches(val_layout, val_blocks, batch)
        )
        kwargs["validation_data"] = feed.stream(source)
    return kwargs, train


def _bucketing(prepared: Prepared) -> Bucketing | None:
    """The plan's length buckets as the pipeline takes them (None: not bucketed)."""
    plan = prepared.plan
    if not plan.buckets:
        return None
    feed = next(f for f in prepared.footprint.inputs if f.flexible)
    return Bucketing(
        feed.name,
        feed.columns[0],
        tuple(b.length for b in plan.buckets),
        tuple(b.batch_size for b in plan.buckets),
    )


def _is_out_of_memory(exc: BaseException) -> bool:
    """TensorFlow's ResourceExhaustedError (GPU) or the CPU guard's overrun."""
    if isinstance(exc, MemoryOverrun):
        return True
    tf = _tf.tensorflow()
    return isinstance(exc, tf.errors.ResourceExhaustedError)


def _train(
    prepared: Prepared,
    val_layout: Layout | None,
    run: _Run,
    callbacks: list[Any],
    extra: dict[str, Any],
    distributed: tuple[Topology, Any] = (Topology(), None),
) -> FitResult:
    plan, model = prepared.plan, prepared.model
    topology, strategy = distributed
    local = topology.local_replicas
    flexible = frozenset(f.name for f in prepared.footprint.inputs if f.flexible)
    feed = KerasFeed(prepared.footprint, flexible=flexible if plan.buckets else frozenset())
    shuffle, seed = bool(extra.get("shuffle", True)), extra.get("seed")
    val_kwargs, train = _fit_data(prepared, val_layout, feed, shuffle, seed, topology)
    if isinstance(train, BucketedBatches):  # the dashboard and the trace show the bucket
        _each(callbacks, "bucketed", train.step_bucket)
    if topology.strategy == "multiworker":
        distribute.build_for_multiworker(model, strategy, feed.pair(*train[0]))
    epochs, save = run.epochs, run.save
    accumulation = plan.gradient_accumulation_steps
    first_epoch = 0
    if run.resumed is not None:
        first_epoch, accumulation = _restore(model, run.resumed, train, local, strategy)
    else:
        set_accumulation(model, accumulation)
    from memtune.callbacks.epoch_progress import EpochProgress
    from memtune.callbacks.memory_guard import MemoryGuard
    from memtune.callbacks.trim_heap import TrimHeap

    progress = EpochProgress()
    guard = MemoryGuard(
        plan.budget_bytes,
        plan.usable_bytes,
        cpu=plan.device == "cpu",
        notify=lambda notice: _each(callbacks, "memory_notice", notice),
    )
    changes: list[dict[str, Any]] = []
    if run.store is not None:
        from memtune.callbacks.epoch_checkpoint import EpochCheckpoint

        run.store.claim(fresh=run.resumed is None)

        callbacks = [
            *callbacks,
            EpochCheckpoint(
                run.store,
                lambda: train.batch_size // local,
                seed=seed,
                resumed=run.resumed,
            ),
        ]
    started = time.perf_counter()
    process.reset_peak()  # the peak fit reports is training's, not the data scan's
    _each(callbacks, "run_started", epochs, first_epoch)  # one dashboard for the whole run
    poller = process.PeakPoller().__enter__()
    try:
        pending = True  # fit runs at least once: a resumed, finished run opens and closes its trace
        while pending:
            train.set_epoch(first_epoch)  # the pipeline's length is fixed when it is built
            # A continued epoch is shorter than the rest: it runs alone, then the others.
            last = first_epoch + 1 if train.position else epochs
            data: Any = (
                train.as_dataset(feed.pair)
                if isinstance(train, DatasetBatches)
                else feed.stream(train)
            )
            if topology.strategy == "multiworker":  # each worker feeds its own share
                data = strategy.distribute_datasets_from_function(lambda _, d=data: d)
                val_kwargs = {"steps_per_epoch": len(train)}
            fit_kwargs: dict[str, Any] = {
                **val_kwargs,
                "x": data,
                "epochs": last,
                "initial_epoch": first_epoch,
                "shuffle": False,  # the batch sources shuffle, seeded, per epoch
                "callbacks": [TrimHeap(), feed.epoch_callback(), progress, *callbacks, guard],
                "verbose": extra.get("verbose", 1 if sys.stdout.isatty() else 2),
            }
            try:
                model.fit(**fit_kwargs)
                first_epoch = last
                pending = first_epoch < epochs
            except MemtuneError:
                raise
            except Exception as exc:
                if not _is_out_of_memory(exc):
                    raise _training_failure(exc, feed) from exc
                change = _recover(
                    exc,
                    train,
                    progress,
                    accumulation,
                    topology,
                    plan.batch_size,
                    lambda notice: _each(callbacks, "memory_notice", notice),
                )
                accumulation = change["gradient_accumulation_steps"]
                set_accumulation(model, accumulation)
                heap.release()
                first_epoch = change["epoch"]
                pending = first_epoch < epochs
                if change["to"] != change["from"]:  # a wait for memory changes no batch
                    changes.append(change)
                    _each(callbacks, "batch_changed", change)  # the dashboard and the trace
    finally:  # trained, failed or interrupted: the view closes, checkpoints stay on disk
        poller.__exit__()
        _each(callbacks, "run_finished")
    seconds = time.perf_counter() - started
    history = _history(run.resumed, progress.logs)
    done_epochs = len(progress.logs)
    saved = kept = None
    if save is not None:
        save_atomically(model, save, epochs)
        saved = str(save)
        failpoints.hit("save-landed", epochs)
        if run.store is not None:  # only now: the trained model is safe elsewhere
            run.store.finish(saved)
    elif run.store is not None:
        kept = str(run.store.path)
    return FitResult(
        plan=plan,
        history=history,
        peak_bytes=peak_held_bytes(),
        seconds=seconds,
        samples_per_second=(
            train.num_samples * done_epochs / progress.seconds if progress.seconds > 0 else 0.0
        ),
        model=model,
        saved=saved,
        batch_size_changes=changes,
        checkpoint=kept,
    )


def _history(
    resumed: Checkpoint | None, trained: dict[int, dict[str, float]]
) -> dict[str, list[float]]:
    """Keras-style history over the whole run: the checkpoint's epochs, then this run's."""
    logs = dict(enumerate(resumed.state.history)) if resumed else {}
    logs.update(trained)
    history: dict[str, list[float]] = {}
    for epoch in sorted(logs):
        for key, value in logs[epoch].items():
            history.setdefault(key, []).append(value)
    return history


def _training_failure(exc: BaseException, feed: KerasFeed) -> MemtuneError:
    """What to report for a failed ``model.fit``: a data error a pipeline worker met, else
    TensorFlow's error in one line."""
    cause = feed.failure() or _memtune_cause(exc)
    if cause is not None:
        return cause
    detail = " ".join(str(exc).split())[:300]
    return TrainingFailed(f"training failed: {type(exc).__name__}: {detail}")


# How long a run at batch 1 waits for the host to have its reserve again before it gives
# up: a neighbour's spike passes, a neighbour that keeps its memory ends the run.
PRESSURE_WAIT_SECONDS = 60.0
_WAIT_POLL_SECONDS = 0.5


def recovery_action(exc: BaseException, batch: int, multiworker: bool) -> str:
    """What recovery does after an out-of-memory at ``batch`` (per replica): ``"halve"``
    the batch, ``"wait"`` for memory (batch 1 under host pressure: the host, not memtune,
    is short), or ``"fail"``. Pure: tested on made-up errors."""
    if multiworker:
        return "fail"
    if batch > 1:
        return "halve"
    if isinstance(exc, MemoryOverrun) and exc.reason == "memory pressure":
        return "wait"
    return "fail"


def wait_for_memory(
    exc: MemoryOverrun,
    notify: Any,
    *,
    timeout: float | None = None,
    read: Any = None,
    sleep: Any = time.sleep,
) -> float:
    """Wait until the host has its reserve again (and a step to spare), at most
    ``timeout`` seconds; returns the seconds waited, or raises :class:`TrainingFailed`.
    ``notify`` gets what the run is waiting for, in units (dashboard and trace)."""
    from memtune.probe.host import RESERVE_BYTES, available_bytes
    from memtune.units import format_bytes

    timeout = PRESSURE_WAIT_SECONDS if timeout is None else timeout
    read = read or available_bytes
    want = RESERVE_BYTES + 64 * 1024**2
    now = read()
    notify(
        f"memory pressure at batch 1: waiting up to {timeout:.0f} s for memory "
        f"({format_bytes(now)} available, under the {format_bytes(RESERVE_BYTES)} the host must "
        f"keep; other processes took {format_bytes(exc.others)} since training started)"
    )
    waited = 0.0
    while now < want and waited < timeout:
        sleep(_WAIT_POLL_SECONDS)
        waited += _WAIT_POLL_SECONDS
        now = read()
    if now < want:
        raise TrainingFailed(
            f"memory pressure even at batch 1: waited {waited:.0f} s and the host still has only "
            f"{format_bytes(now)} available (it must keep {format_bytes(RESERVE_BYTES)}; other "
            f"processes took {format_bytes(exc.others)}); free memory or lower --budget"
        ) from exc
    notify(f"memory is back ({format_bytes(now)} available) after {waited:.0f} s: continuing")
    return waited


def _recover(
    exc: BaseException,
    train: BatchSource,
    progress: Any,
    accumulation: int,
    topology: Topology,
    planned: int,
    notify: Any = None,
) -> dict[str, Any]:
    """Recovery's policy after out of memory: halve the per-replica batch from the sample
    the epoch reached (doubling accumulation, so the effective batch holds, where Keras can
    accumulate), wait for memory at batch 1 when the host is short, or stop with what to try
    when it cannot. Returns the change record (``from`` equals ``to`` after a wait)."""
    what = f"{exc.reason} ({exc})" if isinstance(exc, MemoryOverrun) else "out of memory"
    if isinstance(train, BucketedBatches):
        return _recover_bucket(what, exc, train, progress, accumulation, planned, notify)
    local = topology.local_replicas
    batch = train.batch_size // local  # per replica
    action = recovery_action(exc, batch, topology.strategy == "multiworker")
    if action == "fail" and topology.strategy == "multiworker":
        raise TrainingFailed(
            f"{what} on worker index {topology.worker_index}: a multi-worker run cannot change "
            f"its batch on one worker; restart every worker with --batch-size {max(1, batch // 2)}"
        ) from exc
    if action == "fail":
        raise TrainingFailed(
            f"{what} even at batch 1 (after halving from {planned}); "
            "try a smaller --maxlen, mixed precision or more memory"
        ) from exc
    epoch, done = progress.epoch, train.position + progress.steps * train.batch_size
    if _epoch_trained(train, progress):  # the guard raised at its end: go on from the next
        epoch, done = epoch + 1, 0
    change: dict[str, Any] = {"epoch": epoch, "sample": done, "from": batch}
    if action == "wait":
        assert isinstance(exc, MemoryOverrun)
        change["waited_seconds"] = round(wait_for_memory(exc, notify or _warn), 1)
        to = batch
    else:
        to = batch // 2
        if not topology.active:  # Keras 3 has no gradient accumulation under a strategy
            accumulation *= 2
    train.resize(to * local, epoch=epoch, start=done)
    return {
        **change,
        "to": to,
        "gradient_accumulation_steps": accumulation,
        "reason": getattr(exc, "reason", "out of memory"),
    }


def _epoch_trained(train: BatchSource, progress: Any) -> bool:
    """Every step of the epoch ran (the guard raises at an epoch's end after its last)."""
    return bool(progress.steps >= len(train))


def _recover_bucket(
    what: str,
    exc: BaseException,
    train: BucketedBatches,
    progress: Any,
    accumulation: int,
    planned: int,
    notify: Any = None,
) -> dict[str, Any]:
    """Recovery with length buckets: halve the batch of the bucket whose step overran, keep
    the other buckets' batches. The guard reads memory after a step ends (that step
    overran, and its rows were trained); TensorFlow's OOM stops the step after the last
    one that ended."""
    after = isinstance(exc, MemoryOverrun)
    step = min(max(0, progress.steps - 1) if after else progress.steps, len(train) - 1)
    bucket = train.bucket_of(step)
    batch = train.sizes[bucket]
    length = train.bucketing.lengths[bucket]
    action = recovery_action(exc, batch, False)
    if action == "fail":
        raise TrainingFailed(
            f"{what} even at batch 1 in the length-{length} bucket (planned {planned} for the "
            "longest); try a smaller --maxlen, mixed precision or more memory"
        ) from exc
    epoch, steps = progress.epoch, progress.steps
    if _epoch_trained(train, progress):  # the guard raised at its end: go on from the next
        epoch, steps = epoch + 1, 0
    change: dict[str, Any] = {"epoch": epoch, "from": batch}
    to = batch // 2
    if action == "wait":
        assert isinstance(exc, MemoryOverrun)
        change["waited_seconds"] = round(wait_for_memory(exc, notify or _warn), 1)
        to = batch
    done = train.shrink(bucket, to, epoch=epoch, done_batches=steps)
    return {
        **change,
        "sample": done,
        "to": to,
        "bucket_length": length,
        "gradient_accumulation_steps": accumulation,
        "reason": getattr(exc, "reason", "out of memory"),
    }


def _restore(
    model: Any, resumed: Checkpoint, train: BatchSource, local: int, strategy: Any
) -> tuple[int, int]:
    """Load a checkpoint's weights and optimizer state; continue at its batch (unless the
    new plan's is smaller). Returns the first epoch to train and the accumulation."""
    state = resumed.state
    accumulation = state.accumulation
    if state.batch_size * local < train.batch_size:
        train.resize(state.batch_size * local, epoch=state.epochs_done, start=0)
    elif state.batch_size * local > train.batch_size:  # less memory now than then
        accumulation = 1
    set_accumulation(model, accumulation)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        if not model.optimizer.built:  # else Keras skips the optimizer's saved variables
            model.optimizer.build(model.trainable_variables)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", UserWarning)
                with _tf.native_stderr_quiet():
                    model.load_weights(str(resumed.weights))
        except Exception as exc:
            raise MemtuneError(
                f"--resume: checkpoint {str(resumed.folder)!r} does not fit this model "
                f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
            ) from exc
    return state.epochs_done, accumulation


def _each(callbacks: list[Any], hook: str, *args: Any) -> None:
    """Call a run-level hook (``run_started``, ``batch_changed`` …) on callbacks that have it."""
    for callback in callbacks:
        method = getattr(callback, hook, None)
        if method is not None:
            method(*args)


def _memtune_cause(exc: BaseException) -> MemtuneError | None:
    """A data error raised in a pipeline worker, however Keras / TF wrapped it."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, MemtuneError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
