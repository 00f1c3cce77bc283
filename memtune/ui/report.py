"""``memtune report``: memory over time from a trace, as a PNG (matplotlib, no display)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from memtune.core.errors import MemtuneError, TrainingFailed
from memtune.probe.host import RESERVE_BYTES
from memtune.proc.paths import as_new_file, output_file


def read_trace(path: Path) -> list[dict[str, Any]]:
    """Every record of a JSONL trace; a bad line is named by its number."""
    if not path.is_file():
        raise MemtuneError(f"trace {str(path)!r} does not exist")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise MemtuneError(f"{path}, line {number}: not a JSON object") from None
        if not isinstance(record, dict) or "kind" not in record:
            raise MemtuneError(f"{path}, line {number}: a trace record needs a 'kind'")
        records.append(record)
    if not any(r["kind"] == "sample" for r in records):
        raise MemtuneError(f"{path}: the trace holds no memory samples")
    return records


def write_report(trace: Path, out: Path, usable_bytes: int | None = None) -> None:
    """Draw held memory, RSS beside it (and GPU use) over time on the run's own scale, with
    epoch ends, batch changes and the usable budget (when the curve comes near it); written
    atomically, with the permissions of any new file (0644 under the usual umask)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_trace(trace)
    output_file("-o", out, (".png",))
    mib = 1024**2
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    _memory_lines(ax, [r for r in records if r["kind"] == "sample"])
    start = next((r for r in records if r["kind"] == "start"), {})
    usable = usable_bytes or start.get("usable_bytes")
    low, high = ax.get_ylim()
    if usable and usable / mib <= high + (high - low):  # in range: the budget line shows
        ax.axhline(usable / mib, color="red", linestyle="--", label="usable budget")
    if usable:
        moved_limit(ax, [r for r in records if r["kind"] == "sample"], usable)
    elif usable:
        ax.set_title(f"usable budget {usable / mib:,.0f} MiB (above the chart)", fontsize=9)
    at_top: dict[str, Any] = {"xycoords": ("data", "axes fraction"), "va": "top"}
    for epoch in (r for r in records if r["kind"] == "epoch"):
        ax.axvline(epoch["t"], color="grey", linewidth=0.6, alpha=0.6)
        label = f"{epoch.get('epoch', 0) + 1}"
        ax.annotate(label, (epoch["t"], 0.99), fontsize=7, color="grey", ha="right", **at_top)
    changes = [r for r in records if r["kind"] == "batch_change"]
    for change in changes:
        ax.axvline(change["t"], color="orange", linestyle=":")
    ax.set_xlabel("seconds (grey lines: epoch ends)")
    ax.set_ylabel("MiB")
    fig.suptitle("memtune: memory over time")
    ax.legend(loc="lower right")
    fig.tight_layout()  # before the labels are placed: they are measured as drawn
    hidden = _change_labels(fig, ax, changes)
    if hidden:
        ax.annotate(
            f"+{hidden} more batch changes (orange lines; the trace lists them)",
            (0.01, 0.02),
            xycoords="axes fraction",
            fontsize=7,
            color="orange",
        )
    fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=".png", dir=out.parent)
    os.close(fd)
    try:
        fig.savefig(tmp)
        as_new_file(tmp)
        os.replace(tmp, out)
    except OSError as exc:  # a full disk: one line, no partial picture
        raise TrainingFailed(
            f"--report {str(out)!r} could not be written ({exc.strerror or exc}); the trained "
            "model and the trace are not affected"
        ) from None
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)


def _memory_lines(ax: Any, samples: list[dict[str, Any]]) -> None:
    """Held memory, RSS beside it, and each GPU's use, in MiB over seconds."""
    mib = 1024**2
    # Traces before held memory was sampled carry RSS alone.
    held = [s.get("held", s.get("rss", 0)) / mib for s in samples]
    ax.plot([s["t"] for s in samples], held, label="held (what the budget counts)")
    if any("held" in s and "rss" in s for s in samples):
        rss = [s.get("rss", 0) / mib for s in samples]
        ax.plot([s["t"] for s in samples], rss, color="grey", linewidth=0.8, label="RSS")
    gpu_count = max((len(s.get("gpu_used", [])) for s in samples), default=0)
    for i in range(gpu_count):
        points = [(s["t"], s["gpu_used"][i]) for s in samples if s["gpu_used"][i] is not None]
        if points:
            ax.plot([t for t, _ in points], [u / mib for _, u in points], label=f"gpu:{i} used")


def moved_limit(ax: Any, samples: list[dict[str, Any]], usable: int) -> bool:
    """Where the host's room fell so far that memtune could hold less than the usable
    budget (what it held plus what was available, less the reserve the host keeps: the
    limit the watchdog halves against), that limit, drawn; a halving well under the usable
    line is explained by it. Returns whether it was drawn."""
    mib = 1024**2
    points = [
        (s["t"], s.get("held", s.get("rss", 0)) + s["host_available"] - RESERVE_BYTES)
        for s in samples
        if isinstance(s.get("host_available"), int)
    ]
    if not any(limit < usable for _, limit in points):
        return False
    ax.plot(
        [t for t, _ in points],
        [limit / mib if limit < usable else float("nan") for _, limit in points],
        color="red",
        linestyle=":",
        linewidth=1.2,
        label="limit: held + available − reserve",
    )
    return True


LABEL_ROWS = 4  # batch-change labels stack this deep before the rest are only counted


def change_label(change: dict[str, Any]) -> str:
    """A batch change's label: the new batch, and which length bucket when bucketed."""
    to = change.get("to")
    batch = f"{to:,}" if isinstance(to, int) else str(to)
    bucket = change.get("bucket_length")
    return f" ≤{bucket:,}: → {batch}" if isinstance(bucket, int) else f" batch → {batch}"


def _change_labels(fig: Any, ax: Any, changes: list[dict[str, Any]]) -> int:
    """Label each batch change at the first of LABEL_ROWS heights where it overlaps no
    label already drawn (measured on the renderer); returns how many found no room."""
    ax.autoscale_view()  # the limits the picture will have, so boxes measure as drawn
    renderer = fig.canvas.get_renderer()
    placed: list[list[Any]] = [[] for _ in range(LABEL_ROWS)]
    hidden = 0
    for change in sorted(changes, key=lambda c: c["t"]):
        for row, boxes in enumerate(placed):
            label = ax.annotate(
                change_label(change),
                (change["t"], 0.93 - 0.07 * row),
                xycoords=("data", "axes fraction"),
                va="top",
                fontsize=8,
                color="orange",
            )
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in boxes):
                boxes.append(box)
                break
            label.remove()
        else:
            hidden += 1
    return hidden


def report_after_fit(trace: Path, out: Path, usable_bytes: int) -> None:
    """``fit --report``: the model is trained and saved by now, so a picture that cannot be
    drawn or written is an output that failed (exit 1), not bad input."""
    try:
        write_report(trace, out, usable_bytes)
    except MemtuneError as exc:
        message = str(exc).removeprefix(f"--report {str(out)!r} ")
        raise TrainingFailed(f"--report {str(out)!r} not drawn: {message}") from None
