"""This process's memory: how glibc's allocator keeps it, and handing freed memory back to
the system (so what is held says what is in use)."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import sys

ARENAS = 2  # glibc malloc arenas (mallopt M_ARENA_MAX), unless MALLOC_ARENA_MAX is set
# Blocks of at least this size are mapped on their own and unmapped when freed (mallopt
# M_MMAP_THRESHOLD), unless the user set the threshold (MALLOC_MMAP_THRESHOLD_, or
# GLIBC_TUNABLES' glibc.malloc.mmap_threshold).
MMAP_THRESHOLD = 1024**2
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_configured = False


def configure() -> None:
    """Set glibc's malloc so that what a process holds follows what it uses (a no-op off
    glibc; once per process; a user's own settings win).

    Two habits of glibc make a training process's memory climb step after step, so that a
    trial's few steps read less than ``fit`` keeps:

    - **Arenas.** ``tf.data`` starts new threads each epoch, glibc hands new threads new
      arenas (up to eight per core), and each keeps what its threads freed. At most
      ``ARENAS`` (with :class:`memtune.run.callbacks.trim_heap.TrimHeap` trimming as each
      epoch begins) keep a peak flat from one epoch to the next.
    - **A moving mmap threshold.** By default a freed mapped block raises the size under
      which blocks come from the heap (up to 32 MiB), so the large buffers a training step
      frees and takes again land in the heap, whose holes only grow. A fixed threshold maps
      every block of ``MMAP_THRESHOLD`` or more and gives it back when freed.

    Arena limits hold for arenas made later (glibc stops listening once nine exist), so
    this runs before TensorFlow starts its threads where memtune can. The figures are in
    docs/how-memtune-decides.md ("Memory across epochs", "Memory within an epoch")."""
    global _configured
    if _configured:
        return
    _configured = True
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        if "MALLOC_ARENA_MAX" not in os.environ and "arena_max" not in tunables:
            libc.mallopt(_M_ARENA_MAX, ARENAS)
        if "MALLOC_MMAP_THRESHOLD_" not in os.environ and "mmap_threshold" not in tunables:
            libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


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
