"""The live memory dashboard's drawing: pure (state + samples → renderable), tested as
golden text. The Keras callback that feeds it is ``memory_dashboard.MemoryDashboard``
(which imports this module, never the other way round); importing this module does not load
Keras.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from memtune.core.units import format_bytes
from memtune.proc.monitor import Sample

_BLOCKS = "▁▂▃▄▅▆▇█"
SHOWN_EVENTS = 3  # the newest batch changes shown; the earlier ones are counted


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
    worker: str = ""  # "index 1 of 4" on a multi-worker run: each worker shows its own memory
    preparing: str = ""  # what happens before the first step (building, tracing)
    steps_per_second: float = 0.0  # shown when the batch size is unknown
    events: list[str] = field(default_factory=list)  # batch changes, newest last
    bucket: tuple[int, int] | None = None  # the last step's (bucket length, rows)


def sparkline(values: list[int], usable: int | None = None, width: int = 40) -> str:
    """Unicode blocks for the last ``width`` values, scaled to the run's own range (so a
    few hundred MiB of movement shows under a 20 GiB budget); the usable line is the top
    only when the values come within a quarter of it."""
    values = values[-width:]
    if not values:
        return ""
    low, high = min(values), max(values)
    if usable and high < usable <= high * 1.25:
        high = usable
    span = high - low
    if span <= 0:
        return _BLOCKS[0] * len(values)
    return "".join(_BLOCKS[min(7, int((v - low) / span * 7.999))] for v in values)


def _rate(state: DashboardState) -> str:
    if state.batch_size:
        return f"{state.samples_per_second:,.0f} samples/s"
    return f"{state.steps_per_second:,.1f} steps/s"


def render(state: DashboardState, history: list[Sample], peak_held: int) -> RenderableType:
    latest = history[-1] if history else None
    who = f"worker {state.worker} — " if state.worker else ""
    head = Text(f"memtune — {who}epoch {state.epoch + 1}/{state.epochs}  ")
    if state.preparing:
        head.append(f"preparing: {state.preparing}")
    else:
        head.append(f"step {state.step:,}")
        if state.steps:
            head.append(f"/{state.steps:,}")
        if state.eta_seconds is not None:
            eta = int(state.eta_seconds)
            head.append(f"  ETA {eta // 60}:{eta % 60:02d}")
        head.append(f"  {_rate(state)}")
    if state.bucket is not None:
        head.append(f"  bucket ≤{state.bucket[0]:,}: batch {state.bucket[1]:,}")
    elif state.batch_size:
        head.append(f"  batch {state.batch_size:,} × {state.accumulation}")
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    if latest is not None:
        budget = f"  usable {format_bytes(state.usable_bytes)}" if state.usable_bytes else ""
        table.add_row(
            "process",
            f"held {format_bytes(latest.held)} (peak {format_bytes(peak_held)}){budget}  "
            f"RSS {format_bytes(latest.rss)}",
        )
        table.add_row("host RAM", f"available {format_bytes(latest.host_available)}")
        for i, (used, total) in enumerate(zip(latest.gpu_used, latest.gpu_total, strict=True)):
            text = "N/A" if used is None else f"{format_bytes(used)} / {format_bytes(total)}"
            table.add_row(f"gpu:{i}", text)
        for device, peak in state.tf_peak.items():
            table.add_row(f"TF {device}", f"peak {format_bytes(peak)}")
        held = [s.held for s in history]
        line = sparkline(held, state.usable_bytes)
        table.add_row("memory", f"{line}  {format_bytes(min(held))}–{format_bytes(max(held))}")
    if state.logs:
        table.add_row("metrics", "  ".join(f"{k} {v:.4g}" for k, v in state.logs.items()))
    earlier = len(state.events) - SHOWN_EVENTS
    if earlier > 0:  # every change stays counted; fit's summary and the trace list them all
        table.add_row("events", f"{earlier:,} earlier (listed in fit's summary and the trace)")
    for event in state.events[-SHOWN_EVENTS:]:
        table.add_row("event", event)
    return Group(head, table)


def plain_line(state: DashboardState, peak_held: int) -> str:
    metrics = " ".join(f"{k} {v:.4g}" for k, v in state.logs.items())
    usable = f" of {format_bytes(state.usable_bytes)} usable" if state.usable_bytes else ""
    who = f"worker {state.worker}, " if state.worker else ""
    return (
        f"{who}epoch {state.epoch + 1}/{state.epochs}: {metrics} — {_rate(state)}, "
        f"peak held {format_bytes(peak_held)}{usable}"
    )
