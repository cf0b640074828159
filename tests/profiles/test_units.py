from __future__ import annotations

import pytest

from ztpd.profiles.units import UnitError, human_size, parse_size, parse_speed

GiB = 2**30


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (512, 512),
        ("512", 512),
        ("64GiB", 64 * GiB),
        ("64 GiB", 64 * GiB),
        ("64gib", 64 * GiB),
        ("1.92TB", 1_920_000_000_000),
        ("900GB", 900 * 10**9),
        ("1.5KiB", 1536),
        ("16TB", 16 * 10**12),
        ("2PiB", 2 * 2**50),
        ("100 B", 100),
        (1.0, 1),
    ],
)
def test_sizes(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("64G", "ambiguous; write GB"),
        ("1T", "ambiguous"),
        ("64 gigs", "unknown size unit 'gigs'"),
        ("1.5B", "not a whole number"),
        ("-1GB", "not a size"),
        ("", "not a size"),
        ("GB", "not a size"),
        (True, "true/false"),
        (-5, "negative"),
        ([1], "expected a size"),
    ],
)
def test_bad_sizes(text: object, message: str) -> None:
    with pytest.raises(UnitError, match=message):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (1000, 1000),
        ("10G", 10_000),
        ("25Gbps", 25_000),
        ("2.5G", 2500),
        ("100M", 100),
        ("100Mb/s", 100),
        ("40gbit", 40_000),
        ("1000", 1000),
    ],
)
def test_speeds(text: object, expected: int) -> None:
    assert parse_speed(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10Q", "unknown speed unit"),
        ("fast", "not a speed"),
        (False, "true/false"),
        (-1, "negative"),
    ],
)
def test_bad_speeds(text: object, message: str) -> None:
    with pytest.raises(UnitError, match=message):
        parse_speed(text)


@pytest.mark.parametrize(
    ("n", "text"), [(480_103_981_056, "480.1 GB"), (1_920_383_410_176, "1.9 TB"), (12, "12 B")]
)
def test_human_size(n: int, text: str) -> None:
    assert human_size(n) == text
