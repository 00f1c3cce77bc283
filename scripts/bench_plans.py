"""Are plans repeatable, and how long does planning take? bench_estimate's cases, each
planned twice with a fresh cache and once more warm (the second run's cache kept).

Per row: the two fresh plans' batches and their spread (larger / smaller - 1; target
≤ 10 %), the fresh ``suggest`` wall times (target: median ≤ 12 s on a quiet machine) and
the warm one (target ≤ 1 s: the plan cache answers). The models, data and flags are
bench_estimate's (``--max-batch-size`` lifted, ``--buckets off``), so the memory bound is
what is judged. No training.

    python scripts/bench_plans.py [--json] [--only MODEL ...] [--budget GIB ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_estimate import BUDGETS, MODELS, GiB, NothingFits, case_inputs, run_measured


def timed_plan(common: list[str], cache: str) -> tuple[int, float]:
    start = time.perf_counter()
    plan, _ = run_measured("suggest", *common, "--json", cache=cache)
    return int(plan["batch_size"]), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--only", action="append", help="only these models")
    parser.add_argument("--budget", action="append", type=float, help="only these budgets (GiB)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="memtune-plans-") as tmp:
        for name in args.only or list(MODELS):
            folder = Path(tmp) / name
            inputs = case_inputs(name, folder, rng)
            for budget in [b * GiB for b in args.budget] if args.budget else BUDGETS:
                common = [*inputs, "--budget", f"{budget / GiB:.2f}GiB", "--max-batch-size",
                          str(10**9), "--buckets", "off"]  # fmt: skip
                caches = [str(folder / f"cache-{budget / GiB:.2f}-{i}") for i in range(2)]
                try:
                    first, first_s = timed_plan(common, caches[0])
                    second, second_s = timed_plan(common, caches[1])
                    _, warm_s = timed_plan(common, caches[1])
                except (NothingFits, SystemExit) as exc:  # refused or failed: a result
                    rows.append({"model": name, "budget_gib": budget / GiB, "error": str(exc)})
                    continue
                spread = max(first, second) / max(1, min(first, second)) - 1
                rows.append(
                    {
                        "model": name,
                        "budget_gib": round(budget / GiB, 2),
                        "batches": [first, second],
                        "spread": round(spread, 4),
                        "fresh_s": [round(first_s, 1), round(second_s, 1)],
                        "warm_s": round(warm_s, 2),
                    }
                )
                r = rows[-1]
                print(
                    f"{name:<16}{r['budget_gib']:>5.2f} GiB  batches {first:>7,} {second:>7,}  "
                    f"spread {spread:>6.1%}  fresh {first_s:5.1f} s {second_s:5.1f} s  "
                    f"warm {warm_s:4.2f} s",
                    flush=True,
                )
    done = [r for r in rows if "spread" in r]
    fresh = [s for r in done for s in r["fresh_s"]]
    summary = {
        "machine": f"{os.cpu_count()} cores, CPU only",
        "rows": rows,
        "spread_max": max((r["spread"] for r in done), default=None),
        "spread_over_10pct": sum(r["spread"] > 0.10 for r in done),
        "fresh_s_median": statistics.median(fresh) if fresh else None,
        "warm_s_max": max((r["warm_s"] for r in done), default=None),
    }
    print(
        f"\n{len(done)} rows: batch spread max {summary['spread_max']}, "
        f"{summary['spread_over_10pct']} over 10 %; fresh suggest median "
        f"{summary['fresh_s_median']} s; warm max {summary['warm_s_max']} s"
    )
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
