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
