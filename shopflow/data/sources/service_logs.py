"""The service's own logs as a source: what shopflow showed and what shoppers did with it.

`ingest.path` is the files sink's folder (`online.log.folder` of the serving machine, e.g. a
mounted volume) or, with `ingest.options.sink: postgres`, ignored in favour of the DSN in the
variable `ingest.options.dsn_env` names. The catalogue comes from `ingest.options.products_path`
(and `products_mapping`), as for `events`. `ingest.options.experiment` may name the running
experiment's file, so impressions whose arm is not the arm their unit hashes to are caught.

Impressions and events are joined (`online.join`) within `online.attribution_minutes`; what does
not join is quarantined with its reason, counted in the manifest's notes and written next to
the tables by ingest (never in the training data). Each kept impression becomes one
`impression` row per shown product (its position, the arm), each attributed event a row of its
type at its impression's position. Ids are the service's keyed pseudonyms already
(`Tables.pseudonymous`), so they still match the customers' keys in the models.

Position bias is measured, not modelled: the service swaps its top result with a random lower
position in a small share of impressions (`online.exploration_rate`), so the click-through of
the same (first-ranked) products at position j against position 1 is θ_j / θ_1 (Joachims et
al., WSDM 2017). Positions with fewer than `ingest.options.min_swaps` (default 30) swapped
impressions get no value, and training falls back to its EM estimate there.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from shopflow.core.config import Params
from shopflow.core.errors import SourceError
from shopflow.data.contract import Tables
from shopflow.data.sources.events import read_catalogue
from shopflow.online.experiment import read_experiment
from shopflow.online.join import Joined, join_logs
from shopflow.online.sequential import srm_p_value
from shopflow.online.sinks import read_sink

log = logging.getLogger(__name__)
MIN_SWAPS = 30


def read_logs(params: Params) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """(impressions, events, torn lines) from the configured sink."""
    options = params.ingest.options
    sink, folder = options.get("sink", "files"), params.ingest.path
    if sink != "postgres" and not Path(folder).is_dir():
        raise SourceError(f"{folder}: no service log folder (ingest.path of service_logs)")
    impressions, events, torn = read_sink(
        sink,
        folder,
        options.get("dsn_env", params.online.log.dsn_env),
        "ingest.options.sink",
    )
    if impressions.empty:
        raise SourceError(f"{folder}: the service logged no impressions")
    return impressions, events, torn


def examination(
    impressions: pd.DataFrame, events: pd.DataFrame, min_swaps: int
) -> dict[int, float]:
    """θ_j / θ_1 per position from the randomised swaps (positions with enough swaps only)."""
    if impressions.empty or "explored" not in impressions:
        return {}
    clicked = set(
        zip(
            events.loc[events["type"] == "click", "impression_id"],
            events.loc[events["type"] == "click", "product_id"],
            strict=True,
        )
    )
    rows = []
    for imp_id, explored, items in zip(
        impressions["impression_id"], impressions["explored"], impressions["items"], strict=True
    ):
        top = next((i for i in items if i["ranked_position"] == 1), None)
        if top is not None:
            rows.append((top["position"], bool(explored), (imp_id, top["product_id"]) in clicked))
    table = pd.DataFrame(rows, columns=["position", "explored", "clicked"])
    at_top = table[(table["position"] == 1) & ~table["explored"]]["clicked"]
    swapped = table[table["explored"]].groupby("position")["clicked"].agg(["mean", "size"])
    if at_top.empty or at_top.mean() == 0:
        return {}
    theta = {1: 1.0}
    for position, row in swapped.iterrows():
        if row["size"] >= min_swaps:
            theta[int(position)] = float(np.clip(row["mean"] / at_top.mean(), 1e-3, 1.0))
    return theta


def contract_events(joined: Joined, theta: dict[int, float]) -> pd.DataFrame:
    """Impression rows (one per shown product) and attributed event rows, contract columns."""
    imps = joined.impressions.dropna(subset=["unit"])
    shown = imps[["impression_id", "timestamp", "unit", "query", "arm", "items"]].explode("items")
    shown = shown.dropna(subset=["items"])
    impression_rows = pd.DataFrame(
        {
            "ts": shown["timestamp"].to_numpy(),
            "session_id": shown["unit"].to_numpy(),
            "user_key": shown["unit"].to_numpy(),
            "query": shown["query"].to_numpy(),
            "product_id": [i["product_id"] for i in shown["items"]],
            "position": [i["position"] for i in shown["items"]],
            "event_type": "impression",
            "impression_id": shown["impression_id"].to_numpy(),
            "arm": shown["arm"].to_numpy(),
        }
    )
    events = joined.events[joined.events["unit"].notna()]
    event_rows = pd.DataFrame(
        {
            "ts": events["timestamp"].to_numpy(),
            "session_id": events["unit"].to_numpy(),
            "user_key": events["unit"].to_numpy(),
            "query": events["query"].to_numpy(),
            "product_id": events["product_id"].to_numpy(),
            "position": events["position"].to_numpy(),
            "event_type": events["type"].to_numpy(),
            "impression_id": events["impression_id"].to_numpy(),
            "arm": events["arm"].to_numpy(),
        }
    )
    rows = pd.concat([impression_rows, event_rows], ignore_index=True)
    rows["propensity"] = rows["position"].map(theta).astype("float64")
    return rows


def arm_balance(joined: Joined) -> dict:
    """Units per A/B arm and the sample-ratio mismatch p-value (50/50 by design)."""
    imps = joined.impressions
    units = imps[imps["arm"].isin(["champion", "challenger"])].drop_duplicates("unit")
    observed = [int((units["arm"] == a).sum()) for a in ("champion", "challenger")]
    return {"units": observed, "p_value": srm_p_value(observed, [0.5, 0.5])}


def read(params: Params) -> Tables:
    options = params.ingest.options
    if "products_path" not in options:
        raise SourceError(
            "service_logs: set ingest.options.products_path (the catalogue the service serves)"
        )
    impressions, events, torn = read_logs(params)
    spec = read_experiment(options["experiment"]) if options.get("experiment") else None
    joined = join_logs(impressions, events, params.online.attribution_minutes, spec)
    theta = examination(joined.impressions, joined.events, int(options.get("min_swaps", MIN_SWAPS)))
    rows = contract_events(joined, theta)
    dropped_no_unit = int(joined.impressions["unit"].isna().sum())
    counts = {**joined.counts, "torn_lines": torn, "impressions_without_unit": dropped_no_unit}
    log.info(
        "service logs: %d impressions (%d duplicates, %d quarantined, %d without a unit), "
        "%d events: %d attributed, %d quarantined, %d duplicates; examination measured at "
        "positions %s",
        counts["impressions_read"],
        counts["impression_duplicates"],
        counts["impressions_quarantined"],
        dropped_no_unit,
        counts["events_read"],
        counts["events_attributed"],
        counts["events_quarantined"],
        counts["event_duplicates"],
        sorted(theta),
    )
    return Tables(
        products=read_catalogue(options, params.ingest.encoding),
        events=rows,
        notes={
            "service_logs": counts,
            "examination": {str(k): round(v, 4) for k, v in sorted(theta.items())},
            "arms": arm_balance(joined),
            "quarantine": joined.quarantine.to_dict("records")[:1000],
        },
        pseudonymous=True,
    )
