"""The service's own logs as a source, on logs written the way the service writes them: the
synthetic shop's shoppers shown the logging policy's lists through the experiment router (an
A/B split, heavy exploration so swaps measure position bias), clicking under the shop's click
model; plus one of each kind of bad record. Ingest joins and quarantines, Great Expectations
validates, and the pairs training reads carry the measured propensities."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from shopflow.data import normalize as contract
from shopflow.data.derived import click_pairs
from shopflow.data.sources import read_source
from shopflow.data.sources.synthetic import read as read_synthetic
from shopflow.data.synthetic.sessions import candidate_pools, examination, rank_by_logging_policy
from shopflow.data.synthetic.user_model import UserModel
from shopflow.data.synthetic.world import ShopWorld
from shopflow.data.validation import check
from shopflow.online.experiment import ExperimentSpec, assign
from shopflow.online.router import Ranked, impression
from shopflow.online.sinks import FileSink
from shopflow.training.listwise_groups import propensities_of
from tests.conftest import tiny_params

pytestmark = pytest.mark.data
KEY = b"service-logs-test-key"
SPEC = ExperimentSpec(
    id="exp-ab",
    salt="salt-for-the-test",
    mode="ab",
    champion="shopflow:a",
    challenger="shopflow:b",
    share=1.0,
    started_at="2026-01-01T00:00:00+00:00",
)


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    folder = tmp_path_factory.mktemp("service")
    params = tiny_params()
    world = ShopWorld(params.synthetic, params.seed)
    users = UserModel(world)
    catalogue = read_synthetic(params).products
    catalogue.to_parquet(folder / "catalogue.parquet")
    (folder / "experiment.json").write_text(SPEC.model_dump_json())
    sink = FileSink(folder / "logs")
    rng = np.random.default_rng(0)
    counts = {"impressions": 0, "events": 0, "shown": 0}
    kept: list[dict] = []
    for day in params.ingest.window.dates():
        requests = users.sample_requests(day, 150, seed=day.toordinal())
        slates, _ = rank_by_logging_policy(world, requests, candidate_pools(world, day), rng)
        start = dt.datetime.combine(day, dt.time(9), tzinfo=dt.UTC)
        for i in range(len(requests)):
            ids = [str(world.product_ids[p]) for p in slates[i] if p >= 0]
            unit = f"u_{int(requests.user[i]):016x}"
            record = impression(
                surface="search",
                query=requests.text[i],
                k=10,
                unit=(unit, "user"),
                assignment=assign(SPEC, unit),
                spec=SPEC,
                champion=Ranked(ids, list(np.linspace(1, 0, len(ids))), "a", 3.0),
                challenger=Ranked(ids[::-1], list(np.linspace(1, 0, len(ids))), "b", 3.0),
                exploration_rate=0.5,
                latency_ms=5.0,
                # seeded ids: each impression's coin tosses (its exploration swap) follow from
                # its id, so the measured curve is the same on every run
                impression_id=f"{int(rng.integers(2**62)):016x}{i:016x}",
            ).as_record()
            at = start + dt.timedelta(seconds=int(i * 60))
            record["timestamp"] = at.isoformat()
            shown = [item["product_id"] for item in record["items"]]
            clicks = users.clicks(requests.take(np.array([i])), [shown], day, rng)[0]
            events = [
                {
                    "kind": "event",
                    "event_id": f"{record['impression_id']}-{pos}",
                    "impression_id": record["impression_id"],
                    "type": "click",
                    "product_id": shown[pos],
                    "position": int(pos) + 1,
                    "timestamp": (at + dt.timedelta(seconds=5)).isoformat(),
                    "received_at": (at + dt.timedelta(seconds=6)).isoformat(),
                    "impression_seen": True,
                }
                for pos in np.flatnonzero(clicks)
            ]
            sink.write([record, *events])
            counts["impressions"] += 1
            counts["shown"] += len(shown)
            counts["events"] += len(events)
            kept.append(record)
    first = kept[0]
    bad = {
        "unknown": {"impression_id": "f" * 32},
        "early": {
            "timestamp": (
                dt.datetime.fromisoformat(first["timestamp"]) - dt.timedelta(minutes=1)
            ).isoformat()
        },
        "late": {
            "timestamp": (
                dt.datetime.fromisoformat(first["timestamp"]) + dt.timedelta(hours=3)
            ).isoformat()
        },
        "elsewhere": {"product_id": "sp-not-shown"},
    }
    item = first["items"][0]
    for name, change in bad.items():
        sink.write(
            [
                {
                    "kind": "event",
                    "event_id": f"bad-{name}",
                    "impression_id": first["impression_id"],
                    "type": "click",
                    "product_id": item["product_id"],
                    "position": 1,
                    "timestamp": first["timestamp"],
                    "received_at": first["timestamp"],
                    "impression_seen": True,
                    **change,
                }
            ]
        )
    duplicate = {**kept[1], "arm": "challenger" if kept[1]["arm"] == "champion" else "champion"}
    duplicate["impression_id"] = "e" * 32  # a misrouted copy: its arm is not its unit's
    sink.write([duplicate, kept[2]])  # and a replayed impression
    return folder, counts


def ingest(folder, *overrides):
    params = tiny_params(
        "ingest.source=service_logs",
        f"ingest.path={folder / 'logs'}",
        f"++ingest.options={{products_path: {folder / 'catalogue.parquet'}, experiment: "
        f"{folder / 'experiment.json'}}}",
        *overrides,
    )
    now = dt.datetime.combine(params.ingest.window.end, dt.time(), tzinfo=dt.UTC)
    now += dt.timedelta(days=1)
    return params, contract.normalize(read_source(params), params, KEY, now), now


def test_the_logs_become_contract_events_and_every_bad_record_is_quarantined_and_counted(logged):
    folder, sent = logged
    _, result, _ = ingest(folder)
    notes = result.manifest["notes"]["service_logs"]
    assert notes["impressions_read"] == sent["impressions"] + 2
    assert notes["impression_duplicates"] == 1 and notes["impressions_quarantined"] == 1
    assert notes["events_read"] == sent["events"] + 4
    assert notes["events_attributed"] == sent["events"]
    reasons = {(r["kind"], r["reason"]): r["n"] for r in notes["quarantine_reasons"]}
    assert reasons == {
        ("impression", "arm_mismatch"): 1,
        ("event", "unknown_impression"): 1,
        ("event", "before_impression"): 1,
        ("event", "after_window"): 1,
        ("event", "not_shown"): 1,
    }
    events = result.tables["events"]
    assert (events["event_type"] == "click").sum() == sent["events"]
    assert (events["event_type"] == "impression").sum() == sent["shown"]
    assert events["user_key"].str.fullmatch(r"u_[0-9a-f]{16}").all()  # not hashed again
    assert set(events["arm"]) == {"champion", "challenger"}


def test_great_expectations_passes_the_joined_logs_and_catches_an_edited_one(logged):
    folder, _ = logged
    params, result, now = ingest(folder)
    report = check(result.tables, params, None, now, folder / "gx")
    assert not report.critical, [f.describe() for f in report.critical]
    edited = result.tables["events"].copy()
    click = edited.index[edited["event_type"] == "click"][0]
    edited.loc[click, "ts"] = edited.loc[click, "ts"] - pd.Timedelta(hours=1)
    report = check({**result.tables, "events": edited}, params, None, now, folder / "gx2")
    assert {f.rule for f in report.critical} >= {"every event after its impression"}


def test_training_uses_the_examination_curve_measured_by_the_swaps(logged):
    folder, _ = logged
    _, result, _ = ingest(folder)
    measured = {int(k): v for k, v in result.manifest["notes"]["examination"].items()}
    assert measured[1] == 1.0 and len(measured) >= 5
    truth = examination(np.array(sorted(measured))) / examination(np.array([1]))
    error = np.abs(np.array([measured[k] for k in sorted(measured)]) - truth)
    assert error.max() < 0.25, dict(zip(sorted(measured), error.round(3), strict=True))
    events = result.tables["events"].assign(split="train")
    pairs = click_pairs(events)
    assert "propensity" in pairs
    curve = propensities_of(pairs, 10)
    assert curve is not None and curve.loc[1] == pytest.approx(1.0)
    assert json.dumps(result.manifest["notes"]["arms"])  # recorded for the report
