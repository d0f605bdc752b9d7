"""Simulated online A/B test: team-draft interleaving of champion and challenger.

Offline NDCG says which ranking judges prefer; interleaving says which one shoppers would
click. Each simulated session shows one list that interleaves the two rankings by team draft
(Radlinski, Kurup & Joachims, CIKM 2008): per round a coin decides which team picks first,
and each team adds its best product not yet shown. Clicks are credited to the team that
contributed the product; the system with more clicks wins the session, equal counts tie.

Clicks come from a position-based click model, P(click at k) = θ_k · γ(grade):
- the synthetic shop: its own user model (`synthetic.world`'s examination curve and
  grade → attractiveness table), the ground truth that generated the logs;
- real data with click logs: θ fitted by EM on the logs
  (`models.propensity.estimate_propensities`) and γ per grade fitted on the logged
  impressions of judged products;
- judgments only: θ_k = 1/k and γ = (2^g - 1) / (2^g_max - 1) (Chapelle et al., CIKM 2009),
  recorded as assumed.

The win rate's interval comes from a bootstrap over queries (sessions of one query are not
independent evidence), and the expected CTR of each system alone feeds the power analysis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from shopflow.online.team_draft import team_draft

DEPTH = 10
__all__ = ["ClickModel", "InterleavingResult", "simulate", "team_draft"]


@dataclass(frozen=True)
class ClickModel:
    """Position-based click model: examination per position, attractiveness per grade."""

    examination: np.ndarray  # θ_1..θ_depth
    attraction: Mapping[float, float]  # grade -> P(click | examined)
    source: str
    details: dict = field(default_factory=dict)

    def probabilities(self, grades: np.ndarray) -> np.ndarray:
        """P(click) of a list whose products have `grades` (unjudged products: grade 0)."""
        gamma = np.array([self._gamma(g) for g in grades], float)
        return self.examination[: len(grades)] * gamma

    def _gamma(self, grade: float) -> float:
        if grade in self.attraction:
            return self.attraction[grade]
        known = sorted(self.attraction)  # a grade between known ones: interpolate
        return float(np.interp(grade, known, [self.attraction[g] for g in known]))

    def ctr(self, grades: np.ndarray) -> float:
        """P(at least one click) on a list."""
        return float(1.0 - np.prod(1.0 - self.probabilities(grades)))


def synthetic_click_model(depth: int = DEPTH) -> ClickModel:
    """The synthetic shop's own click model (its users' examination and attractiveness)."""
    from shopflow.data.synthetic.sessions import examination
    from shopflow.data.synthetic.world import ATTRACTIVENESS

    return ClickModel(
        examination(np.arange(1, depth + 1)),
        {float(g): float(a) for g, a in enumerate(ATTRACTIVENESS)},
        "synthetic shop user model",
    )


def assumed_click_model(max_grade: float, depth: int = DEPTH) -> ClickModel:
    """θ_k = 1/k, γ = (2^g - 1)/(2^max - 1): for judgments without click logs."""
    grades = np.arange(0, int(np.ceil(max_grade)) + 1, dtype=float)
    gamma = (2**grades - 1) / (2**max_grade - 1)
    return ClickModel(
        1.0 / np.arange(1, depth + 1),
        dict(zip(grades.tolist(), np.clip(gamma, 0, 1).tolist(), strict=True)),
        "assumed (1/rank examination, ERR grade mapping): no click logs",
    )


def fitted_click_model(
    propensity: np.ndarray,
    impressions_grades: np.ndarray,
    clicked: np.ndarray,
    positions: np.ndarray,
    depth: int = DEPTH,
) -> ClickModel:
    """θ from the logs (EM), γ per grade = clicks / expected examinations of judged products."""
    theta = np.asarray(propensity, float)
    theta = np.concatenate([theta, np.full(max(depth - len(theta), 0), theta[-1])])[:depth]
    examined = theta[np.clip(positions.astype(int), 1, depth) - 1]
    attraction = {}
    for grade in np.unique(impressions_grades):
        rows = impressions_grades == grade
        attraction[float(grade)] = float(
            np.clip(clicked[rows].sum() / max(examined[rows].sum(), 1e-9), 0, 1)
        )
    return ClickModel(
        theta,
        attraction,
        "fitted on the click logs (EM propensities, per-grade attractiveness)",
        {"judged_impressions": len(clicked)},
    )


@dataclass
class InterleavingResult:
    sessions: int
    wins: int
    losses: int
    ties: int
    win_rate: float
    ci_low: float
    ci_high: float
    ctr_challenger: float
    ctr_champion: float
    click_model: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def simulate(
    champion: Mapping[str, Sequence[str]],
    challenger: Mapping[str, Sequence[str]],
    qrels: Mapping[str, Mapping[str, float]],
    model: ClickModel,
    *,
    sessions: int = 10_000,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
    depth: int = DEPTH,
) -> InterleavingResult:
    """`sessions` simulated sessions over the judged queries (uniformly drawn)."""
    queries = [q for q in qrels if q in champion and q in challenger]
    if not queries:
        raise ValueError("no query is ranked by both systems")
    rng = np.random.default_rng(seed)
    wins = np.zeros(len(queries))
    losses = np.zeros(len(queries))
    drawn = rng.integers(0, len(queries), sessions)
    for qi in drawn:
        query = queries[qi]
        shown, teams = team_draft(challenger[query], champion[query], rng, depth)
        grades = np.array([qrels[query].get(p, 0.0) for p in shown], float)
        clicks = rng.random(len(shown)) < model.probabilities(grades)
        credit = np.bincount(np.asarray(teams, int)[clicks], minlength=2)
        wins[qi] += credit[0] > credit[1]
        losses[qi] += credit[1] > credit[0]
    n_wins, n_losses = int(wins.sum()), int(losses.sum())
    decided = n_wins + n_losses
    # Bootstrap over queries: resample query weights, recompute wins / (wins + losses).
    weights = rng.multinomial(len(queries), np.full(len(queries), 1 / len(queries)), resamples)
    boot = (weights @ wins) / np.maximum(weights @ (wins + losses), 1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(boot, [tail, 1 - tail]) if decided else (0.0, 1.0)

    def ctr(ranking: Mapping[str, Sequence[str]]) -> float:
        return float(
            np.mean(
                [
                    model.ctr(np.array([qrels[q].get(p, 0.0) for p in list(ranking[q])[:depth]]))
                    for q in queries
                ]
            )
        )

    return InterleavingResult(
        sessions=sessions,
        wins=n_wins,
        losses=n_losses,
        ties=sessions - decided,
        win_rate=n_wins / decided if decided else 0.5,
        ci_low=float(low),
        ci_high=float(high),
        ctr_challenger=ctr(challenger),
        ctr_champion=ctr(champion),
        click_model=model.source,
    )
