"""Named crash instants, for the crash-injection tests.

``MEMTUNE_FAILPOINT=NAME@N`` makes the process SIGKILL itself when it reaches ``NAME`` with
number ``N`` (an epoch count): the state on disk is then exactly what a power cut or the
kernel's OOM killer would leave at that instant. Unset, :func:`hit` is one dict lookup.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

ENV = "MEMTUNE_FAILPOINT"


def hit(name: str, number: int = 0, *, cut: Path | None = None) -> None:
    """Die here if asked to; ``cut`` first truncates that file to half (a write cut short)."""
    wanted = os.environ.get(ENV)
    if not wanted or wanted != f"{name}@{number}":
        return
    if cut is not None:
        size = cut.stat().st_size
        with open(cut, "rb+") as f:
            f.truncate(size // 2)
    os.kill(os.getpid(), signal.SIGKILL)
