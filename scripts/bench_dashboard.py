"""What the live memory dashboard costs: training throughput with and without it.

The demo's data and model, small batches (many steps, so per-step work shows), each variant
in a fresh child process; rounds alternate the variants (and their order), each run counts
its median epoch after the first, and the overhead is taken within each round, then its
median and spread over the rounds are printed. ``--json`` adds one JSON line.

    python scripts/bench_dashboard.py [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BATCH = 32
EPOCHS = 6


def child(folder: str, variant: str) -> dict[str, Any]:
    import io

    from rich.console import Console

    from memtune.proc import tf as _tf

    _tf.tensorflow()
    import keras

    from memtune.app.fit import fit
    from memtune.ui.dashboard import memory_dashboard_class

    class Timer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.times: list[float] = []

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.times.append(time.perf_counter() - self.start)

    timer = Timer()
    callbacks: list[Any] = [timer]
    if variant != "none":
        # "live": the rich Live view redrawn on every step, as on a terminal
        console = Console(file=io.StringIO(), force_terminal=variant == "live", width=100)
        callbacks.append(memory_dashboard_class()(8 * 1024**3, batch_size=BATCH, console=console))
    result = fit(
        f"{folder}/model.py:build_model",
        f"{folder}/shards",
        epochs=EPOCHS,
        batch_size=BATCH,
        mode="in-memory",
        verbose=0,
        seed=0,
        callbacks=callbacks,
        target=["answer"],
        analytic=True,
    )
    # The median epoch after the first (which traces the model).
    return {"samples_per_s": result.plan.num_samples / statistics.median(timer.times[1:])}


ROUNDS = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    from memtune.app.demo import write_demo

    variants = ["none", "lines", "live"]
    rates: dict[str, list[float]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_demo(Path(tmp) / "demo")
        for round_ in range(args.rounds):
            # Alternate the order too, so no variant always runs first in a round.
            order = variants if round_ % 2 == 0 else variants[::-1]
            for v in order:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", str(folder), v],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                rates[v].append(json.loads(out.stdout.strip().splitlines()[-1])["samples_per_s"])
    # Overhead is taken within each round (the variants ran minutes apart at most), then
    # summarised: the median, and the spread across rounds.
    overhead = {
        v: [1 - r / n for r, n in zip(rates[v], rates["none"], strict=True)] for v in variants
    }
    names = {
        "none": "none",
        "lines": "plain lines (not a terminal)",
        "live": "live view (terminal)",
    }
    print(f"{'dashboard':<30}{'samples/s (median)':>20}{'overhead (median)':>19}{'spread':>18}")
    for v in variants:
        spread = f"{min(overhead[v]):+.1%} … {max(overhead[v]):+.1%}" if v != "none" else ""
        shown = f"{statistics.median(overhead[v]):.1%}" if v != "none" else "—"
        print(f"{names[v]:<30}{statistics.median(rates[v]):>20,.0f}{shown:>19}{spread:>18}")
    result = {
        "machine": f"{os.cpu_count()} cores, CPU only",
        "batch_size": BATCH,
        "rounds": args.rounds,
        "samples_per_s": {v: [round(r, 1) for r in rates[v]] for v in variants},
        "overhead_lines": round(statistics.median(overhead["lines"]), 4),
        "overhead": round(statistics.median(overhead["live"]), 4),
        "overhead_spread": [round(min(overhead["live"]), 4), round(max(overhead["live"]), 4)],
    }
    print(
        f"live dashboard overhead, median of {args.rounds} rounds: {result['overhead']:.1%} "
        "(target <= 3%)"
    )
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
