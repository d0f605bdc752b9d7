"""`make bench-online-cost`: what logging impressions and events costs the service, and what
happens when the sink dies.

On the current model, from this source tree, on 127.0.0.1:
1. Two services, one with `online.log.sink: off`, one with the files sink; /search with a
   session id (so the exploration and logging path runs) driven closed-loop at concurrency 1
   and 8, the two services alternating twice per cell so that machine load hits both alike:
   p50 and p95 each (goal: p50 with logging within 5% of without).
2. The files sink under `load_clients` clients for `load_seconds`: each searches, then posts
   a click event for the first product; 5xx counted, and afterwards every impression and event
   the clients were told about is looked for in the log (goal: 0 5xx, 0 lost).
3. The Postgres sink (a throwaway PostgreSQL on loopback) under 8 clients; the database is
   stopped a third of the way in: serving must go on with 0 5xx, and every impression must be
   either in the table or counted as dropped or lost in /metrics.
"""

from __future__ import annotations

import asyncio
import json
import logging
import platform
import re
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from shopflow.core import paths
from shopflow.core.config import Params
from shopflow.online.sinks import LOG_DIR_ENV, read_files
from shopflow.serving.bento_build import ROOT
from shopflow.serving.local import SERVICE, RunningService, free_port
from shopflow.serving.model_store import current_model
from tools.bench.serve import drive

log = logging.getLogger(__name__)
RESULT = paths.metrics("bench_logging")


def params_file(folder: Path, sink: str) -> Path:
    tree = yaml.safe_load((ROOT / paths.PARAMS).read_text())
    tree["online"]["log"]["sink"] = sink
    path = folder / f"params-{sink}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def service(tag: str, folder: Path, sink: str, extra: dict[str, str] | None = None):
    env = {
        "SHOPFLOW_MODEL": tag,
        "SHOPFLOW_PARAMS": str(params_file(folder, sink)),
        LOG_DIR_ENV: str(folder / f"logs-{sink}"),
        **(extra or {}),
    }
    return RunningService(SERVICE, free_port(), env, log_path=folder / f"serve-{sink}.log")


async def shoppers(base: str, queries: list[str], clients: int, seconds: float) -> dict:
    """Closed-loop shoppers: search, then post a click on the first product shown."""
    import httpx

    served: list[str] = []
    events: list[str] = []
    statuses: dict[int, int] = {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        stop = time.perf_counter() + seconds

        async def worker(offset: int) -> None:
            i = offset
            while time.perf_counter() < stop:
                body = {"query": queries[i % len(queries)], "session_id": f"load-{offset}-{i % 50}"}
                answer = await client.post("/search", json=body)
                statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
                i += clients
                if answer.status_code != 200 or not answer.json()["products"]:
                    continue
                found = answer.json()
                served.append(found["impression_id"])
                event = {
                    "event_id": uuid.uuid4().hex,
                    "impression_id": found["impression_id"],
                    "type": "click",
                    "product_id": found["products"][0]["product_id"],
                    "position": 1,
                }
                posted = await client.post("/events", json={"events": [event]})
                statuses[posted.status_code] = statuses.get(posted.status_code, 0) + 1
                if posted.status_code == 202 and posted.json()["accepted"] == 1:
                    events.append(event["event_id"])

        await asyncio.gather(*(worker(w) for w in range(clients)))
    return {"impressions": served, "events": events, "statuses": statuses}


def logged_counts(metrics_text: str) -> dict[str, float]:
    """shopflow_log_records_total by kind.outcome from a /metrics page."""
    found: dict[str, float] = {}
    pattern = r'shopflow_log_records_total\{kind="(\w+)",outcome="(\w+)"\} ([\d.e+]+)'
    for kind, outcome, value in re.findall(pattern, metrics_text):
        found[f"{kind}.{outcome}"] = found.get(f"{kind}.{outcome}", 0.0) + float(value)
    return found


def latency_cells(tag: str, folder: Path, queries: list[str], seconds: float) -> list[dict]:
    bodies = [{"query": q, "session_id": f"bench-{i % 200}"} for i, q in enumerate(queries)]
    rows = []
    with service(tag, folder, "off") as off, service(tag, folder, "files") as on:
        for base in (off, on):
            asyncio.run(drive(base, "/search", bodies, 4, 3.0))  # warm-up
        for concurrency in (1, 8):
            runs: dict[str, list[dict]] = {"off": [], "files": []}
            for _ in range(2):  # off, files, off, files: load drifts hit both alike
                for sink, base in (("off", off), ("files", on)):
                    runs[sink].append(
                        asyncio.run(drive(base, "/search", bodies, concurrency, seconds / 2))
                    )
            row: dict = {"concurrency": concurrency}
            for sink, cells in runs.items():
                row[sink] = {
                    "p50_ms": float(np.mean([c["p50_ms"] for c in cells])),
                    "p95_ms": float(np.mean([c["p95_ms"] for c in cells])),
                    "requests_per_s": float(np.mean([c["requests_per_s"] for c in cells])),
                    "errors": sum(c["errors"] for c in cells),
                }
            row["p50_ratio"] = row["files"]["p50_ms"] / row["off"]["p50_ms"]
            row["p95_ratio"] = row["files"]["p95_ms"] / row["off"]["p95_ms"]
            log.info("logging cost at concurrency %d: %s", concurrency, row)
            rows.append(row)
    return rows


def files_under_load(
    tag: str, folder: Path, queries: list[str], clients: int, seconds: float
) -> dict:
    with service(tag, folder, "files") as base:
        ran = asyncio.run(shoppers(base, queries, clients, seconds))
        time.sleep(3)  # the writer's flush interval, twice over
        import httpx

        counted = logged_counts(httpx.get(f"{base}/metrics", timeout=10).text)
    impressions, _ = read_files(folder / "logs-files", "impression")
    events, _ = read_files(folder / "logs-files", "event")
    logged_imps = set(impressions["impression_id"]) if len(impressions) else set()
    logged_events = set(events["event_id"]) if len(events) else set()
    result = {
        "clients": clients,
        "seconds": seconds,
        "statuses": {str(k): v for k, v in sorted(ran["statuses"].items())},
        "server_errors": sum(v for k, v in ran["statuses"].items() if k >= 500),
        "impressions_served": len(ran["impressions"]),
        "impressions_missing": len(set(ran["impressions"]) - logged_imps),
        "events_accepted": len(ran["events"]),
        "events_missing": len(set(ran["events"]) - logged_events),
        "metrics": counted,
    }
    log.info("files sink under load: %s", result)
    return result


def postgres_killed(tag: str, folder: Path, queries: list[str], seconds: float) -> dict:
    import httpx

    from tools.servers import (
        DATABASE_USER,
        ProcessTable,
        postgres_data,
        start_postgres,
        stop_postgres,
    )

    table = ProcessTable(folder / "processes.json", folder)
    data, port = postgres_data(folder), free_port()
    start_postgres(table, data, port, "shopflow_logs")
    dsn = f"host=127.0.0.1 port={port} user={DATABASE_USER} dbname=shopflow_logs"
    try:
        with service(tag, folder, "postgres", {"SHOPFLOW_LOG_DSN": dsn}) as base:

            async def run_and_kill() -> dict:
                load = asyncio.create_task(shoppers(base, queries, 8, seconds))
                await asyncio.sleep(seconds / 3)
                await asyncio.to_thread(stop_postgres, table, data)
                log.info("PostgreSQL stopped %.0f s into the load", seconds / 3)
                return await load

            ran = asyncio.run(run_and_kill())
            time.sleep(20)  # the writer's retries with back-off settle the last batches
            counted = logged_counts(httpx.get(f"{base}/metrics", timeout=10).text)
    finally:
        stop_postgres(table, data)
    served_log = (folder / "serve-postgres.log").read_text(errors="replace")
    alerts = [
        line for line in served_log.splitlines() if "ERROR" in line and "service log:" in line
    ]
    served = len(ran["impressions"])
    written = counted.get("impression.written", 0.0)
    lost = counted.get("impression.lost", 0.0) + counted.get("impression.dropped", 0.0)
    result = {
        "statuses": {str(k): v for k, v in sorted(ran["statuses"].items())},
        "server_errors": sum(v for k, v in ran["statuses"].items() if k >= 500),
        "impressions_served": served,
        "impressions_written": written,
        "impressions_counted_lost": lost,
        "unaccounted": served - written - lost,
        "metrics": counted,
        "alert_lines": len(alerts),  # the writer's ERROR line, at most one a minute
        "first_alert": alerts[0][-300:] if alerts else None,
    }
    log.info("PostgreSQL stopped mid-run: %s", result)
    return result


def logging_cost(params: Params, seconds: float = 20.0, load_seconds: float = 60.0) -> dict:
    """The tables of `make bench-online-cost` (also written to metrics/bench_logging.json)."""
    import bentoml

    tag = current_model(params)
    catalogue = pd.read_parquet(Path(bentoml.models.get(tag).path) / "catalogue.parquet")
    queries = catalogue["title"].str.split().str[:2].str.join(" ").tolist()[:500]
    with tempfile.TemporaryDirectory(prefix="shopflow-logging-") as tmp:
        folder = Path(tmp)
        result = {
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
            "model": tag,
            "latency": latency_cells(tag, folder, queries, seconds),
            "files_under_load": files_under_load(tag, folder, queries, 32, load_seconds),
            "postgres_stopped": postgres_killed(tag, folder, queries, 30.0),
        }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    log.info("wrote %s", RESULT)
    return result
