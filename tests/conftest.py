"""Shared fixtures: params on the tiny profile, and a throwaway copy of the project for DVC."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shopflow.core.config import Params, load_params, write_params
from shopflow.core.secrets import Mode
from shopflow.release.pointer import describe
from shopflow.release.registry import Registry, registry_key

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's scripts (dvc), whatever PATH says
SHARED_DATA = ROOT.parent / "shared" / "data"

# Test keys (public, so never production's): long enough for production mode, which the
# tests of file sources run in. The synthetic demo would run without them.
os.environ.setdefault("SHOPFLOW_PSEUDONYM_KEY", "test-pseudonym-key-not-secret-0123456789")
os.environ.setdefault("SHOPFLOW_REGISTRY_KEY", "test-registry-key-not-secret-0123456789")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def open_registry(folder: Path) -> Registry:
    """The registry at `folder` as the synthetic demo's stages open it (the test key)."""
    return Registry(folder, registry_key(Mode.DEMO), missing_ok=True)


def tiny_params(*overrides: str) -> Params:
    """The tiny profile (what CI runs), with `key=value` overrides like `dvc exp run -S`."""
    return load_params(ROOT / "params.yaml", ["profile=tiny", *overrides])


@pytest.fixture
def params() -> Params:
    return tiny_params()


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run a test inside an empty folder (stages write relative data/, metrics/, reports/)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the project (code, dvc.yaml, params on the tiny profile) with its own git + DVC."""
    return copy_project(tmp_path / "project")


def copy_project(dest: Path) -> Path:
    dest.mkdir()
    for name in ("dvc.yaml", ".dvcignore", ".gitignore", "pyproject.toml"):
        shutil.copy(ROOT / name, dest / name)
    for folder in ("shopflow", "pipelines", "bento", "dags", "conf"):
        shutil.copytree(ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__"))
    # the copy's own default profile is tiny: `dvc exp run -S key=value` there composes tiny,
    # then the override, as a project that made `gpu` its default would compose gpu
    config = dest / "conf" / "config.yaml"
    config.write_text(config.read_text().replace("  - profile: default\n", "  - profile: tiny\n"))
    write_params(dest / "params.yaml")
    # a new shop: its registry is empty, so its champion is the baselines (the repository's
    # champion.json names the model a fresh `make run` of the default profile promotes)
    pointer = json.dumps(describe(None), indent=2, sort_keys=True) + "\n"
    (dest / "champion.json").write_text(pointer)
    run = lambda *cmd: subprocess.run(cmd, cwd=dest, check=True, capture_output=True)  # noqa: E731
    run("git", "init", "-q")
    run("git", "config", "user.email", "test@shopflow.local")
    run("git", "config", "user.name", "test")
    run(str(BIN / "dvc"), "init", "-q")
    run(str(BIN / "dvc"), "config", "core.analytics", "false")
    run(str(BIN / "dvc"), "config", "hydra.enabled", "true")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "project under test")  # DVCLive needs a repo with a commit
    return dest


# The modules that use the session's trained shop (tests/integration/conftest.py): one unit of
# work under pytest-xdist, so that only one worker trains it.
SHOP_MODULES = {
    f"tests/integration/{name}.py"
    for name in (
        "test_online",
        "test_online_night",
        "test_private_training",
        "test_promotion",
        "test_report_pages",
        "test_service",
    )
}
# Which units start first: the longest (the integration modules) before the short ones.
QUEUE_ORDER = ("tests/integration/", "tests/model/", "tests/data/", "tests/unit/")


def work_unit(nodeid: str) -> str:
    """The unit of work a test belongs to: its module, or the modules sharing the shop."""
    module = nodeid.split("::", 1)[0]
    return "trained-shop" if module in SHOP_MODULES else module


def queue_rank(nodeid: str) -> int:
    if work_unit(nodeid) == "trained-shop":
        return -1
    return next((i for i, p in enumerate(QUEUE_ORDER) if nodeid.startswith(p)), len(QUEUE_ORDER))


@pytest.hookimpl(optionalhook=True)  # xdist's hook: absent without it
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`make test` runs `-n 2 --dist loadfile`: each unit of `work_unit` goes whole to one
    worker and runs there in file order (a module's nights build on each other)."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByWorkUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return ByWorkUnit(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On an xdist worker the longest units come first (with `--no-loadscope-reorder` the
    queue follows this order); a plain `pytest` run keeps file order. A module that uses the
    trained `shop` but is missing from `SHOP_MODULES` stops the run (under xdist it would
    train the shop again on another worker)."""
    strays = stray_shop_modules(items)
    if strays:
        raise pytest.UsageError(
            f"{', '.join(strays)} use the session's trained `shop` fixture: add them to "
            "SHOP_MODULES in tests/conftest.py (one unit of work, so one worker trains it)"
        )
    if hasattr(config, "workerinput"):
        items.sort(key=lambda item: queue_rank(item.nodeid))  # stable: file order within


def stray_shop_modules(items: list[pytest.Item]) -> list[str]:
    """The integration modules whose tests use the `shop` fixture (directly or through another
    fixture) that `SHOP_MODULES` does not name (tests/data has a `shop` of its own)."""
    users = {
        i.nodeid.split("::", 1)[0]
        for i in items
        if i.nodeid.startswith("tests/integration/") and "shop" in getattr(i, "fixturenames", ())
    }
    return sorted(users - SHOP_MODULES)


def shared_file(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared/data is only on development machines and CI)")
    return path
