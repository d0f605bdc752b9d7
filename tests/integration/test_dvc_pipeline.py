"""The real DVC pipeline on the tiny profile, in a throwaway copy of the project."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from pipelines.registry import BASELINE_VERSION, Registry
from tests.conftest import BIN, copy_project

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
STAGES = ("ingest", "validate", "drift", "prepare", "baselines", "pretrain", "retriever",
          "reranker", "evaluate", "promote")  # fmt: skip


def dvc(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # stages call `python`
           "BENTOML_HOME": str(project.parent / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}  # fmt: skip
    result = subprocess.run(
        [str(BIN / "dvc"), *args], cwd=project, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([\w-]+)'", output))


def set_param(project: Path, dotted: str, value) -> None:
    path = project / "params.yaml"
    tree = yaml.safe_load(path.read_text())
    node = tree
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node[key]
    node[leaf] = value
    path.write_text(yaml.safe_dump(tree, sort_keys=False))


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory) -> tuple[Path, str]:
    """One project reproduced once for the module (a full tiny run costs minutes on 2 cores);
    the tests then change it in file order."""
    project = copy_project(tmp_path_factory.mktemp("dvc") / "project")
    return project, dvc(project, "repro").stdout


def test_repro_runs_once_then_only_what_a_param_feeds(reproduced):
    project, first = reproduced
    assert ran(first) == set(STAGES)
    for folder in ("data/ingested", "data/validated", "data/prepared"):
        assert (
            project / folder / ("splits.json" if "prepared" in folder else "manifest.json")
        ).exists()
    assert (project / "reports/validation/data_docs/index.html").exists()

    again = dvc(project, "repro")
    assert ran(again.stdout) == set()
    assert again.stdout.count("didn't change, skipping") == len(STAGES)

    set_param(project, "prepare.history_length", 5)  # the corpus is unchanged: pretrain is skipped
    assert ran(dvc(project, "repro").stdout) == {
        "prepare", "baselines", "retriever", "reranker", "evaluate", "promote"}  # fmt: skip

    set_param(project, "validate.max_title_chars", 900)  # validate re-runs; its output is unchanged
    assert ran(dvc(project, "repro").stdout) == {"validate"}

    metrics = json.loads(dvc(project, "metrics", "show", "--json").stdout)
    (workspace,) = metrics.values()
    data = workspace["data"]
    assert data["metrics/validate.json"]["data"]["passed"] is True
    assert data["metrics/prepare.json"]["data"]["pairs"]["test"]["rows"] > 0
    assert data["metrics/retriever.json"]["data"]["test"]["search"]["n"] > 0
    evaluate = data["metrics/evaluate.json"]["data"]
    assert evaluate["promote"] in (0, 1) and evaluate["primary"]["n"] > 0
    decision = json.loads((project / "reports/decision.json").read_text())
    assert decision["verdict"] in ("promote", "reject") and decision["reasons"]
    assert data["metrics/promote.json"]["data"]["verdict"] == decision["verdict"]
    checked = json.loads((project / "reports/drift.json").read_text())
    assert data["metrics/drift.json"]["data"]["decision"] == checked["decision"]
    assert checked["reference"]["source"].startswith("tonight's training days")  # no model yet
    assert (project / "reports/drift/index.html").exists()
    registry = Registry(project / ".shopflow/registry")  # the first run registered the baseline
    assert registry.history()[0].version == BASELINE_VERSION
    assert registry.champion().kind == ("model" if decision["verdict"] == "promote" else "baseline")
    reranker = data["metrics/reranker.json"]["data"]
    assert set(reranker["compare"]) == {"vs_bm25", "vs_zero_shot_encoder", "vs_retriever"}
    assert reranker["propensity"]["1"] == 1.0

    plots = dvc(project, "plots", "show", "--json").stdout
    assert "train/contrastive_loss" in plots and "train/listwise_loss" in plots


def test_a_new_window_reruns_everything_and_never_reuses_the_old_one(reproduced):
    project, _ = reproduced
    dvc(project, "repro")  # up to date with whatever the tests before changed
    before = json.loads((project / "data/ingested/manifest.json").read_text())
    set_param(project, "ingest.window.end", "2026-10-27")
    assert ran(dvc(project, "repro").stdout) == set(STAGES)
    after = json.loads((project / "data/ingested/manifest.json").read_text())
    assert after["window"]["end"] == "2026-10-27" != before["window"]["end"]
    assert after["tables"]["events"]["sha256"] != before["tables"]["events"]["sha256"]
