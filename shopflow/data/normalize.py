"""From a source adapter's tables to the data contract: the ingest stage's core.

Order of work: parse to the contract (unparseable values fail or are quarantined by
`ingest.on_unparseable`), keep the window's events (future-dated rows are kept so that
validate can reject them loudly), replace user and session ids with keyed pseudonyms,
scrub PII from query text and merge repeated judgments of one (query, product) by the
declared policy. Nothing raw leaves this module.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from shopflow.core.artifacts import staged_dir, table_hash, write_json, write_parquet
from shopflow.core.config import Params
from shopflow.core.errors import EmptyDataError, SourceError
from shopflow.data.contract import SCHEMA_VERSION, Tables, conform, describe_rejects
from shopflow.data.privacy import (
    SESSION_PREFIX,
    USER_PREFIX,
    key_fingerprint,
    pseudonymize,
    scrub_series,
)
from shopflow.data.repeated_judgments import apply_policy

log = logging.getLogger(__name__)


@dataclass
class Ingested:
    tables: dict[str, pd.DataFrame]
    rejects: pd.DataFrame
    manifest: dict[str, Any]
    stats: dict[str, int] = field(default_factory=dict)

    def write(self, out_dir: Path) -> None:
        """The contract tables, the rejects and the manifest, replacing `out_dir` at once (a
        killed write leaves the previous folder as it was)."""
        with staged_dir(out_dir) as staging:
            for name, frame in self.tables.items():
                write_parquet(frame, staging / f"{name}.parquet")
            write_parquet(self.rejects.astype(str), staging / "rejects.parquet")
            write_json(staging / "manifest.json", self.manifest)


def apply_reject_policy(rejects: pd.DataFrame, rows: int, params: Params, origin: str) -> None:
    """Fail on unparseable values, or accept them as quarantined below the threshold."""
    if rejects.empty:
        return
    cfg = params.ingest
    bad_rows = rejects[["table", "source_row"]].drop_duplicates()
    share = len(bad_rows) / max(rows, 1)
    message = describe_rejects(rejects, origin)
    if cfg.on_unparseable == "fail":
        raise SourceError(
            f"{message}\nFix the source, or set ingest.on_unparseable: quarantine to set such "
            f"rows aside (kept in rejects.parquet) when they are under ingest.max_quarantine_share"
        )
    if share > cfg.max_quarantine_share:
        raise SourceError(
            f"{message}\n{share:.2%} of rows cannot be parsed, above "
            f"ingest.max_quarantine_share={cfg.max_quarantine_share:.2%}: refusing to quarantine"
        )
    log.warning("quarantined %d unparseable row(s) (%.3f%%) per policy", len(bad_rows), share * 100)


def select_window(events: pd.DataFrame, params: Params, now: dt.datetime) -> pd.DataFrame:
    """Events inside the window, plus future-dated rows (a broken clock must fail validate)."""
    start, end = params.ingest.window.bounds()
    inside = (events["ts"] >= start) & (events["ts"] < end)
    future = events["ts"] > now
    kept = events[inside | future]
    if not inside.any():
        observed = (
            f"{events['ts'].min():%Y-%m-%d} .. {events['ts'].max():%Y-%m-%d}"
            if len(events)
            else "no rows"
        )
        raise EmptyDataError(
            f"{params.ingest.path}: no events in the window {start:%Y-%m-%d} .. "
            f"{end - dt.timedelta(days=1):%Y-%m-%d} (the source covers {observed}); "
            f"set ingest.window.end / ingest.window.days"
        )
    dropped = len(events) - len(kept)
    if dropped:
        log.info("left out %d event(s) outside the window %s .. %s", dropped, start, end)
    return kept


def normalize(raw: Tables, params: Params, key: bytes, now: dt.datetime) -> Ingested:
    """The pure core of ingest: adapter tables in, contract tables + manifest out."""
    origin = params.ingest.path
    tables: dict[str, pd.DataFrame] = {}
    rejects = []
    total_rows = 0
    for name, frame in raw.present().items():
        good, bad = conform(frame, name, origin)
        total_rows += len(frame)
        tables[name] = good
        if len(bad):
            rejects.append(bad)
    reject_frame = (
        pd.concat(rejects, ignore_index=True)
        if rejects
        else pd.DataFrame(columns=["source_row", "unit", "column", "value", "reason", "table"])
    )
    apply_reject_policy(reject_frame, total_rows, params, origin)
    stats: dict[str, int] = {}
    repeated: dict | None = None
    if "events" in tables:
        events = select_window(tables["events"], params, now)
        if not raw.pseudonymous:  # the service's logs hold the keyed pseudonyms already
            events = events.assign(
                user_key=pseudonymize(events["user_key"], key, USER_PREFIX),
                session_id=pseudonymize(events["session_id"], key, SESSION_PREFIX),
            )
        scrubbed = scrub_series(events["query"])
        stats["queries_scrubbed"] = int((scrubbed.fillna("") != events["query"].fillna("")).sum())
        events["query"] = scrubbed
        tables["events"] = events.sort_values(
            ["ts", "session_id", "position"], kind="stable", na_position="last"
        ).reset_index(drop=True)
    if "judgments" in tables:
        judged = tables["judgments"]
        scrubbed = scrub_series(judged["query"])
        stats["judgment_queries_scrubbed"] = int((scrubbed != judged["query"]).sum())
        tables["judgments"], repeated = apply_policy(
            judged.assign(query=scrubbed), params.ingest.options
        )
    if "products" not in tables or tables["products"].empty:
        raise EmptyDataError(f"{origin}: the source yields no products")
    window = params.ingest.window
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "source": params.ingest.source,
        "path": params.ingest.path,
        "window": {"start": str(window.start), "end": str(window.end), "days": window.days},
        "tables": {
            name: {"rows": len(frame), "sha256": table_hash(frame), "columns": list(frame.columns)}
            for name, frame in tables.items()
        },
        "relevance_scale": list(raw.relevance_scale) if raw.relevance_scale else None,
        "repeated_judgments": repeated,
        "quarantined_rows": int(reject_frame[["table", "source_row"]].drop_duplicates().shape[0]),
        "pseudonym_key_id": key_fingerprint(key),
        "privacy": stats,
        "notes": raw.notes,
    }
    return Ingested(tables, reject_frame, manifest, stats)
