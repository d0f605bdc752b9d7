"""Bad input through the real CLI: one clear message, the right exit code, no traceback,
and no partial output that could be taken for a good one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration
MAPPING = (
    "++ingest.mapping={query: q, product_id: pid, title: name, relevance: grade, price: price}"
)


def cli(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "shopflow",
            "--params",
            str(ROOT / "params.yaml"),
            "-S",
            "profile=tiny",
            *args,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**(os.environ if env is None else env), "PYTHONPATH": str(ROOT)},
    )


def judgments_args(path: Path, *extra: str) -> list[str]:
    return [
        "-S",
        "ingest.source=judgments",
        "-S",
        f"ingest.path={path}",
        "-S",
        MAPPING,
        *[a for e in extra for a in ("-S", e)],
    ]


def assert_clear_error(result: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    assert len(result.stderr) < 20_000


def good_rows() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "q": ["sofa", "sofa", "lamp"],
            "pid": ["a", "b", "c"],
            "name": ["Grey Sofa", "Blue Sofa", "Lamp"],
            "grade": [2, 0, 1],
            "price": ["300", "250", "40"],
        }
    )


def test_missing_column(tmp_path):
    path = tmp_path / "j.csv"
    good_rows().drop(columns=["grade"]).to_csv(path, index=False)
    result = cli(tmp_path, "ingest", *judgments_args(path))
    assert_clear_error(
        result, 2, "mapped column(s) not in the file", "relevance <- 'grade'", "found: q, pid"
    )


def test_wrong_types_fail_or_quarantine_by_policy(tmp_path):
    path = tmp_path / "j.csv"
    rows = good_rows()
    rows.loc[1, "price"] = "two hundred"
    rows.to_csv(path, index=False)
    result = cli(tmp_path, "ingest", *judgments_args(path))
    assert_clear_error(result, 2, "products.price at line 3", "'two hundred'", "on_unparseable")
    assert not (tmp_path / "data" / "ingested").exists()
    lenient = cli(
        tmp_path,
        "ingest",
        *judgments_args(
            path, "ingest.on_unparseable=quarantine", "ingest.max_quarantine_share=0.5"
        ),
    )
    assert lenient.returncode == 0, lenient.stderr
    rejects = pd.read_parquet(tmp_path / "data" / "ingested" / "rejects.parquet")
    assert rejects.loc[0, "value"] == "'two hundred'" and rejects.loc[0, "column"] == "price"


def test_empty_file_and_empty_partition(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    assert_clear_error(cli(tmp_path, "ingest", *judgments_args(empty)), 2, "the file is empty")
    header_only = tmp_path / "header.csv"
    header_only.write_text("q,pid,name,grade,price\n")
    assert_clear_error(cli(tmp_path, "ingest", *judgments_args(header_only)), 2, "no judgment rows")


def test_empty_window_of_the_synthetic_shop_is_a_clear_error(tmp_path):
    result = cli(tmp_path, "ingest", "-S", "ingest.window.days=0")
    assert_clear_error(result, 2, "ingest.window.days")


def test_non_utf8_bytes(tmp_path):
    path = tmp_path / "j.csv"
    path.write_bytes(b"q,pid,name,grade,price\nsofa,a,Grey Sofa,2,1\nsofa,b,Caf\xe9 Sofa,1,2\n")
    result = cli(tmp_path, "ingest", *judgments_args(path))
    assert_clear_error(result, 2, "not valid utf-8 at byte", "(line 3)", "ingest.encoding")
    latin = cli(tmp_path, "ingest", *judgments_args(path, "ingest.encoding=latin-1"))
    assert latin.returncode == 0, latin.stderr


def test_50mb_title_is_rejected_by_validate_without_flooding(tmp_path):
    path = tmp_path / "j.csv"
    rows = good_rows()
    rows.loc[0, "name"] = "x" * 50_000_000
    rows.to_csv(path, index=False)
    assert cli(tmp_path, "ingest", *judgments_args(path)).returncode == 0
    result = cli(tmp_path, "validate", *judgments_args(path))
    assert_clear_error(
        result, 3, "[critical] products.title: title has 1..1000 characters", "chars)"
    )
    assert not (tmp_path / "data" / "validated").exists()
    summary = json.loads((tmp_path / "reports" / "validation" / "summary.json").read_text())
    assert summary["passed"] is False


def test_duplicate_ids_negative_prices_and_future_timestamps(tmp_path):
    log = tmp_path / "events.csv"
    products = tmp_path / "products.csv"
    future = (pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=2)).isoformat()
    pd.DataFrame(
        {
            "ts": ["2026-10-28T10:00:00Z", "2026-10-28T10:00:01Z", future],
            "user": ["u1", "u1", "u2"],
            "session": ["s1", "s1", "s2"],
            "pid": ["a", "b", "a"],
            "type": ["click", "purchase", "click"],
        }
    ).to_csv(log, index=False)
    pd.DataFrame(
        {"pid": ["a", "b", "b"], "name": ["Sofa", "Lamp", "Lamp 2"], "price": [10, -3, 5]}
    ).to_csv(products, index=False)
    args = [
        "-S",
        "ingest.source=events",
        "-S",
        f"ingest.path={log}",
        "-S",
        "ingest.window={end: '2026-10-28', days: 1}",
        "-S",
        "++ingest.mapping={ts: ts, user_key: user, session_id: session, product_id: pid, event_type: type}",
        "-S",
        f"++ingest.options={{products_path: '{products}', products_mapping: {{product_id: pid, title: name}}}}",
    ]
    assert cli(tmp_path, "ingest", *args).returncode == 0
    result = cli(tmp_path, "validate", *args)
    assert_clear_error(
        result, 3, "product_id is unique", "price >= 0", "ts not in the future", "Data Docs:"
    )


def test_a_failed_ingest_leaves_the_previous_output_intact(tmp_path):
    path = tmp_path / "j.csv"
    good_rows().to_csv(path, index=False)
    assert cli(tmp_path, "ingest", *judgments_args(path)).returncode == 0
    manifest = (tmp_path / "data" / "ingested" / "manifest.json").read_text()
    path.write_bytes(b"\xff\xfe broken")
    assert cli(tmp_path, "ingest", *judgments_args(path)).returncode == 2
    assert (tmp_path / "data" / "ingested" / "manifest.json").read_text() == manifest
    assert not list((tmp_path / "data").glob(".ingested.staging-*"))


def test_missing_source_file(tmp_path):
    result = cli(tmp_path, "ingest", *judgments_args(tmp_path / "nope.csv"))
    assert_clear_error(result, 2, "nope.csv: file not found")


def test_validate_before_ingest(tmp_path):
    assert_clear_error(cli(tmp_path, "validate"), 2, "run `python -m shopflow ingest` first")


def test_repeated_judgments_stop_validate_by_default_naming_the_option(tmp_path):
    from tests.data.test_repeated_judgments import write_ratings

    path = write_ratings(tmp_path / "ratings.csv")
    args = [
        "-S",
        "ingest.source=judgments",
        "-S",
        f"ingest.path={path}",
        "-S",
        "++ingest.mapping={query: q, product_id: pid, title: name, relevance: grade}",
    ]
    assert cli(tmp_path, "ingest", *args).returncode == 0
    result = cli(tmp_path, "validate", *args)
    assert_clear_error(
        result,
        3,
        "one judgment per (query, product)",
        "ingest.options.repeated_judgments",
        "mean, median, max or first",
    )
    assert not (tmp_path / "data" / "validated").exists()


def test_real_data_without_a_secret_key_stops_before_reading_it(tmp_path):
    """Production mode: no pseudonym key, the public development key or a short one is an
    error naming the variable, and nothing is written."""
    path = tmp_path / "j.csv"
    good_rows().to_csv(path, index=False)
    bare = {k: v for k, v in os.environ.items() if not k.startswith("SHOPFLOW_")}
    for key, says in [
        (None, "SHOPFLOW_PSEUDONYM_KEY is not set"),
        ("shopflow-development-key-do-not-use-in-production", "public development key"),
        ("short", "at least 32"),
    ]:
        env = bare if key is None else {**bare, "SHOPFLOW_PSEUDONYM_KEY": key}
        result = cli(tmp_path, "ingest", *judgments_args(path), env=env)
        assert_clear_error(result, 2, says, "docs/security.md")
        assert not (tmp_path / "data" / "ingested").exists()
    demo = cli(tmp_path, "ingest", env=bare)  # the synthetic demo runs without any key
    assert demo.returncode == 0, demo.stderr
    assert "public development key" in demo.stderr
    assert json.loads((tmp_path / "data/ingested/manifest.json").read_text())["mode"] == "demo"
