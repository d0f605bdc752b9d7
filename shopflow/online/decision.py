"""The nightly online decision: promote the challenger, keep testing, or stop and roll back.

Read from the joined logs of the running experiment (`join.join_logs`):
- `interleave`: each unit's preference (clicks on the challenger's items minus the
  champion's, over all its interleaved impressions) → +1 / -1; units in order of first
  appearance feed the mSPRT. Significant and positive: promote; significant and negative:
  stop.
- `ab`: units of the two arms are paired in order of arrival and the differences of their
  click-through (clicked impressions / impressions) feed the mSPRT, variance estimated.
- `shadow`: nothing is shown, so there is no preference: once `min_units` units were shadowed
  and the guardrails hold, the experiment is ready to move on to interleaving.
Guardrails stop any mode: p95 latency ratio, zero-result increase, add-to-cart per impression
(A/B), sample-ratio mismatch. An experiment undecided after `max_days` stops (the champion
stays).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from shopflow.core.config import OnlineDecisionConfig
from shopflow.online.experiment import CHALLENGER, CHAMPION, ExperimentSpec
from shopflow.online.join import Joined
from shopflow.online.sequential import msprt, srm_p_value, unit_preferences

PROMOTE, CONTINUE, STOP, ADVANCE = "promote", "continue", "stop", "advance_to_interleave"


def _p95(values: pd.Series) -> float | None:
    values = pd.to_numeric(values, errors="coerce").dropna()
    return float(np.percentile(values, 95)) if len(values) else None


def guardrail(value: float | None, limit: float, ok: bool, **measured: object) -> dict:
    """One guardrail's verdict: its value (None: not measurable yet, which does not fail)."""
    return {**measured, "value": value, "limit": limit, "ok": ok}


def guardrails(joined: Joined, spec: ExperimentSpec, cfg: OnlineDecisionConfig) -> dict:
    """Each guardrail's value, limit and verdict (None: not measurable in this mode)."""
    imps = joined.impressions
    ours = imps[imps["experiment"] == spec.id] if len(imps) else imps
    inside = ours[ours["arm"] != "outside"] if len(ours) else ours
    out: dict = {}
    if spec.mode == "ab":
        champ = inside[inside["arm"] == CHAMPION]
        chall = inside[inside["arm"] == CHALLENGER]
        lat = (_p95(champ["latency_ms"]), _p95(chall["latency_ms"]))
        zero = (
            float((champ["items"].map(len) == 0).mean()) if len(champ) else None,
            float((chall["items"].map(len) == 0).mean()) if len(chall) else None,
        )
        carts = joined.events[joined.events["type"] == "add_to_cart"]
        per_imp = [
            len(carts[carts["arm"] == arm]) / max(len(rows), 1)
            for arm, rows in ((CHAMPION, champ), (CHALLENGER, chall))
        ]
        ratio = per_imp[1] / per_imp[0] if per_imp[0] > 0 else None
        out["cart_ratio"] = guardrail(
            ratio, cfg.min_cart_ratio, ratio is None or ratio >= cfg.min_cart_ratio
        )
        units = inside.drop_duplicates("unit")
        observed = [int((units["arm"] == CHAMPION).sum()), int((units["arm"] == CHALLENGER).sum())]
        srm = srm_p_value(observed, [0.5, 0.5])
    else:
        lat = (
            _p95(inside.get("champion_latency_ms", pd.Series())),
            _p95(inside.get("challenger_latency_ms", pd.Series())),
        )
        zero = (
            float((inside["champion_results"] == 0).mean()) if len(inside) else None,
            float((inside["challenger_results"] == 0).mean()) if len(inside) else None,
        )
        units = ours.dropna(subset=["unit"]).drop_duplicates("unit")
        observed = [int((units["arm"] != "outside").sum()), int((units["arm"] == "outside").sum())]
        srm = srm_p_value(observed, [spec.share, 1 - spec.share]) if spec.share < 1 else 1.0
    ratio = lat[1] / lat[0] if lat[0] and lat[1] is not None else None
    out["p95_latency_ratio"] = guardrail(
        ratio,
        cfg.max_p95_ratio,
        ratio is None or ratio <= cfg.max_p95_ratio,
        champion_ms=lat[0],
        challenger_ms=lat[1],
    )
    increase = zero[1] - zero[0] if zero[0] is not None and zero[1] is not None else None
    out["zero_result_increase"] = guardrail(
        increase,
        cfg.max_zero_result_increase,
        increase is None or increase <= cfg.max_zero_result_increase,
        champion=zero[0],
        challenger=zero[1],
    )
    out["sample_ratio"] = guardrail(srm, cfg.srm_p, srm >= cfg.srm_p, units=observed)
    asked = (
        inside[inside["arm"].isin(["shadowed", "interleaved", CHALLENGER])]
        if len(inside)
        else inside
    )
    failed = (
        int(asked["challenger_error"].notna().sum())
        if len(asked) and "challenger_error" in asked
        else 0
    )
    rate = failed / len(asked) if len(asked) else None
    out["challenger_error_rate"] = guardrail(
        rate, cfg.max_error_rate, rate is None or rate <= cfg.max_error_rate, failed=failed
    )
    return out


def interleaving_credit(joined: Joined, spec: ExperimentSpec) -> pd.DataFrame:
    """Per unit, in order of first appearance: its clicks on each team's items."""
    imps = joined.impressions
    mine = imps[(imps["experiment"] == spec.id) & (imps["arm"] == "interleaved")]
    first = mine.groupby("unit")["timestamp"].min().sort_values()
    clicks = joined.events[
        (joined.events["type"] == "click") & joined.events["unit"].isin(first.index)
    ]
    table = pd.crosstab(clicks["unit"], clicks["team"]).reindex(first.index, fill_value=0)
    for team in (CHALLENGER, CHAMPION):
        if team not in table:
            table[team] = 0
    table["credit"] = table[CHALLENGER] - table[CHAMPION]
    return table


def ab_differences(joined: Joined, spec: ExperimentSpec) -> np.ndarray:
    """Paired differences of per-unit click-through, challenger minus champion."""
    imps = joined.impressions
    mine = imps[(imps["experiment"] == spec.id) & imps["arm"].isin([CHAMPION, CHALLENGER])]
    clicked = set(joined.events.loc[joined.events["type"] == "click", "impression_id"])
    mine = mine.assign(clicked=mine["impression_id"].isin(clicked))
    per_unit = mine.groupby(["arm", "unit"]).agg(
        ctr=("clicked", "mean"), first=("timestamp", "min")
    )
    arms = [
        per_unit.loc[a].sort_values("first")["ctr"].to_numpy()
        if a in per_unit.index.get_level_values(0)
        else np.array([])
        for a in (CHALLENGER, CHAMPION)
    ]
    n = min(len(arms[0]), len(arms[1]))
    return arms[0][:n] - arms[1][:n]


def decide(
    joined: Joined, spec: ExperimentSpec, cfg: OnlineDecisionConfig, now: dt.datetime
) -> dict:
    """The night's decision and everything it rests on."""
    if joined.impressions.empty:  # nothing logged yet (or the sink is not where we read)
        days = (now - dt.datetime.fromisoformat(spec.started_at)).total_seconds() / 86400
        return {
            "experiment": spec.id,
            "mode": spec.mode,
            "champion": spec.champion,
            "challenger": spec.challenger,
            "days": round(days, 2),
            "guardrails": {},
            "alpha": cfg.alpha,
            "tau": cfg.tau,
            "units": 0,
            "decision": STOP if days >= cfg.max_days else CONTINUE,
            "reasons": ["no impression of this experiment was logged"],
        }
    checks = guardrails(joined, spec, cfg)
    failed = [name for name, g in checks.items() if not g["ok"]]
    started = dt.datetime.fromisoformat(spec.started_at)
    days = (now - started).total_seconds() / 86400
    result: dict = {
        "experiment": spec.id,
        "mode": spec.mode,
        "champion": spec.champion,
        "challenger": spec.challenger,
        "days": round(days, 2),
        "guardrails": checks,
        "alpha": cfg.alpha,
        "tau": cfg.tau,
    }
    if spec.mode == "shadow":
        units = (
            joined.impressions.loc[joined.impressions["arm"] == "shadowed", "unit"].nunique()
            if len(joined.impressions)
            else 0
        )
        result["units"] = int(units)
        verdict = STOP if failed else ADVANCE if units >= cfg.min_units else CONTINUE
    else:
        if spec.mode == "interleave":
            credit = interleaving_credit(joined, spec)
            observations = unit_preferences(credit["credit"].to_numpy())
            test = msprt(observations, cfg.tau, 1.0)
            result["units"] = len(credit)
            result["preference"] = {**test.as_dict(), "win_rate": (1 + test.mean) / 2}
        else:
            observations = ab_differences(joined, spec)
            variance = float(np.var(observations)) if len(observations) > 1 else 1.0
            test = msprt(observations, cfg.tau * max(np.sqrt(variance), 1e-6), max(variance, 1e-9))
            result["units"] = 2 * len(observations)
            result["preference"] = test.as_dict()
        decided = test.n >= cfg.min_units and test.p_value <= cfg.alpha
        if failed:
            verdict = STOP
        elif decided:
            verdict = PROMOTE if test.mean > 0 else STOP
        else:
            verdict = STOP if days >= cfg.max_days else CONTINUE
    reasons = [f"guardrail {name} failed" for name in failed]
    if verdict == STOP and not failed:
        reasons.append(
            "the champion is better"
            if "preference" in result and result["preference"]["p_value"] <= cfg.alpha
            else f"undecided after {cfg.max_days} days"
        )
    result["decision"] = verdict
    result["reasons"] = reasons
    return result
