"""Wall-clock budgets: "90s", "2m", "1h30m", "12h" <-> seconds."""

from __future__ import annotations

import re
from functools import lru_cache

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
BUDGET_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+$"


@lru_cache(maxsize=256)  # a ladder has a handful of budgets, read once per cell by the accounting
def parse_budget(text: str) -> float:
    """Seconds in a budget string such as "90s", "2m", "1h30m". Raises ValueError when bad."""
    if not isinstance(text, str):
        raise ValueError(f"budget must be a string like '90s', '2m' or '12h', got {text!r}")
    s = text.strip()
    if not s or not re.fullmatch(BUDGET_PATTERN, s):
        raise ValueError(f"budget {text!r} is not a duration; use a number with a unit, e.g. '90s', '2m', '12h'")
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(s))
    if seconds <= 0:
        raise ValueError(f"budget {text!r} must be greater than zero")
    return seconds


def format_seconds(seconds: float) -> str:
    """A short human form: 90 -> '1m30s', 43200 -> '12h'."""
    if seconds < 60:
        return f"{seconds:g}s"
    out, rest = "", int(round(seconds))
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        n, rest = divmod(rest, size)
        if n:
            out += f"{n}{unit}"
    return out


def cell_deadline_seconds(budget_seconds: float) -> int:
    """How long a cell may take in all: its budget plus a grace for start-up, compilation,
    evaluation and reporting (5 minutes, or 10% of the budget when that is more).
    Used for the Job's activeDeadlineSeconds and the local runner's timeout."""
    import math

    return int(math.ceil(budget_seconds + max(300.0, 0.1 * budget_seconds)))
