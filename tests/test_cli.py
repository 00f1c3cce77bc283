"""The command line as a user meets it: output, JSON, exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from memtune.cli import main
from tests.conftest import MODEL, write_csv_shards, write_factory

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def project(tmp_path: Path, seq_frame: pd.DataFrame) -> dict[str, str]:
    data = write_csv_shards(tmp_path / "shards", [seq_frame, seq_frame, seq_frame])
    # b is None-length: padded to the longest (3); a truncated to 2; answer (1,) float32
    return {
        "data": str(data),
        "model": write_factory(tmp_path / "m.py", MODEL),
        "tmp": str(tmp_path),
    }


def run(capfd: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capfd.readouterr()
    return code, ANSI.sub("", out), err


def test_suggest_json_has_exact_bytes(project, capfd) -> None:
    code, out, err = run(
        capfd,
        "suggest",
        "--model",
        project["model"],
        "--data",
        project["data"],
        "--json",
        "--budget",
        "4GiB",
        "--analytic",
    )
    assert code == 0, err
    plan = json.loads(out)
    assert plan["per_sample_bytes"] == (2 + 3 + 1) * 4
    assert plan["num_samples"] == 9
    assert plan["dataset_bytes"] == 9 * 24
    assert plan["budget_bytes"] == 4 * 1024**3
    assert plan["usable_bytes"] == int(4 * 1024**3 * 0.9)
    assert plan["device"] == "cpu"
    assert plan["mode"] == "in-memory"
    assert plan["batch_size"] == 1  # 9 rows: the 16-step floor
    assert plan["largest_safe_batch_size"] == 9
    assert plan["trials"] == []
    assert any("analytic" in r for r in plan["reasons"])


def test_suggest_table(project, capfd) -> None:
    code, out, err = run(
        capfd,
        "suggest",
        "--model",
        project["model"],
        "--data",
        project["data"],
        "--budget",
        "4GiB",
        "--max-batch-size",
        "4",
        "--analytic",
    )
    assert code == 0, err
    assert re.search(r"batch size\s+│\s+4\s", out)
    assert "bytes per sample" in out and "24" in out
    assert "b: padded to 3 (the longest in the data)" in out
    assert err == ""


def test_probe_json(capfd) -> None:
    code, out, _ = run(capfd, "probe", "--json")
    assert code == 0
    data = json.loads(out)
    assert set(data["host"]) == {"total_bytes", "available_bytes", "limit_bytes", "reserve_bytes"}
    assert isinstance(data["gpus"], list)


def test_nothing_fits_exit_3(project, capfd) -> None:
    code, _, err = run(
        capfd,
        "suggest",
        "--model",
        project["model"],
        "--data",
        project["data"],
        "--budget",
        "10MiB",
    )
    assert code == 3
    assert err.count("\n") == 1 and "even batch 1 needs" in err


def test_debug_shows_traceback(project, capfd) -> None:
    code, _, err = run(
        capfd, "suggest", "--model", project["model"], "--data", "/nonexistent", "--debug"
    )
    assert code == 2
    assert "Traceback" in err


def test_subprocess_stderr_is_clean(project) -> None:
    """In a fresh process TensorFlow's start-up lines must not reach the user's stderr."""
    env = {**os.environ}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "memtune",
            "suggest",
            "--model",
            project["model"],
            "--data",
            project["data"],
            "--json",
            "--analytic",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert json.loads(done.stdout)["per_sample_bytes"] == 24
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "memtune",
            "suggest",
            "--model",
            project["model"],
            "--data",
            project["data"],
            "--target",
            "nope",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("memtune: error: --target")


def test_demo_refuses_a_folder_it_did_not_write(tmp_path: Path, capfd) -> None:
    """(What the demo writes, plans and trains is checked on README's own run of it,
    tests/test_readme.py.)"""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    code, _, err = run(capfd, "demo", str(tmp_path / "mine"))
    assert code == 2 and "memtune did not write" in err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_every_flag_has_help_text() -> None:
    from memtune.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    missing = [
        f"{name} {action.option_strings or action.dest}"
        for name, command in commands.choices.items()
        for action in command._actions
        if not action.help and action.dest != "help"
    ]
    assert missing == []


def test_a_failure_under_json_is_an_object_on_stdout_too(tmp_path: Path, capfd) -> None:
    missing = str(tmp_path / "none.keras")
    code = main(["suggest", "--model", missing, "--data", str(tmp_path), "--json"])
    out, err = capfd.readouterr()
    assert code == 2 and err.count("\n") == 1 and err.startswith("memtune: error: ")
    assert json.loads(out) == {
        "error": err.strip().removeprefix("memtune: error: "),
        "exit_code": 2,
    }
    assert main(["suggest", "--json", "--no-such-flag"]) == 2
    out, err = capfd.readouterr()
    assert json.loads(out) == {"error": err.strip(), "exit_code": 2}  # a usage error alike
    assert main(["suggest", "--model", missing, "--data", str(tmp_path)]) == 2
    assert capfd.readouterr().out == ""  # without --json, stdout stays empty
