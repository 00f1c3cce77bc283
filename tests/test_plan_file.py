"""Plans kept as files (suggest --save-plan, fit --plan, check --plan) and plan= in Python:
used as they are while nothing they depend on changed, else one line and a new plan."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

import memtune
from memtune.app import plan_file
from memtune.cli import main
from tests.conftest import FACTORY, id_shards, write_factory

BUDGET = "2GiB"


def _suggest(capfd: Any, model: str, data: Path, saved: Path, *extra: str) -> dict[str, Any]:
    argv = ["suggest", "--model", model, "--data", str(data), "--target", "answer"]
    code = main(
        [*argv, "--budget", BUDGET, "--analytic", "--json", "--save-plan", str(saved), *extra]
    )
    out, err = capfd.readouterr()
    assert code == 0, err
    return json.loads(out)


def _fit(capfd: Any, model: str, data: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
    argv = ["fit", "--model", model, "--data", str(data), "--epochs", "1", "--json", *extra]
    code = main(argv)
    out, err = capfd.readouterr()
    return code, (json.loads(out) if code == 0 else {}), err


def test_fit_trains_a_kept_plan_as_it_is_and_plans_again_when_its_data_changes(
    tmp_path: Path, capfd: Any
) -> None:
    data, saved = id_shards(tmp_path / "d"), tmp_path / "plan.json"
    model = write_factory(tmp_path / "m.py", FACTORY)
    # A batch the default plan would not choose, so reuse shows in the batch trained.
    planned = _suggest(capfd, model, data, saved, "--max-batch-size", "7")
    kept = json.loads(saved.read_text())
    assert {k: kept[k] for k in planned} == planned
    assert kept["options"]["budget"] == BUDGET and kept["depends_on"]["data"]["rows"] == 68
    # No planning flags: the plan's own options, and the plan as it is (a line added to its
    # reasons here shows it was not made again).
    kept["reasons"].append("kept as it was")
    saved.write_text(json.dumps(kept))
    code, result, err = _fit(capfd, model, data, "--plan", str(saved))
    assert code == 0 and "warning" not in err, err
    assert result["plan"] == planned | {"reasons": kept["reasons"]}
    assert result["plan"]["batch_size"] == 7
    (data / "3.csv").write_text((data / "3.csv").read_text() + "68,[1],0\n")
    code, result, err = _fit(capfd, model, data, "--plan", str(saved))
    assert code == 0, err
    assert err.strip() == (
        f"memtune: warning: {saved}: the data has 69 rows, 68 in the plan; planning again"
    )
    assert result["plan"]["num_samples"] == 69


def test_a_changed_model_or_flag_is_named_and_planned_again(tmp_path: Path, capfd: Any) -> None:
    data, saved = id_shards(tmp_path / "d"), tmp_path / "plan.json"
    model = write_factory(tmp_path / "m.py", FACTORY)
    _suggest(capfd, model, data, saved)
    wider = write_factory(
        tmp_path / "m.py", FACTORY.replace("Embedding(128, 4)", "Embedding(128, 8)")
    )
    code, _, err = _fit(capfd, wider, data, "--plan", str(saved))
    assert code == 0, err
    assert "the model changed" in err and "planning again" in err
    write_factory(tmp_path / "m.py", FACTORY)
    code, result, err = _fit(capfd, model, data, "--plan", str(saved), "--budget", "3GiB")
    assert code == 0, err
    assert "--budget is '3GiB' here, '2GiB' in the plan; planning again" in err
    assert result["plan"]["budget_bytes"] == 3 * 1024**3


def test_a_damaged_plan_file_is_one_line_and_exit_2(tmp_path: Path, capfd: Any) -> None:
    data = id_shards(tmp_path / "d")
    model = write_factory(tmp_path / "m.py", FACTORY)
    for name, text in {
        "deep.json": "[" * 200_000,
        "other.json": '{"batch_size": 3}',
        "cut.json": '{"format": 1, "batch_size": "x"}',
    }.items():
        (tmp_path / name).write_text(text)
        code, _, err = _fit(capfd, model, data, "--plan", str(tmp_path / name))
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"--plan '{tmp_path / name}'" in err and "Traceback" not in err
    code, _, err = _fit(capfd, model, data, "--plan", str(tmp_path / "none.json"))
    assert code == 2 and "no such file" in err
    saved = tmp_path / "plan.json"
    _suggest(capfd, model, data, saved)
    kept = json.loads(saved.read_text())
    kept["depends_on"]["versions"] = 5  # well-formed JSON, a damaged record
    saved.write_text(json.dumps(kept))
    code, _, err = _fit(capfd, model, data, "--plan", str(saved))
    assert code == 0 and "its depends_on is damaged; planning again" in err, err


def test_check_judges_on_a_kept_plan(tmp_path: Path, capfd: Any, monkeypatch: Any) -> None:
    data, saved = id_shards(tmp_path / "d"), tmp_path / "plan.json"
    model = write_factory(tmp_path / "m.py", FACTORY)
    planned = _suggest(capfd, model, data, saved)
    monkeypatch.chdir(tmp_path)
    argv = ["check", "--model", model, "--data", str(data), "--target", "answer"]
    code = main([*argv, "--batch-size", "4", "--plan", str(saved), "--json"])
    out, err = capfd.readouterr()
    assert code == 0 and "warning" not in err, err
    result = json.loads(out)
    assert (
        result["fits"] and result["largest_safe_batch_size"] == planned["largest_safe_batch_size"]
    )


def test_the_budget_read_off_the_host_holds_while_it_holds_the_plans_peak() -> None:
    plan = memtune.Plan(
        batch_size=8, gradient_accumulation_steps=1, mode="streaming", device="cpu",
        budget_bytes=1000, usable_bytes=900, num_samples=10, per_sample_bytes=1,
        predicted_peak_bytes=600,
    )  # fmt: skip
    auto = "available host memory less the 384 MiB reserve"
    then = {"bytes": 1000, "source": auto}
    assert plan_file.budget_change(plan, then, {"bytes": 700, "source": auto}) is None
    assert "under the plan's predicted peak" in str(
        plan_file.budget_change(plan, then, {"bytes": 600, "source": auto})
    )
    fixed = {"bytes": 1000, "source": "--budget"}
    assert plan_file.budget_change(plan, fixed, fixed) is None
    assert plan_file.budget_change(plan, fixed, {"bytes": 999, "source": "--budget"})


@pytest.mark.slow
def test_fit_after_suggest_in_python_trains_the_suggested_batch(tmp_path: Path, capfd: Any) -> None:
    """Measured (real trials in a child): fit takes the plan object and runs no trial."""
    import keras

    data = id_shards(tmp_path / "d")
    ns: dict[str, Any] = {"keras": keras}
    exec("def build():\n" + "".join(f"    {line}\n" for line in FACTORY.strip().splitlines()), ns)
    model = ns["build"]()
    plan = memtune.suggest(model, str(data), target="answer", budget="1536MiB", max_batch_size=9)
    assert plan.trials, plan.reasons
    capfd.readouterr()
    result = memtune.fit(model, str(data), epochs=1, target="answer", plan=plan, verbose=0)
    assert result.plan is plan
    assert "warning" not in capfd.readouterr().err
    other = id_shards(tmp_path / "e", [5, 5])
    again = memtune.fit(
        model, str(other), epochs=1, target="answer", plan=plan, verbose=0, analytic=True
    )
    assert again.plan.num_samples == 10
    err = capfd.readouterr().err
    assert "plan=: made for 68 samples" in err and "planning again" in err


def test_plan_file_paths_are_checked_before_planning(tmp_path: Path, capfd: Any) -> None:
    data = id_shards(tmp_path / "d")
    model = write_factory(tmp_path / "m.py", FACTORY)
    argv = ["suggest", "--model", model, "--data", str(data), "--target", "answer", "--analytic"]
    assert main([*argv, "--save-plan", str(tmp_path / "no" / "p.json")]) == 2
    assert "does not exist" in capfd.readouterr().err
    assert main([*argv, "--save-plan", str(tmp_path / "p.txt")]) == 2
    assert ".json" in capfd.readouterr().err
    assert not (tmp_path / "p.txt").exists() and not (tmp_path / "no").exists()


CACHED = "the plan cache's plan: nothing it depends on changed (--no-cache plans afresh)"


def _suggest_json(capfd: Any, model: str, data: Path, *extra: str) -> dict[str, Any]:
    argv = ["suggest", "--model", model, "--data", str(data), "--target", "answer", "--json"]
    code = main([*argv, "--budget", BUDGET, "--analytic", *extra])
    out, err = capfd.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_an_unchanged_case_takes_the_plan_cache_without_reading_model_or_data(
    tmp_path: Path, capfd: Any, monkeypatch: Any
) -> None:
    from memtune.app import prepare

    data = id_shards(tmp_path / "d")
    model = write_factory(tmp_path / "m.py", FACTORY)
    first = _suggest_json(capfd, model, data, "--max-batch-size", "5")
    assert CACHED not in first["reasons"]

    def no_reading(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the model or the data was read")

    with monkeypatch.context() as m:
        m.setattr(prepare, "_read", no_reading)
        second = _suggest_json(capfd, model, data, "--max-batch-size", "5")
    assert second == first | {"reasons": [*first["reasons"], CACHED]}
    # fit takes it too (reading the data and the model it trains, but planning nothing)
    code = main(["fit", "--model", model, "--data", str(data), "--target", "answer",
                 "--budget", BUDGET, "--analytic", "--max-batch-size", "5", "--epochs", "1",
                 "--json"])  # fmt: skip
    out, err = capfd.readouterr()
    assert code == 0, err
    assert json.loads(out)["plan"] == second
    # Another option, a data file touched, a file beside the factory changed: a new plan.
    assert CACHED not in _suggest_json(capfd, model, data, "--max-batch-size", "6")["reasons"]
    os.utime(data / "3.csv", ns=(1, 1))
    assert CACHED not in _suggest_json(capfd, model, data, "--max-batch-size", "5")["reasons"]
    assert CACHED in _suggest_json(capfd, model, data, "--max-batch-size", "5")["reasons"]
    (tmp_path / "layers.py").write_text("# a module the factory might import\n")
    assert CACHED not in _suggest_json(capfd, model, data, "--max-batch-size", "5")["reasons"]
    assert "--no-cache" in " ".join(
        _suggest_json(capfd, model, data, "--max-batch-size", "5")["reasons"]
    )
    fresh = _suggest_json(capfd, model, data, "--max-batch-size", "5", "--no-cache")
    assert CACHED not in fresh["reasons"]


def test_a_damaged_plan_cache_entry_is_a_miss(tmp_path: Path, capfd: Any) -> None:
    from memtune.estimate.cache import cache_dir

    data = id_shards(tmp_path / "d")
    model = write_factory(tmp_path / "m.py", FACTORY)
    _suggest_json(capfd, model, data, "--max-batch-size", "3")
    entries = sorted((cache_dir() / "plans").glob("*.json"), key=lambda p: p.stat().st_mtime)
    for damage in ("[" * 200_000, '{"format": 1, "plan": {"batch_size": "²"}}', "\x00\xff"):
        entries[-1].write_text(damage)
        again = _suggest_json(capfd, model, data, "--max-batch-size", "3")
        assert CACHED not in again["reasons"] and again["batch_size"] == 3


def test_fit_on_a_kept_plan_that_drifted_says_so_and_drops_it(tmp_path: Path, capfd: Any) -> None:
    from memtune.estimate.cache import cache_dir

    data = id_shards(tmp_path / "d")
    model = write_factory(tmp_path / "m.py", FACTORY)
    flags = ["--target", "answer", "--budget", BUDGET, "--analytic", "--max-batch-size", "4"]
    _suggest_json(capfd, model, data, "--max-batch-size", "4")
    entry = max((cache_dir() / "plans").glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    value = json.loads(entry.read_text())
    value["plan"]["predicted_peak_bytes"] = 10 * 1024**2  # a period when it needed far less
    value["curve"]["source"] = "measured"  # as trials made it (an estimate is not checked)
    entry.write_text(json.dumps(value))
    code = main(["fit", "--model", model, "--data", str(data), *flags, "--epochs", "1", "--json"])
    out, err = capfd.readouterr()
    assert code == 0, err
    assert json.loads(out)["plan"]["predicted_peak_bytes"] == 10 * 1024**2  # it was taken
    assert "memtune: warning: the plan cache: this run peaked at" in err
    assert "dropped from the plan cache" in err and not entry.exists()
    assert CACHED not in _suggest_json(capfd, model, data, "--max-batch-size", "4")["reasons"]
