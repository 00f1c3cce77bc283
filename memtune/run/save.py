"""Saving the trained model atomically: a temporary file beside the target, fsynced, then
renamed; a killed save's leftover is cleared by the next save to the same path."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import psutil

from memtune.proc import failpoints
from memtune.proc import tf as _tf
from memtune.run import checkpoint

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
