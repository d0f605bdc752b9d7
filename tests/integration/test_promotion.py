"""Evaluate → promote → rollback for real: BentoML store, Bento builds, loopback smoke tests.

Uses the session's trained tiny shop (tests/integration/conftest.py). The gate's rules are
unit-tested (tests/unit/test_gate.py); here the real evaluate stage decides against the
baseline, and the promotion mechanics are driven with decisions whose verdict is set, so
that each path (killed promotion, reuse, stale decision, rollback) runs every time.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from shopflow.core.artifacts import read_json, write_json
from shopflow.release.registry import BASELINE_VERSION
from tests.conftest import ROOT, open_registry
from tests.integration.conftest import MODEL_OVERRIDES

pytestmark = pytest.mark.integration

KILLED_AFTER_BUILD = """
import os, signal, sys
from shopflow.release import promotion
from shopflow.cli import main
def die(*args, **kwargs):  # killed after save + build, before the smoke test and the commit
    os.kill(os.getpid(), signal.SIGKILL)
promotion.smoke_test = die
sys.exit(main(sys.argv[1:]))
"""

APPLY = """
import sys
from shopflow.core.config import load_params
from shopflow.release import experiments
from shopflow.release.registry import Registry
from tests.conftest import ROOT
from tests.integration.conftest import MODEL_OVERRIDES
params = load_params(ROOT / "params.yaml", ["profile=tiny", *MODEL_OVERRIDES,
                     f"promote.registry={sys.argv[1]}"])
verdict = {"decision": sys.argv[2], "reasons": [], "units": 500, "days": 3.0}
print(experiments.apply(params, Registry.of(params), verdict))
"""


def cli(shop: dict, registry: Path, *args: str, script: str | None = None):
    overrides = ["profile=tiny", *MODEL_OVERRIDES, f"promote.registry={registry}"]
    options = ["--params", str(ROOT / "params.yaml")]
    options += [arg for o in overrides for arg in ("-S", o)]
    head = [sys.executable, "-c", script] if script else [sys.executable, "-m", "shopflow"]
    return subprocess.run(
        [*head, *options, *args],
        cwd=shop["work"],
        env=shop["env"],
        capture_output=True,
        text=True,
        timeout=900,
    )


def bentos(shop: dict) -> set[str]:
    listed = subprocess.run(
        [sys.executable, "-m", "bentoml", "list", "-o", "json"],
        env=shop["env"],
        capture_output=True,
        text=True,
        check=True,
    )
    return {b["tag"] for b in json.loads(listed.stdout)}


def set_verdict(shop: dict, verdict: str, champion_entry: int | None) -> None:
    path = shop["work"] / "reports/decision.json"
    decision = read_json(path)
    decision["verdict"] = verdict
    decision["champion"]["entry"] = champion_entry
    write_json(path, decision)


def test_evaluate_promote_kill_rerun_stale_decision_and_rollback(shop, tmp_path):
    registry_dir = tmp_path / "registry"
    registry = open_registry(registry_dir)

    # 1. the real A/B evaluation against the first champion, the baselines (tuned BM25F, the best recommender)
    done = cli(shop, registry_dir, "evaluate")
    assert done.returncode == 0, done.stderr
    decision = read_json(shop["work"] / "reports/decision.json")
    assert decision["champion"]["version"] == BASELINE_VERSION
    assert decision["verdict"] in {"promote", "reject"} and decision["reasons"]
    names = [c["name"] for c in decision["checks"]]
    assert names[:3] == ["primary gain", "significance", "interleaving"]
    assert {
        "guardrail search recall@100",
        "guardrail recommend hit@10",
        "guardrail brand exposure disparity",
        "guardrail search p95 latency ms",
    } <= set(names)
    assert decision["interleaving"]["sessions"] > 0 and decision["power"]["sessions_per_arm"] > 0
    assert any(key.startswith("category=") for key in decision["slices"])
    headline = read_json(shop["work"] / "metrics/evaluate.json")
    assert headline["promote"] == int(decision["verdict"] == "promote")
    assert (shop["work"] / "data/evaluation/challenger_search.parquet").exists()

    # 2. a promotion killed after the Bento is built leaves the baseline as champion ...
    set_verdict(shop, "promote", None)
    before = bentos(shop)
    killed = cli(shop, registry_dir, "promote", script=KILLED_AFTER_BUILD)
    assert killed.returncode == -9
    assert registry.champion().version == BASELINE_VERSION and len(registry.history()) == 1
    built = bentos(shop)
    # ... and the rerun reuses what exists, smoke-tests it and only then moves the champion
    done = cli(shop, registry_dir, "promote")
    assert done.returncode == 0, done.stderr
    first = registry.champion()
    assert (first.id, first.action, first.kind) == (2, "promote", "model")
    assert first.bento_tag in built and bentos(shop) == built and len(built) <= len(before) + 1
    outcome = read_json(shop["work"] / "metrics/promote.json")
    assert outcome["promoted"] == 1 and outcome["smoke_test"]["passed"]
    assert outcome["smoke_test"]["top10_overlap"] >= 0.8
    # the container path: the Bento's environment is pinned, torch to its CPU build
    name, version = first.bento_tag.split(":")
    bento_env = Path(shop["env"]["BENTOML_HOME"]) / "bentos" / name / version / "env"
    requirements = (bento_env / "python/requirements.txt").read_text()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in requirements
    assert re.search(r"^torch==[\d.]+\+cpu$", requirements, re.M)
    assert re.search(r"^lightgbm==[\d.]+$", requirements, re.M)
    dockerfile = (bento_env / "docker/Dockerfile").read_text()
    assert "ARG UV_INDEX_STRATEGY=unsafe-best-match" in dockerfile  # set before the install

    # 3. a second model (other serving settings: another version) promoted over the first
    set_verdict(shop, "promote", first.id)
    done = cli(shop, registry_dir, "-S", "serving.batch_size=32", "promote")
    assert done.returncode == 0, done.stderr
    second = registry.champion()
    assert second.id == 3 and second.version != first.version and second.previous == first.id

    # 4. a decision made against an earlier champion never promotes
    stale = cli(shop, registry_dir, "-S", "serving.batch_size=16", "promote")
    assert stale.returncode == 2 and "re-run evaluate" in stale.stderr
    assert registry.champion() == second

    # 5. rollback re-points to the first model's Bento, rebuilding nothing, and logs it
    count = len(bentos(shop))
    done = cli(shop, registry_dir, "rollback")
    assert done.returncode == 0, done.stderr
    back = registry.champion()
    assert (back.id, back.action, back.version, back.bento_tag) == (
        4,
        "rollback",
        first.version,
        first.bento_tag,
    )
    assert len(bentos(shop)) == count
    # ... and the workspace's pointer, which drift and evaluate depend on in dvc.yaml
    pointer = read_json(shop["work"] / "champion.json")
    assert pointer == {"kind": "model", "version": first.version}
    history = cli(shop, registry_dir, "registry", "history").stdout
    assert "rollback" in history and history.count("promote") == 2
    assert json.loads(cli(shop, registry_dir, "registry", "show").stdout)["id"] == 4

    # 6. the same models evaluated against that champion (from the store) are not promoted
    done = cli(shop, registry_dir, "evaluate")
    assert done.returncode == 0, done.stderr
    again = read_json(shop["work"] / "reports/decision.json")
    assert again["champion"] == {**again["champion"], "entry": 4, "kind": "model"}
    assert again["verdict"] == "reject" and again["primary"]["difference"] == 0.0
    assert again["reasons"][0].startswith("primary gain")

    # 7. the drift check now compares against that champion's own training window, through
    # its own encoder and reranker (the reference travelled inside its bundle)
    done = cli(shop, registry_dir, "drift")
    assert done.returncode == 0, done.stderr
    checked = read_json(shop["work"] / "reports/drift.json")
    assert checked["reference"]["source"] == f"champion #4 ({first.model_tag})"
    assert checked["probe"].startswith("model ")
    assert checked["decision"] in {"none", "retrain", "alert", "insufficient_data"}
    measured = {f["name"] for f in checked["features"] if f["status"] == "measured"}
    assert {"query_embedding", "champion_score", "click_category", "ctr"} <= measured

    # 8. a person overrules the reject verdict: still smoke-tested, logged with who and why
    unexplained = cli(shop, registry_dir, "promote", "--force")
    assert unexplained.returncode == 2 and "needs a reason" in unexplained.stderr
    assert registry.champion().id == 4
    forced = cli(
        shop,
        registry_dir,
        "-S",
        "serving.batch_size=32",
        "promote",
        "--force",
        "--reason",
        "holiday hotfix",
        "--by",
        "alice",
    )
    assert forced.returncode == 0, forced.stderr
    entry = registry.champion()
    assert (entry.id, entry.action, entry.version) == (5, "force", second.version)
    assert entry.reason == "forced by alice: holiday hotfix" and entry.previous == 4
    assert entry.decision["forced_by"] == "alice" and entry.decision["gate_verdict"] == "reject"
    outcome = read_json(shop["work"] / "metrics/promote.json")
    assert outcome["forced"] == {"by": "alice", "reason": "holiday hotfix"}
    assert outcome["smoke_test"]["passed"] and outcome["verdict"] == "reject"

    # 9. with online experiments on, a passing challenger goes to a shadow experiment first:
    # one Bento packs both models, the champion stays, the registry logs the experiment
    set_verdict(shop, "promote", 5)
    shadow = ("-S", "online.after_gate=shadow", "-S", "serving.batch_size=16")
    done = cli(shop, registry_dir, *shadow, "promote")
    assert done.returncode == 0, done.stderr
    started = registry.history()[-1]
    assert (started.id, started.action, registry.champion().id) == (6, "experiment", 5)
    spec = started.decision["spec"]
    assert spec["mode"] == "shadow" and spec["champion"] == entry.model_tag
    assert json.loads((registry_dir / "experiment.json").read_text()) == spec
    labels = json.loads(
        subprocess.run(
            [sys.executable, "-m", "bentoml", "get", started.bento_tag, "-o", "json"],
            env=shop["env"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )["labels"]
    assert labels["challenger_version"] == started.version
    # a second challenger waits while one runs; the night's reading with nothing logged yet
    waits = cli(shop, registry_dir, *shadow[:2], "-S", "serving.batch_size=8", "promote")
    assert waits.returncode == 0 and len(registry.history()) == 6
    read = cli(shop, registry_dir, "-S", f"online.log.folder={tmp_path / 'no-logs'}", "online")
    assert read.returncode == 0, read.stderr
    reading = read_json(shop["work"] / "reports/online.json")
    assert reading["decision"] == "continue" and reading["experiment"] == spec["id"]
    # an edited experiment file is refused
    (registry_dir / "experiment.json").write_text(json.dumps({**spec, "share": 1.0}))
    edited = cli(shop, registry_dir, "online")
    assert edited.returncode == 2 and "was edited" in edited.stderr
    (registry_dir / "experiment.json").write_text(json.dumps(spec))

    # 10. the online verdict `promote` goes through the registry's compare-and-swap, and the
    # challenger serves from its own Bento (not the experiment's)
    applied = subprocess.run(
        [sys.executable, "-c", APPLY, str(registry_dir), "promote"],
        cwd=shop["work"],
        env=shop["env"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert applied.returncode == 0, applied.stderr
    online_champion = registry.champion()
    assert (online_champion.id, online_champion.action) == (7, "promote")
    assert online_champion.version == started.version
    assert online_champion.bento_tag != started.bento_tag
    assert not (registry_dir / "experiment.json").exists() and registry.experiment() is None
    # a rollback after it walks back to the model before, never to an experiment-only entry
    done = cli(shop, registry_dir, "rollback")
    assert done.returncode == 0, done.stderr
    assert registry.champion().version == entry.version
