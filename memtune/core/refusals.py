"""What a refused plan says: by how much it misses, and what would help. One line each."""

from __future__ import annotations

from memtune.core.constants import BLOCK_ROWS
from memtune.core.plan import PlanOptions
from memtune.core.units import format_bytes


def forced_refused(
    forced: int, safe: int, effective: int, peak_and_usable: tuple[int, int], *, measured: bool
) -> str:
    """A forced batch predicted past usable: the largest safe batch, and what to do."""
    predicted, usable = peak_and_usable
    source = "measured trials" if measured else "the unverified estimate"
    head = (
        f"--batch-size {forced}: its predicted peak {format_bytes(predicted)} (from "
        f"{source}) passes the usable {format_bytes(usable)}"
    )
    if safe < 1:
        return f"{head}; not even batch 1 fits (--force trains it anyway)"
    return (
        f"{head}; the largest safe batch is {safe:,} (--batch-size {safe}, or "
        f"--effective-batch-size {effective} without --batch-size to keep {effective:,} "
        f"samples a step), or --force to train at {forced:,} anyway"
    )


def in_memory_refused(need: int, usable: int, dataset: int) -> str:
    return (
        f"--mode in-memory: the padded dataset ({format_bytes(dataset)}) plus training would "
        f"need {format_bytes(need)}, over the usable {format_bytes(usable)} by "
        f"{format_bytes(need - usable)}; use --mode streaming, or --force to try anyway"
    )


def nothing_fits(need: int, usable: int, options: PlanOptions, gpu: bool) -> str:
    helps = []
    if options.has_sequences:
        helps.append("a smaller --maxlen")
    if options.has_tensors:
        helps.append("smaller images or frames (--image-size, or a Resizing layer first)")
    helps.append("mixed precision")
    if not gpu:
        helps.append("a GPU (--device gpu)")
    helps.append("a larger --budget or smaller --safety")
    rows = options.whole_blocks[1]
    if rows > BLOCK_ROWS:
        helps.insert(
            0,
            f"Parquet row groups of at most {BLOCK_ROWS:,} rows (these hold up to {rows:,}, "
            "each read whole by every reading thread)",
        )
    return (
        f"nothing fits: even batch 1 needs {format_bytes(need)}, "
        f"{format_bytes(need - usable)} over the usable {format_bytes(usable)}; "
        f"what could help: {', '.join(helps)}"
    )
