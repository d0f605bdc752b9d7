"""Great Expectations over the contract tables: the validate stage's core.

`check` runs every suite of `shopflow.data.expectations` (plus the derived check columns)
through an ephemeral-folder GX context, so the Data Docs are GX's own. `quarantine` sets
aside the rows that break row-level critical rules when the policy allows it, and
`validate_tables` is the whole gate: check, quarantine and re-check, publish the Data Docs.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from shopflow.core.config import Params
from shopflow.core.errors import DataValidationError, preview
from shopflow.data import expectations as ex

log = logging.getLogger(__name__)

SAMPLE_ROWS = 3


@dataclass
class Failure:
    table: str
    rule: str
    column: str | None
    severity: str
    unexpected_count: int
    rows: list[int]
    sample: list[dict[str, str]]
    hint: str = ""

    def describe(self) -> str:
        where = f"{self.table}.{self.column}" if self.column else self.table
        head = (
            f"[{self.severity}] {where}: {self.rule} — {self.unexpected_count:,} offending row(s)"
        )
        lines = [head] + [f"    row {s['row']}: {s['values']}" for s in self.sample]
        if self.hint:
            lines.append(f"    fix: {self.hint}")
        return "\n".join(lines)


@dataclass
class Report:
    failures: list[Failure]
    checked: dict[str, int]

    @property
    def critical(self) -> list[Failure]:
        return [f for f in self.failures if f.severity == "critical"]

    @property
    def warnings(self) -> list[Failure]:
        return [f for f in self.failures if f.severity == "warning"]


# ------------------------------------------------------------------------------ GX plumbing
def _context(root: Path):
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="file", project_root_dir=str(root))
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _run_suite(context, table: str, frame: pd.DataFrame, rules: list[ex.Rule]) -> list[Failure]:
    import great_expectations as gx

    asset = context.data_sources.add_or_update_pandas("shopflow").add_dataframe_asset(table)
    batch = asset.add_batch_definition_whole_dataframe(f"{table}-all")
    suite = gx.ExpectationSuite(name=table)
    for rule in rules:
        suite.add_expectation(rule)
    suite = context.suites.add(suite)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=table, data=batch, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=f"{table}-checkpoint",
            validation_definitions=[definition],
            actions=[gx.checkpoint.actions.UpdateDataDocsAction(name="data-docs")],
            result_format={"result_format": "COMPLETE"},
        )
    )
    result = checkpoint.run(batch_parameters={"dataframe": frame.reset_index(drop=True)})
    (validation,) = result.run_results.values()
    failures = []
    for outcome in validation.results:
        if outcome.success:
            continue
        rule = outcome.expectation_config  # with the severity, description and notes it ran with
        details = outcome.result or {}
        rows = [int(i) for i in details.get("unexpected_index_list") or []]
        column = rule.kwargs.get("column")
        failures.append(
            Failure(
                table=table,
                rule=rule.description or rule.type,
                column=column,
                severity=str(rule.severity.value if rule.severity else "critical"),
                unexpected_count=int(details.get("unexpected_count") or len(rows) or 1),
                rows=rows if (rule.meta or {}).get("row_level", True) else [],
                sample=_sample(frame, rows, column),
                hint=rule.notes or "",
            )
        )
    return failures


def _sample(frame: pd.DataFrame, rows: list[int], column: str | None) -> list[dict[str, str]]:
    cols = [c for c in frame.columns if c not in ex.DERIVED_COLUMNS][:6]
    if column and column not in cols:
        cols = [column, *cols[:5]]
    sample = []
    for i in rows[:SAMPLE_ROWS]:
        record = frame.iloc[i]
        values = ", ".join(f"{c}={preview(record[c], 60)}" for c in cols)
        sample.append({"row": str(i), "values": values})
    return sample


# ------------------------------------------------------------------------------ the core
def check(
    tables: dict[str, pd.DataFrame],
    params: Params,
    scale: tuple[float, float] | None,
    now: dt.datetime,
    docs_root: Path,
) -> Report:
    """Run every suite over the tables (plus derived check columns) and report the failures."""
    context = _context(docs_root)
    products = tables["products"]
    frames = {"products": products}
    plans = {"products": ex.product_rules(params)}
    if "events" in tables:
        frames["events"] = ex.with_event_checks(tables["events"], products, params, now)
        plans["events"] = ex.event_rules(params)
        frames["daily_volume"] = ex.daily_volume(tables["events"], params)
        plans["daily_volume"] = ex.volume_rules(params)
    if "judgments" in tables:
        frames["judgments"] = ex.with_judgment_checks(tables["judgments"], products)
        plans["judgments"] = ex.judgment_rules(params, scale)
    failures = []
    for table, rules in plans.items():
        failures += _run_suite(context, table, frames[table], rules)
    return Report(failures, {t: len(f) for t, f in frames.items()})


def quarantine(
    tables: dict[str, pd.DataFrame], report: Report, params: Params
) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Set aside rows breaking row-level critical rules, within the policy's share."""
    cfg = params.validate_
    blocking = [f for f in report.critical if not f.rows]
    if blocking:
        raise DataValidationError(
            "cannot quarantine table-level failures:\n" + "\n".join(f.describe() for f in blocking)
        )
    kept, set_aside = dict(tables), []
    for table in {f.table for f in report.critical}:
        frame = tables[table].reset_index(drop=True)
        reasons: dict[int, list[str]] = {}
        for failure in (f for f in report.critical if f.table == table):
            rows = failure.rows
            if failure.rule.endswith("is unique") and failure.column:
                first = ~frame.duplicated(failure.column, keep="first")
                rows = [r for r in rows if not first.iat[r]]  # keep the first copy
            for r in rows:
                reasons.setdefault(r, []).append(failure.rule)
        share = len(reasons) / max(len(frame), 1)
        if share > cfg.max_quarantine_share:
            raise DataValidationError(
                f"{table}: {len(reasons):,} invalid row(s) ({share:.2%}) exceed "
                f"validate.max_quarantine_share={cfg.max_quarantine_share:.2%}; not quarantining"
            )
        bad = sorted(reasons)
        aside = (
            frame.iloc[bad]
            .astype(str)
            .assign(table=table, row=bad, reasons=["; ".join(reasons[r]) for r in bad])
        )
        set_aside.append(aside)
        kept[table] = frame.drop(index=bad).reset_index(drop=True)
        log.warning(
            "quarantined %d row(s) of %s per validate.on_invalid=quarantine", len(bad), table
        )
    quarantined = pd.concat(set_aside, ignore_index=True) if set_aside else pd.DataFrame()
    return kept, quarantined


def summary(report: Report, manifest: dict, passed: bool, quarantined: int) -> dict:
    return {
        "passed": passed,
        "checked_rows": report.checked,
        "critical_failures": len(report.critical),
        "warnings": len(report.warnings),
        "quarantined_rows": quarantined,
        "input_hashes": {n: t["sha256"] for n, t in manifest["tables"].items()},
        "failures": [{k: v for k, v in f.__dict__.items() if k != "rows"} for f in report.failures],
    }


def publish_docs(gx_root: Path, report_dir: Path) -> Path:
    site = next(gx_root.rglob("data_docs/local_site"), None)
    target = report_dir / "data_docs"
    shutil.rmtree(target, ignore_errors=True)
    if site is not None:
        shutil.copytree(site, target)
    return target / "index.html"


@dataclass
class Outcome:
    """What validation decided: the tables to pass on, the last report, what was set aside."""

    tables: dict[str, pd.DataFrame]
    report: Report
    quarantined: pd.DataFrame
    docs: Path

    @property
    def passed(self) -> bool:
        return not self.report.critical


def validate_tables(
    tables: dict[str, pd.DataFrame],
    params: Params,
    scale: tuple[float, float] | None,
    now: dt.datetime,
    report_dir: Path,
) -> Outcome:
    """Check every table; under `validate.on_invalid: quarantine`, set aside the offending
    rows and check what is left again. The Data Docs of the final check go to
    `report_dir/data_docs` (they show what was finally accepted)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    with tempfile.TemporaryDirectory(prefix="shopflow-gx-") as gx_tmp:
        docs_root = Path(gx_tmp) / "first"
        report = check(tables, params, scale, now, docs_root)
        quarantined = pd.DataFrame()
        if report.critical and params.validate_.on_invalid == "quarantine":
            cleaned, quarantined = quarantine(tables, report, params)
            docs_root = Path(gx_tmp) / "recheck"
            report = check(cleaned, params, scale, now, docs_root)
            if not report.critical:
                tables = cleaned
        docs = publish_docs(docs_root, report_dir)
    return Outcome(tables, report, quarantined, docs)
