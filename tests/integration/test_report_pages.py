"""The HTML reports render in a real headless browser, offline, and link nowhere broken."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipelines.artifacts import read_json

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Flags for a closed network (see the env notes): no background traffic, no sandbox as root.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=15000"]  # fmt: skip
needs_browser = pytest.mark.skipif(
    CHROMIUM is None, reason="no headless Chromium: `make browser` installs Debian's chromium"
)


def chromium(tmp_path: Path, *args: str) -> str:
    profile = tmp_path / f"chromium-{len(list(tmp_path.glob('chromium-*')))}"
    done = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def local_links(page: Path) -> list[Path]:
    hrefs = re.findall(r"href=['\"]([^'\"#]+)['\"]", page.read_text(encoding="utf-8"))
    return [page.parent / h for h in hrefs if "://" not in h]


@needs_browser
def test_drift_report_renders_with_its_decision_and_no_broken_link(shop, tmp_path):
    folder = shop["work"] / "reports/drift"
    decision = read_json(shop["work"] / "reports/drift.json")["decision"]
    dom = chromium(tmp_path, "--dump-dom", (folder / "index.html").as_uri())
    assert re.search(rf'id="decision"[^>]*>{decision}<', dom)
    assert "query_embedding" in dom and "ctr@1" in dom
    links = local_links(folder / "index.html")
    assert {p.name for p in links} >= {"evidently.html", "query_embedding.html"}
    assert all(p.is_file() for p in links), links

    # Evidently's pages are a React app: rendered, they hold Material UI cards and plots
    rendered = chromium(tmp_path, "--dump-dom", (folder / "evidently.html").as_uri())
    assert "MuiPaper-root" in rendered and "Data Drift Summary" in rendered

    shot = tmp_path / "drift.png"
    chromium(tmp_path, "--window-size=1280,1600", f"--screenshot={shot}",
             (folder / "index.html").as_uri())  # fmt: skip
    assert shot.stat().st_size > 20_000  # a blank page is a few KB
