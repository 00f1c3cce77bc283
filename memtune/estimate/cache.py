"""Trial results cached on disk, so a second ``suggest`` with the same inputs runs none.

Keyed by the model's architecture and optimizer, the input shapes and dtypes, the device
and the versions of TensorFlow, Keras and memtune. Written atomically; a damaged file is
treated as empty.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from memtune.core.curve import Trial
from memtune.core.paths import cache_dir


def cache_key(parts: dict[str, Any]) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


STOPPED = "/stopped"  # beside a key: trials stopped at their limit, by the memory passed


# No trial process holds less: TensorFlow's own state on a CPU, the CUDA context on a GPU
# (hundreds of MiB). A smaller cached peak is damage, not a measurement: 1 MiB at batch
# 1,800 once made a plan predict 15.8 MiB.
PLAUSIBLE_PEAK = 32 * 1024**2


def _peak(value: Any) -> int | None:
    """A cached peak: int bytes no trial could read less than (``true``, floats, small or
    negative values read as missing)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < PLAUSIBLE_PEAK:
        return None
    return value


def _batch(key: Any) -> int | None:
    """A cached batch: a positive count in ASCII digits ("²" is a digit to Python)."""
    text = str(key)
    if not (text.isascii() and text.isdigit()) or len(text) > 12 or int(text) < 1:
        return None
    return int(text)


class TrialCache:
    """Measured peaks by batch for one key. Only completed trials are kept.

    Anything in the file that is not a positive int of bytes under a batch number reads as
    missing. Writes hold an exclusive ``flock`` across read-modify-replace, so concurrent
    suggests lose none of each other's trials.

    A stopped trial is kept too, under ``KEY/stopped``, as the memory it had already passed:
    it answers a later trial at the same batch whose limit is no higher (that one would be
    stopped as well), so no suggest runs a trial up to the budget only to stop it again.
    """

    def __init__(self, key: str, *, enabled: bool = True, directory: Path | None = None) -> None:
        self.key = key
        self.enabled = enabled
        self.path = (directory or cache_dir()) / "trials.json"
        self.hits = 0

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError, UnicodeDecodeError, RecursionError):
            return {}
        return data if isinstance(data, dict) else {}

    def _mine(self, suffix: str = "") -> dict[int, int]:
        found = self._load().get(self.key + suffix)
        if not isinstance(found, dict):
            return {}
        peaks: dict[int, int] = {}
        for key, value in found.items():
            batch, peak = _batch(key), _peak(value)
            if batch is not None and peak is not None:
                peaks[batch] = peak
        return peaks

    def get(self, batch_size: int, limit_bytes: int | None = None) -> Trial | None:
        """The cached trial at this batch: a completed one, or — with ``limit_bytes`` — a
        stopped one that had already passed that limit."""
        if not self.enabled:
            return None
        peak = self._mine().get(batch_size)
        if peak is not None:
            self.hits += 1
            return Trial(batch_size, peak)
        passed = self._mine(STOPPED).get(batch_size)
        if limit_bytes is not None and passed is not None and passed >= limit_bytes:
            self.hits += 1
            return Trial(batch_size, passed, exceeded=True)
        return None

    def all(self) -> list[Trial]:
        """Every cached trial for this key, by batch."""
        if not self.enabled:
            return []
        return [Trial(b, p) for b, p in sorted(self._mine().items())]

    def put(self, trial: Trial) -> None:
        if not self.enabled or _peak(trial.peak_bytes) is None:
            return
        key = self.key + (STOPPED if trial.exceeded else "")

        def add(data: dict[str, Any]) -> None:
            mine = data.get(key)
            if not isinstance(mine, dict):
                mine = data[key] = {}
            peak = trial.peak_bytes
            if trial.exceeded:  # the most memory any stop at this batch has passed
                peak = max(peak, _peak(mine.get(str(trial.batch_size))) or 0)
            mine[str(trial.batch_size)] = peak

        self._rewrite(add)

    def shift(self, delta: int, *, keep: int) -> None:
        """Move every peak of this key by ``delta`` bytes (drift measured at batch ``keep``,
        which already holds its new value)."""

        def move(data: dict[str, Any]) -> None:
            for key in (self.key, self.key + STOPPED):
                mine = data.get(key)
                if not isinstance(mine, dict):
                    continue
                for batch, value in list(mine.items()):
                    peak = _peak(value)
                    if peak is not None and not (key == self.key and batch == str(keep)):
                        mine[batch] = max(1, peak + delta)

        if self.enabled:
            self._rewrite(move)

    def clear(self) -> None:
        """Forget this key's trials (what they measured no longer holds)."""
        if self.enabled:
            self._rewrite(lambda data: [data.pop(k, None) for k in (self.key, self.key + STOPPED)])

    def _rewrite(self, change: Callable[[dict[str, Any]], object]) -> None:
        """Change the whole file under the lock and replace it atomically; a cache that
        cannot be written is no cache (never an error)."""
        with contextlib.suppress(OSError), self._locked():
            data = self._load()
            change(data)
            fd, tmp = tempfile.mkstemp(prefix=".trials.", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(data, f)
                os.replace(tmp, self.path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.parent / "trials.lock", "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
