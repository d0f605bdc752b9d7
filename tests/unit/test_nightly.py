"""The nightly run's decisions and plumbing, without Airflow: branches, window, graph, alerts."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace
from typing import ClassVar

import pytest

from shopflow.core.config import load_params, write_params
from shopflow.orchestration import alerts, decisions, nightly
from shopflow.release.registry import BASELINE_VERSION, Entry
from tests.conftest import ROOT, tiny_params

pytestmark = pytest.mark.unit

PARAMS = tiny_params("ingest.window.end=2026-10-28", "airflow.max_model_age_days=7")
TONIGHT_TRAINING_END = dt.date(2026, 10, 24)  # tiny: 10 days, 2 valid + 2 test at the end


def champion(kind: str = "model", at: str = "2026-10-20T02:10:00+00:00") -> Entry:
    version = "abc123" if kind == "model" else BASELINE_VERSION
    return Entry(id=2, action="promote", at=at, kind=kind, version=version)


def drift_report(decision: str = "none", trained_until: str = "2026-10-22", **extra) -> dict:
    return {
        "decision": decision,
        "reasons": [f"the drift stage says {decision}"],
        "reference": {"days": f"2026-10-13..{trained_until}", "source": "champion #2's bundle"},
        "report": "reports/drift/index.html",
        **extra,
    }


def test_retrain_when_drift_says_so_and_not_when_quiet():
    go = decisions.decide_retrain(drift_report("retrain"), champion(), PARAMS)
    assert go.go and "drift" in go.reasons[0] and go.alert is None
    quiet = decisions.decide_retrain(drift_report("none"), champion(), PARAMS)
    assert not quiet.go and quiet.facts["champion_age_days"] == 2
    scarce = decisions.decide_retrain(drift_report("insufficient_data"), champion(), PARAMS)
    assert not scarce.go


def test_age_is_counted_in_data_days_from_the_champions_training_window():
    young = decisions.decide_retrain(
        drift_report("none", trained_until="2026-10-18"), champion(), PARAMS
    )
    old = decisions.decide_retrain(
        drift_report("none", trained_until="2026-10-17"), champion(), PARAMS
    )
    assert not young.go and young.facts["champion_age_days"] == 6
    assert old.go and "7 days old" in old.reasons[0]
    # a model saved before the drift stage existed: its promotion date stands in
    legacy = drift_report("none")
    legacy["reference"]["source"] = "tonight's training days (the champion has no reference)"
    aged = decisions.decide_retrain(legacy, champion(at="2026-10-01T02:00:00+00:00"), PARAMS)
    assert (
        aged.go
        and aged.facts["champion_age_days"] == (TONIGHT_TRAINING_END - dt.date(2026, 10, 1)).days
    )
    backfill = decisions.decide_retrain(legacy, champion(at="2026-11-23T02:00:00+00:00"), PARAMS)
    assert not backfill.go and backfill.facts["champion_age_days"] == 0  # "promoted" after tonight
    # a source without events (judgments only): nothing measured, the promotion date stands in
    unmeasured = drift_report("insufficient_data")
    unmeasured["reference"] = {"source": "none", "days": "", "rows": 0}
    stale = decisions.decide_retrain(unmeasured, champion(at="2026-10-01T02:00:00+00:00"), PARAMS)
    assert stale.go and "days old" in stale.reasons[0]


def test_no_trained_champion_always_trains_and_forcing_wins():
    assert decisions.decide_retrain(drift_report("none"), None, PARAMS).go
    assert decisions.decide_retrain(drift_report("none"), champion("baseline"), PARAMS).go
    forced = decisions.decide_retrain(drift_report("none"), champion(), PARAMS, forced=True)
    assert forced.go and "forced" in forced.reasons[0]


def test_drift_alert_alerts_and_keeps_the_champion_unless_forced():
    report = drift_report("alert", reasons=["click_category vanished"])
    held = decisions.decide_retrain(report, champion(), PARAMS)
    assert not held.go and "click_category vanished" in held.alert and "index.html" in held.alert
    assert not decisions.decide_retrain(report, champion("baseline"), PARAMS).go
    forced = decisions.decide_retrain(report, champion(), PARAMS, forced=True)
    assert forced.go and forced.alert


def test_promote_only_on_a_promote_verdict():
    assert decisions.decide_promote({"verdict": "promote", "reasons": ["all checks passed"]}).go
    rejected = decisions.decide_promote({"verdict": "reject", "reasons": ["significance: p = 0.4"]})
    assert not rejected.go and "significance: p = 0.4" in rejected.reasons


def test_night_of_a_logical_date_is_its_utc_day():
    late = dt.datetime(2026, 10, 28, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    assert nightly.night_of(late) == dt.date(2026, 10, 29)
    assert nightly.night_of(dt.datetime(2026, 10, 28, 2, tzinfo=dt.UTC)) == dt.date(2026, 10, 28)


def test_the_night_goes_into_params_yaml_keeping_the_composed_values(tmp_path):
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    path = write_params(tmp_path / "params.yaml", ["profile=tiny", "retriever.steps=5"])
    assert nightly.set_night(tmp_path, dt.date(2026, 10, 30)) is True
    params = load_params(path)
    assert params.ingest.window.end == dt.date(2026, 10, 30)
    assert params.profile == "tiny" and params.retriever.steps == 5  # the rest as composed
    assert nightly.set_night(tmp_path, dt.date(2026, 10, 30)) is False  # unchanged: no rewrite


def test_stage_exit_code_is_the_commands_not_dvcs():
    output = "ERROR: failed to reproduce 'validate': failed to run: python -m shopflow validate, exited with 3"
    assert nightly.stage_exit_code(255, output) == 3
    assert nightly.stage_exit_code(255, "ERROR: output 'x' does not exist") == 255
    assert nightly.StageRunError("validate", 3, "").final
    assert not nightly.StageRunError("reranker", 137, "").final  # killed (OOM, timeout): retry


def test_graph_checks_and_training_roots():
    edges = {
        ("ingest", "validate"),
        ("validate", "drift"),
        ("validate", "prepare"),
        ("prepare", "pretrain"),
        ("pretrain", "retriever"),
        ("prepare", "retriever"),
        ("retriever", "evaluate"),
        ("evaluate", "promote"),
        ("drift", "promote"),
    }
    graph = nightly.StageGraph(
        ("ingest", "validate", "prepare", "pretrain", "retriever", "drift", "evaluate", "promote"),
        frozenset(edges),
    )
    assert graph.checks() == {"ingest", "validate", "drift"}
    assert graph.training_roots() == ["prepare"]
    online = nightly.StageGraph(
        (*graph.stages, "online"), frozenset({*edges, ("ingest", "online")})
    )
    assert online.checks() == {"ingest", "validate", "drift", "online"}  # read every night
    assert online.training_roots() == ["prepare"]
    assert graph.ancestors("retriever") == {"ingest", "validate", "prepare", "pretrain"}
    assert nightly.StageGraph.task_id("train@fr") == "train-fr"


class Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_alerts_are_recorded_and_posted_and_a_dead_webhook_does_not_raise(tmp_path):
    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        record = tmp_path / "alerts.jsonl"
        alert = alerts.Alert("task failed", "exit code 3", "shopflow_nightly", "validate", "r1")
        url = f"http://127.0.0.1:{server.server_port}/hook"
        assert alerts.send(alert, url, record) is True
        assert Hook.received[-1]["task_id"] == "validate"
        assert Hook.received[-1]["text"].startswith(
            "[shopflow] task failed (shopflow_nightly.validate, r1)"
        )
    finally:
        server.shutdown()
        server.server_close()
    assert alerts.send(alert, url, record) is False  # nobody listens now
    lines = record.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["details"] == "exit code 3"


def test_a_failed_task_alerts_through_an_airflow_notifier(tmp_path, monkeypatch):
    """What the DAGs' `on_failure_callback` runs: Airflow's notifier protocol, the webhook
    of an Airflow connection, the alert recorded under the project."""
    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/hook"
    monkeypatch.setenv("AIRFLOW_CONN_SHOPFLOW_TEST_ALERTS", url)
    ti = SimpleNamespace(
        dag_id="shopflow_nightly", task_id="ingest", run_id="r9", try_number=3, log_url=None
    )
    try:
        notifier = alerts.FailureNotifier(tmp_path, "shopflow_test_alerts")
        notifier({"ti": ti, "exception": RuntimeError("exit code 1: killed")})
    finally:
        server.shutdown()
        server.server_close()
    assert Hook.received[-1]["task_id"] == "ingest" and Hook.received[-1]["try_number"] == 3
    assert "exit code 1: killed" in Hook.received[-1]["text"]
    recorded = json.loads((tmp_path / ".shopflow/alerts.jsonl").read_text().splitlines()[-1])
    assert recorded["title"] == "task failed" and recorded["run_id"] == "r9"


def test_webhook_url_from_connection_parts():
    def conn(**parts: object) -> SimpleNamespace:
        empty = {"extra_dejson": {}, "host": None, "port": None, "schema": None}
        return SimpleNamespace(**{**empty, "conn_type": "http", **parts})

    assert (
        alerts.webhook_url(conn(host="127.0.0.1", port=8080, schema="hook"))
        == "http://127.0.0.1:8080/hook"
    )
    assert (
        alerts.webhook_url(conn(conn_type="https", host="hooks.slack.com", schema="services/T/B/X"))
        == "https://hooks.slack.com/services/T/B/X"
    )
    assert alerts.webhook_url(conn(extra_dejson={"url": "https://x.test/a"})) == "https://x.test/a"
    assert alerts.webhook_url(conn()) is None


def test_a_run_conf_with_a_reason_forces_the_promotion_through_the_cli():
    decision = {"verdict": "reject", "reasons": ["primary gain 0.001 < 0.005"]}
    assert not decisions.decide_promote(decision).go
    assert decisions.ForcedPromotion.from_conf({"force_promote_reason": "  "}) is None
    forced = decisions.ForcedPromotion.from_conf({"force_promote_reason": "holiday hotfix"})
    assert forced is not None and forced.by == "airflow run conf"
    decided = decisions.decide_promote(decision, forced)
    assert decided.go and decided.reasons[0] == "forced by airflow run conf: holiday hotfix"
    assert decided.reasons[1] == "gate verdict reject"
    command = forced.command()
    assert command[1:5] == ["-m", "shopflow", "promote", "--force"]
    assert command[command.index("--reason") + 1] == "holiday hotfix"


def test_the_stage_graph_read_from_dvc_yaml_is_dvcs_own():
    """Read with YAML alone (cheap DAG parsing), it must be the graph DVC builds."""
    from dvc.repo import Repo

    graph = nightly.StageGraph.read(ROOT)
    with Repo(str(ROOT)) as repo:
        index = repo.index
        stages = tuple(stage.name for stage in index.stages)
        edges = {(up.name, down.name) for down, up in index.graph.edges()}
    assert graph.stages == stages and graph.edges == edges
    assert ("ingest", "validate") in graph.edges and ("evaluate", "promote") in graph.edges
