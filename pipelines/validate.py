"""Stage `validate`: Great Expectations suites over the ingested tables; a gate.

Writes the GX Data Docs (`reports/validation/data_docs/index.html`) and a JSON summary
(`reports/validation/summary.json`) whether or not the data passes. Only when every critical
rule passes are the tables written to `data/validated/` with a manifest that `prepare`
checks, so nothing downstream can run on invalid data, even when called by hand.

Policy `validate.on_invalid: quarantine` sets aside the rows that break row-level critical
rules (kept with their reasons in `data/validated/quarantine.parquet`, never dropped
silently) when they are at most `validate.max_quarantine_share` of a table; the remaining
rows are validated again and must pass. Table-level failures (schema, daily volume) always
stop the run. The rules are `shopflow.data.expectations`, the GX run `shopflow.data.validation`.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

from shopflow.core import paths
from shopflow.core.artifacts import staged_dir, table_hash, write_json, write_parquet
from shopflow.core.config import Params
from shopflow.core.errors import DataValidationError
from shopflow.data.tables import read_ingested
from shopflow.data.validation import summary, validate_tables

log = logging.getLogger(__name__)


def run(params: Params) -> dict:
    started = time.perf_counter()
    tables, manifest = read_ingested()
    scale = tuple(manifest["relevance_scale"]) if manifest.get("relevance_scale") else None
    outcome = validate_tables(
        tables, params, scale, dt.datetime.now(dt.UTC), paths.VALIDATION_REPORT
    )
    report = outcome.report
    result = summary(report, manifest, outcome.passed, len(outcome.quarantined))
    write_json(paths.VALIDATION_SUMMARY, result)
    headline = ("passed", "critical_failures", "warnings", "quarantined_rows")
    write_json(paths.metrics("validate"), {k: result[k] for k in headline})
    for warning in report.warnings:
        log.warning("%s", warning.describe())
    if not outcome.passed:
        details = "\n".join(f.describe() for f in report.critical)
        raise DataValidationError(
            f"validation failed: {len(report.critical)} critical rule(s) broken (Data Docs: "
            f"{outcome.docs}, summary: {paths.VALIDATION_SUMMARY})\n{details}"
        )
    with staged_dir(paths.VALIDATED) as staging:
        hashes = {}
        for name, frame in outcome.tables.items():
            write_parquet(frame, staging / f"{name}.parquet")
            hashes[name] = table_hash(frame)
        if len(outcome.quarantined):
            write_parquet(outcome.quarantined, staging / "quarantine.parquet")
        write_json(
            staging / "manifest.json",
            {
                **manifest,
                "validated": True,
                "validated_hashes": hashes,
                "quarantined_rows": len(outcome.quarantined),
            },
        )
    log.info(
        "validate: passed (%s rows checked, %d warning(s), %d quarantined) in %.1fs; Data Docs: %s",
        sum(report.checked.values()),
        len(report.warnings),
        len(outcome.quarantined),
        time.perf_counter() - started,
        outcome.docs,
    )
    return result
