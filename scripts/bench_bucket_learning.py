"""Do length buckets change what a model learns? A GRU text classifier whose label depends on
its rows' content and, at three strengths, on their length; ``memtune fit`` with 8 buckets
forced and with ``--buckets off``, same epochs and seeds, alternating rounds.

The data: ``--samples`` rows; each label 0/1 is drawn first, then a lognormal length whose
centre moves up for 1 and down for 0 by ``shift`` (in log units; 0: length says nothing of
the label), then Zipf background tokens with 5 % of them drawn from 20 words of the label's
own (the content). Rows are truncated to 400. 20 % are held out (``--validation-split``).
Measured per run: the last epoch's validation accuracy (and the mean of the last three, which
one epoch's dip does not move), samples/s, the fit tree's peak against the usable budget, the
prediction's error and batch changes. Per strength, one
``suggest`` with default buckets says what memtune does by default and the share of the
label's variation the length explains.

    python scripts/bench_bucket_learning.py [--json] [--rounds 8] [--tied-rounds 3]

One run's last-epoch accuracy varies by ~1.2 points between seeds, and at 5 epochs the
bucketed runs were still catching up on a slower second and third epoch; 8 epochs let both
settle. A 1-point target needs more than three rounds: the independent task, where memtune's
default keeps buckets, runs ``--rounds``; the two tied tasks, where the default turns buckets
off (their forced figures are for information), ``--tied-rounds``.
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

VOCAB = 2000
MAXLEN = 400
SHIFTS = {"independent": 0.0, "weak": 0.15, "strong": 0.49}
SETTINGS = {"buckets": ["--buckets", "8"], "no buckets": ["--buckets", "off"]}


def write_data(folder: Path, samples: int, shift: float, seed: int = 0) -> Path:
    """Four CSV shards: ``tokens`` (space-separated ids) and ``answer`` (0/1)."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, samples)
    centre = np.log(100) + np.where(label == 1, shift, -shift)
    lengths = np.clip(rng.lognormal(centre, 0.7).astype(int), 5, 1500)
    rows = []
    for kind, n in zip(label, lengths, strict=True):
        words = np.minimum(rng.zipf(1.3, n) + 40, VOCAB - 1)
        own = rng.random(n) < 0.05
        words[own] = 1000 + 20 * kind + rng.integers(0, 20, int(own.sum()))
        rows.append(" ".join(map(str, words)))
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({"tokens": rows, "answer": label})
    for i, part in enumerate(np.array_split(np.arange(samples), 4)):
        frame.iloc[part].to_csv(folder / f"{i}.csv", index=False)
    return folder


def factory(folder: Path, seed: int) -> str:
    """A GRU classifier, its weights seeded (the trials build it too)."""
    path = folder / f"gru_{seed}.py"
    path.write_text(
        "import keras\n\n\ndef build():\n"
        f"    keras.utils.set_random_seed({seed})\n"
        "    x = keras.Input((None,), dtype='int32', name='tokens')\n"
        f"    h = keras.layers.Embedding({VOCAB}, 16)(x)\n"
        "    h = keras.layers.GRU(16)(h)\n"
        "    out = keras.layers.Dense(1, activation='sigmoid', name='answer')(h)\n"
        "    model = keras.Model(x, out)\n"
        "    model.compile(keras.optimizers.Adam(0.005), 'binary_crossentropy',"
        " metrics=['accuracy'])\n"
        "    return model\n"
    )
    return f"{path}:build"


def one_fit(
    args: argparse.Namespace, data: Path, spec: str, seed: int, setting: str, cache: str
) -> dict[str, Any]:
    result, peak = run_measured(
        "fit", "--model", spec, "--data", str(data), "--maxlen", str(MAXLEN),
        "--budget", args.budget, "--epochs", str(args.epochs), "--validation-split", "0.2",
        "--seed", str(seed), "--no-dashboard", "--json", *SETTINGS[setting], cache=cache,
    )  # fmt: skip
    plan = result["plan"]
    return {
        "val_accuracy": result["history"]["val_accuracy"][-1],
        "val_accuracy_by_epoch": [round(v, 4) for v in result["history"]["val_accuracy"]],
        "val_accuracy_last3": round(statistics.mean(result["history"]["val_accuracy"][-3:]), 4),
        "samples_per_s": result["samples_per_second"],
        "tree_over_usable": round(peak / plan["usable_bytes"], 3),
        "prediction_error": round(plan["predicted_peak_bytes"] / result["peak_bytes"] - 1, 4),
        "changes": len(result["batch_size_changes"]),
        "batch_size": plan["batch_size"],
    }


def default_choice(args: argparse.Namespace, data: Path, spec: str, cache: str) -> str:
    """What memtune does with buckets left to their default: its reason line."""
    plan, _ = run_measured(
        "suggest", "--model", spec, "--data", str(data), "--maxlen", str(MAXLEN),
        "--budget", args.budget, "--validation-split", "0.2", "--json", cache=cache,
    )  # fmt: skip
    lines = [r for r in plan["reasons"] if "length" in r and ("bucket" in r or "depends" in r)]
    return next((r for r in lines if "depends on" in r or "no length buckets" in r), lines[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--tied-rounds", type=int, default=3)
    parser.add_argument("--budget", default="1.5GiB")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    summary: dict[str, Any] = {
        "machine": f"{os.cpu_count()} cores, CPU only",
        "samples": args.samples,
        "epochs": args.epochs,
        "rounds": {n: args.rounds if s == 0 else args.tied_rounds for n, s in SHIFTS.items()},
        "strengths": {},
    }
    with tempfile.TemporaryDirectory(prefix="memtune-bench-learning-") as tmp:
        for name, shift in SHIFTS.items():
            data = write_data(Path(tmp) / name, args.samples, shift)
            runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SETTINGS}
            for round_ in range(args.rounds if shift == 0 else args.tied_rounds):
                seed = round_ + 1
                spec = factory(Path(tmp), seed)
                order = list(SETTINGS) if round_ % 2 == 0 else list(SETTINGS)[::-1]
                for setting in order:
                    cache = str(Path(tmp) / f"cache-{name}-{setting}")
                    got = one_fit(args, data, spec, seed, setting, cache)
                    runs[setting].append(got)
                    print(
                        f"{name:<12} round {round_ + 1} {setting:<11} val_accuracy "
                        f"{got['val_accuracy']:.3f}  {got['samples_per_s']:,.0f} samples/s  "
                        f"tree/usable {got['tree_over_usable']:.3f}",
                        file=sys.stderr,
                        flush=True,
                    )
            choice = default_choice(args, data, factory(Path(tmp), 1), str(Path(tmp) / "c-d"))
            summary["strengths"][name] = _summarise(runs, shift, choice)
    _table(summary)
    if args.json:
        print(json.dumps(summary))


def _summarise(runs: dict[str, list[dict[str, Any]]], shift: float, choice: str) -> dict[str, Any]:
    gaps = [
        b["val_accuracy"] - n["val_accuracy"]
        for b, n in zip(runs["buckets"], runs["no buckets"], strict=True)
    ]
    settled = [
        b["val_accuracy_last3"] - n["val_accuracy_last3"]
        for b, n in zip(runs["buckets"], runs["no buckets"], strict=True)
    ]
    every = runs["buckets"] + runs["no buckets"]
    return {
        "shift": shift,
        "default": choice,
        "val_accuracy": {s: [round(r["val_accuracy"], 4) for r in runs[s]] for s in SETTINGS},
        "gap_points": {
            "median": round(100 * statistics.median(gaps), 2),
            "min": round(100 * min(gaps), 2),
            "max": round(100 * max(gaps), 2),
        },
        "gap_points_last3": {
            "median": round(100 * statistics.median(settled), 2),
            "min": round(100 * min(settled), 2),
            "max": round(100 * max(settled), 2),
        },
        "speedup": round(
            statistics.median(
                b["samples_per_s"] / n["samples_per_s"]
                for b, n in zip(runs["buckets"], runs["no buckets"], strict=True)
            ),
            2,
        ),
        "tree_over_usable_max": max(r["tree_over_usable"] for r in every),
        "prediction_error_max": max(abs(r["prediction_error"]) for r in every),
        "batch_changes": sum(r["changes"] for r in every),
        "runs": runs,
    }


def _table(summary: dict[str, Any]) -> None:
    print(
        f"\n{'label vs length':<16}{'acc buckets':>12}{'acc off':>9}{'gap (points)':>22}"
        f"{'last 3 epochs':>24}{'speed-up':>10}{'tree/usable':>13}{'|pred err|':>11}{'changes':>9}"
    )
    for name, row in summary["strengths"].items():
        acc = {s: statistics.median(row["val_accuracy"][s]) for s in SETTINGS}
        gap, last3 = row["gap_points"], row["gap_points_last3"]
        print(
            f"{name:<16}{acc['buckets']:>12.3f}{acc['no buckets']:>9.3f}"
            f"{gap['median']:>+8.1f} ({gap['min']:+.1f} … {gap['max']:+.1f})"
            f"{last3['median']:>+10.1f} ({last3['min']:+.1f} … {last3['max']:+.1f})"
            f"{row['speedup']:>9.2f}x{row['tree_over_usable_max']:>13.3f}"
            f"{row['prediction_error_max']:>11.1%}{row['batch_changes']:>9}"
        )
        print(f"  default: {row['default']}")


if __name__ == "__main__":
    main()
