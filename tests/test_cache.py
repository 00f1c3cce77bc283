"""The trial cache: only sound values are trusted, concurrent writers lose nothing, a damaged
or odd file never crashes or leaks, and models with custom layers hit it again."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from memtune.core.curve import Trial
from memtune.estimate.cache import TrialCache
from tests.conftest import write_csv_shards

MiB = 1024**2


def test_only_plausible_int_bytes_are_trusted(tmp_path: Path) -> None:
    big = 300 * MiB
    values = {"8": True, "16": -5, "24": 0, "32": 1.5, "64": "9", "x": big, "-1": big,
              "²": big, "1800": MiB, "128": big}  # fmt: skip
    (tmp_path / "trials.json").write_text(json.dumps({"k": values}))
    cache = TrialCache("k", directory=tmp_path)
    assert cache.all() == [Trial(128, big)]  # 1 MiB at 1,800: no trial process holds so little
    assert [cache.get(b) for b in (8, 16, 24, 32, 64, 1800)] == [None] * 6
    assert cache.get(128) == Trial(128, big)


@pytest.mark.parametrize("odd", [[1, 2], "text", 5, None])
def test_a_key_holding_no_mapping_reads_as_empty_and_is_replaced(tmp_path: Path, odd) -> None:
    (tmp_path / "trials.json").write_text(json.dumps({"k": odd, "other": {"8": 100 * MiB}}))
    cache = TrialCache("k", directory=tmp_path)
    assert cache.all() == [] and cache.get(8) is None
    cache.put(Trial(8, 123 * MiB))
    assert cache.all() == [Trial(8, 123 * MiB)]
    assert TrialCache("other", directory=tmp_path).all() == [Trial(8, 100 * MiB)]


def test_bad_trials_are_not_written(tmp_path: Path) -> None:
    cache = TrialCache("k", directory=tmp_path)
    cache.put(Trial(8, -1))
    cache.put(Trial(16, -99, exceeded=True))
    assert cache.all() == [] and cache.get(16, limit_bytes=1) is None


def test_a_stopped_trial_answers_a_later_one_that_would_be_stopped_too(tmp_path: Path) -> None:
    cache = TrialCache("k", directory=tmp_path)
    cache.put(Trial(512, 1000 * MiB, exceeded=True))  # stopped after passing 1000 MiB
    assert cache.all() == []  # not a measured point of the curve
    assert cache.get(512, limit_bytes=900 * MiB) == Trial(512, 1000 * MiB, exceeded=True)
    assert cache.get(512, limit_bytes=1000 * MiB) == Trial(512, 1000 * MiB, exceeded=True)
    assert cache.get(512, limit_bytes=2000 * MiB) is None  # a larger budget: it may fit now
    assert cache.get(512) is None
    cache.put(Trial(512, 800 * MiB, exceeded=True))  # a stop at a lower limit adds nothing
    assert cache.get(512, limit_bytes=1000 * MiB) is not None
    cache.put(Trial(512, 1500 * MiB))  # measured whole later: the measurement wins
    assert cache.get(512, limit_bytes=900 * MiB) == Trial(512, 1500 * MiB)
    assert cache.hits == 4


@pytest.mark.parametrize(
    "content", [b"", b"{not json", b"\xff\xfe", b"[1, 2]", b"[" * 200_000, b'{"k": ' * 50_000]
)
def test_a_damaged_file_reads_as_empty(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "trials.json").write_bytes(content)
    cache = TrialCache("k", directory=tmp_path)
    assert cache.all() == []
    cache.put(Trial(4, 400 * MiB))
    assert cache.all() == [Trial(4, 400 * MiB)]


def test_any_bytes_read_as_a_cache_or_as_empty(tmp_path: Path) -> None:
    """A fuzzer over damaged files: cut, flipped and spliced versions of a sound one."""
    rng = np.random.default_rng(7)
    sound = json.dumps({"k": {"8": 300 * MiB, "64": 400 * MiB}, "k/stopped": {"512": 900 * MiB}})
    for _ in range(300):
        data = bytearray(sound.encode())
        for _ in range(int(rng.integers(1, 6))):
            at = int(rng.integers(0, len(data)))
            what = rng.integers(0, 3)
            if what == 0:
                data[at] = int(rng.integers(0, 256))
            elif what == 1:
                del data[at : at + int(rng.integers(1, 8))]
            else:
                data[at:at] = rng.choice(list(b'{}[]":,0123456789\xb2-.e'), 3).tobytes()
        (tmp_path / "trials.json").write_bytes(bytes(data))
        cache = TrialCache("k", directory=tmp_path)
        for trial in cache.all():
            assert trial.batch_size >= 1 and trial.peak_bytes >= 32 * MiB
        cache.get(8)
        cache.get(512, limit_bytes=1)


def test_a_folder_in_the_way_neither_crashes_nor_leaks(tmp_path: Path) -> None:
    (tmp_path / "trials.json").mkdir()
    cache = TrialCache("k", directory=tmp_path)
    for batch in (1, 2, 3):
        cache.put(Trial(batch, 100 * MiB))
    assert cache.all() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trials.json", "trials.lock"]


def _writer(directory: str, worker: int) -> None:
    cache = TrialCache("k", directory=Path(directory))
    for i in range(25):
        cache.put(Trial(worker * 100 + i + 1, 100 * MiB + i))


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_writer, args=(str(tmp_path), w)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    batches = [t.batch_size for t in TrialCache("k", directory=tmp_path).all()]
    assert sorted(batches) == sorted(w * 100 + i + 1 for w in range(4) for i in range(25))


CUSTOM = """
import keras


class Scale(keras.layers.Layer):
    def call(self, x):
        return x * 2.0


def build():
    x = keras.Input((2,), name="x")
    model = keras.Model(x, keras.layers.Dense(1, name="answer")(Scale()(x)))
    model.compile("adam", "mse")
    return model
"""


@pytest.mark.slow
def test_a_model_with_a_custom_layer_hits_the_cache_in_a_new_process(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.random(300), "b": rng.random(300), "answer": rng.random(300)})
    data = write_csv_shards(tmp_path / "d", [frame])
    (tmp_path / "m.py").write_text(CUSTOM)
    argv = [
        *(sys.executable, "-m", "memtune", "suggest", "--model", f"{tmp_path / 'm.py'}:build"),
        *("--data", str(data), "--target", "answer", "--json"),
    ]
    env = {**os.environ, "MEMTUNE_CACHE_DIR": str(tmp_path / "cache")}
    # The second asks a slightly different plan: the plan cache misses, the trial cache not.
    runs = [
        subprocess.run([*argv, *extra], capture_output=True, text=True, env=env)
        for extra in ([], ["--safety", "0.11"])
    ]
    assert all(r.returncode == 0 for r in runs), runs[-1].stderr

    def counts(stdout: str) -> tuple[int, int]:
        line = next(r for r in json.loads(stdout)["reasons"] if "from the cache" in r)
        found = re.search(r"(\d+) trial\(s\).*; (\d+) from the cache", line)
        assert found, line
        return int(found[1]), int(found[2])

    trials, hits = counts(runs[1].stdout)
    assert trials >= 1 and hits == trials  # the second process ran no trial but the anchor
    assert counts(runs[0].stdout)[1] == 0


def _drifted(tmp_path: Path, now: Trial) -> tuple[str | None, TrialCache]:
    """The anchor policy on a cache from another period, with the fresh trial faked (as
    Lightning fakes its OOM check): the cache holds 800 / 900 MiB and a stop at 1.5 GiB."""
    from memtune.estimate import runner

    cache = TrialCache("k", directory=tmp_path)
    for t in (Trial(8, 800 * MiB), Trial(64, 900 * MiB), Trial(512, 1536 * MiB, exceeded=True)):
        cache.put(t)
    cache.put(Trial(8, 800 * MiB))
    s = runner.Setup((), 1, "cpu", 4 * 1024**3, cache, 1000)

    class Faked(runner.Trials):
        def run(self, batch: int, *, keep: bool = True) -> Trial:
            assert batch == 8 and not keep  # the smallest batch: the cheapest to re-measure
            return now

    runner = Faked(s, None, tmp_path)  # type: ignore[arg-type]
    return runner.anchor(), cache


def test_a_fresh_anchor_beyond_the_noise_shifts_every_cached_peak(tmp_path: Path) -> None:
    said, cache = _drifted(tmp_path, Trial(8, 960 * MiB))
    assert said is not None and said.endswith("the cached peaks are shifted up by 160 MiB")
    assert cache.all() == [Trial(8, 960 * MiB), Trial(64, 1060 * MiB)]
    assert cache.get(512, 1600 * MiB) == Trial(512, 1696 * MiB, exceeded=True)


def test_a_fresh_anchor_within_the_noise_keeps_the_cache(tmp_path: Path) -> None:
    said, cache = _drifted(tmp_path, Trial(8, 810 * MiB))
    assert said is not None and said.endswith("within the noise (± 24.0 MiB), the cache holds")
    assert cache.all() == [Trial(8, 800 * MiB), Trial(64, 900 * MiB)]


def test_a_fresh_anchor_that_is_stopped_drops_the_cache(tmp_path: Path) -> None:
    said, cache = _drifted(tmp_path, Trial(8, 2 * 1024**3, exceeded=True))
    assert said is not None and "the cached trials were dropped" in said
    assert cache.all() == [] and cache.get(512, 1) is None
