"""Generic behaviour logs (CSV/TSV/parquet/JSON lines) plus an optional product file.

`ingest.mapping` maps contract names to the log's columns (`ts`, `user_key` for the raw user
id, `session_id`, `query`, `product_id`, `position`, `event_type`; product text columns such
as `title` when the log carries them). Options:
- `event_type_map`: source value -> contract value (impression/click/add_to_cart/purchase);
- `event_type`: the type of every row when the log has no such column (e.g. `purchase`);
- `session_gap_minutes` (30): sessions are cut after this much inactivity when no session id
  is mapped;
- `products_path` and `products_mapping`: a separate catalogue file.
"""

from __future__ import annotations

import pandas as pd

from shopflow.core.config import Params
from shopflow.core.errors import SourceError
from shopflow.data.contract import EVENT_TYPES, Tables
from shopflow.data.sources.files import apply_mapping, read_table, require_rows
from shopflow.data.sources.judgments import PRODUCT_COLUMNS, with_product_ids

EVENT_COLUMNS = ("ts", "session_id", "user_key", "query", "product_id", "position", "event_type")


def sessionize(events: pd.DataFrame, gap_minutes: float) -> pd.Series:
    """Session ids from user + inactivity gaps, for logs that carry no session id."""
    ts = pd.to_datetime(events["ts"], errors="coerce", utc=True, format="mixed")
    order = pd.DataFrame({"user": events["user_key"].astype(str), "ts": ts}).sort_values(
        ["user", "ts"], kind="stable"
    )
    new = order["user"].ne(order["user"].shift()) | order["ts"].diff().gt(
        pd.Timedelta(minutes=gap_minutes)
    )
    number = new.cumsum()
    return (order["user"] + "#" + number.astype(str)).reindex(events.index)


def map_event_types(values: pd.Series, mapping: dict[str, str], origin: str) -> pd.Series:
    bad_targets = sorted(set(mapping.values()) - set(EVENT_TYPES))
    if bad_targets:
        raise SourceError(
            f"{origin}: ingest.options.event_type_map targets {bad_targets} are not event "
            f"types ({', '.join(EVENT_TYPES)})"
        )
    return values.map(lambda v: mapping.get(v, v) if isinstance(v, str) else v)


def read_catalogue(options: dict, encoding: str) -> pd.DataFrame:
    """The catalogue file `ingest.options.products_path`, mapped by `products_mapping`."""
    products = read_table(options["products_path"], encoding)
    return apply_mapping(
        products,
        options.get("products_mapping", {}),
        options["products_path"],
        (*PRODUCT_COLUMNS, "attributes", "first_seen"),
    )


def read(params: Params) -> Tables:
    cfg = params.ingest
    options = cfg.options
    origin = cfg.path
    log = read_table(cfg.path, cfg.encoding)
    log = apply_mapping(log, cfg.mapping, origin, (*EVENT_COLUMNS, *PRODUCT_COLUMNS[1:]))
    require_rows(log, origin, "event")
    if "event_type" not in log.columns:
        if "event_type" not in options:
            raise SourceError(
                f"{origin}: no event_type column; map one or set ingest.options.event_type"
            )
        log["event_type"] = options["event_type"]
    log["event_type"] = map_event_types(
        log["event_type"], options.get("event_type_map", {}), origin
    )
    if "session_id" not in log.columns and {"ts", "user_key"} <= set(log.columns):
        log["session_id"] = sessionize(log, float(options.get("session_gap_minutes", 30)))

    if "products_path" in options:
        products = read_catalogue(options, cfg.encoding)
    elif "title" in log.columns:
        log = with_product_ids(log, origin)
        products = log[[c for c in PRODUCT_COLUMNS if c in log.columns]]
        products = products.drop_duplicates("product_id")  # keeps the file's line numbers
    else:
        raise SourceError(
            f"{origin}: events need a catalogue: set ingest.options.products_path, "
            f"or map a product title column of the log as `title`"
        )
    events = log[[c for c in EVENT_COLUMNS if c in log.columns]]
    return Tables(products=products, events=events)
