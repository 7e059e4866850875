"""Fixtures for the monitoring tests: prometheus and promtool from cluster/build.sh.

Without them the tests that need them skip with one line saying how to build them; with CI
set they fail instead (CI must run them), as the control-plane tests do.
"""

from __future__ import annotations

import pytest

from localcluster import binaries
from localcluster.pytest_plugin import require_tool

from ..chart.conftest import helm  # noqa: F401 - the chart tests' fixture, shared with test_alert_rules


def require_prometheus() -> None:
    require_tool(binaries.prometheus_missing_reason(), "the monitoring tests")


@pytest.fixture(scope="session")
def promtool() -> str:
    require_prometheus()
    return str(binaries.promtool_path())
