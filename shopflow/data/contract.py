"""The data contract every source is normalized to (DESIGN.md, "Data contract").

`conform` turns an adapter's raw frame into the contract's columns and types. Values that
cannot be parsed are never silently dropped or nulled: the rows are returned as rejects with
the column, the raw value and the reason, and the caller decides (fail, or quarantine below a
threshold).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from shopflow.core.errors import SourceError, preview

SCHEMA_VERSION = "1.0"
EVENT_TYPES = ("impression", "click", "add_to_cart", "purchase")
TABLES = ("products", "events", "judgments")

Kind = Literal["str", "float", "int", "ts", "json"]


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    required: bool = True
    nullable: bool = False


SCHEMAS: dict[str, tuple[Column, ...]] = {
    "products": (
        Column("product_id", "str"),
        Column("title", "str"),
        Column("description", "str", required=False, nullable=True),
        Column("brand", "str", required=False, nullable=True),
        Column("category", "str", required=False, nullable=True),
        Column("price", "float", required=False, nullable=True),
        Column("attributes", "json", required=False, nullable=True),
        Column("first_seen", "ts", required=False, nullable=True),
    ),
    "events": (
        Column("ts", "ts"),
        Column("session_id", "str"),
        Column("user_key", "str"),
        Column("query", "str", required=False, nullable=True),
        Column("product_id", "str"),
        Column("position", "int", required=False, nullable=True),
        Column("event_type", "str"),
        # from the service's own logs (`ingest.source: service_logs`): the impression an event
        # belongs to, the examination propensity of its position measured from the service's
        # randomised swaps, and the experiment arm that showed it
        Column("impression_id", "str", required=False, nullable=True),
        Column("propensity", "float", required=False, nullable=True),
        Column("arm", "str", required=False, nullable=True),
    ),
    "judgments": (
        Column("query", "str"),
        Column("product_id", "str"),
        Column("relevance", "float"),
        # the raters' disagreement on this pair (repeated ratings merged at ingest, or the
        # source's own column): a graded loss may trust a contested label less
        Column("relevance_variance", "float", required=False, nullable=True),
    ),
}


@dataclass
class Tables:
    """What an adapter returns: contract tables (any may be absent) and facts about them."""

    products: pd.DataFrame | None = None
    events: pd.DataFrame | None = None
    judgments: pd.DataFrame | None = None
    relevance_scale: tuple[float, float] | None = None
    notes: dict[str, object] = field(default_factory=dict)
    # ids are keyed pseudonyms already (the service's logs): ingest must not hash them again,
    # or they would no longer match the customers' keys in the models
    pseudonymous: bool = False

    def present(self) -> dict[str, pd.DataFrame]:
        return {name: frame for name in TABLES if (frame := getattr(self, name)) is not None}


def normalize_text(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def stable_product_id(title: str, brand: str | None = None, description: str | None = None) -> str:
    """An id for sources without one: a hash of the normalized product text, stable across runs."""
    key = "\x1f".join(normalize_text(part or "") for part in (title, brand, description))
    return "h" + hashlib.sha1(key.encode("utf-8")).hexdigest()[:16]


def _parse(values: pd.Series, kind: Kind) -> pd.Series:
    if kind == "str":
        if pd.api.types.infer_dtype(values, skipna=True) in {"string", "empty"}:
            return values.astype("object").where(values.notna(), None)
        return values.map(lambda v: v if v is None or isinstance(v, str) else _to_str(v))
    if kind == "float":
        return pd.to_numeric(values, errors="coerce").astype("float64")
    if kind == "int":
        numbers = pd.to_numeric(values, errors="coerce")
        integral = numbers.isna() | np.isclose(numbers.fillna(0) % 1, 0)
        return numbers.where(integral).astype("Int64")
    if kind == "ts":
        if pd.api.types.is_datetime64_any_dtype(values):
            parsed = values
        else:
            parsed = pd.to_datetime(values, errors="coerce", utc=True, format="mixed")
        if getattr(parsed.dt, "tz", None) is None:
            parsed = parsed.dt.tz_localize("UTC")  # naive timestamps are taken as UTC
        return parsed.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")
    if kind == "json":
        return values.map(_to_json)
    raise AssertionError(kind)


def _to_str(value: object) -> str | None:
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def _to_json(value: object) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    if isinstance(value, str):
        if not value.strip():
            return None
        parsed = json.loads(value)  # ValueError -> reject
        if not isinstance(parsed, dict):
            raise ValueError("attributes must be a JSON object")
        return json.dumps(parsed, sort_keys=True, ensure_ascii=False)
    raise ValueError(f"attributes must be a dict or JSON object, got {type(value).__name__}")


def _parse_json_column(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    out, bad = [], []
    for value in values:
        try:
            out.append(_to_json(value))
            bad.append(False)
        except ValueError:
            out.append(None)
            bad.append(True)
    return pd.Series(out, index=values.index, dtype="object"), pd.Series(bad, index=values.index)


POSITION_UNITS = ("line", "row")  # how a reader numbered a frame's rows (its index's name)


def conform(frame: pd.DataFrame, table: str, origin: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cast `frame` to the contract schema of `table`.

    Returns (rows that parsed, rejects). Rejects keep where the row was in the source
    (`source_row`, in `unit`: the file's `line` when the reader numbered the rows that way,
    else the 1-based `row`), the column, the raw value (capped) and a reason. Missing required
    columns raise at once, naming them and the columns that were found.
    """
    schema = SCHEMAS[table]
    missing = [c.name for c in schema if c.required and c.name not in frame.columns]
    if missing:
        found = ", ".join(map(str, frame.columns)) or "none"
        raise SourceError(
            f"{origin}: {table} is missing required column(s) {', '.join(missing)} "
            f"(found: {found}); map source columns with ingest.mapping in params.yaml"
        )
    numbered = frame.index.name in POSITION_UNITS  # else: 1-based positions
    unit = str(frame.index.name) if numbered else "row"
    numbers = frame.index.to_numpy() if numbered else np.arange(1, len(frame) + 1)
    frame = frame.reset_index(drop=True)
    out = pd.DataFrame(index=frame.index)
    bad = np.zeros(len(frame), dtype=bool)
    rejects = []
    for col in schema:
        if col.name not in frame.columns:
            out[col.name] = pd.Series([None] * len(frame), dtype="object")
            out[col.name] = _parse(out[col.name], col.kind)
            continue
        raw = frame[col.name]
        if col.kind == "json":
            parsed, failed = _parse_json_column(raw)
        else:
            parsed = _parse(raw, col.kind)
            failed = raw.notna() & parsed.isna()
        if failed.any():
            bad |= failed.to_numpy()
            rejects.append(
                pd.DataFrame(
                    {
                        "source_row": numbers[failed.to_numpy()],
                        "unit": unit,
                        "column": col.name,
                        "value": raw[failed].map(lambda v: preview(v, 200)),
                        "reason": f"cannot parse as {col.kind}",
                    }
                )
            )
        out[col.name] = parsed
    reject_frame = (
        pd.concat(rejects, ignore_index=True)
        if rejects
        else pd.DataFrame(columns=["source_row", "unit", "column", "value", "reason"])
    )
    return out[~bad].reset_index(drop=True), reject_frame.assign(table=table)


def describe_rejects(rejects: pd.DataFrame, origin: str, limit: int = 5) -> str:
    """One readable line per offending row (at most `limit`), for error messages."""
    lines = [
        f"  {row.table}.{row.column} at {row.unit} {row.source_row}: {row.reason}: {row.value}"
        for row in rejects.head(limit).itertuples()
    ]
    more = len(rejects) - limit
    if more > 0:
        lines.append(f"  … and {more:,} more")
    return f"{origin}: {len(rejects):,} value(s) cannot be parsed:\n" + "\n".join(lines)
