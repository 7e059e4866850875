"""core/clock.py: the one clock the adapters read, in the form a status's times take."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from promotion_ladder.core.clock import now, timestamp

STAMPS = {
    "UTC": (datetime(2026, 12, 6, 1, 2, 3, 999999, tzinfo=timezone.utc), "2026-12-06T01:02:03Z"),
    "another zone": (datetime(2026, 12, 6, 3, 2, 3, tzinfo=timezone(timedelta(hours=2))), "2026-12-06T01:02:03Z"),
}


@pytest.mark.parametrize("name", STAMPS, ids=list(STAMPS))
def test_timestamp_is_rfc3339_utc_to_the_second(name):
    t, want = STAMPS[name]
    assert timestamp(t) == want


def test_now_is_utc_and_timestamp_defaults_to_it():
    before = datetime.now(timezone.utc).replace(microsecond=0)
    t = now()
    assert t.tzinfo is timezone.utc and before <= t
    assert before <= datetime.strptime(timestamp(), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
