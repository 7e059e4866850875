"""Fixtures for the monitoring tests: prometheus and promtool from cluster/build.sh.

Without them the tests that need them skip with one line saying how to build them; with CI
set they fail instead (CI must run them), as the control-plane tests do.
"""

from __future__ import annotations

import pytest

from localcluster import binaries
from localcluster.pytest_plugin import in_ci


def require_prometheus() -> None:
    reason = binaries.prometheus_missing_reason()
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"CI is set, so the monitoring tests must not skip: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def promtool() -> str:
    require_prometheus()
    return str(binaries.promtool_path())
