"""How right is memtune's predicted peak? A zoo of models, two budgets each.

For each (model, budget): ``memtune suggest`` (trials) gives a plan; ``memtune fit`` then
trains at exactly that plan (forced ``--batch-size`` and ``--mode``) in a fresh process,
whose whole-process peak is measured from outside (``wait4`` → ru_maxrss). The analytic
prior's prediction at the same batch is printed beside it, so the gain of measuring shows.

    python scripts/bench_estimate.py [--json] [--only NAME]
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

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

GiB = 1024**3
BUDGETS = (1.25 * GiB, 1.6 * GiB)

MODELS: dict[str, str] = {
    "mlp": """
x = keras.Input((512,), name="x")
h = keras.layers.Dense(2048, activation="relu")(x)
h = keras.layers.Dense(2048, activation="relu")(h)
model = keras.Model(x, keras.layers.Dense(1, name="answer")(h))
""",
    "conv2d": """
x = keras.Input((3072,), name="pixels")
h = keras.layers.Reshape((32, 32, 3))(x)
h = keras.layers.Conv2D(16, 3, activation="relu")(h)
h = keras.layers.Conv2D(32, 3, activation="relu")(h)
h = keras.layers.GlobalAveragePooling2D()(h)
model = keras.Model(x, keras.layers.Dense(1, name="answer")(h))
""",
    "gru": """
x = keras.Input((200,), name="history")
h = keras.layers.Reshape((200, 1))(x)
h = keras.layers.GRU(64)(h)
model = keras.Model(x, keras.layers.Dense(1, name="answer")(h))
""",
    "embedding-lstm": """
x = keras.Input((None,), dtype="int32", name="tokens")
h = keras.layers.Embedding(5000, 64)(x)
h = keras.layers.LSTM(64)(h)
model = keras.Model(x, keras.layers.Dense(1, name="answer")(h))
""",
    "multi-input": """
clicks = keras.Input((60,), name="clicks")
items = keras.Input((None,), dtype="int32", name="items")
a = keras.layers.GRU(32)(keras.layers.Reshape((60, 1))(clicks))
b = keras.layers.GRU(32)(keras.layers.Embedding(1000, 16)(items))
h = keras.layers.Dense(16, activation="relu")(keras.layers.Concatenate()([a, b]))
model = keras.Model({"clicks": clicks, "items": items}, keras.layers.Dense(1, name="answer")(h))
""",
    "multi-output": """
x = keras.Input((256,), name="x")
h = keras.layers.Dense(2048, activation="relu")(x)
h = keras.layers.Dense(1024, activation="relu")(h)
y1 = keras.layers.Dense(1, name="y1")(h)
y2 = keras.layers.Dense(4, name="y2")(h)
model = keras.Model(x, {"y1": y1, "y2": y2})
""",
}
TARGETS = {"multi-output": ["y1", "y2"]}


def write_data(name: str, folder: Path, rng: np.random.Generator) -> Path:
    """Seed-shaped shards: CSV with list cells for sequence models, Parquet for wide ones."""
    folder.mkdir(parents=True)

    def lists(n: int, width: int, ints: bool = False, ragged: bool = False) -> list[list[Any]]:
        out = []
        for _ in range(n):
            k = int(rng.integers(1, width + 1)) if ragged else width
            out.append(
                [int(v) for v in rng.integers(1, 1000, k)]
                if ints
                else [round(float(v), 3) for v in rng.random(k)]
            )
        return out

    def parquet(shards: int, rows: int, columns: dict[str, Any]) -> None:
        for i in range(shards):
            table = pa.table({k: (v(rows) if callable(v) else v) for k, v in columns.items()})
            pq.write_table(table, folder / f"{i}.parquet")

    def csv(shards: int, rows: int, columns: dict[str, Any]) -> None:
        for i in range(shards):
            pd.DataFrame({k: v(rows) for k, v in columns.items()}).to_csv(
                folder / f"{i}.csv", index=False
            )

    answer = lambda n: rng.integers(0, 2, n)  # noqa: E731
    if name == "mlp":
        parquet(
            6,
            2500,
            {"x": lambda n: pa.array(lists(n, 512), pa.list_(pa.float32())), "answer": answer},
        )
    elif name == "conv2d":
        parquet(
            4,
            500,
            {
                "pixels": lambda n: pa.array(lists(n, 3072), pa.list_(pa.float32())),
                "answer": answer,
            },
        )
    elif name == "gru":
        csv(8, 400, {"history": lambda n: lists(n, 200, ragged=True), "answer": answer})
    elif name == "embedding-lstm":
        csv(8, 400, {"tokens": lambda n: lists(n, 150, ints=True, ragged=True), "answer": answer})
    elif name == "multi-input":
        csv(
            10,
            500,
            {
                "clicks": lambda n: lists(n, 80, ragged=True),
                "items": lambda n: lists(n, 50, ints=True, ragged=True),
                "answer": answer,
            },
        )
    else:
        parquet(
            6,
            2500,
            {
                "x": lambda n: pa.array(lists(n, 256), pa.list_(pa.float32())),
                "y1": lambda n: rng.random(n),
                "y2": lambda n: pa.array(lists(n, 4), pa.list_(pa.float32())),
            },
        )
    return folder


def factory(name: str, folder: Path) -> str:
    body = MODELS[name].strip().replace("\n", "\n    ")
    path = folder / f"{name.replace('-', '_')}.py"
    path.write_text(
        f"import keras\n\n\ndef build():\n    {body}\n    model.compile('adam', 'mse')\n    return model\n"
    )
    return f"{path}:build"


def run_measured(*args: str, cache: str) -> tuple[dict[str, Any], int]:
    """Run the CLI in a fresh process: its JSON and its whole-process peak, read from outside."""
    env = {**os.environ, "MEMTUNE_CACHE_DIR": cache}
    proc = subprocess.Popen(
        [sys.executable, "-m", "memtune", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(
            f"memtune {' '.join(args)} failed ({proc.returncode}): {err.strip()[-500:]}"
        )
    return json.loads(out), int(usage.ru_maxrss) * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--only", action="append", help="run only these models")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="memtune-estimate-") as tmp:
        for name in args.only or list(MODELS):
            folder = Path(tmp) / name
            data = write_data(name, folder / "data", rng)
            model = factory(name, folder)
            targets = [a for t in TARGETS.get(name, ["answer"]) for a in ("--target", t)]
            for budget in BUDGETS:
                common = [
                    "--model",
                    model,
                    "--data",
                    str(data),
                    *targets,
                    "--budget",
                    f"{budget / GiB:.2f}GiB",
                    # The memory model is judged at the memory bound, so the default
                    # 16-steps-per-epoch floor is lifted (the dataset still caps the batch).
                    "--max-batch-size",
                    str(10**9),
                ]
                cache = str(folder / "cache")
                start = time.perf_counter()
                plan, _ = run_measured("suggest", *common, "--json", cache=cache)
                suggest_s = time.perf_counter() - start
                forced = ["--batch-size", str(plan["batch_size"]), "--mode", plan["mode"]]
                analytic, _ = run_measured(
                    "suggest", *common, *forced, "--analytic", "--force", "--json", cache=cache
                )
                _, measured = run_measured(
                    "fit", *common, *forced, "--epochs", "1", "--json", cache=cache
                )
                pred = plan["predicted_peak_bytes"]
                rows.append(
                    {
                        "model": name,
                        "budget_gib": round(budget / GiB, 2),
                        "batch_size": plan["batch_size"],
                        "mode": plan["mode"],
                        "capped": plan["batch_size"] >= plan["num_samples"],
                        "trials": len(plan["trials"]),
                        "predicted": pred,
                        "measured": measured,
                        "error": abs(pred - measured) / measured,
                        "analytic_error": abs(analytic["predicted_peak_bytes"] - measured)
                        / measured,
                        "peak_over_usable": measured / plan["usable_bytes"],
                        "over_budget": measured > plan["budget_bytes"],
                        "suggest_s": round(suggest_s, 1),
                    }
                )
                r = rows[-1]
                print(
                    f"{name:<15} {r['budget_gib']:>5.2f} GiB  batch {r['batch_size']:>6} {r['mode']:<9} "
                    f"pred {pred / 2**20:7.0f} MiB  measured {measured / 2**20:7.0f} MiB  "
                    f"error {r['error']:6.1%} (analytic {r['analytic_error']:6.1%})  "
                    f"peak/usable {r['peak_over_usable']:.2f}  trials {r['trials']}  {r['suggest_s']:.0f} s",
                    flush=True,
                )
    errors = [r["error"] for r in rows]
    analytic = [r["analytic_error"] for r in rows]
    uncapped = [r["peak_over_usable"] for r in rows if not r["capped"]]
    summary = {
        "machine": f"{os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GiB:.0f} GiB, CPU only",
        "runs": len(rows),
        "median_error": round(statistics.median(errors), 4),
        "max_error": round(max(errors), 4),
        "analytic_median_error": round(statistics.median(analytic), 4),
        "analytic_max_error": round(max(analytic), 4),
        "peak_over_usable_min": round(min(uncapped), 3) if uncapped else None,
        "peak_over_usable_max": round(max(r["peak_over_usable"] for r in rows), 3),
        "over_budget": sum(r["over_budget"] for r in rows),
        "max_trials": max(r["trials"] for r in rows),
        "median_suggest_s": statistics.median(r["suggest_s"] for r in rows),
    }
    print(
        f"median error {summary['median_error']:.1%} (target <= 3%), max {summary['max_error']:.1%} (<= 8%); "
        f"analytic alone: median {summary['analytic_median_error']:.1%}, max {summary['analytic_max_error']:.1%}; "
        f"peak/usable {summary['peak_over_usable_min']}-{summary['peak_over_usable_max']} (0.85-1.00); "
        f"over budget {summary['over_budget']}; trials <= {summary['max_trials']}"
    )
    if args.json:
        print(json.dumps({**summary, "rows": rows}))


if __name__ == "__main__":
    main()
