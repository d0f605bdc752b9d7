"""Where the service's log records go, and how they are read back.

- `FileSink` (the embedded default): JSON lines under
  `<folder>/<kind>/date=YYYY-MM-DD/hour=HH/part-<host>-<pid>-<n>.jsonl`, a part closed at
  `rotate_mb` or when the hour turns. Each batch is one write of whole lines, flushed, so a
  crash loses at most the line being written; the reader counts and skips a torn last line.
- `PostgresSink` (scale-out): two tables keyed by `impression_id` / `event_id` with the
  record as JSONB; inserts are `ON CONFLICT DO NOTHING`, so retries and several workers never
  double-count. The DSN comes from the environment (`online.log.dsn_env`), never params.yaml.

Both raise on failure; `writer.LogWriter` decides what to retry and what counts as lost.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from shopflow.core.errors import ConfigError, SourceError

log = logging.getLogger(__name__)
KINDS = ("impression", "event")
FOLDERS = {"impression": "impressions", "event": "events"}
KEYS = {"impression": "impression_id", "event": "event_id"}
LOG_DIR_ENV = "SHOPFLOW_LOG_DIR"


class Sink(Protocol):
    def write(self, records: list[dict]) -> None: ...

    def close(self) -> None: ...


def _hour_of(record: dict) -> str:
    stamp = record.get("received_at") or record["timestamp"]
    return stamp[:13]  # YYYY-MM-DDTHH


class FileSink:
    """Rotating JSON-lines files partitioned by kind, day and hour."""

    def __init__(self, folder: str | Path, rotate_mb: float = 64.0) -> None:
        self.folder = Path(folder)
        self.rotate_bytes = int(rotate_mb * 1024 * 1024)
        self.prefix = f"part-{socket.gethostname()}-{os.getpid()}"
        self.parts: dict[tuple[str, str], Path] = {}
        self.sequence = 0

    def _part(self, kind: str, hour: str) -> Path:
        path = self.parts.get((kind, hour))
        if path is None or (path.exists() and path.stat().st_size >= self.rotate_bytes):
            self.sequence += 1
            folder = self.folder / FOLDERS[kind] / f"date={hour[:10]}" / f"hour={hour[11:13]}"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{self.prefix}-{self.sequence:05d}.jsonl"
            self.parts = {k: v for k, v in self.parts.items() if k[0] != kind or k[1] >= hour}
            self.parts[(kind, hour)] = path
        return path

    def write(self, records: list[dict]) -> None:
        grouped: dict[tuple[str, str], list[str]] = {}
        for record in records:
            line = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
            grouped.setdefault((record["kind"], _hour_of(record)), []).append(line)
        for (kind, hour), lines in grouped.items():
            with self._part(kind, hour).open("a", encoding="utf-8") as out:
                out.write("\n".join(lines) + "\n")
                out.flush()

    def close(self) -> None:
        self.parts.clear()


TABLES = {
    "impression": "shopflow_impressions",
    "event": "shopflow_events",
}
SCHEMA = """
CREATE TABLE IF NOT EXISTS shopflow_impressions (
    impression_id text PRIMARY KEY, ts timestamptz NOT NULL, record jsonb NOT NULL);
CREATE TABLE IF NOT EXISTS shopflow_events (
    event_id text PRIMARY KEY, impression_id text NOT NULL, ts timestamptz NOT NULL,
    record jsonb NOT NULL);
CREATE INDEX IF NOT EXISTS shopflow_impressions_ts ON shopflow_impressions (ts);
CREATE INDEX IF NOT EXISTS shopflow_events_ts ON shopflow_events (ts);
"""


class PostgresSink:
    """Idempotent inserts into two tables; reconnects after a failure."""

    def __init__(self, dsn: str, timeout_s: float = 5.0) -> None:
        self.dsn = dsn
        self.timeout_s = timeout_s
        self.connection: Any = None

    def _connect(self) -> Any:
        import psycopg2

        if self.connection is None or self.connection.closed:
            self.connection = psycopg2.connect(
                self.dsn,
                connect_timeout=max(1, int(self.timeout_s)),
                options=f"-c statement_timeout={int(self.timeout_s * 1000)}",
            )
            with self.connection, self.connection.cursor() as cursor:
                cursor.execute(SCHEMA)
        return self.connection

    def write(self, records: list[dict]) -> None:
        from psycopg2.extras import Json, execute_values

        try:
            connection = self._connect()
            with connection, connection.cursor() as cursor:
                impressions = [
                    (r["impression_id"], r["timestamp"], Json(r))
                    for r in records
                    if r["kind"] == "impression"
                ]
                events = [
                    (r["event_id"], r["impression_id"], r["timestamp"], Json(r))
                    for r in records
                    if r["kind"] == "event"
                ]
                if impressions:
                    execute_values(
                        cursor,
                        "INSERT INTO shopflow_impressions VALUES %s ON CONFLICT DO NOTHING",
                        impressions,
                    )
                if events:
                    execute_values(
                        cursor,
                        "INSERT INTO shopflow_events VALUES %s ON CONFLICT DO NOTHING",
                        events,
                    )
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        if self.connection is not None:
            try:
                self.connection.close()
            finally:
                self.connection = None


def log_folder(configured: str) -> Path:
    """The files sink's root: `$SHOPFLOW_LOG_DIR` when set (a mounted volume), else params."""
    return Path(os.environ.get(LOG_DIR_ENV) or configured)


def open_sink(sink: str, folder: str, rotate_mb: float, dsn_env: str) -> Sink | None:
    """The sink params name; None when logging is off."""
    if sink == "off":
        return None
    if sink == "files":
        return FileSink(log_folder(folder), rotate_mb)
    dsn = os.environ.get(dsn_env)
    if not dsn:
        raise ConfigError(f"online.log.sink is postgres but {dsn_env} (the DSN) is not set")
    return PostgresSink(dsn)


def read_files(folder: str | Path, kind: str) -> tuple[pd.DataFrame, int]:
    """Every record of `kind` under a files sink's folder, and how many torn lines were
    skipped (a crash mid-write)."""
    root = Path(folder) / FOLDERS[kind]
    rows: list[dict] = []
    torn = 0
    for path in sorted(root.glob("date=*/hour=*/*.jsonl")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                torn += 1
    return pd.DataFrame(rows), torn


def read_sink(
    sink: str, folder: str | Path, dsn_env: str, setting: str
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """(impressions, events, torn lines) of a sink: the files under `folder`, or the Postgres
    tables of the DSN in `$dsn_env` when `sink` is postgres (`setting` names the param that
    said so, for the error)."""
    if sink == "postgres":
        dsn = os.environ.get(dsn_env)
        if not dsn:
            raise ConfigError(f"{setting} is postgres but {dsn_env} (the DSN) is not set")
        return read_postgres(dsn, "impression"), read_postgres(dsn, "event"), 0
    impressions, torn_impressions = read_files(folder, "impression")
    events, torn_events = read_files(folder, "event")
    return impressions, events, torn_impressions + torn_events


def read_postgres(dsn: str, kind: str, since: dt.datetime | None = None) -> pd.DataFrame:
    """Every record of `kind` in the Postgres sink (from `since` on)."""
    import psycopg2

    where, args = ("WHERE ts >= %s", (since,)) if since else ("", ())
    try:
        with (
            contextlib.closing(psycopg2.connect(dsn, connect_timeout=10)) as connection,
            connection.cursor() as cursor,
        ):
            cursor.execute(f"SELECT record FROM {TABLES[kind]} {where}", args)
            rows = [r[0] for r in cursor.fetchall()]
    except psycopg2.Error as exc:
        raise SourceError(f"service logs in Postgres: {exc}".strip()) from None
    return pd.DataFrame(rows)
