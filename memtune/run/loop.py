"""The training loop ``fit`` runs: ``model.fit`` over the epochs left, recovering from out of
memory (:mod:`memtune.run.recovery`) and continuing at the sample it stood, resuming from a
checkpoint, with the run's listeners (:mod:`memtune.run.events`) told each step of the way.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

from memtune.core.errors import MemtuneError
from memtune.core.plan import Plan
from memtune.data.batch_sources import BatchSource
from memtune.data.bucketed import BucketedBatches
from memtune.data.tfdata import DatasetBatches
from memtune.probe import process
from memtune.proc import heap
from memtune.proc import tf as _tf
from memtune.run import distribute
from memtune.run.checkpoint import Checkpoint, CheckpointDir
from memtune.run.distribute import Topology
from memtune.run.events import BatchChange, listeners
from memtune.run.feed import KerasFeed, set_accumulation
from memtune.run.recovery import is_oom_error, recover, training_failure
from memtune.run.sources import Sources


@dataclass(frozen=True)
class Run:
    """What a training run is asked for: epochs, where to checkpoint (and what to resume
    from), Keras's verbosity (None: a line per step on a terminal, per epoch off one) and
    the seed of the per-epoch shuffle (recorded in checkpoints)."""

    epochs: int
    store: CheckpointDir | None = None
    resumed: Checkpoint | None = None
    verbose: int | None = None
    seed: int | None = None
    initial_epoch: int = 0  # as model.fit's: the epochs before it count as trained


@dataclass
class Trained:
    """What the loop did: Keras-style history over the whole run, the batch changes, the
    time inside epochs and the peak memory held."""

    history: dict[str, list[float]]
    changes: list[BatchChange] = field(default_factory=list)
    seconds: float = 0.0
    samples_per_second: float = 0.0
    peak_bytes: int = 0


def train(
    model: Any,
    plan: Plan,
    sources: Sources,
    feed: KerasFeed,
    callbacks: list[Any],
    run: Run,
    distributed: tuple[Topology, Any] = (Topology(), None),
) -> Trained:
    """Train ``model`` on ``sources`` for ``run.epochs``, recovering as the plan allows."""
    return _Loop(model, plan, sources, feed, callbacks, run, distributed).run()


class _Loop:
    """One run's moving parts: the source (resized by recovery), the accumulation, the
    callbacks Keras sees and the listeners memtune tells."""

    def __init__(
        self,
        model: Any,
        plan: Plan,
        sources: Sources,
        feed: KerasFeed,
        callbacks: list[Any],
        run: Run,
        distributed: tuple[Topology, Any],
    ) -> None:
        from memtune.run.callbacks.epoch_progress import EpochProgress
        from memtune.run.callbacks.memory_guard import MemoryGuard

        self.model, self.plan, self.feed, self.run_spec = model, plan, feed, run
        self.train, self.validation = sources.train, sources.validation
        self.topology, self.strategy = distributed
        self.listeners = listeners(callbacks)
        self.progress = EpochProgress()
        self.guard = MemoryGuard(
            plan.budget_bytes, plan.usable_bytes, cpu=plan.device == "cpu", notify=self.notice
        )
        self.callbacks = [*callbacks, *self._checkpoints()]
        self.changes: list[BatchChange] = []
        self.first_epoch, self.accumulation = self._start()

    def notice(self, message: str) -> None:
        for listener in self.listeners:
            listener.memory_notice(message)

    def _checkpoints(self) -> list[Any]:
        """An epoch checkpoint when the run has a checkpoint folder (claimed here)."""
        run = self.run_spec
        if run.store is None:
            return []
        from memtune.run.callbacks.epoch_checkpoint import EpochCheckpoint

        run.store.claim(fresh=run.resumed is None)
        local = self.topology.local_replicas
        batch = lambda: self.train.batch_size // local  # noqa: E731 - read at each epoch end
        return [EpochCheckpoint(run.store, batch, seed=run.seed, resumed=run.resumed)]

    def _start(self) -> tuple[int, int]:
        """The first epoch and the accumulation: the checkpoint's when resumed."""
        if isinstance(self.train, BucketedBatches):  # the dashboard and the trace show it
            for listener in self.listeners:
                listener.bucketed(self.train.step_bucket)
        if self.topology.strategy == "multiworker":
            distribute.build_for_multiworker(
                self.model, self.strategy, self.feed.pair(*self.train[0])
            )
        if self.run_spec.resumed is not None:
            local = self.topology.local_replicas
            return _restore(self.model, self.run_spec.resumed, self.train, local, self.strategy)
        set_accumulation(self.model, self.plan.gradient_accumulation_steps)
        return self.run_spec.initial_epoch, self.plan.gradient_accumulation_steps

    def run(self) -> Trained:
        started = time.perf_counter()
        process.reset_peak()  # the peak fit reports is training's, not the data scan's
        for listener in self.listeners:  # one dashboard for the whole run
            listener.run_started(self.run_spec.epochs, self.first_epoch)
        resumed_at = self.train.batch_size // self.topology.local_replicas
        if self.run_spec.resumed is not None and resumed_at != self.plan.batch_size:
            # The checkpoint's batch, not the plan's: what the dashboard and trace label.
            change = BatchChange(
                self.first_epoch, 0, self.plan.batch_size, resumed_at, self.accumulation,
                "resumed at the checkpoint's batch",
            )  # fmt: skip
            for listener in self.listeners:
                listener.batch_changed(change)
        try:
            with process.PeakPoller():
                self._epochs()
        finally:  # trained, failed or interrupted: the view closes, checkpoints stay on disk
            for listener in self.listeners:
                listener.run_finished()
        seconds = self.progress.seconds
        epochs_done = len(self.progress.logs)
        return Trained(
            history=_history(self.run_spec.resumed, self.progress.logs),
            changes=self.changes,
            seconds=time.perf_counter() - started,
            samples_per_second=self.train.num_samples * epochs_done / seconds if seconds else 0.0,
            peak_bytes=process.peak_held(),
        )

    def _epochs(self) -> None:
        """``model.fit`` until every epoch is trained (at least once: a resumed, finished
        run opens and closes its trace), recovering after each out of memory."""
        epochs, pending = self.run_spec.epochs, True
        while pending:
            try:
                self.first_epoch = self._fit_once()
            except MemtuneError:
                raise
            except Exception as exc:
                if not is_oom_error(exc):
                    raise training_failure(exc, self.feed.failure()) from exc
                self._recover(exc)
            pending = self.first_epoch < epochs

    def _fit_once(self) -> int:
        """One ``model.fit`` from the first epoch left; returns the epoch it trained up to."""
        from memtune.run.callbacks.trim_heap import TrimHeap

        train, first = self.train, self.first_epoch
        train.set_epoch(first)  # the pipeline's length is fixed when it is built
        # A continued epoch is shorter than the rest: it runs alone, then the others.
        last = first + 1 if train.position else self.run_spec.epochs
        data: Any = (
            train.as_dataset(self.feed.pair)
            if isinstance(train, DatasetBatches)
            else self.feed.stream(train, training=True)
        )
        validation = self.validation
        if self.topology.strategy == "multiworker":  # each worker feeds its own share
            data = self.strategy.distribute_datasets_from_function(lambda _, d=data: d)
            validation = {"steps_per_epoch": len(train)}
        verbose = self.run_spec.verbose
        self.model.fit(
            x=data,
            epochs=last,
            initial_epoch=first,
            shuffle=False,  # the batch sources shuffle, seeded, per epoch
            callbacks=[
                TrimHeap(),
                self.feed.epoch_callback(),
                self.progress,
                *self.callbacks,
                self.guard,
            ],
            verbose=(1 if sys.stdout.isatty() else 2) if verbose is None else verbose,
            **validation,
        )
        return last

    def _recover(self, exc: BaseException) -> None:
        change = recover(
            exc,
            self.train,
            self.progress,
            self.accumulation,
            self.topology,
            self.plan.batch_size,
            self.notice,
        )
        self.accumulation = change.accumulation
        set_accumulation(self.model, self.accumulation)
        heap.release()
        self.first_epoch = change.epoch
        if change.changed:  # a wait for memory changes no batch
            self.changes.append(change)
            for listener in self.listeners:  # the dashboard and the trace
                listener.batch_changed(change)


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
