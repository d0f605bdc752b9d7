"""Headless Chromium (Debian's package) for the tests that render HTML reports, offline."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Flags for a closed network (see the env notes): no background traffic, no sandbox as root.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=15000",
]
needs_browser = pytest.mark.skipif(
    CHROMIUM is None, reason="no headless Chromium: `make browser` installs Debian's chromium"
)


def chromium(tmp_path: Path, *args: str) -> str:
    """Run Chromium once with a fresh profile; its standard output (e.g. --dump-dom)."""
    profile = tmp_path / f"chromium-{len(list(tmp_path.glob('chromium-*')))}"
    done = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def local_links(page: Path) -> list[Path]:
    """The files the page's links and images point to (anchors and URLs with a scheme left out)."""
    targets = re.findall(r"(?:href|src)=['\"]([^'\"#]+)['\"]", page.read_text(encoding="utf-8"))
    return [page.parent / t for t in targets if "://" not in t and not t.startswith("data:")]


def screenshot(tmp_path: Path, page: Path, name: str, height: int = 1600) -> Path:
    shot = tmp_path / name
    chromium(tmp_path, f"--window-size=1280,{height}", f"--screenshot={shot}", page.as_uri())
    return shot
