"""The real DVC pipeline on the tiny profile, in a throwaway copy of the project."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from shopflow.core.config import set_params
from shopflow.orchestration.nightly import stale_upstream
from shopflow.release.registry import BASELINE_VERSION
from tests.conftest import BIN, copy_project, open_registry
from tests.integration.browser import chromium, local_links, needs_browser, screenshot

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
STAGES = (
    "ingest",
    "validate",
    "drift",
    "prepare",
    "baselines",
    "pretrain",
    "retriever",
    "reranker",
    "recommender",
    "evaluate",
    "online",
    "promote",
)

ALWAYS = {"online"}  # always_changed: it reads the live service's logs


def dvc_env(project: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # stages call `python`
        "BENTOML_HOME": str(project.parent / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "SHELL": "/bin/sh",  # DVC's shell when SHELL is unset (CI): dash forks, bash execs
    }


def dvc(project: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(BIN / "dvc"), *args],
        cwd=project,
        env=dvc_env(project),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def git(project: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=project, check=True, capture_output=True, timeout=120)


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([\w-]+)'", output))


def set_param(project: Path, dotted: str, value) -> None:
    set_params(project / "params.yaml", {dotted: value})


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

    again = dvc(project, "repro")  # only online, which always runs
    assert ran(again.stdout) == ALWAYS
    assert again.stdout.count("didn't change, skipping") == len(STAGES) - len(ALWAYS)

    # DVC's experiment tools on the committed run (dvc.lock in Git, metrics and curves in
    # the cache it names)
    git(project, "add", "-A")
    git(project, "commit", "-qm", "a tiny run")
    # the corpus is unchanged: pretrain is skipped. The project's conf/ defaults to the tiny
    # profile (copy_project), so this composes tiny, then the override.
    experiment = dvc(project, "exp", "run", "-n", "short-history", "-S", "prepare.history_length=5")
    assert ran(experiment.stdout) == {
        *ALWAYS,
        "prepare",
        "baselines",
        "retriever",
        "reranker",
        "recommender",
        "evaluate",
        "promote",
    }
    shown = json.loads(dvc(project, "exp", "show", "--json").stdout)
    (committed,) = [row for row in shown if row["rev"] != "workspace"]
    runs = {run["name"]: run for exp in committed["experiments"] or [] for run in exp["revs"]}
    experiment = runs["short-history"]

    def test_ndcg(run: dict) -> float:
        return run["data"]["metrics"]["metrics/retriever.json"]["data"]["test"]["search"]["ndcg@10"]

    assert test_ndcg(committed) > 0 and test_ndcg(experiment) > 0
    tracked = experiment["data"]["params"]["params.yaml"]["data"]
    assert tracked["prepare"]["history_length"] == 5 and tracked["profile"] == "tiny"
    diff = json.loads(dvc(project, "metrics", "diff", "HEAD", "--json").stdout)
    # the workspace holds the experiment: the recommender reads the shortened histories (the
    # retriever reads only the last `retriever.history_items`, so its metrics stay the same:
    # timings, which differed on every run, are kept out of the metrics files)
    assert "metrics/recommender.json" in diff, diff
    curves = json.loads(dvc(project, "plots", "diff", "HEAD", "--json").stdout)["data"]
    assert any("contrastive_loss" in name for name in curves), list(curves)

    set_param(project, "validate.max_title_chars", 900)  # validate re-runs; its output is unchanged
    assert ran(dvc(project, "repro").stdout) == {*ALWAYS, "validate"}

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
    registry = open_registry(
        project / ".shopflow/registry"
    )  # the first run registered the baseline
    assert registry.history()[0].version == BASELINE_VERSION
    assert registry.champion().kind == ("model" if decision["verdict"] == "promote" else "baseline")
    reranker = data["metrics/reranker.json"]["data"]
    baselines = {"vs_bm25", "vs_zero_shot_encoder", "vs_retriever"}
    assert set(reranker["compare"]) == baselines | {"vs_hybrid", "vs_ltr"}  # the other mixes
    assert set(reranker["compare_ltr"]) == baselines | {"vs_reranker", "vs_hybrid"}
    assert reranker["feature_ranker"]["trees"] >= 1  # the tiny shop has enough judged queries
    assert set(reranker["serving_mix"]["candidates"]) == {"dense+reranker", "hybrid+reranker"}
    assert {"judged_ndcg@10", "judged@10"} <= set(decision["metrics"]["challenger"]["search"])
    assert reranker["propensity"]["1"] == 1.0

    plots = dvc(project, "plots", "show", "--json").stdout
    assert "train/contrastive_loss" in plots and "train/listwise_loss" in plots
    assert "held_out/ltr_ndcg@10" in plots  # the feature ranker's curve, tree by tree
    # held-out (valid split) losses at each checkpoint: the validation curves
    assert all(
        f"valid/{loss}" in plots for loss in ("mlm_loss", "contrastive_loss", "listwise_loss")
    )


def test_a_new_window_reruns_everything_and_never_reuses_the_old_one(reproduced):
    project, _ = reproduced
    dvc(project, "repro")  # up to date with whatever the tests before changed
    before = json.loads((project / "data/ingested/manifest.json").read_text())
    set_param(project, "ingest.window.end", "2026-10-27")
    # what a nightly task checks before it runs its stage: are its upstream stages at the
    # night? The window changed in params.yaml, so none of them is
    assert stale_upstream(project, ["ingest", "validate"]) == ["ingest", "validate"]
    assert ran(dvc(project, "repro").stdout) == set(STAGES)
    assert stale_upstream(project, ["ingest", "validate"]) == []
    after = json.loads((project / "data/ingested/manifest.json").read_text())
    assert after["window"]["end"] == "2026-10-27" != before["window"]["end"]
    assert after["tables"]["events"]["sha256"] != before["tables"]["events"]["sha256"]


@needs_browser
def test_the_run_report_renders_offline_with_the_decision_and_no_broken_link(reproduced, tmp_path):
    """`shopflow report` after the runs above: the latest (the new window, every stage ran)
    gets a page that Chromium renders offline, with the gate's decision, and an index of all
    runs, newest first."""
    project, _ = reproduced
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "BENTOML_HOME": str(project.parent / "bentoml"),
    }
    done = subprocess.run(
        [str(BIN / "python"), "-m", "shopflow", "report"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    page = project / done.stdout.strip().splitlines()[-1]
    run = json.loads((page.parent / "run.json").read_text())
    assert run["night"] == "2026-10-27" and run["decision_fresh"]
    assert {s["stage"]: s["status"] for s in run["stages"]} == dict.fromkeys(STAGES, "success")
    assert all(s["seconds"] > 0 for s in run["stages"])
    verdict = json.loads((project / "reports/decision.json").read_text())["verdict"]
    assert run["outcome"]["verdict"] == ("promoted" if verdict == "promote" else "rejected")
    assert set(run["charts"]) == {"events", "curves", "slices", "scores"}

    dom = chromium(tmp_path, "--dump-dom", page.as_uri())
    assert re.search(rf'id="decision"[^>]*>{verdict}<', dom)
    assert re.search(rf'id="run-verdict"[^>]*>{run["outcome"]["verdict"]}<', dom)
    for section in ("validation-result", "drift-decision", "guardrails", "timeline", "per-day"):
        assert f'id="{section}"' in dom, section
    links = local_links(page)
    names = {p.name for p in links}
    assert {
        "index.html",
        "events_per_day.svg",
        "learning_curves.svg",
        "slices.svg",
        "score_distributions.svg",
    } <= names
    assert {"data_docs", "drift"} <= {p.parent.name for p in links}  # the night's own copies
    assert all(p.is_file() for p in links), [p for p in links if not p.is_file()]

    index = page.parent.parent / "index.html"
    rows = re.findall(r"<tr>\s*<td>(.*?)</td>.*?</tr>", index.read_text(), re.S)
    # the runs above that ran more than `online` (every repro runs it): the first, the
    # experiment, validate's, the new window; only the latest has a page
    assert len(rows) == 4
    assert rows == sorted(rows, reverse=True)  # newest first
    assert re.findall(r'<a href="([^"]+)/index.html">', index.read_text()) == [page.parent.name]
    assert all(p.is_file() for p in local_links(index))
    shot = screenshot(tmp_path, page, "run.png", height=5000)
    assert shot.stat().st_size > 100_000  # charts and tables, not a blank page


def test_a_new_champion_makes_drift_and_evaluate_stale_for_dvc(reproduced):
    """The registry lives outside the workspace; champion.json, which promote and rollback
    rewrite, is what DVC sees: after a promotion `dvc status` names drift and evaluate."""
    project, _ = reproduced  # last in the module: the runs above stay against the baselines
    before = json.loads((project / "champion.json").read_text())
    assert before["kind"] == "baseline"  # the tiny model did not beat the baselines
    forced = subprocess.run(
        [str(BIN / "python"), "-m", "shopflow", "promote", "--force", "--reason", "a test"],
        cwd=project,
        env=dvc_env(project),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert forced.returncode == 0, forced.stderr
    after = json.loads((project / "champion.json").read_text())
    assert after["kind"] == "model" and after["version"] != before["version"]
    stale = set(json.loads(dvc(project, "status", "--json").stdout)) - ALWAYS
    # (promote too: the forced promotion rewrote its metrics file outside `dvc repro`)
    assert stale == {"drift", "evaluate", "promote"}, stale


def test_repeated_judgments_merge_by_policy_through_dvc_repro(project):
    """Several raters per (query, product): `dvc repro prepare` with `mean`, then `median`,
    lands the expected grade on every pair; the manifest records what was merged."""
    import pandas as pd

    from tests.data.test_repeated_judgments import EXPECTED, MAPPING, grades, write_ratings

    ratings = write_ratings(project / "ratings.csv")
    set_param(project, "ingest.source", "judgments")
    set_param(project, "ingest.path", str(ratings))
    set_param(project, "ingest.mapping", yaml.safe_load(MAPPING))
    for policy in ("mean", "median"):
        set_param(project, "ingest.options", {"repeated_judgments": policy})
        out = dvc(project, "repro", "prepare").stdout
        assert {"ingest", "validate", "prepare"} <= ran(out)
        judged = pd.read_parquet(project / "data/prepared/judgments.parquet")
        assert grades(judged) == pytest.approx(EXPECTED[policy])
        manifest = json.loads((project / "data/ingested/manifest.json").read_text())
        assert manifest["repeated_judgments"]["policy"] == policy
        assert manifest["repeated_judgments"]["repeated_pairs"] == 2
    dvc(project, "repro", "drift")  # judgments alone: nothing to measure, and no failure
    drift = json.loads((project / "reports/drift.json").read_text())
    assert drift["decision"] == "insufficient_data" and "has no events" in drift["reasons"][0]
    assert (project / "reports/drift/index.html").exists()
