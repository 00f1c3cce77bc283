"""Do length buckets pay? A BiLSTM and a text CNN on long-tailed token ids, one budget,
``memtune fit`` with buckets (the default) and with ``--buckets off``, in alternating rounds.

The data: ``--samples`` rows of Zipf-distributed token ids (vocabulary 20,000) whose lengths
are lognormal (median ~170, tail cut at 2,500), padded / truncated to ``--maxlen`` 1,000.
Each round runs both settings for each model, in alternating order, in fresh processes
sharing one trial cache per setting (the first round measures, later rounds hit the cache
and re-measure its anchor, as a user's second run would). Measured per run: samples/s over
the epochs (``fit --json``), tokens fed per epoch (from the trace: every step's rows × its
padded length; without buckets, every row × 1,000), the fit process tree's peak, planning
included (sampled every 10 ms) and, from the trace, the most memory held while each bucket's
steps ran (the allocator keeps what the largest step took, so these read alike).

    python scripts/bench_buckets.py [--json] [--rounds 3] [--samples 1200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from bench_estimate import run_measured  # the CLI in a fresh process, its tree sampled

GiB = 1024**3
MiB = 1024**2
MAXLEN = 1000
VOCAB = 20_000

MODELS = {
    "bilstm": """
x = keras.Input((None,), dtype="int32", name="tokens")
h = keras.layers.Embedding(VOCAB, 32)(x)
h = keras.layers.Bidirectional(keras.layers.LSTM(16))(h)
model = keras.Model(x, keras.layers.Dense(1, activation="sigmoid", name="answer")(h))
""",
    "text-cnn": """
x = keras.Input((None,), dtype="int32", name="tokens")
h = keras.layers.Embedding(VOCAB, 128)(x)
h = keras.layers.Conv1D(128, 7, strides=3, activation="relu")(h)
h = keras.layers.Conv1D(128, 7, strides=3, activation="relu")(h)
h = keras.layers.GlobalMaxPooling1D()(h)
model = keras.Model(x, keras.layers.Dense(1, activation="sigmoid", name="answer")(h))
""",
}


def write_data(folder: Path, samples: int, seed: int = 0) -> tuple[Path, np.ndarray]:
    """Four CSV shards of token rows (space-separated ids) and a 0/1 answer."""
    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.lognormal(np.log(170), 0.8, samples).astype(int) + 1, 2500)
    folder.mkdir(parents=True, exist_ok=True)
    rows = [" ".join(map(str, np.minimum(rng.zipf(1.3, n), VOCAB - 1))) for n in lengths]
    frame = pd.DataFrame({"tokens": rows, "answer": rng.integers(0, 2, samples)})
    for i, part in enumerate(np.array_split(np.arange(samples), 4)):
        frame.iloc[part].to_csv(folder / f"{i}.csv", index=False)
    return folder, lengths


def factory(name: str, folder: Path) -> str:
    path = folder / f"{name}.py"
    body = MODELS[name].strip().replace("\n", "\n    ")
    path.write_text(
        f"import keras\n\nVOCAB = {VOCAB}\n\n\ndef build():\n    {body}\n"
        "    model.compile('adam', 'binary_crossentropy')\n    return model\n"
    )
    return f"{path}:build"


def from_trace(path: Path, epochs: int, samples: int) -> tuple[int, dict[int, int]]:
    """Tokens fed per epoch and, per padded length, the highest RSS sampled (every 0.25 s)
    while a step of that length ran. A bucketed step's event carries its rows and length;
    without buckets every row is padded to ``MAXLEN`` (the events carry only the planned
    batch, which a last partial batch does not fill), so the epoch feeds samples × MAXLEN."""
    tokens = 0
    bucketed = False
    peaks: dict[int, int] = {}
    since = 0
    for line in path.read_text().splitlines():
        event = json.loads(line)
        if event["kind"] == "sample":  # held memory, what the budget counts (RSS before)
            since = max(since, int(event.get("held", event["rss"])))
        elif event["kind"] == "step":
            length = int(event.get("bucket_length", MAXLEN))
            if "bucket_length" in event:
                bucketed = True
                tokens += length * int(event["rows"])
            if since:  # a sample fell in this step
                peaks[length] = max(peaks.get(length, 0), since)
            since = 0
    return (tokens // epochs if bucketed else samples * MAXLEN), peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget", default="1.5GiB")
    parser.add_argument(
        "--max-batch-size",
        default="100000",
        help="passed to fit (default: lifts the 16-step floor, so memory sets every batch)",
    )
    parser.add_argument("--only", action="append", help="a model name (repeatable)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    budget = int(float(args.budget.rstrip("GiB")) * GiB)
    names = args.only or list(MODELS)
    settings = {"buckets": [], "no buckets": ["--buckets", "off"]}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {m: {s: [] for s in settings} for m in names}
    with tempfile.TemporaryDirectory(prefix="memtune-bench-buckets-") as tmp:
        data, lengths = write_data(Path(tmp) / "data", args.samples)
        caches = {
            (m, s): str(Path(tmp) / f"cache-{m}-{i}") for m in names for i, s in enumerate(settings)
        }
        for round_ in range(args.rounds):
            order = list(settings) if round_ % 2 == 0 else list(settings)[::-1]
            for model in names:
                spec = factory(model, Path(tmp))
                for setting in order:
                    trace = Path(tmp) / f"trace-{model}-{round_}-{len(settings[setting])}.jsonl"
                    fit_args = [
                        "--model",
                        spec,
                        "--data",
                        str(data),
                        "--maxlen",
                        str(MAXLEN),
                        "--budget",
                        args.budget,
                        "--epochs",
                        str(args.epochs),
                        "--no-dashboard",
                        "--json",
                        "--trace",
                        str(trace),
                        *settings[setting],
                    ]
                    result, peak = run_measured("fit", *fit_args, cache=caches[model, setting])
                    tokens, per_length = from_trace(trace, args.epochs, args.samples)
                    plan = result["plan"]
                    runs[model][setting].append(
                        {
                            "samples_per_s": result["samples_per_second"],
                            "tokens": tokens,
                            "fit_tree_peak": peak,
                            "peak_by_length": per_length,
                            "batch_size": plan["batch_size"],
                            "buckets": plan.get("buckets", []),
                            "changes": len(result["batch_size_changes"]),
                            # fit's own peak against the plan's prediction (bucketed: every
                            # bucket shape in one process, as the trials do not run them)
                            "prediction_error": round(
                                plan["predicted_peak_bytes"] / result["peak_bytes"] - 1, 4
                            ),
                        }
                    )
                    print(
                        f"round {round_ + 1} {model:<9} {setting:<11} "
                        f"{result['samples_per_second']:>8,.1f} samples/s  tokens {tokens:>9,}"
                        f"  tree peak {peak / MiB:,.0f} MiB",
                        file=sys.stderr,
                        flush=True,
                    )

    real = int(np.minimum(lengths, MAXLEN).sum())
    summary: dict[str, Any] = {
        "machine": f"{os.cpu_count()} cores, CPU only",
        "samples": args.samples,
        "epochs": args.epochs,
        "rounds": args.rounds,
        "budget_bytes": budget,
        "real_tokens": real,
        "models": {},
    }
    print(
        f"\n{'model':<10}{'setting':<12}{'samples/s':>11}{'tokens/epoch':>14}{'padding':>10}"
        f"{'tree/budget':>13}{'worst bucket/budget':>21}"
    )
    for model in names:
        rows = runs[model]
        speed = [
            b["samples_per_s"] / n["samples_per_s"]
            for b, n in zip(rows["buckets"], rows["no buckets"], strict=True)
        ]
        padding = {s: rows[s][0]["tokens"] - real for s in settings}
        cut = 1 - padding["buckets"] / padding["no buckets"]
        worst = max(max(r["peak_by_length"].values()) for r in rows["buckets"]) / budget
        for setting in settings:
            rate = statistics.median(r["samples_per_s"] for r in rows[setting])
            tree = max(r["fit_tree_peak"] for r in rows[setting]) / budget
            bucket_peak = max(max(r["peak_by_length"].values()) for r in rows[setting]) / budget
            print(
                f"{model:<10}{setting:<12}{rate:>11,.1f}{rows[setting][0]['tokens']:>14,}"
                f"{padding[setting]:>10,}{tree:>13.3f}{bucket_peak:>21.3f}"
            )
        summary["models"][model] = {
            "speedup": {
                "median": round(statistics.median(speed), 3),
                "min": round(min(speed), 3),
                "max": round(max(speed), 3),
            },
            "padding_cut": round(cut, 4),
            "fit_tree_peak_over_budget": {
                s: round(max(r["fit_tree_peak"] for r in rows[s]) / budget, 3) for s in settings
            },
            "worst_bucket_peak_over_budget": round(worst, 3),
            "buckets": rows["buckets"][0]["buckets"],
            "batch_size_without_buckets": rows["no buckets"][0]["batch_size"],
            "batch_changes": sum(r["changes"] for s in settings for r in rows[s]),
            "prediction_error_max": {
                s: max(abs(r["prediction_error"]) for r in rows[s]) for s in settings
            },
            "runs": rows,
        }
        print(
            f"{model}: padding cut {cut:.1%} (>= 60 %), samples/s with / without buckets "
            f"median {statistics.median(speed):.2f}x (min {min(speed):.2f}, max {max(speed):.2f};"
            f" >= 1.8x), worst bucket peak / budget {worst:.3f} (<= 1)"
        )
    if args.json:
        print(json.dumps(summary, default=str))


if __name__ == "__main__":
    main()
