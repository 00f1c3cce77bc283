"""Where memtune keeps what it may throw away: trial results, plans, decoded images."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$MEMTUNE_CACHE_DIR``, else ``$XDG_CACHE_HOME/memtune``, else ``~/.cache/memtune``."""
    explicit = os.environ.get("MEMTUNE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "memtune"
