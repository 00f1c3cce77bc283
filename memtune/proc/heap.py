"""This process's memory: how glibc's allocator keeps it, and handing freed memory back to
the system (so what is held says what is in use)."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import sys

ARENAS = 2  # glibc malloc arenas (mallopt M_ARENA_MAX), unless MALLOC_ARENA_MAX is set
_M_ARENA_MAX = -8
_arenas_limited = False


def limit_arenas() -> None:
    """At most ``ARENAS`` glibc malloc arenas for this process (a user's MALLOC_ARENA_MAX
    wins; a no-op off glibc).

    ``tf.data`` starts new threads each epoch, glibc hands new threads new arenas (up to
    eight per core), and each arena keeps what its threads freed. A peak then climbs epoch
    after epoch: wide-mlp at batch 3,437 read 981 MiB after one epoch and 1,411 MiB after
    twelve, where a trial reads the first epochs. With two arenas and a trim as each epoch
    begins (:class:`memtune.run.callbacks.trim_heap.TrimHeap`) it held 988 MiB from the second
    epoch on (mlp 1,096 flat, against 1,080 → 1,238), at the same speed. Takes effect for
    arenas created later (glibc stops listening once nine exist), so it runs before
    TensorFlow starts its threads where memtune can, and once."""
    global _arenas_limited
    if _arenas_limited or "MALLOC_ARENA_MAX" in os.environ:
        return
    _arenas_limited = True
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, ARENAS)


def release() -> None:
    """Collect garbage, empty Arrow's pool of cached buffers, trim the C heap (glibc)."""
    gc.collect()
    if "pyarrow" in sys.modules:
        sys.modules["pyarrow"].default_memory_pool().release_unused()
    trim()


def trim() -> None:
    """Hand the C heap's free pages back to the system (glibc; under a millisecond, where a
    full garbage collection beside TensorFlow takes ~170 ms)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
