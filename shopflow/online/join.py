"""The service's logs as evidence: impressions joined to their events, the rest quarantined.

Every record is counted once at every hop. An event is *attributed* when its impression is
in the log, it happened no earlier than the impression and within `attribution_minutes`
after it, and its product is the one shown at its position. Otherwise it is *quarantined*
with the reason, never silently dropped and never used: `unknown_impression`,
`before_impression`, `after_window`, `not_shown`. An impression whose logged arm is not the
arm its unit hashes to (`arm_mismatch`, a misrouted or tampered record) is quarantined with
its events. Duplicates (the same `event_id` or `impression_id` twice: a retried batch, a
replayed file) keep their first copy and are counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from shopflow.online.experiment import ExperimentSpec, assign

IMPRESSION_COLUMNS = ["impression_id", "timestamp", "unit", "arm", "experiment", "items"]
EVENT_COLUMNS = ["event_id", "impression_id", "type", "product_id", "position", "timestamp"]


@dataclass
class Joined:
    impressions: pd.DataFrame  # kept impressions (one row each)
    events: pd.DataFrame  # attributed events with their impression's unit, arm and item
    quarantine: pd.DataFrame  # rejected records: kind, id, reason
    counts: dict = field(default_factory=dict)


def _utc(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values, utc=True, format="ISO8601")


def join_logs(
    impressions: pd.DataFrame,
    events: pd.DataFrame,
    attribution_minutes: float,
    spec: ExperimentSpec | None = None,
) -> Joined:
    """Attributed events and quarantined records, with counts that add up at every step."""
    impressions = impressions if len(impressions) else pd.DataFrame(columns=IMPRESSION_COLUMNS)
    events = events if len(events) else pd.DataFrame(columns=EVENT_COLUMNS)
    counts: dict = {"impressions_read": len(impressions), "events_read": len(events)}
    quarantined: list[pd.DataFrame] = []

    imps = impressions.drop_duplicates("impression_id", keep="first").copy()
    counts["impression_duplicates"] = len(impressions) - len(imps)
    imps["timestamp"] = (
        _utc(imps["timestamp"]) if len(imps) else pd.Series(dtype="datetime64[ns, UTC]")
    )
    if spec is not None and len(imps):
        in_spec = imps["experiment"] == spec.id
        expected = [
            assign(spec, unit).arm if ok else arm
            for unit, arm, ok in zip(imps["unit"], imps["arm"], in_spec, strict=True)
        ]
        wrong = np.asarray(imps["arm"].to_numpy() != np.array(expected, dtype=object))
        quarantined.append(
            pd.DataFrame(
                {
                    "kind": "impression",
                    "id": imps.loc[wrong, "impression_id"],
                    "reason": "arm_mismatch",
                }
            )
        )
        bad_ids = set(imps.loc[wrong, "impression_id"])
        imps = imps.loc[~wrong]
    else:
        bad_ids = set()
    counts["impressions_quarantined"] = len(bad_ids)
    counts["impressions_kept"] = len(imps)

    evs = events.sort_values("received_at" if "received_at" in events else "timestamp")
    evs = evs.drop_duplicates("event_id", keep="first").copy()
    counts["event_duplicates"] = len(events) - len(evs)
    evs["timestamp"] = (
        _utc(evs["timestamp"]) if len(evs) else pd.Series(dtype="datetime64[ns, UTC]")
    )

    shown = imps.set_index("impression_id")
    at = (
        evs["impression_id"].map(shown["timestamp"])
        if len(shown)
        else pd.Series(pd.NaT, index=evs.index, dtype="datetime64[ns, UTC]")
    )
    items = (
        evs["impression_id"].map(shown["items"])
        if len(shown)
        else pd.Series(None, index=evs.index, dtype=object)
    )
    reason = pd.Series(None, index=evs.index, dtype=object)
    reason[evs["impression_id"].isin(bad_ids)] = "arm_mismatch"
    reason[reason.isna() & at.isna()] = "unknown_impression"
    window = pd.Timedelta(minutes=attribution_minutes)
    known = reason.isna()
    reason[known & (evs["timestamp"] < at)] = "before_impression"
    reason[reason.isna() & (evs["timestamp"] > at + window)] = "after_window"

    def shown_item(row_items, position, product):
        if not isinstance(row_items, list) or position > len(row_items):
            return None
        item = row_items[position - 1]
        return item if item["product_id"] == product else None

    item = [
        shown_item(i, int(p), pid) if pd.isna(r) else None
        for i, p, pid, r in zip(items, evs["position"], evs["product_id"], reason, strict=True)
    ]
    reason[reason.isna() & pd.Series([x is None for x in item], index=evs.index)] = "not_shown"
    ok = reason.isna()
    quarantined.append(
        pd.DataFrame({"kind": "event", "id": evs.loc[~ok, "event_id"], "reason": reason[~ok]})
    )
    attributed = evs.loc[ok].copy()
    kept: list[dict] = [x for x, good in zip(item, ok, strict=True) if good and x is not None]
    attributed["team"] = [x["team"] for x in kept]
    attributed["propensity"] = [x["propensity"] for x in kept]
    attributed["ranked_position"] = [x["ranked_position"] for x in kept]
    for column in ("unit", "arm", "experiment", "surface", "query"):
        if column in shown:
            attributed[column] = attributed["impression_id"].map(shown[column])
    quarantine = pd.concat(quarantined, ignore_index=True) if quarantined else pd.DataFrame()
    counts["events_attributed"] = len(attributed)
    counts["events_quarantined"] = int((~ok).sum())
    counts["quarantine_reasons"] = (
        quarantine.groupby(["kind", "reason"]).size().rename("n").reset_index().to_dict("records")
        if len(quarantine)
        else []
    )
    assert (
        counts["events_attributed"] + counts["events_quarantined"] + counts["event_duplicates"]
        == counts["events_read"]
    ), counts
    return Joined(imps, attributed, quarantine, counts)
