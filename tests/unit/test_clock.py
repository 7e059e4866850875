"""The adapters' one clock: the stamps it writes and what it reads back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from promotion_ladder.core.clock import epoch, iso, iso_micro, now, parse

T = datetime(2026, 12, 6, 23, 55, 29, 123456, tzinfo=UTC)

PARSE_CASES = {
    "Kubernetes Time": ("2026-12-06T23:55:29Z", datetime(2026, 12, 6, 23, 55, 29, tzinfo=UTC)),
    "MicroTime": ("2026-12-06T23:55:29.123456Z", T),
    "an offset": ("2026-12-07T00:55:29.123456+01:00", T),
    "a client model's aware datetime": (T, T),
    "a naive datetime is UTC": (T.replace(tzinfo=None), T),
    "absent": (None, None),
    "empty": ("", None),
    "unreadable": ("yesterday", None),
}


@pytest.mark.parametrize("stamp,want", PARSE_CASES.values(), ids=PARSE_CASES.keys())
def test_parse(stamp, want):
    assert parse(stamp) == want
    assert epoch(stamp) == (None if want is None else want.timestamp())


def test_stamps_round_trip_and_are_utc():
    assert iso(T) == "2026-12-06T23:55:29Z" and iso_micro(T) == "2026-12-06T23:55:29.123456Z"
    assert iso(T.astimezone(timezone(timedelta(hours=-5)))) == "2026-12-06T23:55:29Z"
    assert parse(iso_micro(T)) == T
    before = now()
    assert before.tzinfo is not None and abs((parse(iso()) - before).total_seconds()) < 2
