"""Crash injection: ``fit`` killed (SIGKILL) at every instant of checkpointing and saving,
then ``--resume``: every epoch is trained once into the result, the saved model equals an
uninterrupted run's, nothing of the user's is touched, no leftovers. And: a signalled
``suggest`` leaves no trial child behind.

The kills come from memtune's failpoints (``MEMTUNE_FAILPOINT=NAME@EPOCH``), so each lands on
its instant exactly: no sleeps, no timing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import pytest

from memtune.proc.failpoints import ENV
from tests.conftest import sigint_reaches_child, write_csv_shards, write_factory

pytestmark = pytest.mark.slow

EPOCHS = 3
FACTORY = """
keras.utils.set_random_seed(0)
x = keras.Input((3,), name="x")
h = keras.layers.Dense(8, activation="relu")(x)
model = keras.Model(x, keras.layers.Dense(1, name="answer")(h))
model.compile("adam", "mse")
return model
"""


IMAGE_MODEL = """
image = keras.Input((8, 8, 3), dtype="uint8", name="image")
x = keras.layers.Conv2D(2, 3)(keras.layers.Rescaling(1 / 255)(image))
x = keras.layers.GlobalAveragePooling2D()(x)
m = keras.Model(image, keras.layers.Dense(2, name="label")(x))
m.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
return m
"""


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The user's files (data shards, model factory) and an uninterrupted reference run."""
    user = tmp_path_factory.mktemp("user")
    rng = np.random.default_rng(0)
    frames = []
    for n in (70, 50, 41):
        a, b, c = rng.random(n), rng.random(n), rng.random(n)
        frames.append(pd.DataFrame({"a": a, "b": b, "c": c, "answer": a + 2 * b - c}))
    data = write_csv_shards(user / "shards", frames)
    model = write_factory(user / "model.py", FACTORY)
    ref = tmp_path_factory.mktemp("reference")
    done = _fit({"model": model, "data": str(data)}, ref, "--save", str(ref / "m.keras"))
    assert done.returncode == 0, done.stderr
    return {
        "user": user,
        "model": model,
        "data": str(data),
        "history": json.loads(done.stdout)["history"],
        "weights": _weights(ref / "m.keras"),
    }


def _fit(
    world: dict[str, Any], out: Path, *extra: str, failpoint: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if failpoint:
        env[ENV] = failpoint
    argv = [
        *(sys.executable, "-m", "memtune", "fit", "--model", world["model"]),
        *("--data", world["data"], "--target", "answer", "--epochs", str(EPOCHS)),
        *("--batch-size", "16", "--mode", "streaming", "--analytic", "--seed", "5"),
        *("--no-dashboard", "--json", "--trace", str(out / "t.jsonl"), *extra),
    ]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)


def _weights(path: Path) -> list[np.ndarray]:
    import keras

    return [np.asarray(w) for w in keras.saving.load_model(path).get_weights()]


def _same_weights(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    pairs = zip(a, b, strict=False)
    return len(a) == len(b) and all(np.allclose(x, y, rtol=1e-5, atol=1e-7) for x, y in pairs)


# (failpoint, what the kill interrupts)
KILLS = [
    ("checkpoint-weights@2", "mid weights write (the file cut in half)"),
    ("checkpoint-state@2", "weights written, before the state file"),
    ("checkpoint-commit@2", "both written, before the atomic switch"),
    ("checkpoint-committed@2", "switched in, before the older one is removed"),
    ("save-written@3", "--save written to its temporary file, before the rename"),
    ("save-landed@3", "--save landed, before the checkpoint is removed"),
    ("checkpoint-cleanup@2", "final cleanup, the older checkpoint removed"),
]


@pytest.mark.parametrize("failpoint", [k[0] for k in KILLS], ids=[k[1] for k in KILLS])
def test_killed_at_each_instant_resumes_to_the_uninterrupted_result(
    world: dict[str, Any], tmp_path: Path, failpoint: str
) -> None:
    before = _digest(world["user"])
    ck, save = tmp_path / "ck", tmp_path / "m.keras"
    args = ("--checkpoint-dir", str(ck), "--save", str(save))
    killed = _fit(world, tmp_path, *args, failpoint=failpoint)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    first_line = (tmp_path / "t.jsonl").read_text().splitlines()[0]

    resumed = _fit(world, tmp_path, *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr == ""
    history = json.loads(resumed.stdout)["history"]
    assert len(history["loss"]) == EPOCHS  # each epoch once, the checkpoint's and the new
    assert np.allclose(history["loss"], world["history"]["loss"], rtol=1e-5)
    assert _same_weights(_weights(save), world["weights"])
    assert not ck.exists()  # memtune created it, and removes it once the model landed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras", "t.jsonl"]  # no .tmp
    trace = (tmp_path / "t.jsonl").read_text().splitlines()
    assert trace[0] == first_line  # the killed run's trace was continued, not replaced
    kinds = [json.loads(line)["kind"] for line in trace]
    assert kinds.count("resumed") == 1 and kinds[-1] == "end"
    assert _digest(world["user"]) == before


DECODE_KILLS = [
    ("decode-written@0", "decoded images written (one file cut in half), before the rename"),
    ("decode-landed@0", "the new entry renamed in, before the older one is removed"),
]


@pytest.mark.parametrize(
    "failpoint", [k[0] for k in DECODE_KILLS], ids=[k[1] for k in DECODE_KILLS]
)
def test_a_kill_while_an_image_folder_is_decoded_leaves_a_cache_the_next_run_trusts(
    tmp_path: Path, failpoint: str
) -> None:
    from memtune.app.demo import png

    folder, cache = tmp_path / "images", tmp_path / "cache"
    rng = np.random.default_rng(0)
    for k, name in enumerate(("dark", "light")):
        (folder / name).mkdir(parents=True)
        for i in range(15):
            pixels = rng.integers(0, 20, (8, 8, 3)) + 200 * k
            (folder / name / f"{i}.png").write_bytes(png(pixels.astype(np.uint8)))
    model = write_factory(tmp_path / "img.py", IMAGE_MODEL)
    env = {k: v for k, v in os.environ.items() if k != ENV} | {"MEMTUNE_CACHE_DIR": str(cache)}
    argv = [
        *(sys.executable, "-m", "memtune", "fit", "--model", model, "--data", str(folder)),
        *("--mode", "streaming", "--analytic", "--batch-size", "8", "--epochs", "1"),
        *("--no-dashboard", "--json"),
    ]

    def run(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, env=env | extra, timeout=300)

    assert run().returncode == 0  # an entry of the folder as it was
    (folder / "dark" / "0.png").write_bytes(png(np.full((8, 8, 3), 9, np.uint8)))
    killed = run(**{ENV: failpoint})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    again = run()
    assert again.returncode == 0, again.stderr
    assert np.isfinite(json.loads(again.stdout)["history"]["loss"][0])
    (entry,) = (cache / "decoded").iterdir()  # no half entry, no older one, no leftovers
    pixels, labels = np.load(entry / "image.npy"), np.load(entry / "label.npy")
    assert sorted(labels.tolist()) == [0] * 15 + [1] * 15
    assert (pixels == 9).all(axis=(1, 2, 3)).sum() == 1  # the changed image, decoded anew


def test_killed_after_the_last_checkpoint_went_says_the_run_finished(
    world: dict[str, Any], tmp_path: Path
) -> None:
    ck, save = tmp_path / "ck", tmp_path / "m.keras"
    args = ("--checkpoint-dir", str(ck), "--save", str(save))
    assert _fit(world, tmp_path, *args, failpoint="checkpoint-cleanup@3").returncode == -9
    assert _same_weights(_weights(save), world["weights"])  # the model had landed
    again = _fit(world, tmp_path, *args, "--resume")
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1
    assert "holds no complete checkpoint (the earlier run finished and saved" in again.stderr
    assert _same_weights(_weights(save), world["weights"])  # never an untrained model
    fresh = _fit(world, tmp_path, *args)  # memtune's leftovers do not block a new run
    assert fresh.returncode == 0, fresh.stderr
    assert not ck.exists()


def test_checkpoint_dir_through_a_symlink(world: dict[str, Any], tmp_path: Path) -> None:
    """The link is resolved once; memtune works in its target and never removes the link
    or the folder the user made."""
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    save = tmp_path / "m.keras"
    args = ("--checkpoint-dir", str(link), "--save", str(save))
    assert _fit(world, tmp_path, *args, failpoint="checkpoint-committed@2").returncode == -9
    assert (real / ".memtune-checkpoint").is_file()
    resumed = _fit(world, tmp_path, *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert _same_weights(_weights(save), world["weights"])
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert real.is_dir() and list(real.iterdir()) == []


def test_without_save_the_final_checkpoint_is_kept_and_yields_the_model(
    world: dict[str, Any], tmp_path: Path
) -> None:
    ck, save = tmp_path / "ck", tmp_path / "m.keras"
    done = _fit(world, tmp_path, "--checkpoint-dir", str(ck))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["checkpoint"] == str(ck.resolve())
    later = _fit(world, tmp_path, "--checkpoint-dir", str(ck), "--resume", "--save", str(save))
    assert later.returncode == 0, later.stderr
    assert len(json.loads(later.stdout)["history"]["loss"]) == EPOCHS  # none trained again
    assert _same_weights(_weights(save), world["weights"])
    assert not ck.exists()


def test_a_batch_change_is_checkpointed_and_resumed_at_the_new_batch(tmp_path: Path) -> None:
    from memtune.app.fit import fit
    from tests.conftest import exhaust_at, id_shards

    folder = id_shards(tmp_path / "d")
    model = write_factory(tmp_path / "m.py", FACTORY.replace('(3,), name="x"', '(1,), name="id"'))
    ck = tmp_path / "ck"
    common: dict[str, Any] = {
        "batch_size": 8,
        "target": "answer",
        "verbose": 0,
        "seed": 1,
        "analytic": True,
        "checkpoint_dir": str(ck),
    }
    first = fit(model, folder, epochs=2, callbacks=[exhaust_at({(0, 3)})], **common)
    assert [c["to"] for c in first.batch_size_changes] == [4]
    state = json.loads((ck / "epoch-000002" / "state.json").read_text())
    assert (state["batch_size"], state["gradient_accumulation_steps"]) == (4, 2)

    from memtune.ui.memory_dashboard import MemoryDashboard

    trace = tmp_path / "t.jsonl"
    board = MemoryDashboard(2**30, batch_size=8, trace=str(trace), show=False)
    second = fit(model, folder, epochs=3, resume=True, callbacks=[board], **common)
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    resumed = [r for r in records if r["kind"] == "batch_change"]
    assert [(r["from"], r["to"], r["reason"]) for r in resumed] == [
        (8, 4, "resumed at the checkpoint's batch")
    ]
    assert {r["batch_size"] for r in records if r["kind"] == "step"} == {4}  # not the plan's 8
    assert len(second.history["loss"]) == 3
    assert second.history["loss"][:2] == first.history["loss"]
    assert second.model.optimizer.gradient_accumulation_steps == 2
    state = json.loads((ck / "epoch-000003" / "state.json").read_text())
    assert (state["batch_size"], state["gradient_accumulation_steps"]) == (4, 2)


@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL], ids=lambda s: s.name
)
def test_a_signalled_suggest_leaves_no_trial_child(world: dict[str, Any], signum: int) -> None:
    parent = subprocess.Popen(
        [
            *(sys.executable, "-m", "memtune", "suggest", "--model", world["model"]),
            *("--data", world["data"], "--target", "answer", "--no-cache"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_reaches_child,
    )
    me = psutil.Process(parent.pid)
    children: list[psutil.Process] = []
    # Signal once a trial has loaded TensorFlow (past its start-up check that the parent is
    # alive): from then on only the kernel's parent-death signal or memtune's reaping can
    # stop it. A trial forked from the warm parent counts too (the chain trial -> warm
    # parent -> memtune is then what stops it). Bounded: the parent ends by itself.
    while parent.poll() is None and not any(_trial(c) and _rss(c) > 150 * 2**20 for c in children):
        children = me.children(recursive=True)
        time.sleep(0.01)
    assert children, "suggest ended before a trial started"
    parent.send_signal(signum)
    _, err = parent.communicate(timeout=120)
    _, alive = psutil.wait_procs(children, timeout=2)
    assert alive == [], f"trial children outlived memtune: {alive}"
    if signum != signal.SIGKILL:
        assert parent.returncode == 128 + signum
        assert err.count("\n") == 1 and ("interrupted" in err or "stopped by" in err), err


def _trial(process: psutil.Process) -> bool:
    """A trial child: started afresh (its command line) or forked (its name)."""
    try:
        return process.name() == "trial_child" or any("trial_child" in a for a in process.cmdline())
    except psutil.Error:
        return False


def _rss(process: psutil.Process) -> int:
    try:
        return int(process.memory_info().rss)
    except psutil.Error:
        return 0


WIDE = FACTORY.replace("Dense(8, activation", "Dense(400, activation").replace(
    'h = keras.layers.Dense(400, activation="relu")(x)',
    'h = keras.layers.Dense(400, activation="relu")(x)\n'
    'h = keras.layers.Dense(400, activation="relu")(h)',
)  # ~162k weights: with Adam's two slots a checkpoint takes ~1.9 MiB


def test_a_full_disk_ends_in_one_line_and_keeps_the_last_checkpoint(
    tmp_path: Path, capfd: Any
) -> None:
    from memtune.cli import main
    from tests.conftest import id_shards, tmpfs

    folder = id_shards(tmp_path / "d")
    model = write_factory(tmp_path / "m.py", WIDE.replace('(3,), name="x"', '(1,), name="id"'))
    with tmpfs(tmp_path / "small", "5m") as disk:
        ck = disk / "ck"
        argv = ["fit", "--model", model, "--data", str(folder), "--target", "answer"]
        argv += ["--analytic", "--epochs", "4", "--checkpoint-dir", str(ck), "--no-dashboard"]
        assert main(argv) == 1
        err = capfd.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert f"--checkpoint-dir {str(ck)!r}: no room for epoch-000003 (about" in err
        assert "the last checkpoint: epoch-000002 is kept (--resume continues from it)" in err
        left = sorted(p.name for p in ck.iterdir())  # no half-written folder beside them
        assert left == [".memtune-checkpoint", "epoch-000001", "epoch-000002"]


def test_a_checkpoint_folder_lost_mid_run_warns_and_the_model_is_saved(
    tmp_path: Path, capfd: Any
) -> None:
    import shutil

    import keras

    from memtune.app.fit import fit
    from tests.conftest import id_shards

    folder = id_shards(tmp_path / "d")
    ck = tmp_path / "gone" / "ck"
    ck.parent.mkdir()

    class DeleteTheParent(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            if epoch == 1:
                shutil.rmtree(ck.parent)

    model = write_factory(tmp_path / "m.py", FACTORY.replace('(3,), name="x"', '(1,), name="id"'))
    result = fit(
        model, folder, epochs=3, target="answer", analytic=True, verbose=0,
        checkpoint_dir=str(ck), save=str(tmp_path / "m.keras"), callbacks=[DeleteTheParent()],
    )  # fmt: skip
    assert len(result.history["loss"]) == 3 and (tmp_path / "m.keras").is_file()
    assert result.checkpoint is None and not ck.parent.exists()
    err = capfd.readouterr().err
    assert err.count(f"--checkpoint-dir {str(ck)!r} is gone: training goes on") == 1, err


def test_a_save_with_no_room_is_one_line_and_leaves_no_temporary_file(
    tmp_path: Path, capfd: Any
) -> None:
    from memtune.cli import main
    from tests.conftest import id_shards, tmpfs

    folder = id_shards(tmp_path / "d")
    model = write_factory(tmp_path / "m.py", WIDE.replace('(3,), name="x"', '(1,), name="id"'))
    with tmpfs(tmp_path / "small", "1m") as disk:
        argv = ["fit", "--model", model, "--data", str(folder), "--target", "answer"]
        argv += ["--analytic", "--epochs", "1", "--save", str(disk / "m.keras")]
        assert main([*argv, "--no-dashboard"]) == 1
        err = capfd.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert f"--save {str(disk / 'm.keras')!r}: no room for the model (about" in err
        assert list(disk.iterdir()) == []


def test_a_trace_and_report_on_a_full_disk_end_in_lines_not_a_crash(
    tmp_path: Path, capfd: Any
) -> None:
    from memtune.cli import main
    from tests.conftest import id_shards, tmpfs

    folder = id_shards(tmp_path / "d")
    model = write_factory(tmp_path / "m.py", FACTORY.replace('(3,), name="x"', '(1,), name="id"'))
    with tmpfs(tmp_path / "small", "256k") as disk:
        # a disk full to the brim
        with open(disk / "filler", "wb", buffering=0) as filler, contextlib.suppress(OSError):
            while True:
                filler.write(b"\0" * 4096)
        trace, report = disk / "t.jsonl", disk / "r.png"
        argv = ["fit", "--model", model, "--data", str(folder), "--target", "answer"]
        argv += ["--analytic", "--epochs", "3", "--trace", str(trace), "--report", str(report)]
        assert main([*argv, "--no-dashboard", "--save", str(tmp_path / "m.keras")]) == 1
        err = capfd.readouterr().err.splitlines()
        assert err[0].startswith(f"memtune: warning: --trace {str(trace)!r} could not be written")
        assert err[1].startswith(f"memtune: error: --report {str(report)!r} not drawn: ")
        assert len(err) == 2 and (tmp_path / "m.keras").is_file()  # the model is saved
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "t.jsonl"]
