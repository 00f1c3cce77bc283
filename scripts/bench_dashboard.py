"""What the live memory dashboard costs: training throughput with and without it.

The demo's seed-shaped data and model, small batches (many steps, so per-step work shows),
each variant in a fresh child process, run twice in alternation; the best epoch after the
first counts. Prints a table and, with ``--json``, one JSON line with ``overhead``.

    python scripts/bench_dashboard.py [--json]
"""

from __future__ import annotations

import argparse
import json
import os
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

    from memtune import _tf

    _tf.tensorflow()
    import keras

    from memtune.train import fit
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
    return {"samples_per_s": result.plan.num_samples / min(timer.times[1:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    from memtune.demo import write_demo

    variants = ["none", "lines", "live"]
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_demo(Path(tmp) / "demo")
        for _ in range(3):
            for v in variants:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", str(folder), v],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                rate = json.loads(out.stdout.strip().splitlines()[-1])["samples_per_s"]
                best[v] = max(best.get(v, 0.0), rate)
    print(f"{'dashboard':<28}{'samples/s':>12}{'overhead':>10}")
    names = {
        "none": "none",
        "lines": "plain lines (not a terminal)",
        "live": "live view (terminal)",
    }
    for v in variants:
        print(f"{names[v]:<28}{best[v]:>12,.0f}{1 - best[v] / best['none']:>10.1%}")
    result = {
        "machine": f"{os.cpu_count()} cores, CPU only",
        "batch_size": BATCH,
        "samples_per_s": best,
        "overhead_lines": round(1 - best["lines"] / best["none"], 4),
        "overhead": round(1 - best["live"] / best["none"], 4),
    }
    print(f"live dashboard overhead {result['overhead']:.1%} (target <= 3%)")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
