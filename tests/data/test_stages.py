"""ingest → validate → prepare on the tiny synthetic shop, with real GX; broken data on purpose."""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from pipelines import ingest, prepare, validate
from shopflow.core import paths
from shopflow.core.artifacts import read_json, table_hash, write_json, write_parquet
from shopflow.core.errors import DataValidationError, StageInputError
from shopflow.data.derived import click_pairs, purchase_sequences, session_histories
from shopflow.data.splits import time_boundaries
from tests.conftest import tiny_params

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def ingested(tmp_path_factory) -> Path:
    """One tiny synthetic ingest (with planted PII) shared by the tests of this module."""
    root = tmp_path_factory.mktemp("ingested")
    with contextlib.chdir(root):
        ingest.run(tiny_params("synthetic.pii_query_rate=0.05"))
    return root / paths.INGESTED


def copy_with(source: Path, dest: Path, **changes: Callable[[pd.DataFrame], pd.DataFrame]) -> Path:
    """A copy of an ingest output with tables changed and the manifest's hashes updated."""
    shutil.copytree(source, dest)
    manifest = read_json(dest / "manifest.json")
    for name, change in changes.items():
        frame = change(pd.read_parquet(dest / f"{name}.parquet"))
        write_parquet(frame, dest / f"{name}.parquet")
        frame = pd.read_parquet(dest / f"{name}.parquet")  # hash what the next stage reads
        manifest["tables"][name]["sha256"] = table_hash(frame)
        manifest["tables"][name]["rows"] = len(frame)
    write_json(dest / "manifest.json", manifest)
    return dest


def run_validate(ingested: Path, project: Path, *overrides: str) -> dict:
    """The validate stage in `project` on the ingest output `ingested` (copied in if elsewhere)."""
    if ingested != project / paths.INGESTED:
        shutil.copytree(ingested, project / paths.INGESTED, dirs_exist_ok=True)
    with contextlib.chdir(project):
        return validate.run(tiny_params(*overrides))


def set_value(column: str, value, n: int = 1):
    def apply(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.copy()
        frame[column] = frame[column].astype(object)
        frame.loc[: n - 1, column] = [value] * n
        if column == "ts":
            frame[column] = pd.to_datetime(frame[column], utc=True)
        if column == "position":
            frame[column] = frame[column].astype("Int64")
        return frame

    return apply


FUTURE = pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=3)
BROKEN = {
    "duplicate product ids": (
        "products",
        lambda f: pd.concat([f, f.head(2)], ignore_index=True),
        "product_id is unique",
    ),
    "negative price": ("products", set_value("price", -5.0), "price >= 0"),
    "empty title": ("products", set_value("title", ""), "title has 1..1000 characters"),
    "50 MB title": (
        "products",
        set_value("title", "x" * 50_000_000),
        "title has 1..1000 characters",
    ),
    "missing column": (
        "products",
        lambda f: f.drop(columns=["brand"]),
        "schema: every contract column present",
    ),
    "future timestamps": ("events", set_value("ts", FUTURE, 5), "ts not in the future"),
    "timestamps before the window": (
        "events",
        set_value("ts", pd.Timestamp("2020-01-01", tz="UTC"), 5),
        "ts inside the window",
    ),
    "unknown event type": ("events", set_value("event_type", "hover"), "event_type is known"),
    "position 0": ("events", set_value("position", 0), "position >= 1"),
    "raw user id": ("events", set_value("user_key", "user-000001"), "user_key is a pseudonym"),
    "unknown products": (
        "events",
        lambda f: f.assign(product_id=f["product_id"].where(f.index % 10 != 0, "ghost")),
        "product_id in the catalogue",
    ),
    "empty day": (
        "events",
        lambda f: f[f["ts"].dt.day != 24].reset_index(drop=True),
        "every day has events",
    ),
    "relevance off scale": (
        "judgments",
        set_value("relevance", 7.0),
        "relevance on the declared scale 0..3",
    ),
    "missing product id": ("products", set_value("product_id", None), "product_id is present"),
    "blank title": ("products", set_value("title", "   "), "title is not blank"),
    "blank query": ("judgments", set_value("query", " "), "query is not blank"),
    "duplicate judgments": (
        "judgments",
        lambda f: pd.concat([f, f.head(1)], ignore_index=True),
        "one judgment per (query, product)",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_each_critical_rule_stops_the_run(case, ingested, tmp_path):
    table, change, rule = BROKEN[case]
    reported = "daily_volume" if case == "empty day" else table
    broken = copy_with(ingested, tmp_path / paths.INGESTED, **{table: change})
    with pytest.raises(DataValidationError) as err:
        run_validate(broken, tmp_path)
    message = str(err.value)
    assert rule in message and f"[critical] {reported}" in message
    assert len(message) < 5000  # samples are previewed, never dumped (the 50 MB title)
    assert not (tmp_path / paths.VALIDATED).exists()  # nothing for downstream
    summary = read_json(tmp_path / paths.VALIDATION_SUMMARY)
    assert summary["passed"] is False and any(rule in f["rule"] for f in summary["failures"])
    assert (tmp_path / paths.DATA_DOCS / "index.html").exists()


def test_clean_data_passes_and_writes_docs(ingested, tmp_path):
    summary = run_validate(ingested, tmp_path)
    assert summary["passed"] and summary["critical_failures"] == 0
    manifest = read_json(tmp_path / paths.VALIDATED / "manifest.json")
    assert manifest["validated"] is True
    html = (tmp_path / paths.DATA_DOCS / "index.html").read_text()
    assert "events" in html and "products" in html


def test_a_judged_query_longer_than_the_service_accepts_is_flagged_like_an_event_query(
    ingested, tmp_path
):
    broken = copy_with(ingested, tmp_path / paths.INGESTED, judgments=set_value("query", "q" * 600))
    summary = run_validate(broken, tmp_path)
    flagged = [f for f in summary["failures"] if f["rule"] == "query under 512 characters"]
    assert summary["passed"] and [f["severity"] for f in flagged] == ["warning"]
    assert [f["table"] for f in flagged] == ["judgments"]


def test_quarantine_policy_sets_rows_aside_with_reasons(ingested, tmp_path):
    broken = copy_with(ingested, tmp_path / paths.INGESTED, products=set_value("price", -1.0, 2))
    run_validate(
        broken, tmp_path, "validate.on_invalid=quarantine", "validate.max_quarantine_share=0.05"
    )
    aside = pd.read_parquet(tmp_path / paths.VALIDATED / "quarantine.parquet")
    assert len(aside) == 2 and (aside["reasons"] == "price >= 0").all()
    kept = pd.read_parquet(tmp_path / paths.VALIDATED / "products.parquet")
    assert (kept["price"] >= 0).all()
    assert len(kept) + 2 == read_json(ingested / "manifest.json")["tables"]["products"]["rows"]


def test_quarantine_keeps_the_first_of_duplicates(ingested, tmp_path):
    broken = copy_with(
        ingested, tmp_path / paths.INGESTED, products=BROKEN["duplicate product ids"][1]
    )
    run_validate(
        broken, tmp_path, "validate.on_invalid=quarantine", "validate.max_quarantine_share=0.05"
    )
    kept = pd.read_parquet(tmp_path / paths.VALIDATED / "products.parquet")
    assert kept["product_id"].is_unique
    assert len(pd.read_parquet(tmp_path / paths.VALIDATED / "quarantine.parquet")) == 2


def test_quarantine_refuses_above_its_share(ingested, tmp_path):
    broken = copy_with(ingested, tmp_path / paths.INGESTED, products=set_value("price", -1.0, 100))
    with pytest.raises(DataValidationError, match=r"exceed validate\.max_quarantine_share"):
        run_validate(broken, tmp_path, "validate.on_invalid=quarantine")


def test_quarantine_never_hides_table_level_failures(ingested, tmp_path):
    broken = copy_with(ingested, tmp_path / paths.INGESTED, events=BROKEN["empty day"][1])
    with pytest.raises(DataValidationError, match=r"table-level|every day has events"):
        run_validate(broken, tmp_path, "validate.on_invalid=quarantine")


def test_prepare_refuses_unvalidated_or_tampered_input(ingested, tmp_path):
    params = tiny_params()
    with (
        pytest.raises(StageInputError, match="validation has not passed"),
        contextlib.chdir(tmp_path),
    ):
        prepare.run(params)
    run_validate(ingested, tmp_path)
    products = pd.read_parquet(tmp_path / paths.VALIDATED / "products.parquet")
    write_parquet(products.assign(price=-1.0), tmp_path / paths.VALIDATED / "products.parquet")
    with (
        pytest.raises(StageInputError, match="changed after validation"),
        contextlib.chdir(tmp_path),
    ):
        prepare.run(params)


@pytest.fixture(scope="module")
def prepared(ingested, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("prepared")
    run_validate(ingested, tmp)
    with contextlib.chdir(tmp):
        prepare.run(tiny_params())
    return tmp


def test_no_raw_id_or_planted_pii_survives_anywhere(ingested, prepared):
    planted = [
        "user-0",
        "sess-2026",
        "@example.com",
        "@mail.test",
        "0161 496",
        "7700 900",
        "4111 1111",
    ]
    files = [
        p for root in (ingested.parent.parent, prepared) for p in root.rglob("*") if p.is_file()
    ]
    assert len(files) > 8
    for path in files:
        if path.suffix == ".parquet":
            text = pd.read_parquet(path).astype(str).to_csv()
        else:
            text = path.read_text(errors="ignore")
        for needle in planted:
            assert needle not in text, f"{needle!r} found in {path}"
    manifest = read_json(ingested / "manifest.json")
    assert manifest["privacy"]["queries_scrubbed"] > 0


def test_splits_do_not_leak(prepared):
    out = prepared / paths.PREPARED
    pairs = pd.read_parquet(out / "pairs.parquet")
    bounds = read_json(out / "splits.json")["time_boundaries"]
    valid_start, test_start = pd.Timestamp(bounds["valid"]), pd.Timestamp(bounds["test"])
    assert pairs.loc[pairs["split"] == "train", "ts"].max() < valid_start
    assert (
        pairs.loc[pairs["split"] == "valid", "ts"]
        .between(valid_start, test_start, inclusive="left")
        .all()
    )
    assert pairs.loc[pairs["split"] == "test", "ts"].min() >= test_start
    assert set(pairs["split"]) == {"train", "valid", "test"}
    assert pairs["position"].notna().all() and pairs["label"].between(0, 3).all()
    assert 0.05 < pairs["clicked"].mean() < 0.5

    judged = pd.read_parquet(out / "judgments.parquet")
    queries = {
        s: set(judged.loc[judged["split"] == s, "query"]) for s in ("train", "valid", "test")
    }
    assert not queries["train"] & queries["test"] and not queries["train"] & queries["valid"]
    assert not queries["valid"] & queries["test"] and all(queries.values())

    sequences = pd.read_parquet(out / "sequences.parquet")
    assert len(sequences) and sequences["history"].map(len).between(1, 20).all()
    assert (sequences["split"] == "test").any()


def test_sequences_only_look_back_to_earlier_sessions():
    events = pd.DataFrame(
        {
            "ts": pd.to_datetime(
                [
                    "2026-10-01 10:00",
                    "2026-10-01 11:00",
                    "2026-10-02 09:00",
                    "2026-10-02 09:01",
                    "2026-10-02 09:02",
                    "2026-10-03 09:00",
                ],
                utc=True,
            ),
            "session_id": ["s1", "s2", "s3", "s3", "s3", "s4"],
            "user_key": ["u_a"] * 6,
            "product_id": ["p1", "p2", "p3", "p3", "p3", "p4"],
            "event_type": ["click", "purchase", "click", "add_to_cart", "purchase", "click"],
            "split": ["train", "train", "test", "test", "test", "test"],
        }
    )
    histories = session_histories(events, history_length=5)
    assert histories["session_id"].tolist() == ["s2", "s3", "s4"]
    assert histories["history"].tolist() == [["p1"], ["p1", "p2"], ["p1", "p2", "p3"]]
    seqs = purchase_sequences(events, histories)
    assert seqs["history"].tolist() == [["p1"], ["p1", "p2"]]  # p3's own session is not history
    assert seqs["product_id"].tolist() == ["p2", "p3"]
    assert session_histories(events, history_length=1)["history"].tolist()[-1] == ["p3"]


def test_click_labels_come_from_the_same_split():
    ts = pd.to_datetime(["2026-10-01 23:59:59", "2026-10-02 00:00:05"], utc=True)
    events = pd.DataFrame(
        {
            "ts": ts,
            "session_id": ["s", "s"],
            "user_key": ["u", "u"],
            "query": ["sofa", "sofa"],
            "product_id": ["p", "p"],
            "position": [1, 1],
            "event_type": ["impression", "click"],
            "split": ["valid", "test"],
        }
    )
    pairs = click_pairs(events)
    assert len(pairs) == 1 and pairs.loc[0, "label"] == 0


def test_window_too_short_for_the_splits_is_a_config_error():
    from shopflow.core.errors import ConfigError

    with pytest.raises(ConfigError, match="leave training days"):
        time_boundaries(tiny_params("ingest.window.days=4"))


def test_ingest_is_idempotent(tmp_path):
    params = tiny_params("ingest.window.days=3")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with contextlib.chdir(tmp_path / "a"):
        first = ingest.run(params)
    with contextlib.chdir(tmp_path / "b"):
        second = ingest.run(params)
    assert first.manifest == second.manifest
    assert dt.date.fromisoformat(first.manifest["window"]["start"]) == params.ingest.window.start


def test_closed_days_are_not_outages():
    from shopflow.data.expectations import daily_volume

    params = tiny_params("ingest.window={end: '2026-10-28', days: 14}")
    days = pd.date_range("2026-10-15", "2026-10-28", freq="D", tz="UTC")
    open_days = days[days.weekday != 5]  # shut on Saturdays
    events = pd.DataFrame({"ts": open_days.repeat(10) + pd.Timedelta(hours=12)})
    flagged = daily_volume(events, params)
    assert (flagged["events"] == 0).sum() == 2  # two Saturdays look like outages
    shut = tiny_params(
        "ingest.window={end: '2026-10-28', days: 14}",
        "validate.closed_weekdays=[5]",
        "validate.closed_dates=['2026-10-20']",
    )
    volume = daily_volume(events, shut)
    assert len(volume) == 11 and (volume["events"] == 10).all()
    assert (volume["volume_ratio"] == 1.0).all()
