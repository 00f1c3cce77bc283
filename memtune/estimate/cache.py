"""Trial results cached on disk, so a second ``suggest`` with the same inputs runs none.

Keyed by the model's architecture and optimizer, the input shapes and dtypes, the device
and the versions of TensorFlow, Keras and memtune. Written atomically; a damaged file is
treated as empty.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from memtune.plan import Trial


def cache_dir() -> Path:
    explicit = os.environ.get("MEMTUNE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "memtune"


def cache_key(parts: dict[str, Any]) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class TrialCache:
    """Measured peaks by batch for one key. Only completed trials are kept."""

    def __init__(self, key: str, *, enabled: bool = True, directory: Path | None = None) -> None:
        self.key = key
        self.enabled = enabled
        self.path = (directory or cache_dir()) / "trials.json"
        self.hits = 0

    def _load(self) -> dict[str, dict[str, int]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, batch_size: int) -> Trial | None:
        if not self.enabled:
            return None
        peak = self._load().get(self.key, {}).get(str(batch_size))
        if not isinstance(peak, int):
            return None
        self.hits += 1
        return Trial(batch_size, peak)

    def all(self) -> list[Trial]:
        """Every cached trial for this key, by batch."""
        if not self.enabled:
            return []
        found = self._load().get(self.key, {})
        return sorted(
            (Trial(int(b), p) for b, p in found.items() if isinstance(p, int)),
            key=lambda t: t.batch_size,
        )

    def put(self, trial: Trial) -> None:
        if not self.enabled or trial.exceeded:
            return
        data = self._load()
        data.setdefault(self.key, {})[str(trial.batch_size)] = trial.peak_bytes
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".trials.", dir=self.path.parent)
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)
            os.replace(tmp, self.path)
