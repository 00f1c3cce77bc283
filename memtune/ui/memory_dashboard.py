"""``MemoryDashboard``: live memory and progress for any ``model.fit`` (loads Keras).

In a plain ``model.fit`` the view lives from ``on_train_begin`` to ``on_train_end``. Under
``memtune fit`` the run owns it (:meth:`run_started` … :meth:`run_finished`): one view, one
trace, however many ``model.fit`` calls a recovery makes, with epochs counted over the run
and each batch change as an event line in the view.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, RenderableType
from rich.live import Live

from memtune.proc import tf as _tf
from memtune.proc.monitor import MemorySampler, Trace
from memtune.run.events import BatchChange, RunListener, StepBucket
from memtune.ui.dashboard import DashboardState, plain_line, render
from memtune.ui.tables import console as make_console

keras = _tf.keras()


class MemoryDashboard(keras.callbacks.Callback, RunListener):  # type: ignore[name-defined]
    """Live memory and progress; plain lines (one per epoch) when not on a terminal.

    ``usable_bytes`` draws the budget; ``batch_size`` turns steps/s into samples/s; ``trace``
    (a path) writes JSONL samples and step events for ``memtune report`` (``append_trace``
    continues an existing one); ``tensorboard`` (a folder) adds memory scalars.
    """

    def __init__(
        self,
        usable_bytes: int | None = None,
        *,
        batch_size: int | None = None,
        accumulation: int = 1,
        interval: float = 0.25,
        trace: str | None = None,
        console: Console | None = None,
        nvml: Any = None,
        show: bool = True,
        tensorboard: str | None = None,
        worker: str = "",
        append_trace: bool = False,
    ) -> None:
        super().__init__()
        self.state = DashboardState(
            usable_bytes=usable_bytes, batch_size=batch_size, accumulation=accumulation
        )
        self.state.worker = worker
        self.console = console or make_console()
        self.trace = Trace(trace, append=append_trace) if trace else None
        if nvml is None:
            from memtune.probe.nvml import load_pynvml

            nvml = load_pynvml()
        self.sampler = MemorySampler(interval=interval, nvml=nvml, trace=self.trace)
        self._live: Live | None = None
        self.show = show
        self._writer: Any = None
        if tensorboard:
            tf = _tf.tensorflow()
            self._writer = tf.summary.create_file_writer(f"{tensorboard}/memory")
        self._run = False  # memtune fit owns the view across model.fit calls
        self._open = False
        self._offset = 0  # steps of this epoch done before a batch change
        self._continuing = False
        self._epoch_start = time.perf_counter()
        self._epoch_samples = 0
        self._epoch_steps = 0
        self._bucket_of: Any = None  # step → (bucket length, rows) when the run is bucketed

    # ------------------------------------------------------------------ the view's life

    def _view(self) -> RenderableType:
        return render(self.state, list(self.sampler.history), self.sampler.peak_held)

    def _open_view(self) -> None:
        if self._open:
            return
        self._open = True
        self.sampler.start()
        if self.trace:
            self.trace.event(
                "start", batch_size=self.state.batch_size, usable_bytes=self.state.usable_bytes
            )
        if self.show and self.console.is_terminal:
            # get_renderable: each refresh draws the state now, so RSS moves before step 1.
            self._live = Live(console=self.console, refresh_per_second=4, get_renderable=self._view)
            self._live.start()

    def _close_view(self) -> None:
        if not self._open:
            return
        self._open = False
        self.sampler.stop()
        self.state.preparing = ""
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
            self._live = None
        if self.trace:
            self.trace.event("end", peak_held=self.sampler.peak_held)
            self.trace.close()

    def run_started(self, epochs: int, first_epoch: int = 0) -> None:
        """memtune fit starts a run of ``epochs`` (from ``first_epoch`` when resumed)."""
        self._run = True
        self.state.epochs, self.state.epoch = epochs, first_epoch
        self.state.preparing = "building the pipeline"
        self._open_view()

    def bucketed(self, step_bucket: StepBucket) -> None:
        """memtune fit trains with length buckets: ``step_bucket(i)`` is step i's
        (bucket length, rows) in the current epoch."""
        self._bucket_of = step_bucket

    def run_finished(self) -> None:
        """The run ended (trained, failed or interrupted): close the view and the trace."""
        self._close_view()

    # ------------------------------------------------------------------ Keras hooks

    def on_train_begin(self, logs: Any = None) -> None:
        params = self.params or {}
        if not self._run:
            self.state.epochs = int(params.get("epochs") or 1)
        self.state.steps = params.get("steps")
        batch = self.state.batch_size
        self.state.preparing = (
            f"tracing the model at batch {batch:,}"
            if self._continuing and batch  # a bucket's change leaves the plan's batch unknown
            else "tracing the model"
        )
        self._open_view()

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        if self._continuing and epoch == self.state.epoch:  # the same epoch, smaller batches
            self._continuing = False
        else:
            self._offset = 0
        self.state.epoch, self.state.step = epoch, self._offset
        steps = (self.params or {}).get("steps")
        self.state.steps = steps + self._offset if steps else None
        self._epoch_start = time.perf_counter()
        self._epoch_samples = self._epoch_steps = 0

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.state.preparing = ""
        self.state.step = self._offset + batch + 1
        self._epoch_steps += 1
        rows = self.state.batch_size or 0
        bucket: dict[str, int] = {}
        if self._bucket_of is not None:
            length, rows = self._bucket_of(batch)
            self.state.bucket = (length, rows)
            bucket = {"bucket_length": length, "rows": rows}
        self._epoch_samples += rows
        elapsed = time.perf_counter() - self._epoch_start
        if elapsed > 0:
            self.state.samples_per_second = self._epoch_samples / elapsed
            self.state.steps_per_second = self._epoch_steps / elapsed
        if self.state.steps:
            rate = self._epoch_steps / elapsed if elapsed > 0 else 0.0
            left = self.state.steps - self.state.step
            self.state.eta_seconds = left / rate if rate else None
        self.state.logs = {k: float(v) for k, v in (logs or {}).items()}
        if self.trace:
            self.trace.event(
                "step",
                epoch=self.state.epoch,
                step=self.state.step,
                batch_size=self.state.batch_size or 0,
                **bucket,
                **self.state.logs,
            )

    def _read_tf_peaks(self) -> None:
        tf = _tf.tensorflow()
        for device in tf.config.list_logical_devices("GPU"):
            name = device.name.split("device:")[-1]
            try:
                info = tf.config.experimental.get_memory_info(name)
            except (ValueError, RuntimeError):
                continue
            self.state.tf_peak[name.lower()] = int(info["peak"])

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.state.logs = {k: float(v) for k, v in (logs or {}).items()}
        self._read_tf_peaks()
        latest = self.sampler.latest()
        if self._writer is not None and latest is not None:
            tf = _tf.tensorflow()
            with self._writer.as_default():
                tf.summary.scalar("memory/held_bytes", latest.held, step=epoch)
                tf.summary.scalar("memory/peak_held_bytes", self.sampler.peak_held, step=epoch)
                tf.summary.scalar("memory/rss_bytes", latest.rss, step=epoch)
                tf.summary.scalar("memory/host_available_bytes", latest.host_available, step=epoch)
            self._writer.flush()
        if self.trace:
            self.trace.event("epoch", epoch=epoch, **self.state.logs)
        if self._live is None and self.show:
            self.console.print(plain_line(self.state, self.sampler.peak_held), soft_wrap=True)

    def on_train_end(self, logs: Any = None) -> None:
        if not self._run:
            self._close_view()

    def memory_notice(self, notice: str) -> None:
        """The watchdog's word on memory (a halving that freed nothing): shown and traced."""
        if self.trace:
            self.trace.event("notice", message=notice)
        self.state.events.append(notice)
        if self._live is None and self.show:
            self.console.print(notice, soft_wrap=True)

    def batch_changed(self, change: BatchChange) -> None:
        """memtune fit halved the batch (out of memory, over budget, memory pressure)."""
        if change.bucket_length is None:  # a bucket's batch changed, not the longest's
            self.state.batch_size = change.after
        self.state.accumulation = change.accumulation
        self._offset, self._continuing = self.state.step, True
        if self.trace:
            self.trace.event("batch_change", **change.to_json())
        bucket = f" (length-{change.bucket_length} bucket)" if change.bucket_length else ""
        message = (
            f"epoch {change.epoch + 1}, sample {change.sample:,}: {change.reason} at batch "
            f"{change.before:,}{bucket} — continuing at batch {change.after:,} × "
            f"{change.accumulation}"
        )
        self.state.events.append(message)
        if self._live is None and self.show:
            self.console.print(message, soft_wrap=True)
