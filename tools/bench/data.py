"""Data benchmarks (`make bench`): the simulator, and ingest + validate on a big day.

`ingest_throughput`: one synthetic day of about N events (default 1M) through the real
ingest (parse, window, pseudonymize, scrub, hash, parquet) and validate (every GX suite)
code paths, timed separately from the simulator that produces the day. Timings go to stdout
and `metrics/bench_simulate.json`, `metrics/bench_ingest.json`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import platform
import tempfile
import time
from pathlib import Path

import torch

from shopflow.core import paths
from shopflow.core.config import Params
from shopflow.core.secrets import mode_for
from shopflow.data.normalize import normalize
from shopflow.data.privacy import pseudonym_key
from shopflow.data.sources import read_source
from shopflow.data.synthetic.sessions import WEEKDAY_FACTOR
from shopflow.data.tables import read_ingested
from shopflow.data.validation import validate_tables

log = logging.getLogger(__name__)

EVENTS_PER_SESSION = 19.4  # measured on the default profile: 1,085,539 events / 55,980 sessions
RESULT = paths.metrics("bench_ingest")
SIMULATE_RESULT = paths.metrics("bench_simulate")


def simulate_throughput(params: Params, days: int = 30, sessions: int = 5000) -> dict:
    """Wall time of the synthetic shop for `days` × `sessions` (events simulated per second)."""
    from shopflow.data.synthetic import generate

    cfg = params.synthetic.model_copy(update={"sessions_per_day": sessions})
    window = [params.ingest.window.end - dt.timedelta(days=d) for d in reversed(range(days))]
    started = time.perf_counter()
    tables = generate(cfg, params.seed, window)
    seconds = time.perf_counter() - started
    events, judgments = tables.present()["events"], tables.present()["judgments"]
    report = {
        "days": days,
        "sessions_per_day": sessions,
        "events": len(events),
        "judgments": len(judgments),
        "seconds": round(seconds, 2),
        "events_per_s": round(len(events) / seconds),
    }
    SIMULATE_RESULT.parent.mkdir(parents=True, exist_ok=True)
    SIMULATE_RESULT.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"\nsynthetic shop: {days} days x {sessions:,} sessions -> {report['events']:,} events "
        f"in {seconds:.1f} s ({report['events_per_s']:,} events/s); written to {SIMULATE_RESULT}"
    )
    return report


def ingest_throughput(params: Params, events: int, workdir: Path | None = None) -> dict:
    day = params.ingest.window.end
    sessions = max(1, round(events / EVENTS_PER_SESSION / WEEKDAY_FACTOR[day.weekday()]))
    overrides = {
        "ingest": params.ingest.model_copy(
            update={"window": params.ingest.window.model_copy(update={"days": 1})}
        ),
        "synthetic": params.synthetic.model_copy(
            update={
                "sessions_per_day": sessions,
                "n_users": max(params.synthetic.n_users, sessions // 2),
            }
        ),
    }
    bench = params.model_copy(update=overrides)
    with tempfile.TemporaryDirectory(dir=workdir, prefix="shopflow-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        raw = read_source(bench)
        t1 = time.perf_counter()
        result = normalize(
            raw, bench, pseudonym_key(mode_for(bench.ingest.source)), dt.datetime.now(dt.UTC)
        )
        result.write(root / "ingested")
        t2 = time.perf_counter()
        tables, _ = read_ingested(root / "ingested")
        now = dt.datetime.now(dt.UTC)
        validate_tables(tables, bench, None, now, root / "reports")
        t3 = time.perf_counter()
    rows = sum(len(f) for f in result.tables.values())
    n_events = len(result.tables["events"])
    report = {
        "day": str(day),
        "events": n_events,
        "rows_all_tables": rows,
        "simulate_s": round(t1 - t0, 2),
        "ingest_s": round(t2 - t1, 2),
        "validate_s": round(t3 - t2, 2),
        "ingest_rows_per_s": round(rows / (t2 - t1)),
        "validate_rows_per_s": round(rows / (t3 - t2)),
        "ingest_plus_validate_rows_per_s": round(rows / (t3 - t1)),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        ("simulate", report["simulate_s"], "(not part of ingest)"),
        ("ingest", report["ingest_s"], f"{report['ingest_rows_per_s']:>10,} rows/s"),
        ("validate (GX)", report["validate_s"], f"{report['validate_rows_per_s']:>10,} rows/s"),
        ("ingest + validate", t3 - t1, f"{report['ingest_plus_validate_rows_per_s']:>10,} rows/s"),
    ]
    print(f"\n1 synthetic day, {n_events:,} events ({rows:,} rows with products and judgments)")
    for name, seconds, rate in lines:
        print(f"  {name:<18}{seconds:>7.2f} s   {rate}")
    print(f"  written to {RESULT}")
    return report
