"""What one request shows under the running experiment, and the impression record it logs.

Pure functions of the two models' lists, the unit's assignment and a random stream: the
service computes the lists, this module decides what is shown and writes down everything a
later analysis needs to undo the randomisation (`Impression`).

Exploration: in a share `exploration_rate` of all impressions (experiment or not), the top
result swaps places with one drawn uniformly from positions 2..n (Joachims et al., WSDM 2017).
Each shown item's propensity is the probability that the logging policy put it where it was
shown, given the list it was going to show; clicks on swapped pairs measure how much the eye
drops from position 1 to position j without any click-model assumption.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from shopflow.online.experiment import CHALLENGER, CHAMPION, Assignment, ExperimentSpec
from shopflow.online.team_draft import common_prefix, team_draft

SESSION_PREFIX = "s_"
BOTH = "both"  # an interleaved item in the rankings' common prefix: its clicks prefer no one


@dataclass(frozen=True)
class Ranked:
    """One model's answer: product ids best first with their scores."""

    product_ids: Sequence[str]
    scores: Sequence[float]
    version: str
    latency_ms: float


@dataclass
class ShownItem:
    product_id: str
    position: int  # 1-based, as shown
    score: float
    team: str | None  # the model that placed it (interleaving, A/B), "both"; None outside
    ranked_position: int  # where the list before exploration had it
    propensity: float  # P(this item at this position | the list before exploration)


@dataclass
class Impression:
    """One answer as shown: the server-side log record (docs/online.md, field by field)."""

    impression_id: str
    timestamp: str
    surface: str
    unit: str | None  # the customer's user_key or the pseudonymised session
    unit_type: str  # user | session | none
    query: str | None
    k: int
    experiment: str | None
    mode: str | None
    arm: str
    bucket: int
    champion_version: str
    challenger_version: str | None
    items: list[ShownItem]
    explored: bool
    swap_position: int | None
    latency_ms: float
    champion_latency_ms: float | None = None
    challenger_latency_ms: float | None = None
    shadow_product_ids: list[str] = field(default_factory=list)
    champion_results: int | None = None  # products each model found (zero-result guardrail)
    challenger_results: int | None = None
    challenger_error: str | None = None  # the challenger failed: the champion answered
    kind: str = "impression"

    def as_record(self) -> dict:
        return asdict(self)


def pseudonymous_session(session_id: str, key: bytes) -> str:
    """A client's raw session id under the project's keyed scheme (`data.privacy`)."""
    digest = hmac.new(key, session_id.encode("utf-8"), hashlib.sha256).hexdigest()[:16]
    return SESSION_PREFIX + digest


def unit_of(user_key: str | None, session: str | None) -> tuple[str | None, str]:
    """The experiment unit: the customer when known (sticky across devices), else the session."""
    if user_key is not None:
        return user_key, "user"
    if session is not None:
        return session, "session"
    return None, "none"


def new_impression_id() -> str:
    return uuid.uuid4().hex


def rng_for(impression_id: str) -> np.random.Generator:
    """The impression's own random stream: its coin tosses can be replayed from its id."""
    return np.random.default_rng(int(impression_id[:16], 16))


def explore(
    n: int, rate: float, rng: np.random.Generator
) -> tuple[list[int], list[float], int | None]:
    """Order (indices into the list), propensity per shown position, and the swapped position
    (1-based) when this impression explores."""
    if n < 2 or rate <= 0:
        return list(range(n)), [1.0] * n, None
    per_slot = rate / (n - 1)
    order = list(range(n))
    swap = None
    if rng.random() < rate:
        j = int(rng.integers(1, n))
        order[0], order[j] = order[j], order[0]
        swap = j + 1
    props = []
    for shown_at in range(n):
        if swap is None:
            props.append(1.0 - rate if shown_at == 0 else 1.0 - per_slot)
        else:
            props.append(per_slot if shown_at in (0, swap - 1) else 1.0 - per_slot)
    return order, props, swap


def choose(
    champion: Ranked,
    challenger: Ranked | None,
    assignment: Assignment,
    spec: ExperimentSpec | None,
    k: int,
    rng: np.random.Generator,
) -> tuple[list[tuple[str, float, str | None]], list[str]]:
    """(shown list as (product id, score, team), the shadow list) before exploration."""

    def own(ranked: Ranked, team: str | None) -> list[tuple[str, float, str | None]]:
        return [
            (p, float(s), team) for p, s in zip(ranked.product_ids[:k], ranked.scores, strict=False)
        ]

    if challenger is None or not assignment.in_experiment or spec is None:
        return own(champion, None), []
    if assignment.arm == "shadowed":
        return own(champion, None), list(challenger.product_ids[:k])
    if assignment.arm == CHAMPION:
        return own(champion, CHAMPION), []
    if assignment.arm == CHALLENGER:
        return own(challenger, CHALLENGER), []
    shown, teams = team_draft(challenger.product_ids, champion.product_ids, rng, depth=k)
    shared = common_prefix(challenger.product_ids[:k], champion.product_ids[:k])
    score = {
        CHALLENGER: dict(zip(challenger.product_ids, challenger.scores, strict=False)),
        CHAMPION: dict(zip(champion.product_ids, champion.scores, strict=False)),
    }
    named = [CHALLENGER if t == 0 else CHAMPION for t in teams]
    return [
        (p, float(score[t][p]), BOTH if i < shared else t)
        for i, (p, t) in enumerate(zip(shown, named, strict=True))
    ], []


def impression(
    *,
    surface: str,
    query: str | None,
    k: int,
    unit: tuple[str | None, str],
    assignment: Assignment,
    spec: ExperimentSpec | None,
    champion: Ranked,
    challenger: Ranked | None,
    exploration_rate: float,
    latency_ms: float,
    impression_id: str | None = None,
    challenger_error: str | None = None,
) -> Impression:
    """The impression one request shows and logs (`challenger_error`: the challenger was asked
    and failed, so `challenger` is None and the champion's list is shown)."""
    impression_id = impression_id or new_impression_id()
    rng = rng_for(impression_id)
    listed, shadow = choose(champion, challenger, assignment, spec, k, rng)
    order, props, swap = explore(len(listed), exploration_rate, rng)
    items = [
        ShownItem(
            product_id=listed[i][0],
            position=pos + 1,
            score=listed[i][1],
            team=listed[i][2],
            ranked_position=i + 1,
            propensity=round(props[pos], 6),
        )
        for pos, i in enumerate(order)
    ]
    in_exp = assignment.in_experiment and challenger is not None
    return Impression(
        impression_id=impression_id,
        timestamp=dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        surface=surface,
        unit=unit[0],
        unit_type=unit[1],
        query=query,
        k=k,
        experiment=assignment.experiment,
        mode=spec.mode if spec is not None else None,
        arm=assignment.arm,
        bucket=assignment.bucket,
        champion_version=champion.version,
        challenger_version=challenger.version if in_exp and challenger is not None else None,
        items=items,
        explored=swap is not None,
        swap_position=swap,
        latency_ms=round(latency_ms, 3),
        champion_latency_ms=round(champion.latency_ms, 3) if champion.product_ids else None,
        challenger_latency_ms=round(challenger.latency_ms, 3) if in_exp and challenger else None,
        shadow_product_ids=shadow,
        champion_results=len(champion.product_ids) if champion.version else None,
        challenger_results=len(challenger.product_ids) if in_exp and challenger else None,
        challenger_error=challenger_error,
    )
