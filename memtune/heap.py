"""This process's memory: handing freed memory back to the system, so resident memory says
what is held, and its high-water mark."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import resource
import sys


def release() -> None:
    """Collect garbage, empty Arrow's pool of cached buffers, trim the C heap (glibc)."""
    gc.collect()
    if "pyarrow" in sys.modules:
        sys.modules["pyarrow"].default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def high_water() -> int:
    """The most resident memory this program has held, in bytes: ``VmHWM``.

    Not ``ru_maxrss``: Linux carries the parent's high-water mark into a child's at
    ``exec`` (subprocess forks by ``vfork``), so a trial child started by a planning process
    that once held 1.5 GiB reads 1.5 GiB however little it used itself.
    """
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) * (1 if sys.platform == "darwin" else 1024)
