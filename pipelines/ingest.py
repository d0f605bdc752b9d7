"""Stage `ingest`: read a source for a date window and write the data contract.

Output (`data/ingested/`): one parquet file per contract table, `rejects.parquet` (values
that could not be parsed, with row and reason; empty when there were none) and
`manifest.json` (source, window, row counts, content hashes, schema version, key id). The
folder is replaced atomically, so a killed ingest leaves the previous output intact. The
work itself is `shopflow.data.normalize`.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

from shopflow.core import paths
from shopflow.core.artifacts import write_json
from shopflow.core.config import Params
from shopflow.core.secrets import mode_for
from shopflow.data.normalize import Ingested, normalize
from shopflow.data.privacy import pseudonym_key
from shopflow.data.sources import read_source

log = logging.getLogger(__name__)


def run(params: Params) -> Ingested:
    started = time.perf_counter()
    window = params.ingest.window
    log.info(
        "ingest: source=%s path=%s window=%s..%s",
        params.ingest.source,
        params.ingest.path,
        window.start,
        window.end,
    )
    mode = mode_for(params.ingest.source)
    key = pseudonym_key(mode)  # before reading: a production run without a key stops at once
    raw = read_source(params)
    result = normalize(raw, params, key, dt.datetime.now(dt.UTC))
    result.manifest["mode"] = str(mode)
    result.write(paths.INGESTED)
    seconds = time.perf_counter() - started
    rows = {name: len(frame) for name, frame in result.tables.items()}
    total = sum(rows.values())
    log.info(
        "ingest: wrote %s to %s in %.1fs (%.0f rows/s)",
        ", ".join(f"{n}={r:,}" for n, r in rows.items()),
        paths.INGESTED,
        seconds,
        total / seconds,
    )
    write_json(
        paths.metrics("ingest"),
        {"rows": rows, "quarantined_rows": result.manifest["quarantined_rows"]},
    )
    return result
