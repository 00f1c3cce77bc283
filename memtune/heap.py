"""Handing freed memory back to the system, so resident memory says what is held."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import sys


def release() -> None:
    """Collect garbage, empty Arrow's pool of cached buffers, trim the C heap (glibc)."""
    gc.collect()
    if "pyarrow" in sys.modules:
        sys.modules["pyarrow"].default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
