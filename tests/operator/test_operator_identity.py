"""The operator names itself without a passwd entry: the image runs as uid 65532, which its
/etc/passwd does not hold, and Kopf's default identity (getpass.getuser()) crashed the chart's pod
at start on real nodes ("getpwuid(): uid not found: 65532"; tests/realnodes runs that pod)."""

from __future__ import annotations

import getpass

from promotion_ladder.controller.main import kopf_identity


def test_the_pods_name_when_the_chart_sets_it(monkeypatch):
    monkeypatch.setenv("POD_NAME", "ladder-promotion-ladder-7d9c-abcde")
    assert kopf_identity() == "ladder-promotion-ladder-7d9c-abcde"


def test_no_passwd_entry_needed(monkeypatch):
    def no_such_user() -> str:
        raise KeyError("getpwuid(): uid not found: 65532")

    monkeypatch.delenv("POD_NAME", raising=False)
    monkeypatch.setattr(getpass, "getuser", no_such_user)
    assert kopf_identity().startswith("ladder-operator@")
