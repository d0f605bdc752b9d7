"""The promotion gate: from measured comparisons to promote / reject, with every reason.

Pure functions over numbers the evaluate stage measured, so the rules can be read (and
tested) apart from the models; and `read_decision`, the one reader of the decision file
(promote and the Airflow DAG), which names what is wrong with a damaged one.
A challenger is promoted only when all of these hold:

1. the primary metric improves by at least `gate.min_gain`, with a one-sided paired
   permutation p-value below `gate.alpha`;
2. where interleaving was simulated (and `gate.require_interleaving`), the challenger wins
   more sessions than it loses, with the win rate's interval clear of 0.5;
3. no guardrail is worse than the champion by more than its margin. For per-query metrics
   (Recall@100, recommendation HitRate@10, every slice) "worse" must also be more than noise:
   the one-sided test that the challenger is worse by more than the margin has p < alpha, so
   a 15-query slice does not block a model on one unlucky query. Aggregate guardrails
   (coverage, brand exposure disparity, latency) are compared by their values.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from shopflow.core.config import GateConfig
from shopflow.core.errors import StageInputError


@dataclass(frozen=True)
class Guardrail:
    name: str
    challenger: float
    champion: float
    margin: float
    higher_is_better: bool = True
    p_worse: float | None = None  # one-sided p that the challenger is worse by > margin
    relative: bool = False  # margin as a share of the champion's value
    limit: float | None = None  # an absolute bound the challenger must respect too
    note: str = ""
    timed: bool = False  # measured on this machine (latency): the record keeps the figures apart

    @property
    def worse_by(self) -> float:
        gap = self.champion - self.challenger
        return gap if self.higher_is_better else -gap

    @property
    def allowed(self) -> float:
        return self.margin * abs(self.champion) if self.relative else self.margin

    def passed(self, alpha: float) -> bool:
        if self.limit is not None:
            over = (
                self.challenger < self.limit
                if self.higher_is_better
                else self.challenger > self.limit
            )
            if over:
                return False
        if self.worse_by <= self.allowed:
            return True
        return self.p_worse is not None and self.p_worse >= alpha

    def describe(self, alpha: float) -> str:
        direction = "" if self.higher_is_better else " (lower is better)"
        if self.timed:  # the figures go to the stage's timings, not to what DVC hashes
            margin = f"{self.margin:.0%} of the champion's" if self.relative else "no margin"
            text = f"{self.name}{direction}: timed on this machine, {margin}"
        else:
            text = (
                f"{self.name}{direction}: challenger {self.challenger:.4f} vs champion "
                f"{self.champion:.4f}, margin {self.allowed:.4f}"
            )
        if self.limit is not None:
            text += f", limit {self.limit:g}"
        if self.p_worse is not None:
            text += f", p(worse by more than the margin) = {self.p_worse:.3g}"
        if self.note:
            text += f" ({self.note})"
        if self.passed(alpha):
            return text
        if self.limit is not None and self.worse_by <= self.allowed:
            return f"{text}: over the limit"
        return (
            f"{text}: worse than the margin allows"
            if self.timed
            else (f"{text}: worse by {self.worse_by:.4f}")
        )


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


def decide(
    primary: dict, interleaving: dict | None, guardrails: list[Guardrail], gate: GateConfig
) -> dict:
    """The verdict and the checks behind it. `primary` is `significance.compare`'s output
    plus `metric`; `interleaving` is `InterleavingResult.as_dict()` or None."""
    checks = [
        Check(
            "primary gain",
            primary["difference"] >= gate.min_gain,
            f"{primary['metric']}: {primary['challenger']:.4f} vs {primary['champion']:.4f}, "
            f"difference {primary['difference']:+.4f} (needs >= {gate.min_gain}), "
            f"{primary.get('confidence', 0.95):.0%} CI [{primary['ci_low']:+.4f}, "
            f"{primary['ci_high']:+.4f}]",
        ),
        Check(
            "significance",
            primary["p_value"] < gate.alpha,
            f"one-sided paired permutation p = {primary['p_value']:.3g} (needs < {gate.alpha}) "
            f"over {primary['n']} paired cases",
        ),
    ]
    if interleaving is None:
        checks.append(Check("interleaving", True, "not simulated (no judged test queries)"))
    else:
        won = interleaving["win_rate"] > 0.5 and interleaving["ci_low"] > 0.5
        detail = (
            f"win rate {interleaving['win_rate']:.3f} [{interleaving['ci_low']:.3f}, "
            f"{interleaving['ci_high']:.3f}] over {interleaving['wins'] + interleaving['losses']} "
            f"decided of {interleaving['sessions']} sessions ({interleaving['click_model']})"
        )
        if not gate.require_interleaving:
            detail += "; not required (gate.require_interleaving: false)"
        checks.append(Check("interleaving", won or not gate.require_interleaving, detail))
    for rail in guardrails:
        checks.append(
            Check(f"guardrail {rail.name}", rail.passed(gate.alpha), rail.describe(gate.alpha))
        )
    failed = [c for c in checks if not c.passed]
    return {
        "verdict": "reject" if failed else "promote",
        "reasons": [f"{c.name}: {c.detail}" for c in failed]
        or ["every check passed: " + ", ".join(c.name for c in checks)],
        "checks": [asdict(c) for c in checks],
        "guardrails": [_record(r, gate.alpha) for r in guardrails],
    }


def _record(rail: Guardrail, alpha: float) -> dict:
    """A guardrail as the decision records it; a timed one's figures under `measured`, which
    the evaluate stage keeps with its timings."""
    record = {**asdict(rail), "worse_by": rail.worse_by, "allowed": rail.allowed}
    if rail.timed:
        figures = ("challenger", "champion", "worse_by", "allowed")
        record["measured"] = {key: record.pop(key) for key in figures}
    return record | {"passed": rail.passed(alpha)}


REQUIRED = ("verdict", "reasons", "champion", "metrics", "primary")


def read_decision(path: Path) -> dict:
    """The evaluate stage's decision, or an error naming what is wrong with the file."""
    if not path.exists():
        raise StageInputError(f"{path}: no decision; run the evaluate stage first")
    try:
        decision = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise StageInputError(f"{path}: not JSON ({exc}); re-run the evaluate stage") from None
    missing = [k for k in REQUIRED if not isinstance(decision, dict) or k not in decision]
    if missing:
        raise StageInputError(f"{path}: not a decision of the evaluate stage (no {missing})")
    if decision["verdict"] not in ("promote", "reject"):
        raise StageInputError(f"{path}: verdict {decision['verdict']!r} is not promote or reject")
    if not {"entry", "kind", "label"} <= set(decision["champion"]):
        raise StageInputError(f"{path}: champion lacks entry, kind or label")
    return decision
