"""The Great Expectations suites of the data contract: what "valid" means, rule by rule.

Each rule is a GX expectation carrying, on itself, what GX 1.x gives every expectation: a
`severity` (`critical`: the run stops; `warning`: reported), a `description` (the rule as a
person reads it) and `notes` (what to do about a failure, where the params offer a way on),
so the Data Docs show them too; `meta["row_level"]` says whether offending rows can be
quarantined one by one.
Rules that need context GX cannot see (the run's window, the clock, the catalogue, recent
daily volumes) are expressed on derived columns computed here (`ts_in_window`,
`ts_not_future`, `product_known`, `volume_ratio`), so the check itself stays a GX check
and shows up in the Data Docs.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

import great_expectations.expectations as gxe
import pandas as pd
from great_expectations.expectations.expectation import FailureSeverity
from scipy import stats

from shopflow.core.config import Params
from shopflow.data.contract import EVENT_TYPES, SCHEMAS
from shopflow.data.privacy import PSEUDONYM_PATTERN

Severity = Literal["critical", "warning"]
SERVICE_LOGS = "service_logs"


Rule = gxe.Expectation  # with its severity, description, notes and meta set by `_r`


def _r(
    name: str,
    exp: gxe.Expectation,
    severity: Severity = "critical",
    rows: bool = True,
    hint: str = "",
) -> Rule:
    """`exp` described as `name`, of `severity`; `rows`: offending rows can be quarantined
    one by one; `hint`: what to do about a failure (GX's `notes`)."""
    exp.description = name
    exp.severity = FailureSeverity(severity)
    exp.notes = hint or None
    exp.meta = {**(exp.meta or {}), "row_level": rows}
    return exp


def _schema_rule(table: str) -> Rule:
    columns = [c.name for c in SCHEMAS[table]]
    return _r(
        "schema: every contract column present",
        gxe.ExpectTableColumnsToMatchSet(column_set=columns, exact_match=False),
        rows=False,
    )


def _not_null(table: str) -> list[Rule]:
    return [
        _r(f"{c.name} is present", gxe.ExpectColumnValuesToNotBeNull(column=c.name))
        for c in SCHEMAS[table]
        if not c.nullable
    ]


def product_rules(params: Params) -> list[Rule]:
    cfg = params.validate_
    return [
        _schema_rule("products"),
        *_not_null("products"),
        _r("product_id is unique", gxe.ExpectColumnValuesToBeUnique(column="product_id")),
        _r(
            f"title has 1..{cfg.max_title_chars} characters",
            gxe.ExpectColumnValueLengthsToBeBetween(
                column="title", min_value=1, max_value=cfg.max_title_chars
            ),
        ),
        _r(
            "title is not blank",
            gxe.ExpectColumnValuesToNotMatchRegex(column="title", regex=r"^\s*$"),
        ),
        _r("price >= 0", gxe.ExpectColumnValuesToBeBetween(column="price", min_value=0)),
        _r(
            "price is numeric",
            gxe.ExpectColumnValuesToBeOfType(column="price", type_="float64"),
            rows=False,
        ),
        _r(
            "price is mostly known",
            gxe.ExpectColumnValuesToNotBeNull(column="price", mostly=0.5),
            "warning",
        ),
        _r(
            "brand is mostly known",
            gxe.ExpectColumnValuesToNotBeNull(column="brand", mostly=0.5),
            "warning",
        ),
        _r(
            "description under 20,000 characters",
            gxe.ExpectColumnValueLengthsToBeBetween(column="description", max_value=20_000),
            "warning",
        ),
    ]


def event_rules(params: Params) -> list[Rule]:
    cfg = params.validate_
    return [
        _schema_rule("events"),
        *_not_null("events"),
        _r(
            "ts is a timestamp (UTC by the contract)",
            gxe.ExpectColumnValuesToBeOfType(column="ts", type_="Timestamp"),
            rows=False,
        ),
        _r(
            "ts inside the window",
            gxe.ExpectColumnValuesToBeInSet(column="ts_in_window", value_set=[True]),
        ),
        _r(
            "ts not in the future",
            gxe.ExpectColumnValuesToBeInSet(column="ts_not_future", value_set=[True]),
        ),
        _r(
            "event_type is known",
            gxe.ExpectColumnValuesToBeInSet(column="event_type", value_set=list(EVENT_TYPES)),
        ),
        _r("position >= 1", gxe.ExpectColumnValuesToBeBetween(column="position", min_value=1)),
        _r(
            "user_key is a pseudonym",
            gxe.ExpectColumnValuesToMatchRegex(column="user_key", regex=PSEUDONYM_PATTERN),
        ),
        _r(
            f"product_id in the catalogue (>= {1 - cfg.max_unknown_product_share:.1%})",
            gxe.ExpectColumnValuesToBeInSet(
                column="product_known", value_set=[True], mostly=1 - cfg.max_unknown_product_share
            ),
        ),
        _query_length_rule(params),
        *(service_log_rules(params) if params.ingest.source == SERVICE_LOGS else []),
    ]


def service_log_rules(params: Params) -> list[Rule]:
    """What the service's own logs must hold after the join (ingest quarantined what did not
    join; these catch a join that let something through, or a log edited since)."""
    window = params.online.attribution_minutes
    return [
        _r("impression_id is present", gxe.ExpectColumnValuesToNotBeNull(column="impression_id")),
        _r(
            "every event after its impression",
            gxe.ExpectColumnValuesToBeInSet(column="after_impression", value_set=[True]),
        ),
        _r(
            f"every event within {window:g} minutes of its impression",
            gxe.ExpectColumnValuesToBeInSet(column="within_attribution", value_set=[True]),
        ),
        _r(
            "propensity in (0, 1]",
            gxe.ExpectColumnValuesToBeBetween(column="propensity", min_value=1e-6, max_value=1.0),
        ),
        _r(
            "A/B arms split 50/50 (no sample-ratio mismatch)",
            gxe.ExpectColumnValuesToBeInSet(column="arms_balanced", value_set=[True]),
            severity="warning",
            rows=False,
            hint="the split or the logging is broken: the online decision stops such an "
            "experiment; its data still trains",
        ),
    ]


def _query_length_rule(params: Params) -> Rule:
    """Queries longer than the service accepts (`serving.max_query_chars` refuses them):
    a warning for events and judged queries alike, so neither trains or measures on text
    no shopper could send."""
    cfg = params.validate_
    return _r(
        f"query under {cfg.max_query_chars} characters",
        gxe.ExpectColumnValueLengthsToBeBetween(column="query", max_value=cfg.max_query_chars),
        "warning",
    )


def judgment_rules(params: Params, scale: tuple[float, float] | None) -> list[Rule]:
    cfg = params.validate_
    rules = [
        _schema_rule("judgments"),
        *_not_null("judgments"),
        _r(
            "query is not blank",
            gxe.ExpectColumnValuesToNotMatchRegex(column="query", regex=r"^\s*$"),
        ),
        _query_length_rule(params),
        _r(
            "one judgment per (query, product)",
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["query", "product_id"]),
            hint=(
                "several ratings of one pair: set ingest.options.repeated_judgments to mean, "
                "median, max or first to merge them at ingest (the default, fail, stops here)"
            ),
        ),
        _r(
            f"product_id in the catalogue (>= {1 - cfg.max_unknown_product_share:.1%})",
            gxe.ExpectColumnValuesToBeInSet(
                column="product_known", value_set=[True], mostly=1 - cfg.max_unknown_product_share
            ),
        ),
    ]
    if scale is not None:
        rules.append(
            _r(
                f"relevance on the declared scale {scale[0]:g}..{scale[1]:g}",
                gxe.ExpectColumnValuesToBeBetween(
                    column="relevance", min_value=scale[0], max_value=scale[1]
                ),
            )
        )
    return rules


def volume_rules(params: Params) -> list[Rule]:
    cfg = params.validate_
    return [
        _r(
            f"daily events within {cfg.volume_ratio_min:g}x..{cfg.volume_ratio_max:g}x "
            f"of the previous {cfg.volume_lookback_days} days' median",
            gxe.ExpectColumnValuesToBeBetween(
                column="volume_ratio",
                min_value=cfg.volume_ratio_min,
                max_value=cfg.volume_ratio_max,
            ),
        ),
        _r(
            "every day has events",
            gxe.ExpectColumnValuesToBeBetween(column="events", min_value=1),
            rows=False,
        ),
    ]


# --------------------------------------------------------------------------- derived columns
def with_event_checks(
    events: pd.DataFrame, products: pd.DataFrame, params: Params, now: dt.datetime
) -> pd.DataFrame:
    start, end = params.ingest.window.bounds()
    tolerance = dt.timedelta(minutes=params.validate_.future_tolerance_minutes)
    checked = events.assign(
        ts_in_window=(events["ts"] >= start) & (events["ts"] < end),
        ts_not_future=events["ts"] <= now + tolerance,
        product_known=events["product_id"].isin(products["product_id"]),
    )
    if params.ingest.source == SERVICE_LOGS:
        checked = with_service_log_checks(checked, params)
    return checked


def with_service_log_checks(events: pd.DataFrame, params: Params) -> pd.DataFrame:
    """Each event against its impression's time, and the A/B arms' balance."""
    shown = events[events["event_type"] == "impression"].groupby("impression_id")["ts"].min()
    at = events["impression_id"].map(shown)
    window = pd.Timedelta(minutes=params.online.attribution_minutes)
    units = events[events["arm"].isin(["champion", "challenger"])].drop_duplicates("user_key")
    observed = [int((units["arm"] == arm).sum()) for arm in ("champion", "challenger")]
    total = sum(observed)
    balanced = True
    if total:
        p_value = stats.chisquare(observed, [total / 2, total / 2]).pvalue
        balanced = bool(p_value >= params.online.decision.srm_p)
    return events.assign(
        after_impression=at.notna() & (events["ts"] >= at),
        within_attribution=at.notna() & (events["ts"] <= at + window),
        arms_balanced=balanced,
    )


def with_judgment_checks(judgments: pd.DataFrame, products: pd.DataFrame) -> pd.DataFrame:
    return judgments.assign(product_known=judgments["product_id"].isin(products["product_id"]))


def daily_volume(events: pd.DataFrame, params: Params) -> pd.DataFrame:
    """Events per open day of the window and the ratio to the median of the preceding open
    days (1.0 on the first). Days listed as closed (`validate.closed_weekdays`,
    `validate.closed_dates`) are left out: a shop shut on Saturdays is not an outage."""
    cfg = params.validate_
    closed = set(cfg.closed_dates)
    open_days = [
        d
        for d in params.ingest.window.dates()
        if d.weekday() not in cfg.closed_weekdays and d not in closed
    ]
    days = pd.DatetimeIndex(pd.to_datetime(open_days))
    per_day = events["ts"].dt.tz_convert("UTC").dt.tz_localize(None).dt.normalize().value_counts()
    counts = per_day.reindex(days, fill_value=0).astype(int)
    lookback = params.validate_.volume_lookback_days
    baseline = counts.shift(1).rolling(lookback, min_periods=1).median()
    ratio = (counts / baseline.replace(0, float("nan"))).fillna(1.0)
    ratio[counts == 0] = 0.0
    return pd.DataFrame(
        {"day": days.strftime("%Y-%m-%d"), "events": counts.values, "volume_ratio": ratio.values}
    )


DERIVED_COLUMNS = ("ts_in_window", "ts_not_future", "product_known")
