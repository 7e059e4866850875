"""When this process started, on the same clock as time.perf_counter().

A cell's `setupSeconds` runs from the process's start (before Python imported anything, so
interpreter start-up and `import torch` count) to its first timed step. Linux says when a
process started in /proc/self/stat (clock ticks since boot, the CLOCK_BOOTTIME base); where
that cannot be read, the time this module was imported stands in (a few hundred ms late).
"""

from __future__ import annotations

import os
import time

_IMPORTED = time.perf_counter()


def process_start() -> float:
    """The perf_counter() reading at which this process started."""
    try:
        with open("/proc/self/stat") as fh:
            stat = fh.read()
        # Fields after the parenthesised command name start at field 3; starttime is field 22.
        start_ticks = int(stat[stat.rindex(")") + 2 :].split()[19])
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return _IMPORTED
    now = time.perf_counter()
    if not 0 <= age <= now - _IMPORTED + 3600:  # a clock that disagrees: trust the import time
        return _IMPORTED
    return now - age
