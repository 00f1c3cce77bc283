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

from memtune.core.watchdog import MemoryOverrun, Reading, Watchdog
from tests.conftest import MemoryCgroup

MiB = 1024**2
GiB = 1024**3


RESERVE = 384 * MiB


def dog(budget: int, usable: int) -> Watchdog:
    return Watchdog(budget_bytes=budget, usable_bytes=usable, reserve_bytes=RESERVE)


def test_own_growth_is_not_pressure() -> None:
    watch = dog(4 * GiB, 3 * GiB)
    watch.check(Reading(held=1 * GiB, available=10 * GiB))
    # memtune grew by 1.5 GiB and the host lost exactly that: nobody else took memory
    watch.check(Reading(held=int(2.5 * GiB), available=int(8.5 * GiB)))
    assert watch.others(Reading(held=int(2.5 * GiB), available=int(8.5 * GiB))) == 0


def test_a_neighbour_on_a_host_with_room_changes_nothing() -> None:
    """#25: a neighbour taking 1-3 GiB of a host with 18 GiB free halved runs to batch 1.
    An explicit budget is memtune's own cap: others matter only near the host's reserve."""
    watch = dog(int(1.75 * GiB), int(1.575 * GiB))
    watch.check(Reading(held=1200 * MiB, available=18 * GiB))
    for taken in range(256, 3 * 1024 + 1, 256):  # 3 GiB in 256 MiB steps
        assert watch.check(Reading(held=1200 * MiB, available=18 * GiB - taken * MiB)) is None
    assert watch.others(Reading(held=1200 * MiB, available=15 * GiB)) == 3 * GiB


def test_a_neighbour_pushing_the_host_under_its_reserve_triggers_once_per_step() -> None:
    watch = dog(4 * GiB, 3 * GiB)  # step 204 MiB
    watch.check(Reading(held=2 * GiB, available=3 * GiB))
    watch.check(Reading(held=2 * GiB, available=500 * MiB))  # 2.5 GiB taken, still above 384
    with pytest.raises(MemoryOverrun) as info:
        watch.check(Reading(held=2 * GiB, available=300 * MiB))  # under the reserve
    assert info.value.reason == "memory pressure"
    assert str(info.value) == (
        "host memory pressure: 300 MiB available, under the 384 MiB the host must keep; other "
        "processes took 2.71 GiB since training started; memtune holds 2.00 GiB"
    )
    assert info.value.others == 3 * GiB - 300 * MiB
    watch.check(Reading(held=2 * GiB, available=300 * MiB))  # held, not worse: no repeat
    watch.check(Reading(held=2 * GiB, available=200 * MiB))  # worse by less than a step
    with pytest.raises(MemoryOverrun):
        watch.check(Reading(held=2 * GiB, available=90 * MiB))  # worse by a step


def test_a_halving_that_frees_nothing_is_said_once_and_not_repeated() -> None:
    """The text CNN at 3 GiB: halved, memory stayed at 3.2 GiB. memtune says why memory
    stays high, and does not halve again until it grows by a step."""
    watch = dog(3 * GiB, int(2.7 * GiB))  # step 154 MiB
    assert watch.check(Reading(held=2 * GiB, available=20 * GiB)) is None
    with pytest.raises(MemoryOverrun) as info:
        watch.check(Reading(held=int(3.1 * GiB), available=20 * GiB))
    assert str(info.value) == "memtune holds 3.10 GiB, past the usable budget 2.70 GiB"
    notice = watch.check(Reading(held=int(3.12 * GiB), available=20 * GiB))  # after halving
    assert notice is not None and notice.startswith("halving the batch freed nothing")
    assert "memtune holds 3.12 GiB" in notice and "grows by 154 MiB" in notice
    assert watch.check(Reading(held=int(3.12 * GiB), available=20 * GiB)) is None  # said once


def test_a_halving_that_freed_memory_says_nothing() -> None:
    watch = dog(3 * GiB, int(2.7 * GiB))
    watch.check(Reading(held=2 * GiB, available=20 * GiB))
    with pytest.raises(MemoryOverrun):
        watch.check(Reading(held=int(3.1 * GiB), available=20 * GiB))
    assert watch.check(Reading(held=int(2.5 * GiB), available=20 * GiB)) is None  # back under
    with pytest.raises(MemoryOverrun):
        watch.check(Reading(held=int(3.1 * GiB), available=20 * GiB))
    assert watch.check(Reading(held=int(2.9 * GiB), available=20 * GiB)) is None  # freed 200 MiB


def test_host_running_out_triggers_whatever_the_budget() -> None:
    watch = dog(100 * GiB, 90 * GiB)  # a budget the host lacks
    watch.check(Reading(held=2 * GiB, available=30 * GiB))
    with pytest.raises(MemoryOverrun, match="memory pressure"):
        watch.check(Reading(held=2 * GiB, available=100 * MiB))


def test_over_usable_triggers_again_only_after_real_growth() -> None:
    watch = dog(2 * GiB, int(1.8 * GiB))  # step 102 MiB
    watch.check(Reading(held=1 * GiB, available=20 * GiB))
    with pytest.raises(MemoryOverrun) as info:
        watch.check(Reading(held=int(1.85 * GiB), available=20 * GiB))
    assert info.value.reason == "over budget"
    watch.check(Reading(held=int(1.85 * GiB) + 50 * MiB, available=20 * GiB))  # allocator drift
    with pytest.raises(MemoryOverrun):
        watch.check(Reading(held=int(1.85 * GiB) + 120 * MiB, available=20 * GiB))


def test_a_dip_under_the_limit_does_not_rearm_the_trigger() -> None:
    """A 2 GiB stream's memory swings ±70 MiB between steps: each dip under the limit
    re-armed the trigger, and 40,423 went to 2,526 at 1.85-1.90 GiB. Only a step under the
    limit re-arms."""
    watch = dog(2 * GiB, int(1.8 * GiB))  # limit 1,843 MiB
    watch.check(Reading(held=1 * GiB, available=20 * GiB))
    with pytest.raises(MemoryOverrun):
        watch.check(Reading(held=1850 * MiB, available=20 * GiB))
    for held in (1790, 1870, 1800, 1890, 1780, 1900):  # swinging around the limit
        watch.check(Reading(held=held * MiB, available=20 * GiB))
    with pytest.raises(MemoryOverrun):  # a step past the last trigger: real growth
        watch.check(Reading(held=1960 * MiB, available=20 * GiB))
    watch.check(Reading(held=1700 * MiB, available=20 * GiB))  # a step under: re-armed
    with pytest.raises(MemoryOverrun):
        watch.check(Reading(held=1850 * MiB, available=20 * GiB))


def test_growth_near_the_budget_after_a_halving_ends_the_run() -> None:
    """resnet at 1 GiB, batch 935 (usable 922 MiB): 969 MiB after its first step, halved;
    the new batch shape added ~25 MiB, and each halving after it ~30 MiB more, to 1.15 GiB at
    batch 1. Near the budget, growth after a halving ends the run instead."""
    watch = dog(GiB, 922 * MiB)  # step 64 MiB: near the budget from 992 MiB
    watch.check(Reading(held=375 * MiB, available=20 * GiB))
    with pytest.raises(MemoryOverrun) as first:
        watch.check(Reading(held=969 * MiB, available=20 * GiB))
    assert not first.value.final  # the first excess halves
    with pytest.raises(MemoryOverrun) as info:
        watch.check(Reading(held=995 * MiB, available=20 * GiB))
    assert info.value.final and info.value.reason == "over budget"
    assert str(info.value) == (
        "memtune holds 995 MiB of its 1.00 GiB budget and grew by 26.0 MiB since the last "
        "halving: TensorFlow keeps the memory it freed, and each new batch shape adds to it"
    )


def test_growth_near_the_budget_is_judged_however_small() -> None:
    """Memory that grows whatever the batch (Arrow's system pool on a 2 GiB stream reached
    2.14 GiB, a step of growth per trigger): near the budget, a quarter step counts."""
    watch = dog(2 * GiB, int(1.8 * GiB))  # step 102 MiB
    watch.check(Reading(held=1 * GiB, available=20 * GiB))
    with pytest.raises(MemoryOverrun):
        watch.check(Reading(held=1960 * MiB, available=20 * GiB))  # past the usable budget
    assert watch.check(Reading(held=1970 * MiB, available=20 * GiB)) is not None  # freed nothing
    assert watch.check(Reading(held=1980 * MiB, available=20 * GiB)) is None  # under a quarter
    with pytest.raises(MemoryOverrun) as info:
        watch.check(Reading(held=2000 * MiB, available=20 * GiB))  # 40 MiB more, near 2 GiB
    assert info.value.final


def test_a_new_excess_after_memory_came_back_halves_again_even_near_the_budget() -> None:
    watch = dog(GiB, 922 * MiB)
    watch.check(Reading(held=375 * MiB, available=20 * GiB))
    with pytest.raises(MemoryOverrun):
        watch.check(Reading(held=969 * MiB, available=20 * GiB))
    assert watch.check(Reading(held=800 * MiB, available=20 * GiB)) is None  # a step under
    with pytest.raises(MemoryOverrun) as info:
        watch.check(Reading(held=1000 * MiB, available=20 * GiB))
    assert not info.value.final  # a new excess, not growth after the halving


def test_the_hosts_ordinary_fluctuation_does_not_shrink_the_batch() -> None:
    """#13: a 65 MiB dip in available memory took the batch 2 → 1 near the budget; #25: a
    busy host's swings of several GiB halved runs. Only the reserve counts."""
    watch = dog(int(1.5 * GiB), int(1.35 * GiB))
    near = int(1.35 * GiB) - 10 * MiB
    watch.check(Reading(held=near, available=20 * GiB))
    for available in (20 * GiB - 65 * MiB, 14 * GiB, 19 * GiB, 1 * GiB, 500 * MiB):
        assert watch.check(Reading(held=near, available=available)) is None


# ------------------------------------------------------------ recovery's policy, pure


class _Overrun:
    """An error that is not memtune's: TensorFlow's ResourceExhaustedError, say."""


@pytest.mark.parametrize(
    ("error", "batch", "multiworker", "action"),
    [
        (MemoryOverrun("m", "over budget"), 8, False, "halve"),
        (MemoryOverrun("m", "memory pressure"), 8, False, "halve"),
        (_Overrun(), 2, False, "halve"),
        (MemoryOverrun("m", "memory pressure"), 1, False, "wait"),  # the host is short
        (MemoryOverrun("m", "over budget"), 1, False, "fail"),  # memtune itself is too big
        (MemoryOverrun("m", "over budget", final=True), 467, False, "fail"),  # halving adds
        (_Overrun(), 1, False, "fail"),
        (MemoryOverrun("m", "memory pressure"), 8, True, "fail"),  # one worker cannot change
    ],
)
def test_recovery_halves_waits_at_batch_one_under_pressure_or_fails(
    error: BaseException, batch: int, multiworker: bool, action: str
) -> None:
    from memtune.run.recovery import recovery_action

    assert recovery_action(error, batch, multiworker) == action


def test_waiting_for_memory_goes_on_when_it_comes_back_and_fails_in_units_when_not() -> None:
    from memtune.core.errors import TrainingFailed
    from memtune.run.recovery import wait_for_memory

    said: list[str] = []
    readings = iter([100 * MiB, 200 * MiB, 600 * MiB])
    exc = MemoryOverrun("m", "memory pressure", others=int(2.5 * GiB))
    waited = wait_for_memory(exc, said.append, timeout=10, read=lambda: next(readings),
                             sleep=lambda s: None)  # fmt: skip
    assert waited == 1.0  # two polls of half a second
    assert said == [
        "memory pressure at batch 1: waiting up to 10 s for memory (100 MiB available, under "
        "the 384 MiB the host must keep; other processes took 2.50 GiB since training started)",
        "memory is back (600 MiB available) after 1 s: continuing",
    ]
    with pytest.raises(TrainingFailed) as info:
        wait_for_memory(exc, said.append, timeout=2, read=lambda: 90 * MiB, sleep=lambda s: None)
    assert str(info.value) == (
        "memory pressure even at batch 1: waited 2 s and the host still has only 90.0 MiB "
        "available (it must keep 384 MiB; other processes took 2.50 GiB); free memory or lower "
        "--budget"
    )


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
import memtune
from memtune.proc import tf as _tf
from memtune.probe import process
from memtune.run.events import RunListener

keras = _tf.keras()
STEP, LIMIT, HOG = {step}, {limit}, {hog!r}


class Neighbour(keras.callbacks.Callback, RunListener):
    \"\"\"Another process: STEP more after each training step, up to LIMIT or until memtune
    changes its batch.\"\"\"

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
neighbour = Neighbour()
try:
    result = memtune.fit(
        model, {data!r}, epochs=2, batch_size=64, mode="streaming", target=["answer"],
        budget=process.held() + {room}, analytic=True, verbose=0, callbacks=[neighbour],
    )
finally:
    if neighbour.hog is not None:
        neighbour.hog.stdin.close()
        neighbour.hog.wait(timeout=60)
print(json.dumps({{
    "changes": result.batch_size_changes,
    "taken_at_change": neighbour.changes_seen,
    "taken": neighbour.taken,
    "epochs": len(result.history["loss"]),
}}))
"""


def _run_beside_a_neighbour(
    tmp_path: Path, *, step: int, limit: int, room: int, preexec_fn: object = None
) -> dict[str, object]:
    """memtune.fit at an explicit budget (what it holds + ``room``) while a hog child takes
    ``step`` more after each training step, up to ``limit``."""
    data = tmp_path / "d"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        x = rng.normal(size=3200)
        pd.DataFrame({"x": x, "answer": 2 * x}).to_csv(data / f"{i}.csv", index=False)
    driver = tmp_path / "driver.py"
    code = DRIVER.format(hog=HOG, data=str(data), step=step, limit=limit, room=room)
    driver.write_text(textwrap.dedent(code))
    done = subprocess.run(
        [sys.executable, str(driver)],
        capture_output=True,
        text=True,
        timeout=400,
        preexec_fn=preexec_fn,  # type: ignore[arg-type]
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.slow
def test_a_neighbour_taking_3_gib_of_a_host_with_room_changes_no_batch(tmp_path: Path) -> None:
    """#25: another process taking 3 GiB in 256 MiB steps beside ``fit`` at an explicit
    budget: the budget is memtune's own cap, and the host keeps its reserve, so nothing
    changes (it halved 403 → 50 before)."""
    from memtune.probe.host import RESERVE_BYTES, available_bytes

    need = 3 * GiB + RESERVE_BYTES + 2 * GiB  # the hog, the reserve, the trainer and slack
    if available_bytes() < need:
        pytest.skip(f"the host has under {need / GiB:.1f} GiB available: no room to test room")
    out = _run_beside_a_neighbour(tmp_path, step=256 * MiB, limit=3 * GiB, room=1300 * MiB)
    assert out["changes"] == [], out
    assert out["taken"] == 3 * GiB and out["epochs"] == 2


@pytest.mark.slow
def test_a_neighbour_in_the_same_cgroup_pushing_it_short_halves_the_batch_and_no_kill(
    tmp_path: Path, memory_cgroup: MemoryCgroup
) -> None:
    """A 1.5 GiB memory cgroup holding the trainer and a hog child that takes 64 MiB after
    every step: when the group's available memory falls under the reserve memtune halves
    the batch (the hog then holds what it has), finishes the run, and the kernel kills
    nothing."""
    memory_cgroup.set_limit(1536 * MiB)
    out = _run_beside_a_neighbour(
        tmp_path, step=64 * MiB, limit=1536 * MiB, room=900 * MiB, preexec_fn=memory_cgroup.enter
    )
    first = out["changes"][0]  # type: ignore[index]
    assert first["reason"] == "memory pressure", out
    assert (first["from"], first["to"], first["gradient_accumulation_steps"]) == (64, 32, 2)
    assert 256 * MiB <= out["taken_at_change"][0] <= 1536 * MiB, out  # type: ignore[index]
    assert len(out["changes"]) == 1, out  # type: ignore[arg-type]
    assert out["epochs"] == 2
    assert memory_cgroup.oom_kills() == 0
