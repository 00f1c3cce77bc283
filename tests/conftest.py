"""Shared helpers: real files for shards, real model factories, NVML scenarios."""

from __future__ import annotations

import os
import signal
import textwrap
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def sigint_reaches_child() -> None:
    """``preexec_fn`` for a child a test Ctrl-Cs: a test run started as ``cmd &`` by a
    non-interactive shell ignores SIGINT, and its children inherit that (Python then installs
    no KeyboardInterrupt handler)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def write_csv_shards(
    folder: Path, frames: list[pd.DataFrame], names: list[str] | None = None
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        name = names[i] if names else f"{i}.csv"
        frame.to_csv(folder / name, index=False)
    return folder


def write_factory(path: Path, body: str, name: str = "build") -> str:
    """Write a model factory file; returns the ``file.py:function`` spec."""
    source = (
        "import keras\n\n\ndef " + name + "():\n" + textwrap.indent(textwrap.dedent(body), "    ")
    )
    path.write_text(source)
    return f"{path}:{name}"


@pytest.fixture(autouse=True)
def _private_trial_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tests never read or write the user's trial cache."""
    monkeypatch.setenv("MEMTUNE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def seq_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "a": [[0.5, 1.0], [2.0], [1.5, 2.5, 3.5, 4.5]],
            "b": [[1, 2, 3], [4], []],
            "x": [1.0, 2.0, 3.0],
            "answer": [0, 1, 0],
        }
    )


class MemoryCgroup:
    """A memory cgroup a test made (v1 or v2), removed afterwards. ``enter`` moves the
    calling process in: a ``preexec_fn``, so a child starts inside it."""

    def __init__(self, folder: Path, version: int) -> None:
        self.folder, self.version = folder, version

    def set_limit(self, limit: int) -> None:
        name = "memory.limit_in_bytes" if self.version == 1 else "memory.max"
        (self.folder / name).write_text(str(limit))

    def enter(self) -> None:
        (self.folder / "cgroup.procs").write_text(str(os.getpid()))

    def oom_kills(self) -> int:
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        for line in (self.folder / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def remove(self) -> None:
        import contextlib
        import time

        for _ in range(50):  # the kernel frees an emptied group a moment after its last exit
            with contextlib.suppress(OSError):
                self.folder.rmdir()
                return
            time.sleep(0.1)


def _make_memory_cgroup(name: str) -> MemoryCgroup | str:
    """A fresh memory cgroup under this process's own, or why not (a skip reason)."""
    from memtune.probe.host import CGROUP_ROOT, own_cgroups

    v2, v1 = own_cgroups()
    tried = []
    if v1 is not None and (CGROUP_ROOT / "memory").is_dir():
        folder = CGROUP_ROOT / "memory" / v1.strip("/") / name
        try:
            folder.mkdir()
            return MemoryCgroup(folder, 1)
        except OSError as exc:
            tried.append(f"v1 {folder}: {exc.strerror}")
    if v2 is not None and (CGROUP_ROOT / "cgroup.controllers").is_file():
        folder = CGROUP_ROOT / v2.strip("/") / name
        try:
            folder.mkdir()
        except OSError as exc:
            tried.append(f"v2 {folder}: {exc.strerror}")
        else:
            if (folder / "memory.max").is_file():
                return MemoryCgroup(folder, 2)
            folder.rmdir()
            tried.append(f"v2 {folder}: no memory controller delegated")
    return "cannot make a memory cgroup here (" + ("; ".join(tried) or "no cgroup mount") + ")"


@pytest.fixture
def memory_cgroup(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """A memory cgroup for this test, or the test is skipped saying why."""
    import re

    test = re.sub(r"[^\w-]", "_", request.node.name)[:40]
    made = _make_memory_cgroup(f"memtune-test-{os.getpid()}-{test}")
    if isinstance(made, str):
        pytest.skip(made)
    yield made
    made.remove()
