"""glibc's allocator as memtune sets it: few arenas, a fixed mmap threshold, freed memory
handed back each epoch.

Each case runs in a fresh Python, since an arena limit only holds for arenas made later.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from memtune.proc import heap


def _glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError, AttributeError):  # not glibc, or not a POSIX confstr
        return False


pytestmark = pytest.mark.skipif(not _glibc(), reason="glibc's malloc arenas")

# Eight threads allocate at once, then glibc lists its arenas on stderr ("Arena N:").
THREADS = """
import ctypes, threading
held, start = [], threading.Barrier(8)
def work():
    start.wait()
    held.extend(bytearray(50_000) for _ in range(100))
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
ctypes.CDLL("libc.so.6").malloc_stats()
"""


def arenas(setup: str, env: dict[str, str]) -> int:
    code = textwrap.dedent(setup) + THREADS
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return sum(line.startswith("Arena ") for line in out.stderr.splitlines())


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    return {**env, **extra}


def test_threads_share_the_limited_arenas() -> None:
    assert arenas("", clean_env()) > heap.ARENAS  # glibc alone: an arena per thread
    limited = "from memtune.proc import heap\nheap.configure()\n"
    assert arenas(limited, clean_env()) == heap.ARENAS


def test_a_users_malloc_arena_max_wins() -> None:
    limited = "from memtune.proc import heap\nheap.configure()\n"
    assert arenas(limited, clean_env(MALLOC_ARENA_MAX="4")) == 4


# A 4 MiB block freed (mapped: past glibc's starting threshold, which then moves up to it),
# then a 2 MiB block taken: the number of mapped blocks it added.
MAPPED = """
import ctypes
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.free(libc.malloc(4 * 1024**2))
before = libc.mallinfo2().hblks
block = libc.malloc(2 * 1024**2)
print(libc.mallinfo2().hblks - before)
"""


def mapped(setup: str, env: dict[str, str]) -> int:
    code = textwrap.dedent(setup) + MAPPED
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return int(out.stdout.split()[-1])


def test_a_fixed_mmap_threshold_maps_large_blocks_on_their_own() -> None:
    """glibc alone moves its threshold up to the largest block freed, so the next large block
    lands in the heap (whose holes only grow); configured, it is mapped and given back."""
    assert mapped("", clean_env()) == 0
    configured = "from memtune.proc import heap\nheap.configure()\n"
    assert mapped(configured, clean_env()) == 1


def test_a_users_mmap_threshold_wins() -> None:
    configured = "from memtune.proc import heap\nheap.configure()\n"
    assert mapped(configured, clean_env(MALLOC_MMAP_THRESHOLD_=str(8 * 1024**2))) == 0
    tunables = clean_env(GLIBC_TUNABLES=f"glibc.malloc.mmap_threshold={8 * 1024**2}")
    assert mapped(configured, tunables) == 0


def test_trim_heap_hands_freed_memory_back_as_an_epoch_begins() -> None:
    """Every other 100 kB block freed: glibc keeps the holes (nothing at the heap's top to
    trim); the callback hands them back."""
    code = textwrap.dedent(
        """
        import psutil
        from memtune.run.callbacks.trim_heap import TrimHeap
        blocks = [bytearray(100_000) for _ in range(3000)]
        del blocks[::2]
        before = psutil.Process().memory_info().rss
        TrimHeap().on_epoch_begin(1)
        print(before - psutil.Process().memory_info().rss)
        """
    )
    env = clean_env(TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    freed = int(out.stdout.strip().splitlines()[-1])
    assert freed > 100 * 1024**2  # of the 150 MB freed, most goes back
