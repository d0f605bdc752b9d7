"""The HTML reports render in a real headless browser, offline, and link nowhere broken."""

from __future__ import annotations

import re

import pytest

from shopflow.core.artifacts import read_json
from tests.integration.browser import chromium, local_links, needs_browser, screenshot

pytestmark = pytest.mark.integration


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

    shot = screenshot(tmp_path, folder / "index.html", "drift.png")
    assert shot.stat().st_size > 20_000  # a blank page is a few KB
