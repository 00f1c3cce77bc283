"""Byte sizes: parsed from and formatted for people only at the edges; ints inside."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from memtune.core.errors import MemtuneError

_UNITS = {
    "b": 1,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    "k": 1024,
    "m": 1024**2,
    "g": 1024**3,
    "t": 1024**4,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
}
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-z]+)\s*$", re.IGNORECASE)


_PLAIN_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?(?:e[0-9]+)?)\s*$", re.IGNORECASE)
SMALLEST_PLAIN = 1024**2  # a plain number under this is a unit forgotten, not a budget


def parse_size(text: str, *, what: str = "--budget") -> int:
    """Parse ``512MiB``, ``1.5G``, ``2GB`` … into a positive number of bytes.

    A plain number (``2000000000``, ``2e9``) is bytes, as the Python API's ints are; under
    1 MiB it is refused as a forgotten unit (``--budget 2`` meant 2 GiB, not 2 bytes).
    """
    plain = _PLAIN_RE.match(text)
    if plain is not None:
        count = Decimal(plain.group(1))
        if count < SMALLEST_PLAIN:
            raise MemtuneError(
                f"{what} {text!r}: a plain number is bytes, and {text.strip()} bytes is too "
                f"little; give a unit, e.g. {text.strip()}GiB"
            )
        if count != count.to_integral_value():
            raise MemtuneError(f"{what} {text!r}: a plain number is bytes, a whole number")
        return int(count)
    match = _SIZE_RE.match(text)
    if match is None:
        if re.match(r"^\s*-", text):
            raise MemtuneError(f"{what} {text!r}: a size must be positive")
        raise MemtuneError(
            f"{what} {text!r}: expected a number with a unit, e.g. 512MiB, 8GiB, 2GB"
        )
    number, unit = match.groups()
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise MemtuneError(
            f"{what} {text!r}: unknown unit {unit!r} (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
        )
    try:
        value = int(Decimal(number) * factor)
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only numbers
        raise MemtuneError(f"{what} {text!r}: not a number") from exc
    if value <= 0:
        raise MemtuneError(f"{what} {text!r}: a size must be positive")
    return value


def format_bytes(n: int | None) -> str:
    """``1536`` → ``1.5 KiB``; powers of 1024, three significant digits."""
    if n is None:
        return "N/A"
    sign = "-" if n < 0 else ""
    value = float(abs(n))
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            if unit == "B":
                return f"{sign}{int(value):,} B"
            digits = 2 if value < 10 else 1 if value < 100 else 0
            return f"{sign}{value:,.{digits}f} {unit}"  # 1,010 MiB: one number format
        value /= 1024
    raise AssertionError("unreachable")
