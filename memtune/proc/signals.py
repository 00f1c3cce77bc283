"""SIGTERM and SIGHUP stop memtune the way Ctrl-C does: cleanup runs, children are reaped.

By default those signals end Python at once: no ``finally`` runs, a trial child is left
behind, a trace is cut mid-line. :func:`install` turns them into :class:`Stopped`, a
``KeyboardInterrupt``, so every path that handles Ctrl-C handles them too.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


class Stopped(KeyboardInterrupt):
    """The process was asked to stop by ``signum``; its exit code is 128 + signum."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signum)


def install() -> None:
    """Route SIGTERM and SIGHUP to :class:`Stopped` (main thread only, as Python requires)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise)


def exit_code(exc: KeyboardInterrupt) -> int:
    """130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP."""
    return 128 + (exc.signum if isinstance(exc, Stopped) else signal.SIGINT)
