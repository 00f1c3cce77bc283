"""Saving the trained model atomically: a temporary file beside the target, fsynced, then
renamed; a killed save's leftover is cleared by the next save to the same path."""

from __future__ import annotations

import contextlib
import errno
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from memtune.core.errors import TrainingFailed
from memtune.core.units import format_bytes
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
    need = model_bytes(model)
    if need and shutil.disk_usage(path.parent).free < need + need // 10:
        raise _no_room(path, need)
    try:
        with _tf.native_stderr_quiet():
            try:
                model.save(tmp)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(exc):
                    raise _no_room(path, need) from exc
                raise
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        failpoints.hit("save-written", epochs)
        os.replace(tmp, path)
        with contextlib.suppress(OSError):
            checkpoint.fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def model_bytes(model: Any) -> int:
    """About what the model takes on disk: its weights and the optimizer's variables."""
    try:
        variables = [*model.weights, *model.optimizer.variables]
        return sum(math.prod(v.shape) * np.dtype(v.dtype).itemsize for v in variables)
    except (AttributeError, TypeError):
        return 0


def _no_room(path: Path, need: int) -> TrainingFailed:
    free = shutil.disk_usage(path.parent).free
    return TrainingFailed(
        f"--save {str(path)!r}: no room for the model (about {format_bytes(need)} needed, "
        f"{format_bytes(free)} free); a --checkpoint-dir keeps the trained epochs"
    )
