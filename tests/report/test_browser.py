"""The HTML report in a real browser: headless Chromium loads it with no errors and shows every image.

Skips when Chromium is not installed, except under CI (env CI set), where .ci/run installs it.
"""

from __future__ import annotations

import struct

import pytest

from localcluster.pytest_plugin import in_ci

from .chromium import find_chromium, probe, screenshot

if find_chromium() is None and not in_ci():
    pytest.skip(
        "headless Chromium not installed (apt-get install -y chromium): browser test skipped", allow_module_level=True
    )


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:  # under CI each test fails (the run goes on): .ci/run was meant to install it
        pytest.fail("CI is set but chromium is not installed; .ci/run installs it (apt-get install -y chromium)")
    return path


@pytest.mark.parametrize("name", ["example_report", "running_report"])
def test_page_loads_with_no_errors_and_shows_every_image(chromium, request, tmp_path, name):
    r = request.getfixturevalue(name)
    seen = probe(chromium, r.html, tmp_path)
    assert seen["errors"] == [], "script errors"
    assert seen["violations"] == [], "the page tried to load something from outside itself"
    assert seen["failed"] == [], "resources that failed to load"
    figures = r.report.figure_keys()
    assert [i["figure"] for i in seen["images"]] == [f for s in r.report.sections for f in s.figures]
    assert len(seen["images"]) == len(figures)
    for img in seen["images"]:
        assert img["complete"] and img["width"] >= 400 and img["height"] >= 200, img


def test_screenshot_of_the_example_report(chromium, tmp_path, example_report):
    """The code path of docs/report-screenshot.png (python tests/report/chromium.py docs/report-screenshot.png)."""
    page = tmp_path / "report.html"
    page.write_text(example_report.html, encoding="utf-8")
    png = tmp_path / "shot.png"
    screenshot(chromium, page, png)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (1200, 2300)
    assert 30_000 < len(data) < 500_000, f"{len(data)} bytes: a blank page, or too big to commit"


def test_the_probe_notices_a_broken_page(chromium, tmp_path, example_report):
    """Guard against a vacuous check: an outside load, a broken image and a script error are all seen."""
    broken = example_report.html.replace(
        "</main>",
        '<img src="https://example.invalid/x.png"><img src="data:image/png;base64,AAAA">'
        '<script nonce="report-test-probe">undefined_function()</script></main>',
        1,
    )
    seen = probe(chromium, broken, tmp_path)
    assert any("img-src" in v for v in seen["violations"])
    assert seen["failed"]
    assert any("undefined_function" in e for e in seen["errors"])
    assert any(not (i["complete"] and i["width"]) for i in seen["images"])
