"""The branches of a night: retrain tonight? promote? Airflow-free and testable.

`decide_retrain` and `decide_promote` read the stages' own verdicts (`reports/drift.json`,
`reports/decision.json`) and the registry: the stages decide, the DAG only branches. A
person may force either through the run's conf (`force_retrain`, `force_promote_reason`).
"""

from __future__ import annotations

import datetime as dt
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from shopflow.core.config import Params

if TYPE_CHECKING:  # the registry pulls in the model store (torch): DAG files parse without it
    from shopflow.release.registry import Entry


@dataclass(frozen=True)
class Decision:
    """A branch taken: whether to go on, why, and an alert to send (if any)."""

    go: bool
    reasons: list[str]
    alert: str | None = None
    facts: dict = field(default_factory=dict)


def _days(span: str) -> tuple[dt.date, dt.date]:
    first, _, last = span.partition("..")
    return dt.date.fromisoformat(first), dt.date.fromisoformat(last or first)


def decide_retrain(
    drift: dict, champion: Entry | None, params: Params, *, forced: bool = False
) -> Decision:
    """Train tonight? On the drift stage's verdict, the champion's age, or a forced run.

    The champion's age is in data days, not wall-clock days: from the last day it was trained
    on (its drift reference) to the last training day tonight. So a backfill of an old night
    sees the champion as young as it was then, and a paused scheduler does not make it old.
    """
    from shopflow.data.splits import training_days

    verdict = drift.get("decision")
    max_age = params.airflow.max_model_age_days
    tonight_end = training_days(params)[-1]
    facts: dict = {"drift": verdict, "forced": forced, "max_model_age_days": max_age}
    alert = None
    if verdict == "alert":
        alert = (
            "drift alert: "
            + "; ".join(drift.get("reasons", []))
            + (f" (report: {drift.get('report')})")
        )
    if forced:
        return Decision(True, ["forced by the run's conf (force_retrain)"], alert, facts)
    if verdict == "alert":
        why = (
            "drift says alert: the data looks broken; the champion stays until someone "
            "looks (force_retrain=true overrides)"
        )
        return Decision(False, [why], alert, facts)
    if champion is None or champion.kind == "baseline":
        return Decision(True, ["no trained champion yet (the baseline serves)"], None, facts)
    reference = drift.get("reference", {})
    if reference.get("source", "").startswith("tonight") or not reference.get("days"):
        # A bundle saved before the drift stage carries no training window: its promotion
        # day stands in (a wall-clock date: in a backfill it can lie after tonight, then 0).
        trained_until = dt.date.fromisoformat(champion.at[:10])
        facts["age_from"] = "promotion date (the champion's bundle has no drift reference)"
    else:
        trained_until = _days(reference["days"])[1]
    age = max((tonight_end - trained_until).days, 0)
    facts |= {
        "champion": champion.version,
        "champion_trained_until": str(trained_until),
        "champion_age_days": age,
    }
    if verdict == "retrain":
        return Decision(True, ["drift: " + "; ".join(drift.get("reasons", []))], None, facts)
    old = f"the champion's data is {age} day{'s' if age != 1 else ''} old"
    if age >= max_age:
        return Decision(True, [f"{old} (max_model_age_days {max_age})"], None, facts)
    why = f"drift says {verdict} and {old} (< {max_age}): nothing to retrain for"
    return Decision(False, [why], None, facts)


def decide_promote(decision: dict, forced: ForcedPromotion | None = None) -> Decision:
    """Promote on the gate's `promote` verdict (`gate.read_decision` has checked the file; the
    promote stage re-checks staleness), or when a person forced it in the run's conf."""
    verdict = decision["verdict"]
    reasons = [f"gate verdict {verdict}", *decision["reasons"]]
    if forced is not None:
        reasons = [f"forced by {forced.by}: {forced.reason}", *reasons]
    return Decision(verdict == "promote" or forced is not None, reasons, None, {"verdict": verdict})


@dataclass(frozen=True)
class ForcedPromotion:
    """The run conf's `force_promote_reason` (and `force_promote_by`): promote whatever the
    gate says, through `shopflow promote --force`."""

    reason: str
    by: str

    @classmethod
    def from_conf(cls, conf: dict) -> ForcedPromotion | None:
        reason = (conf.get("force_promote_reason") or "").strip()
        if not reason:
            return None
        return cls(reason, (conf.get("force_promote_by") or "").strip() or "airflow run conf")

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "shopflow", "promote", "--force",
            "--reason", self.reason, "--by", self.by,
        ]  # fmt: skip
