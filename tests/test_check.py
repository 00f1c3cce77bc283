"""memtune check: exit codes, JUnit, flags over the file, bad configs."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest

from memtune.cli import main
from tests.conftest import write_csv_shards, write_factory

MODEL = """
x = keras.Input((8,), name="x")
h = keras.layers.Dense(32, activation="relu")(x)
model = keras.Model(x, keras.layers.Dense(1, name="answer")(h))
model.compile("adam", "mse")
return model
"""


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    frame = pd.DataFrame({"x": [" ".join(["1.5"] * 8)] * 300, "answer": [0.0] * 300})
    write_csv_shards(tmp_path / "data", [frame, frame])
    write_factory(tmp_path / "model.py", MODEL, name="build")
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "demo"\n\n[tool.memtune]\nmodel = "model.py:build"\ndata = "data"\n'
        'budget = "4GiB"\nbatch_size = 64\nanalytic = true\n\n'
        '[tool.memtune.profiles.tiny]\nbudget = "64MiB"\n'
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(capfd: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["check", *argv])
    out, err = capfd.readouterr()
    return code, out, err


def test_fits_exit_0_with_json(repo: Path, capfd) -> None:
    code, out, err = run(capfd, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["fits"] is True
    assert result["configured_batch_size"] == 64 and result["batch_size"] == 64
    assert result["largest_safe_batch_size"] >= 64
    assert result["predicted_peak_bytes"] <= result["usable_bytes"]


def test_does_not_fit_exit_1_with_junit(repo: Path, capfd) -> None:
    # A budget under the framework's own footprint can never fit, whatever the batch:
    code, out, _ = run(capfd, "--profile", "tiny", "--junit", "report.xml")
    assert code == 1
    assert "does not fit" in out or "nothing fits" in out
    suite = ET.parse(repo / "report.xml").getroot()
    assert suite.get("failures") == "1"
    failure = suite.find("testcase/failure")
    assert failure is not None and failure.get("message")


def test_too_large_batch_names_the_safe_one(repo: Path, capfd) -> None:
    code, out, _ = run(
        capfd,
        "--budget",
        "760MiB",
        "--batch-size",
        "1000000",
        "--json",
        "--effective-batch-size",
        "256",
    )
    result = json.loads(out)
    assert code == 1 and result["fits"] is False
    assert "largest safe batch is" in result["message"]
    assert "accumulation steps" in result["message"]


def test_flags_override_the_file(repo: Path, capfd) -> None:
    code, out, _ = run(capfd, "--json", "--batch-size", "32", "--budget", "3GiB")
    result = json.loads(out)
    assert code == 0
    assert result["configured_batch_size"] == 32
    assert result["budget_bytes"] == 3 * 1024**3


@pytest.mark.parametrize(
    ("table", "fragment"),
    [
        ("batch_sise = 64\n", "unknown key 'batch_sise'"),
        ('batch_size = "big"\n', "key 'batch_size' must be an integer"),
        ("safety = true\n", "key 'safety' must be a number"),
        ('model = "nope.py:build"\n', "does not exist"),
        ("budget = 6\n", "key 'budget' = 6 needs a unit, e.g. \"6GiB\""),
        ("gpu_memory = 16\n", "key 'gpu_memory' = 16 needs a unit"),
        ('budget = "6 parsecs"\n', "key 'budget' '6 parsecs'"),
    ],
)
def test_bad_config_exit_2(repo: Path, capfd, table: str, fragment: str) -> None:
    config = repo / "memtune.toml"
    base = 'model = "model.py:build"\ndata = "data"\nanalytic = true\n'
    lines = {line.split("=")[0].strip(): line for line in base.splitlines(keepends=True)}
    lines[table.split("=")[0].strip()] = table
    config.write_text("".join(lines.values()))
    code, _, err = run(capfd, "--config", str(config))
    assert code == 2, err
    assert fragment in err and err.count("\n") == 1


def test_a_gpu_profile_plans_its_own_memory_not_the_top_level_budget(repo: Path, capfd) -> None:
    """README's own config: ``--profile t4`` is planned against the T4's 15 GiB."""
    (repo / "pyproject.toml").write_text(
        '[tool.memtune]\nmodel = "model.py:build"\ndata = "data"\nbatch_size = 64\n'
        'budget = "6GiB"\nanalytic = true\n\n'
        '[tool.memtune.profiles.t4]\ndevice = "gpu"\ngpu_memory = "15GiB"\n'
        '[tool.memtune.profiles.small]\nbudget = "3GiB"\n'
    )
    code, out, err = run(capfd, "--profile", "t4", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert (result["device"], result["budget_bytes"]) == ("gpu:0", 15 * 1024**3)
    code, out, err = run(capfd, "--json")
    assert (code, json.loads(out)["budget_bytes"]) == (0, 6 * 1024**3)
    code, out, err = run(capfd, "--profile", "small", "--json")
    assert (code, json.loads(out)["budget_bytes"]) == (0, 3 * 1024**3)


def test_missing_config_and_profile(repo: Path, capfd) -> None:
    code, _, err = run(capfd, "--config", "absent.toml")
    assert code == 2 and "does not exist" in err
    code, _, err = run(capfd, "--profile", "huge")
    assert code == 2 and "no profile 'huge'" in err


@pytest.mark.slow
def test_gpu_from_a_cpu_runner_is_an_estimate(repo: Path, capfd) -> None:
    (repo / "pyproject.toml").write_text(
        '[tool.memtune]\nmodel = "model.py:build"\ndata = "data"\nbatch_size = 64\n'
    )
    code, out, err = run(capfd, "--device", "gpu", "--gpu-memory", "16GiB", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["device"] == "gpu:0" and result["budget_bytes"] == 16 * 1024**3
    assert result["estimate_only"] is True
    assert any(r.startswith("estimate:") for r in result["reasons"])
    assert len(result["trials"]) == 2  # the per-sample growth, measured on the CPU


@pytest.mark.slow
def test_a_batch_past_what_the_trials_support_gets_a_trial_of_its_own(repo: Path, capfd) -> None:
    """Planning's trials stop at batch 8 (--max-batch-size 8): batch 200 is judged on a
    trial at 200, not on a line drawn 25 times past the last trial."""
    (repo / "pyproject.toml").write_text(
        '[tool.memtune]\nmodel = "model.py:build"\ndata = "data"\nbatch_size = 200\n'
        'budget = "4GiB"\nmax_batch_size = 8\n'
    )
    code, out, err = run(capfd, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert [t["batch_size"] for t in result["trials"]] == [8]
    assert any(
        r.startswith("batch 200 is past batch 8, the largest the planning trials support")
        for r in result["reasons"]
    )
