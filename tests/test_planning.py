"""Planning progress: what the library reports and how the view shows it."""

from __future__ import annotations

import io

from rich.console import Console

from memtune.proc import progress
from memtune.ui.planning import PlanningView, render_planning
from tests.conftest import screen_of

MiB = 1024**2


def feed() -> None:
    """What planning reports, in order (a listener must be subscribed)."""
    progress.report("stage", what="reading the data once (rows, lengths)")
    progress.report("scanned", rows=3794, shards=12)
    progress.report("trial", batch=8, limit=900 * MiB)
    progress.report("trial_peak", batch=8, held=700 * MiB)
    progress.report("trial_done", batch=8, peak=787 * MiB, exceeded=False, cached=False)
    progress.report("trial_done", batch=64, peak=800 * MiB, exceeded=False, cached=True)
    progress.report("trial", batch=512, limit=900 * MiB)
    progress.report("trial_peak", batch=512, held=850 * MiB)


def test_plain_lines_off_a_terminal() -> None:
    plain = io.StringIO()
    view = PlanningView(Console(file=io.StringIO(), force_terminal=False), plain)
    with view, progress.listening(view):
        feed()
        progress.report("trial_done", batch=512, peak=900 * MiB, exceeded=True, cached=False)
    assert plain.getvalue().splitlines() == [
        "planning: data: 3,794 rows in 12 shards",
        "planning: trial at batch 8: peak 787 MiB",
        "planning: trial at batch 64: peak 800 MiB (cached)",
        "planning: trial at batch 512: over 900 MiB: does not fit",
    ]


def test_on_a_terminal_the_running_trial_shows_its_memory_then_the_view_goes() -> None:
    out = io.StringIO()
    view = PlanningView(Console(file=out, force_terminal=True, width=100), None)
    with view, progress.listening(view):
        feed()
        lines = [line.rstrip() for line in _text(render_planning(view.state)).splitlines()]
        assert lines[-1].endswith(
            "planning: trial at batch 512: 850 MiB held so far (stopped past 900 MiB)"
        )
        assert lines[:3] == [
            "data: 3,794 rows in 12 shards",
            "trial at batch 8: peak 787 MiB",
            "trial at batch 64: peak 800 MiB (cached)",
        ]
    assert screen_of(out.getvalue()) == []  # transient: nothing left before the plan's table


def test_no_listener_no_cost_and_a_failing_listener_never_stops_planning() -> None:
    progress.report("stage", what="alone")

    def broken(event: str, **fields: object) -> None:
        raise RuntimeError("a view bug")

    with progress.listening(broken):
        progress.report("stage", what="still fine")


def _text(renderable: object) -> str:
    out = io.StringIO()
    Console(file=out, width=100, force_terminal=False, color_system=None).print(renderable)
    return out.getvalue()
