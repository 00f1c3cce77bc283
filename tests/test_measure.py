"""The one measure the budget bounds: held memory, per process and per memory cgroup —
against fake /proc and cgroup files, then live."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from memtune.probe import process
from memtune.probe.host import cgroup_memory, group_held, read_host
from tests.conftest import MemoryCgroup

MiB = 1024**2
GiB = 1024**3

# /proc/PID/status of a process that imported TensorFlow and trained a small MLP (trimmed).
STATUS = """Name:\tpython
State:\tS (sleeping)
Pid:\t4242
VmPeak:\t 3360492 kB
VmSize:\t 3360492 kB
VmHWM:\t  807600 kB
VmRSS:\t  788000 kB
RssAnon:\t  285716 kB
RssFile:\t  502284 kB
RssShmem:\t       0 kB
VmPTE:\t    2048 kB
VmSwap:\t       0 kB
Threads:\t47
"""


def _proc(root: Path, pid: str, text: str) -> None:
    (root / pid).mkdir(parents=True, exist_ok=True)
    (root / pid / "status").write_text(text)


def test_held_is_anonymous_and_shared_pages_plus_page_tables_not_file_pages(
    tmp_path: Path,
) -> None:
    _proc(tmp_path, "4242", STATUS)
    reading = process.read(4242, tmp_path)
    assert reading is not None
    assert reading.rss == 788000 * 1024 and reading.file == 502284 * 1024
    assert reading.held == (285716 + 0 + 2048) * 1024  # 281 MiB of a 770 MiB RSS
    assert process.held(4242, tmp_path) == reading.held


def test_a_gone_process_or_a_kernel_thread_holds_nothing(tmp_path: Path) -> None:
    _proc(tmp_path, "2", "Name:\tkthreadd\nState:\tS (sleeping)\n")  # no memory fields
    assert process.read(2, tmp_path) is None
    assert process.held(2, tmp_path) == 0
    assert process.held(99999, tmp_path) == 0  # no such pid under a real /proc-like root


def test_the_peak_is_the_high_water_mark_less_the_most_file_pages_seen() -> None:
    """Readings miss a step's spike; VmHWM catches it but counts file pages. Pages the
    kernel evicted after the peak (a squeezed cgroup) must not inflate it."""
    tracker = process.PeakTracker()
    at = dict(rss=0, anon=0, shmem=0, page_tables=2 * MiB)
    tracker.add(process.ProcessMemory(**{**at, "high_water": 800 * MiB, "anon": 300 * MiB,
                                         "file": 450 * MiB, "rss": 750 * MiB}))  # fmt: skip
    assert tracker.peak == 800 * MiB - 450 * MiB + 2 * MiB  # a spike of 50 MiB between reads
    # later: the kernel evicted 300 MiB of library pages; memory held went down
    tracker.add(process.ProcessMemory(**{**at, "high_water": 800 * MiB, "anon": 280 * MiB,
                                         "file": 150 * MiB, "rss": 430 * MiB}))  # fmt: skip
    assert tracker.peak == 352 * MiB  # not 800 - 150: the eviction is not memory held
    assert tracker.held == 302 * MiB


def test_off_linux_rss_stands_in(tmp_path: Path) -> None:
    missing = tmp_path / "no-proc-here"
    reading = process.read("self", missing)
    assert reading is not None and reading.held == reading.rss > 0


def test_a_v1_group_holds_its_usage_less_page_cache_that_is_not_shared_memory(
    tmp_path: Path,
) -> None:
    stat = {"total_cache": 600 * MiB, "total_shmem": 50 * MiB, "total_rss": 400 * MiB}
    assert group_held(1024 * MiB, stat, v1=True) == 1024 * MiB - 550 * MiB
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("4:memory:/job\n0::/\n")
    folder = tmp_path / "sys" / "memory" / "job"
    folder.mkdir(parents=True)
    (folder / "memory.limit_in_bytes").write_text(str(GiB))
    (folder / "memory.usage_in_bytes").write_text(str(1000 * MiB))
    (folder / "memory.stat").write_text(
        "cache 1\nrss 1\ntotal_cache 629145600\ntotal_rss 314572800\ntotal_shmem 0\n"
        "total_inactive_file 209715200\ntotal_active_file 419430400\n"
    )
    # The working set (usage less inactive file) would be 800 MiB: the active library
    # pages the kernel trims before it kills. Held: 1000 - 600 = 400 MiB.
    assert cgroup_memory(tmp_path / "sys", proc) == (GiB, 400 * MiB)
    host = read_host(tmp_path / "sys", proc)
    assert host.available_bytes <= GiB - 400 * MiB


def test_a_v2_group_holds_its_usage_less_file_pages_and_reclaimable_slab(tmp_path: Path) -> None:
    stat = {"anon": 300 * MiB, "file": 500 * MiB, "shmem": 20 * MiB, "slab_reclaimable": 10 * MiB}
    assert group_held(850 * MiB, stat, v1=False) == 850 * MiB - 480 * MiB - 10 * MiB
    root = tmp_path / "sys"
    root.mkdir()
    (root / "memory.max").write_text(str(GiB))
    (root / "memory.current").write_text(str(850 * MiB))
    (root / "memory.stat").write_text(
        "anon 314572800\nfile 524288000\nshmem 20971520\nslab_reclaimable 10485760\n"
    )
    assert cgroup_memory(root, tmp_path / "none") == (GiB, 360 * MiB)
    assert group_held(None, stat, v1=False) is None


# ------------------------------------------------------------------------ live readings

ALLOCATE_AND_MAP = """
import json, mmap, sys
from memtune.probe import process
before = process.read()
block = bytearray(200 * 2**20)
block[::4096] = b"\\x01" * len(range(0, len(block), 4096))  # touch every page
anon = process.read()
with open(sys.argv[1], "rb") as f:  # 200 MiB of file pages, read in
    mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    total = sum(mapped[i] for i in range(0, len(mapped), 4096))
    mapped_now = process.read()
print(json.dumps([[r.held, r.rss] for r in (before, anon, mapped_now)]))
"""


def _a_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.write(os.urandom(1 << 20) * (size >> 20))
    return path


def test_live_held_grows_with_anonymous_memory_not_with_mapped_files(tmp_path: Path) -> None:
    data = _a_file(tmp_path / "data.bin", 200 * MiB)
    done = subprocess.run(
        [sys.executable, "-c", ALLOCATE_AND_MAP, str(data)], capture_output=True, text=True
    )
    (held0, _), (held1, rss1), (held2, rss2) = json.loads(done.stdout)
    assert 195 * MiB <= held1 - held0 <= 215 * MiB  # the bytearray
    assert abs(held2 - held1) < 10 * MiB  # the mapped file: RSS, not held
    assert rss2 - rss1 >= 150 * MiB


HOLD = """
import sys, time
block = bytearray(int(sys.argv[1]))
block[::4096] = b"\\x01" * len(range(0, len(block), 4096))
print("held", flush=True)
sys.stdin.readline()
"""

READ_GROUP = "from memtune.probe.host import cgroup_memory; print(cgroup_memory()[1])"


def test_live_cgroup_counts_what_its_processes_hold_not_their_page_cache(
    tmp_path: Path, memory_cgroup: MemoryCgroup
) -> None:
    memory_cgroup.set_limit(2 * GiB)

    def group_now() -> int:
        out = subprocess.run(
            [sys.executable, "-c", READ_GROUP],
            capture_output=True,
            text=True,
            preexec_fn=memory_cgroup.enter,
        )
        return int(out.stdout)

    baseline = group_now()
    data = _a_file(tmp_path / "data.bin", 300 * MiB)
    subprocess.run(  # 300 MiB read into the page cache, charged to the group
        [sys.executable, "-c", f"open({str(data)!r}, 'rb').read()"],
        check=True,
        preexec_fn=memory_cgroup.enter,
    )
    assert group_now() - baseline < 40 * MiB
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(300 * MiB)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=memory_cgroup.enter,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert 290 * MiB <= group_now() - baseline <= 360 * MiB
    finally:
        holder.communicate("\n", timeout=30)
