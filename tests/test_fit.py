"""Real training on small models: both modes, exactly once through Keras, errors surface."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import memtune.data.layout as pipeline
from memtune.app.fit import fit
from memtune.cli import main
from memtune.core.errors import MemtuneError
from tests.conftest import (
    FACTORY,
    SIZES,
    exhaust_at,
    id_shards,
    recording_model,
    sigint_reaches_child,
    write_factory,
)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("mode", ["streaming", "in-memory"])
def test_keras_sees_every_sample_once_per_epoch(tmp_path: Path, mode: str) -> None:
    folder = id_shards(tmp_path / "d")
    seen: list[int] = []
    result = fit(
        recording_model(seen),
        folder,
        epochs=2,
        batch_size=5,
        mode=mode,
        verbose=0,
        seed=1,
        target="answer",
    )
    n = sum(SIZES)
    assert len(seen) == 2 * n
    assert sorted(seen[:n]) == list(range(n)) and sorted(seen[n:]) == list(range(n))
    assert seen[:n] != seen[n:]  # shuffled per epoch
    assert len(result.history["loss"]) == 2


@pytest.mark.parametrize("mode", ["streaming", "in-memory"])
def test_cli_fit_json_and_atomic_save(tmp_path: Path, mode: str, capfd) -> None:
    folder = id_shards(tmp_path / "d")
    model = write_factory(tmp_path / "m.py", FACTORY)
    out = tmp_path / "trained.keras"
    code = main(
        [
            "fit",
            "--model",
            model,
            "--data",
            str(folder),
            "--epochs",
            "2",
            "--mode",
            mode,
            "--batch-size",
            "8",
            "--save",
            str(out),
            "--validation-split",
            "0.2",
            "--json",
        ]
    )
    stdout, stderr = capfd.readouterr()
    assert code == 0, stderr
    result = json.loads(stdout)
    assert {"plan", "history", "peak_bytes"} <= set(result)
    assert result["plan"]["mode"] == mode and result["plan"]["batch_size"] == 8
    assert len(result["history"]["loss"]) == 2 and "val_loss" in result["history"]
    assert result["peak_bytes"] > 100 * 1024**2
    assert out.is_file() and [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == []
    import keras

    assert keras.saving.load_model(out).count_params() > 0


def test_validation_data_and_accumulation(tmp_path: Path) -> None:
    folder = id_shards(tmp_path / "d")
    val = id_shards(tmp_path / "v", [4, 3])
    model_spec = write_factory(tmp_path / "m.py", FACTORY)
    result = fit(
        model_spec,
        folder,
        epochs=1,
        validation_data=str(val),
        effective_batch_size=8,
        max_batch_size=4,
        verbose=0,
    )
    assert (result.plan.batch_size, result.plan.gradient_accumulation_steps) == (4, 2)
    assert result.model.optimizer.gradient_accumulation_steps == 2
    assert "val_loss" in result.history


def test_worker_failure_reaches_the_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = id_shards(tmp_path / "d")
    real = pipeline.read_block
    calls = {"n": 0}

    def failing(block: Any, columns: list[str]) -> Any:
        calls["n"] += 1
        if block.shard.label == "9.csv":
            raise MemtuneError(f"{block.shard.label}, row 3: simulated corrupt cell")
        return real(block, columns)

    monkeypatch.setattr(pipeline, "read_block", failing)
    seen: list[int] = []
    with pytest.raises(MemtuneError, match=r"9\.csv, row 3"):
        fit(
            recording_model(seen),
            folder,
            epochs=1,
            batch_size=4,
            mode="streaming",
            verbose=0,
            shuffle=False,
            target="answer",
        )
    assert len(seen) < sum(SIZES)  # the epoch never completed


def _wait_for_epochs(child: Any, trace: Path, epochs: int, polls: int = 4800) -> None:
    """Poll a training child's trace until it has finished ``epochs`` epochs (bounded)."""
    import time

    for _ in range(polls):
        if child.poll() is not None:
            return
        if trace.exists() and trace.read_text().count('"kind": "epoch"') >= epochs:
            return
        time.sleep(0.05)


def test_killed_fit_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    """SIGKILL after two epochs; ``--resume`` runs only the remaining two."""
    import os
    import signal
    import subprocess
    import sys

    from memtune.app.demo import write_demo

    demo = write_demo(tmp_path / "demo")
    trace, ck = tmp_path / "t.jsonl", tmp_path / "ck"
    argv = [
        sys.executable,
        "-m",
        "memtune",
        "fit",
        "--model",
        f"{demo}/model.py:build_model",
        "--data",
        f"{demo}/shards",
        "--epochs",
        "4",
        "--batch-size",
        "16",
        "--mode",
        "streaming",
        "--checkpoint-dir",
        str(ck),
        "--analytic",
        "--no-dashboard",
    ]
    child = subprocess.Popen(
        [*argv, "--trace", str(trace)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ,
    )
    _wait_for_epochs(child, trace, 2)
    assert child.poll() is None, "the run ended before it could be killed"
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert ck.is_dir() and any(ck.iterdir())
    save = tmp_path / "m.keras"
    done = subprocess.run(
        [*argv, "--resume", "--json", "--save", str(save)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    history = json.loads(done.stdout)["history"]
    assert len(history["loss"]) == 4  # the checkpoint's epochs and the resumed ones, once each
    assert save.is_file() and not ck.exists()  # the checkpoint goes once the model landed


@pytest.mark.parametrize("mode", ["streaming", "in-memory"])
def test_out_of_memory_halves_the_batch_and_sees_every_sample_once(
    tmp_path: Path, mode: str
) -> None:
    folder = id_shards(tmp_path / "d")
    seen: list[int] = []
    model = recording_model(seen)
    result = fit(
        model,
        folder,
        epochs=2,
        batch_size=8,
        mode=mode,
        verbose=0,
        seed=2,
        target="answer",
        callbacks=[exhaust_at({(0, 3)})],
    )
    n = sum(SIZES)
    assert len(seen) == 2 * n
    assert sorted(seen[:n]) == list(range(n)) and sorted(seen[n:]) == list(range(n))
    assert result.batch_size_changes == [
        {
            "epoch": 0,
            "sample": 24,
            "from": 8,
            "to": 4,
            "gradient_accumulation_steps": 2,
            "reason": "out of memory",
        }
    ]
    assert model.optimizer.gradient_accumulation_steps == 2
    assert len(result.history["loss"]) == 2


def _failed_fit(tmp_path: Path, batch_size: int, callback: Any) -> Any:
    """The error a one-epoch streaming fit of the id shards ends with (it must fail)."""
    from memtune.core.errors import TrainingFailed

    with pytest.raises(TrainingFailed) as info:
        fit(
            recording_model([]),
            id_shards(tmp_path / "d"),
            epochs=1,
            batch_size=batch_size,
            mode="streaming",
            verbose=0,
            target="answer",
            callbacks=[callback],
        )
    return info.value


def test_growth_near_the_budget_after_a_halving_stops_the_run_at_its_batch(
    tmp_path: Path,
) -> None:
    """The watchdog's final overrun (near the budget, growth after a halving) ends the run at
    the batch it reached, halving no further: each new batch shape would add memory."""
    import keras

    from memtune.core.watchdog import MemoryOverrun

    class NearTheBudget(keras.callbacks.Callback):
        steps = 0

        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            NearTheBudget.steps += 1
            if NearTheBudget.steps == 2:  # past usable: halved
                raise MemoryOverrun("memtune holds 969 MiB", "over budget")
            if NearTheBudget.steps == 4:  # grew after the halving, near the budget
                raise MemoryOverrun("memtune holds 995 MiB", "over budget", final=True)

    failed = _failed_fit(tmp_path, 8, NearTheBudget())
    assert failed.exit_code == 1
    assert str(failed) == (
        "over budget (memtune holds 995 MiB); stopped before the budget at batch 4 (after "
        "halving from 8): a fresh run at --batch-size 4 starts without what this one kept"
    )


def test_out_of_memory_at_batch_one_stops_with_exit_1(tmp_path: Path) -> None:
    failed = _failed_fit(tmp_path, 2, exhaust_at(None))
    assert "even at batch 1" in str(failed)
    assert failed.exit_code == 1


def test_holding_more_than_a_tight_budget_shrinks_the_batch(tmp_path: Path) -> None:
    folder = id_shards(tmp_path / "d")
    seen: list[int] = []
    result = fit(
        recording_model(seen),
        folder,
        epochs=1,
        batch_size=8,
        mode="streaming",
        budget="200MiB",
        force=True,
        verbose=0,
        target="answer",
    )  # under what TensorFlow itself holds (~280 MiB)
    assert result.batch_size_changes and result.batch_size_changes[0]["from"] == 8
    assert result.batch_size_changes[0]["reason"] == "over budget"
    assert sorted(seen) == list(range(sum(SIZES)))


def test_cli_reports_a_batch_change_in_json_and_trace(tmp_path: Path, capfd) -> None:
    folder = id_shards(tmp_path / "d")
    model = write_factory(tmp_path / "m.py", FACTORY)
    trace = tmp_path / "t.jsonl"
    argv = [
        "fit",
        "--model",
        model,
        "--data",
        str(folder),
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--mode",
        "streaming",
        "--budget",
        "200MiB",
        "--trace",
        str(trace),
        "--json",
        "--analytic",
    ]
    # A forced batch predicted past the usable budget is refused, naming what would fit...
    assert main(argv) == 3
    out, err = capfd.readouterr()
    assert "--batch-size 8: its predicted peak" in err and "--force" in err, err
    assert json.loads(out) == {
        "error": err.strip().removeprefix("memtune: error: "),
        "exit_code": 3,
    }
    assert not trace.exists()
    # ...and --force trains it, the batch halving as it goes.
    code = main([*argv, "--force"])
    out, err = capfd.readouterr()
    assert code == 0, err
    assert json.loads(out)["plan"]["batch_size_forced"] is True
    changes = json.loads(out)["batch_size_changes"]
    assert changes and changes[0]["from"] == 8 and changes[0]["to"] == 4
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    assert any(e["kind"] == "batch_change" and e["to"] == 4 for e in events)
    epochs = [e["epoch"] for e in events if e["kind"] == "epoch"]
    assert epochs == [0, 1]  # the trace follows training past the change, to the end
    assert events[-1]["kind"] == "end"
    assert len(json.loads(out)["history"]["loss"]) == 2


@pytest.mark.parametrize(
    ("signame", "code", "said"),
    [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "stopped by SIGTERM")],
)
def test_ctrl_c_or_sigterm_stops_cleanly_and_keeps_the_checkpoint(
    tmp_path: Path, signame: str, code: int, said: str
) -> None:
    import os
    import signal
    import subprocess
    import sys

    from memtune.app.demo import write_demo

    demo = write_demo(tmp_path / "demo")
    trace, ck = tmp_path / "t.jsonl", tmp_path / "ck"
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "memtune",
            "fit",
            "--model",
            f"{demo}/model.py:build_model",
            "--data",
            f"{demo}/shards",
            "--epochs",
            "20",
            "--batch-size",
            "16",
            "--analytic",
            "--checkpoint-dir",
            str(ck),
            "--trace",
            str(trace),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ,
        preexec_fn=sigint_reaches_child,
    )
    _wait_for_epochs(child, trace, 1)
    child.send_signal(getattr(signal, signame))
    _, err = child.communicate(timeout=120)
    assert child.returncode == code
    assert err.count("\n") == 1 and said in err and "--resume" in err, err
    assert any(ck.iterdir())
    events = [json.loads(line) for line in trace.read_text().splitlines()]  # no line cut
    assert events[-1]["kind"] == "end"  # the trace was closed


def test_tensorboard_gets_memory_scalars(tmp_path: Path, capfd) -> None:
    folder = id_shards(tmp_path / "d")
    model = write_factory(tmp_path / "m.py", FACTORY)
    logs = tmp_path / "tb"
    code = main(
        [
            "fit",
            "--model",
            model,
            "--data",
            str(folder),
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--analytic",
            "--tensorboard",
            str(logs),
            "--no-dashboard",
        ]
    )
    assert code == 0, capfd.readouterr().err
    assert list((logs / "memory").glob("events.out.tfevents.*"))
    assert list((logs / "train").glob("events.out.tfevents.*"))  # Keras's own, beside it


def test_bad_validation_data_fails_before_any_trial(tmp_path: Path, monkeypatch) -> None:
    import memtune.estimate.runner as runner

    def no_trial(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a trial ran before the validation data was checked")

    monkeypatch.setattr(runner, "run_trial", no_trial)
    folder = id_shards(tmp_path / "d")
    other = tmp_path / "v.csv"
    other.write_text('id,seq\n1,"[1, 2]"\n2,"[3]"\n')  # no "answer" column
    model = write_factory(tmp_path / "m.py", FACTORY)
    with pytest.raises(MemtuneError, match=r"--validation-data .* has no column 'answer'"):
        fit(model, folder, epochs=1, target="answer", validation_data=str(other), verbose=0)
