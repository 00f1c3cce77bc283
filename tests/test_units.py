import pytest

from memtune.core.errors import MemtuneError
from memtune.core.units import format_bytes, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512MiB", 512 * 1024**2),
        ("1.5G", int(1.5 * 1024**3)),
        ("2GB", 2 * 10**9),
        ("8gib", 8 * 1024**3),
        ("100 B", 100),
        ("1k", 1024),
        ("3KB", 3000),
        ("1TiB", 1024**4),
        ("0.5T", 1024**4 // 2),
        ("2000000000", 2 * 10**9),  # a plain number is bytes, as the API's ints
        ("2e9", 2 * 10**9),
        (" 1048576 ", 1024**2),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("8XB", "unknown unit 'XB'"),
        ("0GiB", "must be positive"),
        ("-1GiB", "must be positive"),
        ("12", "12 bytes is too little; give a unit, e.g. 12GiB"),
        ("1.5", "1.5 bytes is too little"),
        ("2500000.5", "a plain number is bytes, a whole number"),
        ("lots", "expected a number with a unit"),
    ],
)
def test_parse_size_rejects(text: str, fragment: str) -> None:
    with pytest.raises(MemtuneError, match="--budget") as info:
        parse_size(text)
    assert fragment in str(info.value)


def test_format_bytes() -> None:
    assert format_bytes(0) == "0 B"
    assert format_bytes(1536) == "1.50 KiB"
    assert format_bytes(512 * 1024**2) == "512 MiB"
    assert format_bytes(int(23.5 * 1024**3)) == "23.5 GiB"
    assert format_bytes(None) == "N/A"
    assert format_bytes(1017 * 1024**2) == "1,017 MiB"  # one number format: separators
    assert format_bytes(1000) == "1,000 B"
