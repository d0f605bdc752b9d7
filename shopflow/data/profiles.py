"""What a shop knows about each customer at a point in time, and what recommendations leave
out: the one definition offline evaluation and the service share.

- `interactions`: every click, add-to-cart and purchase with its split and weight (click 1,
  add to cart 2, purchase 3), over the whole history horizon (the ingest window; with
  `prepare.train_days` the days before the training window are split `history`).
- `user_items`: per (customer, product) what the customer did with it before a cutoff:
  purchases, weighted interactions, last time. The service holds it for the end of the data
  (the model's snapshot); the evaluation builds it at the start of the valid or test split,
  so a recommendation list is scored with exactly what the service would have known.
- `excluded`: what a list may not contain under `recommend.exclude`: nothing, what the
  customer bought, or everything they interacted with.
- `purchase_targets`: the held-out task: each distinct product a known customer bought in a
  split, flagged `rebuy` when they had bought it before (the "buy again" task) or not (the
  "discover" task).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pandas as pd

from shopflow.core.config import RecommendConfig
from shopflow.core.errors import ConfigError

WEIGHTS = {"click": 1.0, "add_to_cart": 2.0, "purchase": 3.0}
EXCLUDE_RULES = ("none", "purchased", "interacted")


def interactions(events: pd.DataFrame) -> pd.DataFrame:
    """Clicks, add-to-carts and purchases (events with a `split`), oldest first."""
    acts = events[events["event_type"].isin(list(WEIGHTS))]
    acts = acts.sort_values(["ts", "user_key", "product_id"], kind="stable")
    out = acts[["split", "ts", "user_key", "product_id", "event_type"]].reset_index(drop=True)
    out["weight"] = out["event_type"].map(WEIGHTS).astype("float32")
    return out


def before(table: pd.DataFrame, cutoff: pd.Timestamp | None) -> pd.DataFrame:
    """The rows of `table` (with `ts`) strictly before `cutoff` (all of them when None)."""
    return table if cutoff is None else table[table["ts"] < cutoff]


def user_items(acts: pd.DataFrame) -> pd.DataFrame:
    """Per (customer, product): purchases, the summed interaction weight, the first and the
    last time."""
    if acts.empty:
        return pd.DataFrame(
            {
                "user_key": pd.Series(dtype=str),
                "product_id": pd.Series(dtype=str),
                "purchases": pd.Series(dtype="int32"),
                "weight": pd.Series(dtype="float32"),
                "first_ts": pd.Series(dtype="datetime64[ns, UTC]"),
                "last_ts": pd.Series(dtype="datetime64[ns, UTC]"),
            }
        )
    grouped = acts.assign(bought=(acts["event_type"] == "purchase").astype("int32")).groupby(
        ["user_key", "product_id"], sort=True
    )
    out = grouped.agg(
        purchases=("bought", "sum"),
        weight=("weight", "sum"),
        first_ts=("ts", "min"),
        last_ts=("ts", "max"),
    ).reset_index()
    out["purchases"] = out["purchases"].astype("int32")
    out["weight"] = out["weight"].astype("float32")
    return out


def excluded(purchased: Iterable[str], interacted: Iterable[str], rule: str) -> set[str]:
    """What a customer's recommendations leave out under `rule` (`recommend.exclude`)."""
    if rule == "none":
        return set()
    if rule == "purchased":
        return set(purchased)
    if rule == "interacted":
        return set(interacted) | set(purchased)
    raise ConfigError(f"recommend.exclude: {rule!r} is not one of {', '.join(EXCLUDE_RULES)}")


def purchase_targets(
    acts: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp | None
) -> pd.DataFrame:
    """Distinct (customer, product) bought in [start, end) by customers known before `start`,
    each flagged `rebuy` when the customer had bought the product before `start`."""
    earlier = acts[acts["ts"] < start]
    later = acts[(acts["ts"] >= start) & ((acts["ts"] < end) if end is not None else True)]
    bought = later[later["event_type"] == "purchase"].drop_duplicates(["user_key", "product_id"])
    known = bought[bought["user_key"].isin(set(earlier["user_key"]))]
    before_pairs = set(
        earlier.loc[earlier["event_type"] == "purchase", ["user_key", "product_id"]].itertuples(
            index=False, name=None
        )
    )
    rebuy = [
        pair in before_pairs
        for pair in known[["user_key", "product_id"]].itertuples(index=False, name=None)
    ]
    return (
        known[["user_key", "product_id"]]
        .assign(rebuy=rebuy)
        .sort_values(["user_key", "product_id"], kind="stable")
        .reset_index(drop=True)
    )


def rebuy_share(targets: pd.DataFrame) -> float:
    """Share of held-out purchases that re-buy a product the customer bought before."""
    return float(targets["rebuy"].mean()) if len(targets) else 0.0


def exclusion_policy(
    acts: pd.DataFrame, starts: Mapping[str, pd.Timestamp], cfg: RecommendConfig
) -> dict:
    """The rule recommendations follow (`recommend.exclude`, auto resolved on the valid
    split's re-buy share) and the shares it was decided on."""
    shares = {}
    for split, end in (("valid", starts.get("test")), ("test", None)):
        if split in starts:
            targets = purchase_targets(acts, starts[split], end)
            if len(targets):
                shares[split] = round(rebuy_share(targets), 4)
    rule, reason = cfg.exclude, f"recommend.exclude: {cfg.exclude}"
    if rule == "auto":
        share = shares.get("valid")
        if share is None:
            rule, reason = "purchased", "no valid purchases to measure re-buying on"
        elif share >= cfg.rebuy_share:
            rule = "none"
            reason = (
                f"{share:.1%} of the valid purchases re-buy a product (>= recommend.rebuy_share "
                f"{cfg.rebuy_share:g}): lists may hold what the customer bought"
            )
        else:
            rule = "purchased"
            reason = (
                f"{share:.1%} of the valid purchases re-buy a product (< recommend.rebuy_share "
                f"{cfg.rebuy_share:g}): lists leave out what the customer bought"
            )
    return {"exclude": rule, "reason": reason, "rebuy_share": shares}
