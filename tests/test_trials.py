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
from memtune.estimate.trials import FeedSpec, TrialSpec, run_trial
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
    assert trial.peak_bytes > psutil.Process(os.getpid()).memory_info().rss // 20


def test_a_trial_over_its_limit_is_stopped_and_the_parent_lives(project) -> None:
    trial = run_trial(spec(project), 32, limit_bytes=150 * 1024**2)
    assert trial.exceeded
    assert trial.peak_bytes >= 150 * 1024**2


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
    assert first["batch_size"] in [t["batch_size"] for t in first["trials"]]  # verified
    chosen = next(t for t in first["trials"] if t["batch_size"] == first["batch_size"])
    assert first["predicted_peak_bytes"] >= chosen["peak_bytes"]
    assert first["predicted_peak_bytes"] <= first["usable_bytes"]
    assert any("0 from the cache" in r for r in first["reasons"])
    assert main(argv) == 0
    second = json.loads(capfd.readouterr().out)
    assert second["trials"] == first["trials"]
    assert any(f"{len(first['trials'])} from the cache" in r for r in second["reasons"])
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
    plan = memtune.suggest(model, project["data"], budget="2GiB")
    assert plan.trials and plan.largest_safe_batch_size == 800  # the whole dataset would fit
    assert plan.batch_size == 800 // 16  # the default keeps 16 steps per epoch


def test_a_trial_child_imports_only_what_builds_batches_and_trains() -> None:
    """No import circle: the child never loads planning or fit's orchestration."""
    import subprocess
    import sys

    code = (
        "import sys, memtune.estimate.trials, memtune.feed; "
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('memtune'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "memtune.feed" in loaded and "memtune.data.pipeline" in loaded
    for above in ("memtune.api", "memtune.train", "memtune.estimate.measured", "memtune.cli"):
        assert above not in loaded
