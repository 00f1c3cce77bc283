"""The live memory dashboard: a Keras callback drawing with rich, plain lines off a terminal.

``render`` is pure (state + samples → renderable) so it is tested as golden text; the
callback class is built on first use, so importing this module does not load Keras.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from memtune.monitor import MemorySampler, Sample, Trace
from memtune.ui.tables import console as make_console
from memtune.units import format_bytes

_BLOCKS = "▁▂▃▄▅▆▇█"


@dataclass
class DashboardState:
    """What training has reached, as the callback sees it."""

    epochs: int = 1
    epoch: int = 0
    steps: int | None = None
    step: int = 0
    batch_size: int | None = None
    accumulation: int = 1
    usable_bytes: int | None = None
    logs: dict[str, float] = field(default_factory=dict)
    samples_per_second: float = 0.0
    eta_seconds: float | None = None
    tf_peak: dict[str, int] = field(default_factory=dict)  # device → TensorFlow's peak bytes
    worker: str = ""  # "2/4" on a multi-worker run: each worker shows its own memory


def sparkline(values: list[int], ceiling: int | None = None, width: int = 40) -> str:
    """Unicode blocks for the last ``width`` values, scaled to ``ceiling`` (or their max)."""
    values = values[-width:]
    if not values:
        return ""
    top = max(ceiling or 0, max(values)) or 1
    return "".join(_BLOCKS[min(7, int(v / top * 7.999))] for v in values)


def render(state: DashboardState, history: list[Sample], peak_rss: int) -> RenderableType:
    latest = history[-1] if history else None
    who = f"worker {state.worker} — " if state.worker else ""
    head = Text(f"memtune — {who}epoch {state.epoch + 1}/{state.epochs}  step {state.step}")
    if state.steps:
        head.append(f"/{state.steps}")
    if state.eta_seconds is not None:
        head.append(f"  ETA {int(state.eta_seconds) // 60}:{int(state.eta_seconds) % 60:02d}")
    head.append(f"  {state.samples_per_second:,.0f} samples/s")
    if state.batch_size:
        head.append(f"  batch {state.batch_size} × {state.accumulation}")
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    if latest is not None:
        budget = f"  usable {format_bytes(state.usable_bytes)}" if state.usable_bytes else ""
        table.add_row(
            "process",
            f"RSS {format_bytes(latest.rss)} (peak {format_bytes(peak_rss)}){budget}",
        )
        table.add_row("host RAM", f"available {format_bytes(latest.host_available)}")
        for i, (used, total) in enumerate(zip(latest.gpu_used, latest.gpu_total, strict=True)):
            text = "N/A" if used is None else f"{format_bytes(used)} / {format_bytes(total)}"
            table.add_row(f"gpu:{i}", text)
        for device, peak in state.tf_peak.items():
            table.add_row(f"TF {device}", f"peak {format_bytes(peak)}")
        table.add_row("memory", sparkline([s.rss for s in history], state.usable_bytes))
    if state.logs:
        table.add_row("metrics", "  ".join(f"{k} {v:.4g}" for k, v in state.logs.items()))
    return Group(head, table)


def plain_line(state: DashboardState, peak_rss: int) -> str:
    metrics = " ".join(f"{k} {v:.4g}" for k, v in state.logs.items())
    usable = f" of {format_bytes(state.usable_bytes)} usable" if state.usable_bytes else ""
    who = f"worker {state.worker}, " if state.worker else ""
    return (
        f"{who}epoch {state.epoch + 1}/{state.epochs}: {metrics} — {state.samples_per_second:,.0f} "
        f"samples/s, peak RSS {format_bytes(peak_rss)}{usable}"
    )


_CLASS: Any = None


def memory_dashboard_class() -> Any:
    """``MemoryDashboard``: a ``keras.callbacks.Callback`` (built once Keras is loaded)."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    from memtune import _tf

    keras = _tf.keras()

    class MemoryDashboard(keras.callbacks.Callback):  # type: ignore[name-defined]
        """Live memory and progress for any ``model.fit``; plain lines when not on a terminal.

        ``usable_bytes`` draws the budget line; ``trace`` (a path) writes JSONL samples and
        step events for ``memtune report``.
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
                usable_bytes=usable_bytes,
                batch_size=batch_size,
                accumulation=accumulation,
                worker=worker,
            )
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

        def _view(self) -> RenderableType:
            return render(self.state, list(self.sampler.history), self.sampler.peak_rss)

        def on_train_begin(self, logs: Any = None) -> None:
            params = self.params or {}
            self.state.epochs = int(params.get("epochs") or 1)
            self.state.steps = params.get("steps")
            if self.trace:
                self.trace.reopen()
            self.sampler.start()
            if self.trace:
                self.trace.event(
                    "start", batch_size=self.state.batch_size, usable_bytes=self.state.usable_bytes
                )
            if self.show and self.console.is_terminal:
                self._live = Live(self._view(), console=self.console, refresh_per_second=4)
                self._live.start()

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.state.epoch, self.state.step = epoch, 0
            self._epoch_start = time.perf_counter()

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self.state.step = batch + 1
            elapsed = time.perf_counter() - self._epoch_start
            size = self.state.batch_size or 0
            self.state.samples_per_second = self.state.step * size / elapsed if elapsed else 0.0
            if self.state.steps:
                self.state.eta_seconds = (
                    elapsed / self.state.step * (self.state.steps - self.state.step)
                )
            self.state.logs = {k: float(v) for k, v in (logs or {}).items()}
            if self.trace:
                self.trace.event(
                    "step",
                    epoch=self.state.epoch,
                    step=self.state.step,
                    batch_size=size,
                    **self.state.logs,
                )
            if self._live is not None:
                self._live.update(self._view())

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
                    tf.summary.scalar("memory/rss_bytes", latest.rss, step=epoch)
                    tf.summary.scalar("memory/peak_rss_bytes", self.sampler.peak_rss, step=epoch)
                    tf.summary.scalar(
                        "memory/host_available_bytes", latest.host_available, step=epoch
                    )
                self._writer.flush()
            if self.trace:
                self.trace.event("epoch", epoch=epoch, **self.state.logs)
            if self._live is None and self.show:
                self.console.print(plain_line(self.state, self.sampler.peak_rss), soft_wrap=True)
            elif self._live is not None:
                self._live.update(self._view())

        def batch_changed(self, change: dict[str, Any]) -> None:
            """memtune fit halved the batch (out of memory, over budget, memory pressure)."""
            self.state.batch_size = change["to"]
            self.state.accumulation = change["gradient_accumulation_steps"]
            if self.trace:
                self.trace.event("batch_change", **change)
            message = (
                f"{change.get('reason', 'out of memory')} at batch {change['from']}: "
                f"continuing at batch {change['to']} "
                f"× {change['gradient_accumulation_steps']} accumulation from sample "
                f"{change['sample']} of epoch {change['epoch'] + 1}"
            )
            if self._live is not None:
                self._live.console.print(message)
            elif self.show:
                self.console.print(message, soft_wrap=True)

        def interrupted(self) -> None:
            """Ctrl-C: stop the live view and the sampler, close the trace."""
            self.on_train_end()

        def on_train_end(self, logs: Any = None) -> None:
            self.sampler.stop()
            if self._live is not None:
                self._live.update(self._view())
                self._live.stop()
            if self.trace:
                self.trace.event("end", peak_rss=self.sampler.peak_rss)
                self.trace.close()

    _CLASS = MemoryDashboard
    return _CLASS
