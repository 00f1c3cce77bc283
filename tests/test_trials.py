"""Real trials: a child process trains a few steps and the parent measures it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import psutil
import pytest

import memtune
from memtune.cli import main
from memtune.estimate.fitting import REACH
from memtune.estimate.trials import FeedSpec, TrialSpec, run_trial
from memtune.probe import process
from tests.conftest import write_csv_shards, write_factory

pytestmark = pytest.mark.slow
GiB = 1024**3
MODEL = """
x = keras.Input((16,), name="x")
h = keras.layers.Dense(64, activation="relu")(x)
model = keras.Model(x, keras.layers.Dense(1, name="answer")(h))
model.compile("adam", "mse")
return model
"""


@pytest.fixture
def project(tmp_path: Path) -> dict[str, str]:
    rows = 400
    frame = pd.DataFrame({"x": [" ".join(["0.5"] * 16)] * rows, "answer": [1.0] * rows})
    data = write_csv_shards(tmp_path / "shards", [frame, frame])
    return {"data": str(data), "model": write_factory(tmp_path / "m.py", MODEL)}


def spec(project: dict[str, str]) -> TrialSpec:
    feeds = (
        FeedSpec("x", "input", (16,), "float32"),
        FeedSpec("answer", "target", (1,), "float32"),
    )
    return TrialSpec(project["model"], feeds)


def test_a_real_trial_measures_the_child(project) -> None:
    trial = run_trial(spec(project), 32, limit_bytes=8 * GiB)
    assert not trial.exceeded
    assert 150 * 1024**2 < trial.peak_bytes < 4 * GiB  # TensorFlow's resident baseline and more
    assert trial.peak_bytes > process.held() // 20


def test_a_trial_for_a_fit_with_validation_evaluates_too(project) -> None:
    """fit evaluates held-out rows each epoch, so the trial measures an evaluation as well,
    even when it stops training early because its peak held."""
    from dataclasses import replace

    from memtune.proc import children

    for validation in (False, True):
        proc = children.spawn("memtune.estimate.trial_child")
        try:
            job = replace(spec(project), validation=validation).to_json(32, 8 * GiB, False)
            out, _ = proc.communicate(job, timeout=240)
        finally:
            children.reap(proc)
        answer = children.last_json(out)
        assert answer is not None and answer["ok"] and answer["validated"] is validation


def test_reaping_a_child_that_already_ended_closes_its_pipes() -> None:
    """A trial's answer is read and its child waited for by hand (the watcher's way, not
    ``communicate``); reaping it afterwards still closes its pipes (they leaked before)."""
    from memtune.proc import children

    proc = children.spawn("memtune.estimate.trial_child")
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    proc.stdin.write('{"baseline": true}')
    proc.stdin.close()
    out = proc.stdout.read()
    proc.stderr.read()
    _, status = os.waitpid(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0 and children.last_json(out) is not None
    assert not proc.stdout.closed
    children.reap(proc)
    assert proc.stdout.closed and proc.stderr.closed


def test_a_bare_child_is_measured_once_a_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a trial child holds before TensorFlow depends on nothing a call changes: the
    second plan in a process (the Python API's fit after suggest) starts no child for it."""
    from memtune.estimate import trials
    from memtune.proc import children

    monkeypatch.setattr(trials, "_bare", {})
    held = trials.bare_child_bytes()
    assert 10 * 2**20 < held < 500 * 2**20  # Python and memtune's readers, not TensorFlow

    def no_child(*args: object, **kwargs: object) -> None:
        raise AssertionError("a second bare child was started")

    monkeypatch.setattr(children, "spawn", no_child)
    assert trials.bare_child_bytes() == held


def test_a_trial_over_its_limit_is_stopped_and_the_parent_lives(project) -> None:
    parent = process.held()
    # The limit covers this process and the child together: 150 MiB beside this process.
    trial = run_trial(spec(project), 32, limit_bytes=parent + 150 * 1024**2)
    assert trial.exceeded
    assert trial.peak_bytes >= 100 * 1024**2  # it had passed its share when it was stopped


def test_suggest_measures_then_hits_the_cache(project, capfd) -> None:
    argv = [
        "suggest",
        "--model",
        project["model"],
        "--data",
        project["data"],
        "--json",
        "--budget",
        "3GiB",
    ]
    assert main(argv) == 0
    first = json.loads(capfd.readouterr().out)
    assert len(first["trials"]) in range(1, 5)
    ran = [t for t in first["trials"] if not t["exceeded"]]
    assert first["batch_size"] <= REACH * max(t["batch_size"] for t in ran)  # on or near one
    below = [t["peak_bytes"] for t in ran if t["batch_size"] <= first["batch_size"]]
    assert first["predicted_peak_bytes"] >= max(below)
    assert first["predicted_peak_bytes"] <= first["usable_bytes"]
    assert any("0 from the cache" in r for r in first["reasons"])
    # A slightly different plan: the plan cache misses, the trial cache holds.
    argv += ["--safety", "0.11"]
    assert main(argv) == 0
    second = json.loads(capfd.readouterr().out)
    # The smallest batch is measured again, as an anchor against drift between periods.
    anchor = f"a fresh trial at batch {min(t['batch_size'] for t in ran)} measured"
    said = next(r for r in second["reasons"] if r.startswith(anchor))
    if said.endswith("the cache holds"):  # as it should within one test: the same plan
        assert second["trials"] == first["trials"]
        assert any(f"{len(first['trials'])} from the cache" in r for r in second["reasons"])
    else:  # the machine drifted past the noise between the two runs: the cache was shifted
        assert "the cached peaks are shifted" in said
    assert main(argv) == 0  # the same plan again: the plan cache's, as it was
    again = json.loads(capfd.readouterr().out)
    assert again == second | {"reasons": [*second["reasons"], again["reasons"][-1]]}
    assert again["reasons"][-1].startswith("the plan cache's plan")
    assert main([*argv, "--no-cache"]) == 0
    third = json.loads(capfd.readouterr().out)
    assert any("0 from the cache" in r for r in third["reasons"])


def test_analytic_runs_no_trial(project, capfd) -> None:
    assert (
        main(
            [
                "suggest",
                "--model",
                project["model"],
                "--data",
                project["data"],
                "--json",
                "--analytic",
            ]
        )
        == 0
    )
    plan = json.loads(capfd.readouterr().out)
    assert plan["trials"] == []
    assert any("unverified" in r for r in plan["reasons"])


def test_python_api_with_a_model_object(project) -> None:
    import keras

    x = keras.Input((16,), name="x")
    model = keras.Model(x, keras.layers.Dense(1, name="answer")(x))
    model.compile("sgd", "mse")
    # The budget covers this process (TensorFlow and the model are here) and the trial child.
    budget = process.held() + 2 * GiB
    plan = memtune.suggest(model, project["data"], budget=budget)
    assert plan.trials and plan.batch_size == 800 // 16  # the default keeps 16 steps an epoch
    # The trials' growth is inside their noise: no measured slope reaches past the batch
    # measured (it once reported the whole dataset, 800, from such trials).
    assert plan.largest_safe_batch_size == max(t.batch_size for t in plan.trials)


def test_a_trial_child_imports_only_what_builds_batches_and_trains() -> None:
    """No import circle: the child never loads planning or fit's orchestration."""
    import subprocess
    import sys

    code = (
        "import sys, memtune.estimate.trial_child, memtune.run.feed; "
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('memtune'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "memtune.run.feed" in loaded
    above = ("memtune.app", "memtune.cli", "memtune.ui", "memtune.estimate.measured")
    assert [m for m in loaded if m.startswith(above)] == []


def test_planning_never_loads_tensorflow_in_the_planning_process(project) -> None:
    """The model is read in a child and trials run in children: the planning process stays
    a light Python, so the budget covers it and the trial together."""
    import subprocess
    import sys

    code = (
        "import sys, memtune; "
        f"plan = memtune.suggest({project['model']!r}, {project['data']!r}, target='answer'); "
        "print(plan.batch_size, len(plan.trials), 'tensorflow' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert int(out[0]) > 0 and int(out[1]) >= 1
    assert out[2] == "False"


def test_planning_and_its_trials_together_stay_within_a_small_budget(project, tmp_path) -> None:
    """What the whole tree holds, sampled every 5 ms from outside: the planning process plus
    its trial child never pass the budget (1 GiB: a TensorFlow child holds ~280 MiB beside
    a light parent; counted as RSS with its libraries, ~800 MiB)."""
    import contextlib
    import subprocess
    import sys
    import threading
    import time

    budget = GiB
    env = {**os.environ, "MEMTUNE_CACHE_DIR": str(tmp_path / "cache")}
    argv = ["suggest", "--model", project["model"], "--data", project["data"]]
    argv += ["--budget", "1GiB", "--max-batch-size", "100000", "--json"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "memtune", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    peak, done = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        with contextlib.suppress(psutil.Error):
            while not done.is_set():
                peak = max(peak, process.tree_held(proc.pid))
                time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate(timeout=600)
    done.set()
    sampler.join()
    assert proc.returncode == 0, err
    plan = json.loads(out)
    assert peak <= budget, f"tree peaked at {peak / 2**20:.0f} MiB"
    assert peak > 250 * 1024**2  # a trial really ran beside the planning process
    assert any("planning and trial together kept within" in r for r in plan["reasons"])
