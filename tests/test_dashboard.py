"""The dashboard as a person sees it (golden text), the trace, the report picture."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from memtune.cli import main
from memtune.proc.monitor import MemorySampler, Sample
from memtune.ui.dashboard import DashboardState, plain_line, render, sparkline
from tests.conftest import screen_of, text_of
from tests.nvml_fakes import SCENARIOS

MiB = 1024**2


def test_render_golden() -> None:
    state = DashboardState(
        epochs=3,
        epoch=1,
        steps=10,
        step=4,
        batch_size=256,
        accumulation=2,
        usable_bytes=1024 * MiB,
        logs={"loss": 0.5, "accuracy": 0.75},
        samples_per_second=1234.0,
        eta_seconds=65,
        tf_peak={"gpu:1": 2048 * MiB},
    )
    history = [
        Sample(
            i,
            (400 + 100 * i) * MiB,
            (900 + 100 * i) * MiB,
            2048 * MiB,
            (None, 3 * 1024 * MiB),
            (8192 * MiB, 8192 * MiB),
        )
        for i in range(4)
    ]
    assert text_of(render(state, history, 800 * MiB)) == (
        "memtune — epoch 2/3  step 4/10  ETA 1:05  1,234 samples/s  batch 256 × 2\n"
        "process   held 700 MiB (peak 800 MiB)  usable 1.00 GiB  RSS 1.17 GiB\n"
        "host RAM  available 2.00 GiB\n"
        "gpu:0     N/A\n"
        "gpu:1     3.00 GiB / 8.00 GiB\n"
        "TF gpu:1  peak 2.00 GiB\n"
        "memory    ▁▃▆█  400 MiB–700 MiB\n"
        "metrics   loss 0.5  accuracy 0.75\n"
    )
    assert plain_line(state, 800 * MiB) == (
        "epoch 2/3: loss 0.5 accuracy 0.75 — 1,234 samples/s, peak held 800 MiB of 1.00 GiB usable"
    )


def test_a_bucketed_run_shows_the_current_bucket() -> None:
    state = DashboardState(epochs=1, step=2, steps=9, batch_size=64, bucket=(120, 410))
    state.samples_per_second = 900.0
    history = [Sample(0, 300 * MiB, 700 * MiB, 2048 * MiB, (), ())]
    head = text_of(render(state, history, 300 * MiB)).splitlines()[0]
    assert head == "memtune — epoch 1/1  step 2/9  900 samples/s  bucket ≤120: batch 410"


def test_sparkline_scales_to_the_runs_own_range() -> None:
    gib = 1024 * MiB
    rss = [600 * MiB, 650 * MiB, 700 * MiB]
    assert sparkline(rss, usable=20 * gib) == "▁▄█"  # a 20 GiB budget does not flatten it
    assert sparkline(rss, usable=800 * MiB) == "▁▂▄"  # near the budget: scaled up to it
    assert sparkline([10, 10], usable=100) == "▁▁"
    assert sparkline([]) == ""


def test_sampler_survives_an_nvml_fault() -> None:
    fake = SCENARIOS["error_mid_query"]()
    sampler = MemorySampler(interval=0.01, nvml=fake)
    s = sampler.sample()
    assert s.gpu_used[0] == 1024**3 and s.gpu_used[1] is None  # GPU 1 lost: N/A, no error
    assert 0 < s.held < s.rss and sampler.peak_held == s.held


def test_sampler_numbers_gpus_as_the_probe_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """With CUDA_VISIBLE_DEVICES=1 the dashboard's gpu:0 is NVML's GPU 1, as in TensorFlow."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    s = MemorySampler(interval=0.01, nvml=SCENARIOS["two_gpus"]()).sample()
    assert s.gpu_used == (10 * 1024**3,) and s.gpu_total == (80 * 1024**3,)


@pytest.mark.slow
def test_callback_in_any_model_fit_writes_lines_and_trace(tmp_path: Path) -> None:
    import keras

    import memtune

    out = io.StringIO()
    board = memtune.MemoryDashboard(
        512 * MiB,
        batch_size=16,
        trace=str(tmp_path / "t.jsonl"),
        interval=0.01,
        console=Console(file=out, force_terminal=False, width=120),
        nvml=SCENARIOS["one_gpu"](),
    )
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    model.fit(
        np.zeros((64, 4)), np.zeros((64, 1)), batch_size=16, epochs=2, verbose=0, callbacks=[board]
    )
    lines = out.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert "samples/s" in lines[0] and "of 512 MiB usable" in lines[0]
    records = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    kinds = {r["kind"] for r in records}
    assert {"sample", "start", "step", "epoch", "end"} <= kinds
    steps = [r for r in records if r["kind"] == "step"]
    assert len(steps) == 8 and all(r["batch_size"] == 16 for r in steps)
    sample = next(r for r in records if r["kind"] == "sample")
    assert set(sample) == {"kind", "t", "held", "rss", "host_available", "gpu_used", "gpu_total"}
    assert sample["gpu_total"] == [24 * 1024**3]
    code = main(["report", str(tmp_path / "t.jsonl"), "-o", str(tmp_path / "r.png")])
    png = (tmp_path / "r.png").read_bytes()
    assert code == 0 and png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_report_bad_inputs(tmp_path: Path, capfd) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "sample", "t": 0, "rss": 1, "host_available": 1}\nnot json\n')
    assert main(["report", str(bad), "-o", str(tmp_path / "x.png")]) == 2
    assert "bad.jsonl, line 2" in capfd.readouterr().err
    assert main(["report", str(tmp_path / "none.jsonl"), "-o", str(tmp_path / "x.png")]) == 2
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_training_goes_on_when_a_gpu_is_lost_and_then_the_driver_fails(tmp_path: Path) -> None:
    """NVML faults mid-run: the lost GPU reads N/A on screen and in the trace, then every GPU
    does when the driver itself errors; the fit finishes every epoch."""
    import keras

    import memtune

    fake = SCENARIOS["two_gpus"]()

    def driver_error(*args: object) -> None:
        raise RuntimeError("Driver/library version mismatch")

    class Faults(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: object = None) -> None:
            if epoch == 0:
                fake.fail_at = ("memory", 1)  # GPU 1 falls off the bus
            elif epoch == 1:
                fake.nvmlDeviceGetMemoryInfo = driver_error  # type: ignore[method-assign]
            board.sampler.sample()  # at least one reading after each fault

    out = io.StringIO()
    board = memtune.MemoryDashboard(
        512 * MiB,
        batch_size=16,
        trace=str(tmp_path / "t.jsonl"),
        interval=0.01,
        console=Console(file=out, force_terminal=False, width=120),
        nvml=fake,
    )
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    history = model.fit(
        np.zeros((64, 4)),
        np.zeros((64, 1)),
        batch_size=16,
        epochs=3,
        verbose=0,
        callbacks=[board, Faults()],
    )
    assert len(history.history["loss"]) == 3
    samples = [
        r["gpu_used"]
        for r in map(json.loads, (tmp_path / "t.jsonl").read_text().splitlines())
        if r["kind"] == "sample"
    ]
    assert [70 * 1024**3, 10 * 1024**3] in samples  # before the faults (used = total - free)
    assert [70 * 1024**3, None] in samples  # GPU 1 lost
    assert samples[-1] == [None, None]  # the driver erroring: N/A for all, no exception
    view = text_of(render(board.state, list(board.sampler.history), board.sampler.peak_held))
    assert view.count("N/A") >= 2


@pytest.mark.slow
def test_one_clean_view_through_a_recovery(tmp_path: Path) -> None:
    """A batch change mid-epoch: still one dashboard on screen, counting the run's epochs,
    with the change as an event line (golden screen, machine-dependent numbers masked)."""
    import memtune
    from tests.conftest import FACTORY, exhaust_at, id_shards, write_factory

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, height=30, color_system=None)
    board = memtune.MemoryDashboard(
        512 * MiB, batch_size=8, console=console, nvml=SCENARIOS["no_driver"](), interval=0.01
    )
    result = memtune.fit(
        write_factory(tmp_path / "m.py", FACTORY),
        id_shards(tmp_path / "d"),
        epochs=2,
        batch_size=8,
        target="answer",
        analytic=True,
        verbose=0,
        callbacks=[board, exhaust_at({(0, 3)})],
    )
    assert [c["to"] for c in result.batch_size_changes] == [4]
    masks = [
        (r"\d[\d,]* samples/s", "# samples/s"),
        (r"\d+ MiB", "# MiB"),
        (r"available [\d.]+ GiB", "available # GiB"),
        (r"memory    \S+", "memory    <sparkline>"),
        (r"loss [\d.e+-]+", "loss #"),
    ]
    shown = []
    for line in screen_of(out.getvalue()):
        for pattern, mask in masks:
            line = re.sub(pattern, mask, line)
        shown.append(line)
    assert shown == [
        "memtune — epoch 2/2  step 17/17  ETA 0:00  # samples/s  batch 4 × 2",
        "process   held # MiB (peak # MiB)  usable # MiB  RSS # MiB",
        "host RAM  available # GiB",
        "memory    <sparkline>  # MiB–# MiB",
        "metrics   loss #",
        "event     epoch 1, sample 24: out of memory at batch 8 — continuing at batch 4 × 2",
    ]


def test_before_the_first_step_the_view_says_what_it_is_doing() -> None:
    state = DashboardState(epochs=3, batch_size=64, preparing="tracing the model")
    head = text_of(render(state, [], 0)).splitlines()[0]
    assert head == "memtune — epoch 1/3  preparing: tracing the model  batch 64 × 1"
    state = DashboardState(epochs=1, step=5, steps=10, steps_per_second=2.5)
    assert "2.5 steps/s" in text_of(render(state, [], 0))  # no batch size: no samples/s guess


def test_the_report_is_drawn_with_epochs_and_shared_permissions(tmp_path: Path) -> None:
    import os

    trace = tmp_path / "t.jsonl"
    records = [{"kind": "start", "t": 0, "usable_bytes": 20 * 1024 * MiB}]
    for i in range(40):
        records.append({"kind": "sample", "t": i / 4, "held": (300 + i) * MiB,
                        "rss": (600 + i) * MiB, "host_available": 1, "gpu_used": [],
                        "gpu_total": []})  # fmt: skip
        if i % 10 == 9:
            records.append({"kind": "epoch", "t": i / 4, "epoch": i // 10})
    records.append({"kind": "batch_change", "t": 5.0, "to": 4})
    trace.write_text("".join(json.dumps(r) + "\n" for r in records))
    old = os.umask(0o022)
    try:
        assert main(["report", str(trace), "-o", str(tmp_path / "r.png")]) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "r.png").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_a_watchdog_notice_is_shown_and_traced(tmp_path: Path) -> None:
    """A halving that freed nothing reaches the dashboard's events and the trace."""
    import memtune

    trace = tmp_path / "trace.jsonl"
    board = memtune.MemoryDashboard(
        512 * MiB, batch_size=8, show=False, nvml=SCENARIOS["no_gpu"](), trace=str(trace)
    )
    board.memory_notice("halving the batch freed nothing: RSS stays at 3.12 GiB")
    board.trace.close()  # type: ignore[union-attr]
    assert board.state.events == ["halving the batch freed nothing: RSS stays at 3.12 GiB"]
    kinds = [json.loads(line) for line in trace.read_text().splitlines()]
    assert {"kind": "notice", "message": board.state.events[0]}.items() <= kinds[-1].items()


@pytest.mark.parametrize("width", [80, 160])
def test_why_lines_wrap_at_word_boundaries_on_a_terminal_and_stay_whole_in_a_log(
    width: int,
) -> None:
    from memtune.ui.tables import why_line

    reason = (
        "3 trial(s) measured in a child process on the data's own rows, its longest included, "
        "each training until its peak held (at most 10 steps); planning and trial together "
        "kept within 21.6 GiB"
    )
    lines = why_line(reason, width).splitlines()
    assert lines[0].startswith("  - 3 trial(s)") and all(len(line) < width for line in lines)
    assert all(line.startswith("    ") for line in lines[1:])
    assert " ".join(line.strip() for line in lines).removeprefix("- ") == reason  # no word cut
    assert why_line(reason, None) == f"  - {reason}"


def test_the_planning_spinner_moves_between_frames() -> None:
    """The live view keeps one spinner across frames, so its glyph advances with time (a
    new spinner each frame was always on its first glyph)."""
    from memtune.ui.planning import PlanningView, render_planning

    view = PlanningView(Console(file=io.StringIO(), width=60), None)
    view.state.stage = "reading the data"
    first = render_planning(view.state, view._spinner).renderables[-1]
    view.state.stage = "trial at batch 8"
    second = render_planning(view.state, view._spinner).renderables[-1]
    assert first is second is view._spinner
    assert second.text.plain == "planning: trial at batch 8"
    glyphs = {view._spinner.render(t / 10).plain[0] for t in range(8)}
    assert len(glyphs) > 1


def test_batch_change_labels_never_overprint_and_name_their_bucket() -> None:
    """Twelve changes within two seconds: labels stack in rows without overlapping, the
    rest are counted, and a bucket's change says which bucket."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from memtune.ui.report import LABEL_ROWS, _change_labels, change_label

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    ax.plot([0, 100], [0, 1])
    changes = [
        {"t": 50 + 0.15 * i, "to": 4000 - 300 * i, "bucket_length": 40 if i % 2 else None}
        for i in range(12)
    ]
    hidden = _change_labels(fig, ax, changes)
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert len(boxes) + hidden == 12 and 1 <= len(boxes) <= LABEL_ROWS
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    assert change_label({"to": 262, "bucket_length": 40}) == " ≤40: → 262"
    assert change_label({"to": 1611}) == " batch → 1,611"
    plt.close(fig)
    spread = [{"t": 10.0 * i, "to": 8} for i in range(8)]  # far apart: every one labelled
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    ax.plot([0, 100], [0, 1])
    assert _change_labels(fig, ax, spread) == 0 and len(ax.texts) == 8
    plt.close(fig)


GOLDEN = Path(__file__).parent / "golden"


def _screen(renderable: object, width: int) -> str:
    """What a terminal ``width`` columns wide shows (pyte), trailing spaces cut."""
    out = io.StringIO()
    Console(file=out, width=width, force_terminal=True, color_system=None).print(renderable)
    return "\n".join(screen_of(out.getvalue(), width=width, height=60)) + "\n"


def _golden(name: str, text: str) -> None:
    """``text`` against ``tests/golden/NAME``; MEMTUNE_UPDATE_GOLDEN=1 rewrites it."""
    import os

    path = GOLDEN / name
    if os.environ.get("MEMTUNE_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed:\n{text}"


@pytest.mark.parametrize("width", [80, 160])
def test_golden_screens_through_planning_a_bucketed_recovery_and_the_summary(width: int) -> None:
    """The pictures a person sees, at two terminal widths: planning (steps done, the
    running one), the dashboard of a bucketed run after five batch changes (the newest
    three shown, the rest counted), and the fit summary's table."""
    from memtune.app.fit import FitResult
    from memtune.core.plan import Bucket, Plan
    from memtune.ui.planning import PlanningState, render_planning
    from memtune.ui.tables import render_fit

    planning = PlanningState(
        stage="measuring",
        done=["data: 12,345 rows in 3 shards", "trial at batch 8: peak 337 MiB"],
        trial="trial at batch 1,611: 412 MiB of 1.20 GiB",
    )
    state = DashboardState(
        epochs=3, epoch=1, steps=1_250, step=1_024, batch_size=1_611, usable_bytes=1200 * MiB,
        logs={"loss": 0.61, "accuracy": 0.7}, samples_per_second=12_345.0, eta_seconds=75,
        bucket=(40, 1_611),
        events=[
            f"epoch 1, sample {1_000 * i:,}: over budget at batch {2_000 - 100 * i:,} "
            f"(length-{10 * i} bucket) — continuing at batch {1_000 - 50 * i:,} × 1"
            for i in range(1, 6)
        ],
    )  # fmt: skip
    history = [Sample(i, (500 + 10 * i) * MiB, (900 + 10 * i) * MiB, 8192 * MiB) for i in range(12)]
    buckets = [Bucket(20, 1_611, 4_000), Bucket(40, 1_200, 8_345)]
    plan = Plan(
        batch_size=1_200, gradient_accumulation_steps=1, mode="in-memory", device="cpu",
        budget_bytes=1333 * MiB, usable_bytes=1200 * MiB, num_samples=12_345,
        per_sample_bytes=164, predicted_peak_bytes=1000 * MiB, buckets=buckets,
        pad_length=40, real_tokens=300_000,
    )  # fmt: skip
    result = FitResult(
        plan, {"loss": [0.7, 0.61]}, 1010 * MiB, 12.0, 12_345.0,
        batch_size_changes=[
            {"epoch": 0, "sample": 3_000, "from": 1_611, "to": 805,
             "gradient_accumulation_steps": 1, "reason": "over budget", "bucket_length": 20},
        ],
    )  # fmt: skip
    out = io.StringIO()
    render_fit(result, Console(file=out, width=width, force_terminal=True, color_system=None))
    summary = "\n".join(screen_of(out.getvalue(), width=width, height=60)) + "\n"
    _golden(f"planning-{width}.txt", _screen(render_planning(planning), width))
    _golden(f"dashboard-buckets-{width}.txt", _screen(render(state, history, 620 * MiB), width))
    _golden(f"fit-summary-{width}.txt", summary)


def test_the_report_draws_the_limit_that_moved_under_usable() -> None:
    """A neighbour leaves the host 200 MiB: memtune may hold held + 200 MiB − the reserve,
    under the usable line; the report draws that limit there, and not while there is room."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from memtune.probe.host import RESERVE_BYTES
    from memtune.ui.report import moved_limit

    def sample(t: float, available: int) -> dict[str, object]:
        return {"kind": "sample", "t": t, "held": 500 * MiB, "host_available": available}

    roomy = [sample(i, 8 * 1024 * MiB) for i in range(10)]
    fig, ax = plt.subplots()
    assert not moved_limit(ax, roomy, 1024 * MiB) and not ax.lines
    squeezed = roomy[:5] + [sample(5 + i, 200 * MiB + RESERVE_BYTES) for i in range(5)]
    assert moved_limit(ax, squeezed, 1024 * MiB)
    (line,) = ax.lines
    drawn = [y for y in line.get_ydata() if y == y]  # NaN where there was room
    assert drawn == [700.0] * 5 and line.get_label().startswith("limit")
    plt.close(fig)


@pytest.mark.slow
def test_fit_on_a_real_terminal_shows_one_picture_from_planning_to_summary(
    tmp_path: Path,
) -> None:
    """``memtune fit`` under a pseudo-terminal of 160 × 48, its bytes replayed through a VT
    emulator every 1,000 bytes: never two dashboards (no stale first frame), never the
    planning view beside the dashboard, and the summary at the end under one final frame."""
    import fcntl
    import os
    import pty
    import select
    import struct
    import sys
    import termios

    import pyte

    from tests.conftest import FACTORY, id_shards, write_factory

    spec = write_factory(tmp_path / "m.py", FACTORY)
    data = id_shards(tmp_path / "d")
    argv = [sys.executable, "-m", "memtune", "fit", "--model", spec, "--data", str(data),
            "--target", "answer", "--epochs", "3", "--analytic", "--budget", "2GiB"]  # fmt: skip
    pid, fd = pty.fork()
    if pid == 0:  # the child: memtune on the terminal
        os.environ.update(COLUMNS="160", LINES="48", TERM="xterm-256color")
        os.environ["MEMTUNE_CACHE_DIR"] = str(tmp_path / "cache")
        os.execv(sys.executable, argv)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 48, 160, 0, 0))
    out = b""
    while True:
        ready, _, _ = select.select([fd], [], [], 60)
        try:
            chunk = os.read(fd, 65536) if ready else b""
        except OSError:  # the child closed the terminal
            chunk = b""
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out[-2000:].decode(errors="replace")
    screen = pyte.Screen(160, 48)
    stream = pyte.ByteStream(screen)
    heads = planning_beside = 0
    for i in range(0, len(out), 1000):
        stream.feed(out[i : i + 1000])
        lines = screen.display
        shown = sum(line.startswith("memtune — epoch") for line in lines)
        heads = max(heads, shown)
        if shown and any("planning:" in line for line in lines):
            planning_beside += 1
    final = [line.rstrip() for line in screen.display if line.strip()]
    assert heads == 1 and planning_beside == 0
    assert sum(line.startswith("memtune — epoch 3/3") for line in final) == 1
    assert any(line.startswith("memtune fit") for line in final)
