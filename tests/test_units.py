"""Byte sizes as users write them (--kv-cache-memory 2GiB)."""

import pytest

from llmtool.core.errors import UsageError
from llmtool.core.units import parse_bytes


@pytest.mark.parametrize(
    "text,expected",
    [
        ("2GiB", 2 * 1024**3),
        ("512MB", 512 * 1000**2),
        ("1.5G", int(1.5 * 1024**3)),
        ("1048576", 1048576),
        (" 4 kib ", 4096),
        (7, 7),
    ],
)
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "2 parsecs", "-1GiB", "1e3"])
def test_parse_bytes_rejects_nonsense(text):
    with pytest.raises(UsageError, match="not a byte size"):
        parse_bytes(text)
