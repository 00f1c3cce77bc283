"""Planning progress as events, for whoever listens (the CLI's view in ``memtune.ui``).

The library only says what happens — ``stage`` (what it is doing now), ``trial`` (a trial
starts), ``trial_peak`` (its memory so far, from the watcher) and ``trial_done`` — and
never draws. With no listener, :func:`report` costs one list check.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

Listener = Callable[..., None]  # listener(event: str, **fields)
_listeners: list[Listener] = []


def report(event: str, **fields: Any) -> None:
    """Tell every listener; a listener's failure never stops planning."""
    for listener in list(_listeners):
        with contextlib.suppress(Exception):
            listener(event, **fields)


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Send events to ``listener`` for the block."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)
