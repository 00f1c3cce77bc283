"""The memory watchdog: decisions on made-up readings, then a real neighbour taking memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from memtune.watchdog import MemoryOverrun, Reading, Watchdog

MiB = 1024**2
GiB = 1024**3


def test_own_growth_is_not_pressure() -> None:
    dog = Watchdog(budget_bytes=4 * GiB, usable_bytes=3 * GiB)
    dog.check(Reading(rss=1 * GiB, available=10 * GiB))
    # this process grew by 1.5 GiB and the host lost exactly that: nobody else took memory
    dog.check(Reading(rss=int(2.5 * GiB), available=int(8.5 * GiB)))
    assert dog.others(Reading(rss=int(2.5 * GiB), available=int(8.5 * GiB))) == 0


def test_a_neighbour_taking_our_share_triggers_once_per_step() -> None:
    dog = Watchdog(budget_bytes=4 * GiB, usable_bytes=3 * GiB)  # margin 1 GiB, step 204 MiB
    dog.check(Reading(rss=2 * GiB, available=10 * GiB))
    dog.check(Reading(rss=2 * GiB, available=9 * GiB + 512 * MiB))  # 512 MiB taken: 1.5 left
    with pytest.raises(MemoryOverrun) as info:
        dog.check(Reading(rss=2 * GiB, available=8 * GiB + 512 * MiB))  # 1.5 GiB taken
    assert info.value.reason == "memory pressure"
    assert f"took {int(1.5 * GiB)} bytes" in str(info.value)
    dog.check(Reading(rss=2 * GiB, available=8 * GiB + 512 * MiB))  # held, not worse: no repeat
    dog.check(Reading(rss=2 * GiB, available=8 * GiB + 400 * MiB))  # worse by less than a step
    with pytest.raises(MemoryOverrun):
        dog.check(Reading(rss=2 * GiB, available=8 * GiB))  # worse by a step


def test_a_halving_that_frees_nothing_is_said_once_and_not_repeated() -> None:
    """The text CNN at 3 GiB: halved, RSS stayed at 3.2 GiB. memtune says why memory stays
    high, and does not halve again until it grows by a step."""
    dog = Watchdog(budget_bytes=3 * GiB, usable_bytes=int(2.7 * GiB))  # step 154 MiB
    assert dog.check(Reading(rss=2 * GiB, available=20 * GiB)) is None
    with pytest.raises(MemoryOverrun):
        dog.check(Reading(rss=int(3.1 * GiB), available=20 * GiB))
    notice = dog.check(Reading(rss=int(3.12 * GiB), available=20 * GiB))  # after the halving
    assert notice is not None and notice.startswith("halving the batch freed nothing")
    assert "RSS stays at 3.12 GiB" in notice and "grows by 154 MiB" in notice
    assert dog.check(Reading(rss=int(3.12 * GiB), available=20 * GiB)) is None  # said once


def test_a_halving_that_freed_memory_says_nothing() -> None:
    dog = Watchdog(budget_bytes=3 * GiB, usable_bytes=int(2.7 * GiB))
    dog.check(Reading(rss=2 * GiB, available=20 * GiB))
    with pytest.raises(MemoryOverrun):
        dog.check(Reading(rss=int(3.1 * GiB), available=20 * GiB))
    assert dog.check(Reading(rss=int(2.5 * GiB), available=20 * GiB)) is None  # back under
    with pytest.raises(MemoryOverrun):
        dog.check(Reading(rss=int(3.1 * GiB), available=20 * GiB))
    assert dog.check(Reading(rss=int(2.9 * GiB), available=20 * GiB)) is None  # freed 200 MiB


def test_host_running_out_triggers_whatever_the_budget() -> None:
    dog = Watchdog(budget_bytes=100 * GiB, usable_bytes=90 * GiB)  # a budget the host lacks
    dog.check(Reading(rss=2 * GiB, available=30 * GiB))
    with pytest.raises(MemoryOverrun, match="memory pressure"):
        dog.check(Reading(rss=2 * GiB, available=5 * GiB))


def test_rss_over_usable_triggers_again_only_after_real_growth() -> None:
    dog = Watchdog(budget_bytes=2 * GiB, usable_bytes=int(1.8 * GiB))  # step 102 MiB
    dog.check(Reading(rss=1 * GiB, available=20 * GiB))
    with pytest.raises(MemoryOverrun) as info:
        dog.check(Reading(rss=int(1.85 * GiB), available=20 * GiB))
    assert info.value.reason == "over budget"
    dog.check(Reading(rss=int(1.85 * GiB) + 50 * MiB, available=20 * GiB))  # allocator drift
    with pytest.raises(MemoryOverrun):
        dog.check(Reading(rss=int(1.85 * GiB) + 120 * MiB, available=20 * GiB))


def test_a_dip_under_the_limit_does_not_rearm_the_trigger() -> None:
    """A 2 GiB stream's RSS swings ±70 MiB between steps: each dip under the limit re-armed
    the trigger, and 40,423 went to 2,526 at 1.85-1.90 GiB (with Arrow's system pool, to
    batch 1, failing at 1.81 GiB, under the budget). Only a step under the limit re-arms."""
    dog = Watchdog(budget_bytes=2 * GiB, usable_bytes=int(1.8 * GiB))  # limit 1,843 MiB
    dog.check(Reading(rss=1 * GiB, available=20 * GiB))
    with pytest.raises(MemoryOverrun):
        dog.check(Reading(rss=1850 * MiB, available=20 * GiB))
    for rss in (1790, 1870, 1800, 1890, 1780, 1900):  # swinging around the limit
        dog.check(Reading(rss=rss * MiB, available=20 * GiB))
    with pytest.raises(MemoryOverrun):  # a step past the last trigger: real growth
        dog.check(Reading(rss=1960 * MiB, available=20 * GiB))
    dog.check(Reading(rss=1700 * MiB, available=20 * GiB))  # a step under: re-armed
    with pytest.raises(MemoryOverrun):
        dog.check(Reading(rss=1850 * MiB, available=20 * GiB))


def test_growth_near_the_budget_halves_again_however_small() -> None:
    """Memory that grows whatever the batch (Arrow's system pool on a 2 GiB stream reached
    2.14 GiB, a step of growth per trigger): near the budget, a quarter step triggers."""
    dog = Watchdog(budget_bytes=2 * GiB, usable_bytes=int(1.8 * GiB))  # step 102 MiB
    dog.check(Reading(rss=1 * GiB, available=20 * GiB))
    with pytest.raises(MemoryOverrun):
        dog.check(Reading(rss=1960 * MiB, available=20 * GiB))  # past the usable budget
    assert dog.check(Reading(rss=1970 * MiB, available=20 * GiB)) is not None  # freed nothing
    with pytest.raises(MemoryOverrun):
        dog.check(Reading(rss=2000 * MiB, available=20 * GiB))  # 40 MiB more, near 2 GiB
    dog.check(Reading(rss=2010 * MiB, available=20 * GiB))  # under a quarter step: held
    with pytest.raises(MemoryOverrun):
        dog.check(Reading(rss=2030 * MiB, available=20 * GiB))


# ------------------------------------------------------------ a real neighbour, real memory

HOG = """
import sys
step, limit = int(sys.argv[1]), int(sys.argv[2])
held = []
for line in sys.stdin:  # one step per line; the trainer closing stdin (or dying) ends it
    if len(held) * step < limit:
        block = bytearray(step)
        block[::4096] = b"\\x01" * len(range(0, step, 4096))  # touch every page
        held.append(block)
    print(len(held) * step, flush=True)
"""

DRIVER = """
import json, subprocess, sys
import psutil
import memtune
from memtune import _tf

keras = _tf.keras()
STEP, LIMIT, HOG = 64 * 2**20, 1600 * 2**20, {hog!r}


class Neighbour(keras.callbacks.Callback):
    \"\"\"Another process: 64 MiB more after each training step until memtune reacts.\"\"\"

    def __init__(self):
        super().__init__()
        self.hog, self.taken, self.stopped = None, 0, False
        self.changes_seen = []

    def on_train_batch_end(self, batch, logs=None):
        if self.stopped or self.taken >= LIMIT:
            return
        if self.hog is None:
            self.hog = subprocess.Popen(
                [sys.executable, "-c", HOG, str(STEP), str(LIMIT)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )
        self.hog.stdin.write("step\\n")
        self.hog.stdin.flush()
        self.taken = int(self.hog.stdout.readline())

    def batch_changed(self, change):
        self.stopped = True
        self.changes_seen.append(self.taken)


inputs = keras.Input((1,), name="x")
model = keras.Model(inputs, keras.layers.Dense(1, name="answer")(inputs))
model.compile("sgd", "mse")
base = psutil.Process().memory_info().rss
budget = base + 1300 * 2**20
neighbour = Neighbour()
try:
    result = memtune.fit(
        model, {data!r}, epochs=2, batch_size=64, mode="streaming", target=["answer"],
        budget=f"{{budget}}B", safety=600 * 2**20 / budget, analytic=True, verbose=0,
        callbacks=[neighbour],
    )
finally:
    if neighbour.hog is not None:
        neighbour.hog.stdin.close()
        neighbour.hog.wait(timeout=60)
print(json.dumps({{
    "changes": result.batch_size_changes,
    "taken_at_change": neighbour.changes_seen,
    "epochs": len(result.history["loss"]),
}}))
"""


@pytest.mark.slow
def test_a_real_neighbour_taking_memory_shrinks_the_batch(tmp_path: Path) -> None:
    """A hog child takes memory in 64 MiB steps while memtune trains against a small budget:
    memtune halves the batch before the budget it shares runs out, then finishes the run."""
    data = tmp_path / "d"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        x = rng.normal(size=3200)
        pd.DataFrame({"x": x, "answer": 2 * x}).to_csv(data / f"{i}.csv", index=False)
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(DRIVER.format(hog=HOG, data=str(data))))
    done = subprocess.run(
        [sys.executable, str(driver)], capture_output=True, text=True, timeout=400
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    first = out["changes"][0]
    assert first["reason"] == "memory pressure", out
    assert (first["from"], first["to"], first["gradient_accumulation_steps"]) == (64, 32, 2)
    # the trigger came from the neighbour's memory, not from noise before it started
    assert 256 * MiB <= out["taken_at_change"][0] <= 1600 * MiB, out
    assert len(out["changes"]) == 1, out  # a neighbour that only holds its memory: no repeat
    assert out["epochs"] == 2


def test_the_hosts_ordinary_fluctuation_does_not_shrink_the_batch() -> None:
    """#13: a 65 MiB dip in available memory took the batch 2 → 1 near the budget."""
    dog = Watchdog(budget_bytes=int(1.5 * GiB), usable_bytes=int(1.35 * GiB))  # step 77 MiB
    near = int(1.35 * GiB) - 10 * MiB
    dog.check(Reading(rss=near, available=20 * GiB))
    dog.check(Reading(rss=near, available=20 * GiB - 65 * MiB))  # a dip: no trigger
    with pytest.raises(MemoryOverrun):  # a neighbour taking 200 MiB is pressure
        dog.check(Reading(rss=near, available=20 * GiB - 200 * MiB))
