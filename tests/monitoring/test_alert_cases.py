"""The pure helpers of the promtool cases (no promtool needed)."""

from __future__ import annotations

import pytest

from .alert_cases import annotations, humanize, minutes


@pytest.mark.parametrize("duration, want", [("0m", 0), ("15m", 15), ("2h", 120), ("1h30m", 90), ("90s", 2), (None, 0)])
def test_minutes(duration, want):
    assert minutes(duration) == want


def test_minutes_refuses_what_is_not_a_duration():
    with pytest.raises(ValueError, match="not a Prometheus duration"):
        minutes("2 hours")


# Prometheus' humanize: %.4g with SI prefixes from 1000 on.
@pytest.mark.parametrize(
    "value, want", [(14, "14"), (300.6000000000001, "300.6"), (1200.0, "1.2k"), (2_500_000, "2.5M")]
)
def test_humanize(value, want):
    assert humanize(value) == want


def test_annotations_render_labels_and_value():
    rule = {
        "alert": "A",
        "annotations": {
            "summary": "{{ $labels.ladder }} spent {{ $value | humanize }}",
            "description": "no {{ $labels.missing }}",
        },
    }
    assert annotations(rule, {"ladder": "sweep"}, 1200.0) == {
        "summary": "sweep spent 1.2k",
        "description": "no <no value>",
    }


def test_annotations_refuse_templates_they_cannot_render():
    with pytest.raises(ValueError, match="template"):
        annotations({"alert": "A", "annotations": {"summary": "{{ $value | humanizeDuration }}"}}, {}, 1.0)
