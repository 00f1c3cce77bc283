"""What planning is doing, while it does it: a live view on a terminal, plain lines otherwise.

Listens to :mod:`memtune.proc.progress`. On a terminal (stderr) the view is transient: it is
gone when the plan's table is printed. Off a terminal, each finished step is one plain
line on ``plain`` (stdout for human output; nothing under ``--json``).
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.text import Text

from memtune.core.units import format_bytes


@dataclass
class PlanningState:
    stage: str = "starting"
    done: list[str] = field(default_factory=list)  # finished steps, one line each
    trial: str = ""  # the running trial, with its memory so far


def render_planning(state: PlanningState, spinner: Spinner | None = None) -> RenderableType:
    """The finished steps, then the one running beside a spinner. Pass the same
    ``spinner`` every frame: a spinner draws its frame from when it was made, so a new one
    each frame never moves."""
    lines: list[RenderableType] = [Text(line) for line in state.done]
    text = Text(f"planning: {state.trial or state.stage}")
    if spinner is None:
        spinner = Spinner("dots", text=text)
    else:
        spinner.update(text=text)
    lines.append(spinner)
    return Group(*lines)


def planning_view(machine_output: bool) -> PlanningView:
    """The view for a command: live on a terminal's stderr; plain lines on stdout when
    not on a terminal and the output is for people; silent under ``--json``."""
    err = Console(stderr=True, highlight=False)
    if machine_output and not err.is_terminal:
        return PlanningView(err, None)
    return PlanningView(err, None if machine_output else sys.stdout)


class PlanningView:
    """A :mod:`memtune.proc.progress` listener; use as a context manager around planning."""

    def __init__(self, console: Console, plain: TextIO | None) -> None:
        self.console = console
        self.plain = plain
        self.state = PlanningState()
        self._live: Live | None = None
        self._lock = threading.Lock()
        self._limit = 0
        self._at = ""  # " at length N" while a length bucket's trial runs
        self._spinner = Spinner("dots")

    def __enter__(self) -> PlanningView:
        if self.console.is_terminal:
            self._live = Live(
                console=self.console,
                refresh_per_second=8,
                transient=True,
                get_renderable=lambda: render_planning(self.state, self._spinner),
            )
            self._live.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Planning is over (the plan is known): the view goes, before training draws."""
        if self._live is not None:
            self._live.stop()
            self._live = None
        self.plain = None

    def _finished(self, line: str) -> None:
        self.state.done.append(line)
        if self._live is None and self.plain is not None:
            self.plain.write(f"planning: {line}\n")
            self.plain.flush()

    def __call__(self, event: str, **fields: Any) -> None:
        with self._lock:
            if event == "stage":
                self.state.stage = str(fields["what"])
            elif event == "scanned":
                shards = fields["shards"]
                where = f" in {shards} shards" if shards > 1 else ""
                self._finished(f"data: {fields['rows']:,} rows{where}")
            elif event == "trial":
                self._limit = int(fields["limit"])
                self._at = f" at length {fields['length']}" if fields.get("length") else ""
                self.state.trial = (
                    f"trial at batch {fields['batch']:,}{self._at} (stopped past "
                    f"{format_bytes(self._limit)}): starting a child process"
                )
            elif event == "trial_peak":
                self.state.trial = (
                    f"trial at batch {fields['batch']:,}{self._at}: "
                    f"{format_bytes(fields['held'])} held so far "
                    f"(stopped past {format_bytes(self._limit)})"
                )
            elif event == "trial_done":
                self.state.trial = ""
                peak = format_bytes(fields["peak"])
                outcome = f"over {peak}: does not fit" if fields["exceeded"] else f"peak {peak}"
                outcome += " (cached)" if fields["cached"] else ""
                at = f" at length {fields['length']}" if fields.get("length") else ""
                self._finished(f"trial at batch {fields['batch']:,}{at}: {outcome}")
