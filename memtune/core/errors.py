"""The errors memtune reports to people, each carrying the contract's exit code."""

from __future__ import annotations


class MemtuneError(Exception):
    """Bad input: one line saying what is wrong and where. Exit code 2."""

    exit_code = 2


class NothingFits(MemtuneError):
    """Even batch 1 exceeds the usable budget. Exit code 3."""

    exit_code = 3


class TrainingFailed(MemtuneError):
    """Training failed after all recovery. Exit code 1."""

    exit_code = 1
