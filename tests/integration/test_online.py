"""Online experiments against the real service: simulated shoppers search, click and post
events over HTTP; the service interleaves the champion with a challenger, logs impressions and
events through its background writer, and the join finds exactly what was sent.

The challenger is the module's tiny model saved with another serving setting
(`reranker.candidates`), so the two rank differently; which is better does not matter here
(the decision's power is `make bench-online`'s job). The release path end to end (registry,
the Airflow tasks, deploy, two models of known quality) is test_online_night.py."""

from __future__ import annotations

import datetime as dt
import time

import httpx
import pandas as pd
import pytest

from shopflow.core.secrets import new_key
from shopflow.data.synthetic.user_model import UserModel
from shopflow.data.synthetic.world import ShopWorld
from shopflow.online.decision import decide
from shopflow.online.experiment import EXPERIMENT_ENV, ExperimentSpec, read_experiment
from shopflow.online.join import join_logs
from shopflow.online.sinks import LOG_DIR_ENV, read_files
from shopflow.serving.http import API_KEY_ENV
from shopflow.serving.local import SERVICE, RunningService, free_port
from tests.conftest import ROOT
from tests.integration.conftest import MODEL_OVERRIDES, shopflow
from tools.bench.traffic import simulate_traffic

pytestmark = pytest.mark.integration
API_KEY = new_key()
KEYED = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def experiment(shop, tmp_path_factory):
    """The service with champion + challenger in an interleaving experiment over every unit."""
    folder = tmp_path_factory.mktemp("online")
    overrides = [
        a for o in ("profile=tiny", *MODEL_OVERRIDES, "reranker.candidates=12") for a in ("-S", o)
    ]
    challenger = shopflow(shop["work"], shop["env"], *overrides, "save-model")
    assert challenger != shop["tag"]
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    spec = ExperimentSpec(
        id="exp-test",
        salt="test-salt-0001",
        mode="interleave",
        champion=shop["tag"],
        challenger=challenger,
        share=1.0,
        started_at=started,
    )
    spec_file = folder / "experiment.json"
    spec_file.write_text(spec.model_dump_json())
    logs = folder / "logs"
    env = {
        **shop["env"],
        API_KEY_ENV: API_KEY,
        "SHOPFLOW_MODEL": shop["tag"],
        "SHOPFLOW_CHALLENGER": challenger,
        EXPERIMENT_ENV: str(spec_file),
        LOG_DIR_ENV: str(logs),
    }
    with RunningService(SERVICE, free_port(), env, cwd=ROOT, log_path=folder / "serve.log") as base:
        yield {"base": base, "spec": read_experiment(spec_file), "logs": logs, "folder": folder}


def logged(logs, kind: str, expected: int, timeout_s: float = 30) -> pd.DataFrame:
    deadline = time.monotonic() + timeout_s
    while True:
        frame, torn = read_files(logs, kind)
        assert torn == 0
        if len(frame) >= expected or time.monotonic() > deadline:
            return frame
        time.sleep(0.2)


def test_simulated_shoppers_are_logged_and_joined_with_nothing_lost_or_double_counted(
    experiment, shop
):
    params = shop["params"]
    users = UserModel(ShopWorld(params.synthetic, params.seed))
    counts = simulate_traffic(
        experiment["base"],
        users,
        params.ingest.window.end,
        120,
        seed=3,
        headers=KEYED,
        retry_every=4,
    )
    assert counts.errors == {} and counts.searches == 120 and len(counts.impressions) == 120
    assert counts.events_sent > 0 and counts.events_accepted == counts.events_sent
    assert counts.duplicates > 0  # the retried batches were acknowledged, not logged again
    impressions = logged(experiment["logs"], "impression", 120)
    events = logged(experiment["logs"], "event", counts.events_sent)
    assert sorted(impressions["impression_id"]) == sorted(counts.impressions)
    assert len(events) == counts.events_sent
    joined = join_logs(impressions, events, params.online.attribution_minutes, experiment["spec"])
    assert joined.counts["events_attributed"] == counts.events_sent
    assert joined.counts["events_quarantined"] == 0 and joined.counts["event_duplicates"] == 0
    assert set(impressions["arm"]) == {"interleaved"}
    assert set(impressions["unit"].str[:2]) == {"s_"}  # sessions pseudonymised, never raw
    assert not impressions["unit"].str.contains("sim-").any()
    teams = {i["team"] for items in impressions["items"] for i in items}
    assert {"champion", "challenger"} <= teams <= {"champion", "challenger", "both"}
    verdict = decide(joined, experiment["spec"], params.online.decision, dt.datetime.now(dt.UTC))
    assert verdict["decision"] in ("continue", "promote", "stop")
    assert verdict["guardrails"]["sample_ratio"]["ok"]
    metrics = httpx.get(f"{experiment['base']}/metrics", timeout=10).text
    assert 'shopflow_log_records_total{kind="impression",outcome="written"}' in metrics


def post_events(base, events, headers=KEYED):
    return httpx.post(f"{base}/events", json={"events": events}, headers=headers, timeout=30)


def test_bad_events_get_a_4xx_naming_the_field_and_unknown_impressions_are_kept_flagged(experiment):
    base = experiment["base"]
    answer = httpx.post(f"{base}/search", json={"query": "sofa", "session_id": "s-1"}, timeout=30)
    assert answer.headers["x-impression-id"] == answer.json()["impression_id"]
    imp = answer.json()["impression_id"]
    first = answer.json()["products"][0]["product_id"]
    good = {
        "event_id": "e-1",
        "impression_id": imp,
        "type": "click",
        "product_id": first,
        "position": 1,
    }
    bad = {
        "position": ({**good, "position": 0}, "position"),
        "type": ({**good, "type": "hover"}, "type"),
        "missing id": ({k: v for k, v in good.items() if k != "event_id"}, "event_id"),
        "naive time": ({**good, "timestamp": "2026-12-01T10:00:00"}, "timestamp"),
        "wrong product": ({**good, "product_id": "not-shown"}, "events[0].product_id"),
        "past the list": ({**good, "position": 99}, "events[0].position"),
    }
    for name, (event, field) in bad.items():
        refused = post_events(base, [event])
        assert refused.status_code == 400, name
        assert field in refused.text, (name, refused.text)
    assert post_events(base, [good], headers={}).status_code == 401
    assert post_events(base, []).status_code == 400
    unknown = {**good, "event_id": "e-2", "impression_id": "0" * 32}
    accepted = post_events(base, [good, unknown])
    assert accepted.status_code == 202 and accepted.json()["accepted"] == 2
    again = post_events(base, [good])
    assert again.status_code == 202 and again.json() == {
        "accepted": 0,
        "duplicates": 1,
        "not_logged": 0,
    }
    deadline = time.monotonic() + 30
    while "e-2" not in set(read_files(experiment["logs"], "event")[0].get("event_id", [])):
        assert time.monotonic() < deadline, "the event for an unknown impression was not logged"
        time.sleep(0.2)
    events = read_files(experiment["logs"], "event")[0]
    assert (events["event_id"] == "e-1").sum() == 1
    flagged = events.set_index("event_id").loc["e-2"]
    assert not flagged["impression_seen"]


def test_the_service_reports_its_experiment(experiment):
    about = httpx.get(f"{experiment['base']}/version", timeout=10).json()
    assert about["experiment"]["id"] == "exp-test" and about["experiment"]["mode"] == "interleave"
    assert about["challenger_version"] == experiment["spec"].challenger.split(":")[1]


def test_the_log_holds_no_raw_session_id_and_no_pii_typed_into_search(experiment):
    base = experiment["base"]
    query = "oak desk for jane.doe@example.com call +44 20 7946 0958"
    answer = httpx.post(
        f"{base}/search", json={"query": query, "session_id": "raw-session-4242"}, timeout=30
    )
    assert answer.status_code == 200
    impression_id = answer.json()["impression_id"]
    deadline = time.monotonic() + 30
    while True:
        logged_now, _ = read_files(experiment["logs"], "impression")
        if impression_id in set(logged_now["impression_id"]) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    row = logged_now.set_index("impression_id").loc[impression_id]
    assert "jane.doe" not in row["query"] and "7946" not in row["query"]
    assert row["query"].startswith("oak desk")
    text = "".join(p.read_text() for p in experiment["logs"].rglob("*.jsonl"))
    assert "raw-session-4242" not in text and "jane.doe@example.com" not in text
    assert "sim-" not in text  # the simulator's raw session ids


def test_the_postgres_sink_is_idempotent_and_a_stopped_database_is_counted_not_raised(tmp_path):
    from shopflow.online.sinks import PostgresSink, read_postgres
    from shopflow.online.writer import LogWriter
    from tools.servers import (
        DATABASE_USER,
        ProcessTable,
        postgres_data,
        start_postgres,
        stop_postgres,
    )

    table = ProcessTable(tmp_path / "processes.json", tmp_path)
    data, port = postgres_data(tmp_path), free_port()
    start_postgres(table, data, port, "logs")
    dsn = f"host=127.0.0.1 port={port} user={DATABASE_USER} dbname=logs"
    try:
        stamp = "2026-12-01T10:00:00+00:00"
        records = [
            {"kind": "impression", "impression_id": f"{i:032x}", "timestamp": stamp, "items": []}
            for i in range(5)
        ] + [
            {
                "kind": "event",
                "event_id": f"e{i}",
                "impression_id": f"{i:032x}",
                "timestamp": stamp,
                "received_at": stamp,
            }
            for i in range(3)
        ]
        sink = PostgresSink(dsn)
        sink.write(records)
        sink.write(records)  # a retried batch
        assert len(read_postgres(dsn, "impression")) == 5 and len(read_postgres(dsn, "event")) == 3
        writer = LogWriter(sink, batch_size=10, flush_interval_s=0.05, retries=1)
        stop_postgres(table, data)
        writer.submit([{**records[0], "impression_id": "f" * 32}])
        assert writer.flush(30)
        assert writer.snapshot() == {"impression.lost": 1}
        writer.close()
    finally:
        stop_postgres(table, data)
