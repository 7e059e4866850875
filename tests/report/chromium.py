"""Headless Chromium for the report tests: load a report, say whether it rendered, take a screenshot.

Also the way docs/report-screenshot.png is made (same code path as the test):
    ~/.cache/promotion-ladder/venv/bin/python tests/report/chromium.py docs/report-screenshot.png
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Without these, Chromium waits on network services that do not exist on a closed network.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
]
NONCE = "report-test-probe"

# Runs first in <head>: records script errors, CSP violations (any attempted network load)
# and failed resources; after load, checks every image decoded, and writes it all into the DOM.
PROBE = f"""<script nonce="{NONCE}">
window.__probe = {{errors: [], violations: [], failed: []}};
window.addEventListener('error', e => {{
  if (e.target && e.target.tagName)
    window.__probe.failed.push(e.target.tagName + ' ' + (e.target.src || '').slice(0, 40));
  else window.__probe.errors.push(String(e.message));
}}, true);
document.addEventListener('securitypolicyviolation',
  e => window.__probe.violations.push(e.violatedDirective + ' ' + e.blockedURI));
window.addEventListener('load', () => {{
  const imgs = Array.from(document.images);
  window.__probe.images = imgs.map(i => ({{figure: i.closest('figure') ? i.closest('figure').dataset.figure : null,
    complete: i.complete, width: i.naturalWidth, height: i.naturalHeight}}));
  const pre = document.createElement('pre');
  pre.id = 'probe-result';
  pre.textContent = JSON.stringify(window.__probe);
  document.body.appendChild(pre);
}});
</script>"""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(chromium: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="report-chromium-") as profile:
        return subprocess.run(
            [chromium, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=timeout
        )


def probe(chromium: str, html: str, workdir: Path, timeout: float = 90) -> dict:
    """Load the page with the probe injected; return what it saw: errors, violations, failed, images."""
    page = html.replace("default-src 'none';", f"default-src 'none'; script-src 'nonce-{NONCE}';", 1)
    page = page.replace("<head>", "<head>" + PROBE, 1)
    path = workdir / "probe.html"
    path.write_text(page, encoding="utf-8")
    out = _run(chromium, ["--virtual-time-budget=10000", "--dump-dom", path.as_uri()], timeout)
    m = re.search(r'<pre id="probe-result">(.*?)</pre>', out.stdout, re.S)
    if not m:
        raise AssertionError(f"the page never finished loading (rc {out.returncode}); stderr:\n{out.stderr[-3000:]}")
    raw = m.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return json.loads(raw)


def screenshot(
    chromium: str, html_path: Path, png: Path, width: int = 1200, height: int = 2300, timeout: float = 90
) -> None:
    out = _run(
        chromium,
        [
            f"--window-size={width},{height}",
            "--virtual-time-budget=10000",
            f"--screenshot={png}",
            html_path.resolve().as_uri(),
        ],
        timeout,
    )
    if not png.exists() or png.stat().st_size == 0:
        raise AssertionError(f"chromium wrote no screenshot (rc {out.returncode}); stderr:\n{out.stderr[-3000:]}")


def example_report_html() -> str:
    """The example ladder's report, from `ladder simulate --output json` plus --ladder (what the docs show)."""
    from promotion_ladder.report import render
    from tests.report.builders import example_input

    return render(example_input(), "html")


if __name__ == "__main__":  # pragma: no cover - regenerates the committed screenshot
    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root))
    target = Path(sys.argv[1] if len(sys.argv) > 1 else root / "docs" / "report-screenshot.png")
    chromium = find_chromium()
    if chromium is None:
        sys.exit("chromium not found: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "report.html"
        page.write_text(example_report_html(), encoding="utf-8")
        screenshot(chromium, page, target)
    print(f"{target}: {target.stat().st_size // 1024} KiB", file=sys.stderr)
