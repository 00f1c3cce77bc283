"""Human-readable views of a probe and a plan (rich tables)."""

from __future__ import annotations

import os
import sys
import textwrap
from typing import IO, TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from memtune.core.plan import Plan
from memtune.probe import Probe

if TYPE_CHECKING:
    from memtune.app.check import CheckResult
    from memtune.app.fit import FitResult
from memtune.core.units import format_bytes


def console(file: IO[str] | None = None, *, width: int | None = None) -> Console:
    """A console that honours NO_COLOR and writes plain text when not on a terminal."""
    out = file or sys.stdout
    return Console(
        file=out,
        no_color="NO_COLOR" in os.environ,
        width=width,
        soft_wrap=False,
        highlight=False,
    )


def render_probe(result: Probe, out: Console) -> None:
    table = Table(title="Memory now", title_justify="left")
    table.add_column("device")
    table.add_column("total", justify="right")
    table.add_column("available / free", justify="right")
    table.add_column("used", justify="right")
    table.add_column("limit", justify="right")
    host = result.host
    table.add_row(
        "host RAM",
        format_bytes(host.total_bytes),
        format_bytes(host.available_bytes),
        format_bytes(host.total_bytes - host.available_bytes),
        format_bytes(host.limit_bytes) if host.limit_bytes is not None else "none",
    )
    for gpu in result.gpus:
        table.add_row(
            f"gpu:{gpu.index} {gpu.name}",
            format_bytes(gpu.total_bytes),
            format_bytes(gpu.free_bytes),
            format_bytes(gpu.used_bytes),
            "",
        )
    out.print(table)
    out.print(
        f"--budget auto on cpu: {format_bytes(host.can_give)} (available less the "
        f"{format_bytes(host.reserve_bytes)} the host keeps for library code, plus what this "
        "process holds)",
        soft_wrap=True,
    )
    if not result.gpus:
        out.print("No GPU visible (NVML found none).")
    for warning in result.warnings:
        out.print(f"warning: {warning}", soft_wrap=True)


def _strategy(plan: Plan) -> str:
    # TF_CONFIG's own numbering, as the user wrote it ("index": 0 is the chief).
    worker = f", worker index {plan.worker_index} of {plan.workers}" if plan.workers > 1 else ""
    return (
        f"{plan.strategy}: {plan.replicas} replicas{worker}; batch size is per replica, "
        f"global batch {plan.global_batch_size:,}"
    )


def render_plan(plan: Plan, out: Console) -> None:
    table = Table(title="memtune plan", title_justify="left", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    longest = " (the longest bucket's)" if plan.buckets else ""
    table.add_row("batch size", f"{plan.batch_size:,}{longest}")
    for bucket in plan.buckets:
        table.add_row(
            f"bucket ≤{bucket.length}",
            f"batch {bucket.batch_size:,}, {bucket.samples:,} samples",
        )
    if plan.buckets:
        without, with_ = plan.tokens
        table.add_row(
            "padding saved",
            f"{plan.padding_cut:.0%} of the padding tokens ({without:,} → {with_:,} tokens "
            f"an epoch); predicted speed-up ≈ {without / max(with_, 1):.1f}× if time goes "
            "with tokens",
        )
    if plan.gradient_accumulation_steps > 1:
        table.add_row("accumulation steps", str(plan.gradient_accumulation_steps))
        table.add_row("effective batch", f"{plan.effective_batch_size:,}")
    if plan.strategy != "none":
        table.add_row("strategy", _strategy(plan))
    table.add_row("data mode", plan.mode)
    table.add_row("device", plan.device)
    table.add_row("budget", format_bytes(plan.budget_bytes))
    table.add_row("usable", format_bytes(plan.usable_bytes))
    table.add_row("predicted peak", format_bytes(plan.predicted_peak_bytes))
    table.add_row("samples", f"{plan.num_samples:,}")
    table.add_row("bytes per sample", f"{plan.per_sample_bytes:,}")
    table.add_row("padded dataset", format_bytes(plan.dataset_bytes))
    for trial in plan.trials:
        at = f" at length {trial.length}" if trial.length is not None else ""
        table.add_row(
            "trial", f"batch {trial.batch_size:,}{at}: peak {format_bytes(trial.peak_bytes)}"
        )
    out.print(table)
    out.print("Why:")
    for reason in plan.reasons:
        out.print(why_line(reason, out.width if out.is_terminal else None), soft_wrap=True)


def why_line(reason: str, width: int | None) -> str:
    """One reason: on a terminal wrapped at word boundaries under its bullet (the terminal
    would cut words); in a log or a pipe one line, for grep."""
    if width is None:
        return f"  - {reason}"
    return textwrap.fill(
        reason,
        width=max(40, width - 1),
        initial_indent="  - ",
        subsequent_indent="    ",
        break_long_words=False,
        break_on_hyphens=False,
    )


def render_fit(result: FitResult, out: Console) -> None:
    plan = result.plan
    table = Table(title="memtune fit", title_justify="left", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    forced = " (forced by --batch-size)" if plan.batch_size_forced else ""
    table.add_row(
        "batch size",
        f"{plan.batch_size:,} × {plan.gradient_accumulation_steps} accumulation{forced}",
    )
    if plan.strategy != "none":
        table.add_row("strategy", _strategy(plan))
    table.add_row("data mode", plan.mode)
    if plan.buckets:
        sizes = ", ".join(f"≤{b.length}: {b.batch_size:,}" for b in plan.buckets)
        table.add_row(
            "length buckets",
            f"{len(plan.buckets)} (batch by length) {sizes}; {plan.padding_cut:.0%} of the "
            f"padding cut; every row weighted as at batch {plan.batch_size:,}",
        )
    epochs = len(next(iter(result.history.values()), []))
    table.add_row("epochs", str(epochs))
    for name, values in result.history.items():
        if values:
            table.add_row(name, f"{values[-1]:.4g}")
    table.add_row("samples/s", f"{result.samples_per_second:,.0f}")
    predicted, usable = format_bytes(plan.predicted_peak_bytes), format_bytes(plan.usable_bytes)
    table.add_row(
        "peak memory",
        f"{format_bytes(result.peak_bytes)} (predicted {predicted}, usable {usable})",
    )
    for change in result.batch_size_changes:
        bucket = change.get("bucket_length")
        table.add_row(
            "batch change",
            f"epoch {change['epoch'] + 1}, sample {change['sample']:,}"
            f"{f', length-{bucket} bucket' if bucket else ''}: {change['from']:,} → "
            f"{change['to']:,} × {change['gradient_accumulation_steps']} "
            f"({change.get('reason', 'out of memory')})",
        )
    if result.saved:
        table.add_row("saved", result.saved)
    if result.checkpoint:
        table.add_row(
            "checkpoint",
            f"kept in {result.checkpoint} (no --save): --resume --save FILE.keras writes the model",
        )
    out.print(table)


def render_check(result: CheckResult, out: Console) -> None:
    verdict = "[green]PASS[/green]" if result.fits else "[red]FAIL[/red]"
    out.print(f"memtune check: {verdict} — {result.message}", soft_wrap=True)
    if result.estimate_only:
        out.print("(an estimate: the target device is not on this machine)")
    if result.plan is not None:
        render_plan(result.plan, out)
