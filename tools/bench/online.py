"""`make bench-online`: how much traffic the online decision needs, and how often it is wrong.

On the synthetic shop (its shoppers, its click model) two rankers of known quality rank each
request's candidate pool by true grade plus Gaussian noise and the shop's popularity prior: the
champion with noise `sigma`, the challenger with a little less (`sigma - gain`), so the
challenger is truly, slightly better. Sessions are the units (one request each).

1. The true effect, from `truth_sessions` sessions: each ranker's click-through alone
   (P(at least one click)) and the interleaving preference (team draft; share of sessions with
   a preference and the challenger's win rate among them).
2. Fixed-horizon sessions to detect it at the same α and power: a 50/50 A/B test on
   click-through (two-proportion z-test) versus a sign test on the interleaving preference.
3. The sequential test as it runs (at `rho`): `replications` streams of interleaved sessions
   read every night (`sessions_per_night`) by the mSPRT; sessions until it promoted, and how
   often it did within `nights`. Same for the A/B test read by the mSPRT on paired click-through.
4. A/A: `aa_experiments` experiments where both arms rank with the same noise scale (equally
   good, lists correlated by `rho`), read every night for `nights` nights: how many ended in a
   promotion (goal ≤ α) or in any decision.

Interleaving credits only clicks past the two rankings' common prefix (`team_draft.common_prefix`:
a prefix both rank alike is shown as is, so its clicks prefer neither). Fixed-horizon sizes are
reported for `rhos` (0: the two rankers' errors independent; 0.95: a next version that agrees
with the last on most lists).
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
from scipy import stats

from shopflow.core import paths
from shopflow.core.config import Params
from shopflow.data.synthetic.sessions import candidate_pools, examination, simulate_clicks
from shopflow.data.synthetic.user_model import UserModel
from shopflow.data.synthetic.world import ShopWorld
from shopflow.online.sequential import (
    ab_sample_size,
    log_mixture_lr,
    preference_sample_size,
)
from shopflow.online.team_draft import common_prefix, team_draft

log = logging.getLogger(__name__)
RESULT = paths.metrics("bench_online")
DEPTH = 10


class Shop:
    """The synthetic shop's requests, candidate pools and click model for one day."""

    def __init__(self, params: Params) -> None:
        self.world = ShopWorld(params.synthetic, params.seed)
        self.users = UserModel(self.world)
        self.day = params.ingest.window.end
        self.pools = candidate_pools(self.world, self.day)
        self.log_pop = np.log(self.world.p["popularity"])

    def sessions(self, n: int, seed: int):
        return self.users.sample_requests(self.day, n, seed)

    def rank_pair(
        self, requests, sigma: float, gain: float, rho: float, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-10 product indices per request of two rankers: grade + noise + the popularity
        prior. The champion's noise has scale `sigma`; the challenger's `sigma - gain` and
        correlation `rho` with the champion's (a next version of a model agrees with the last
        on most lists and corrects some of its errors)."""
        out = np.full((2, len(requests), DEPTH), -1, dtype=np.int64)
        for leaf in np.unique(requests.leaf):
            rows = np.flatnonzero(requests.leaf == leaf)
            pool = self.pools[leaf]
            if not len(pool):
                continue
            cand = np.broadcast_to(pool, (len(rows), len(pool)))
            grade = self.world.relevance(
                requests.leaf[rows],
                requests.colour[rows],
                requests.material[rows],
                requests.brand[rows],
                cand,
            )
            base = rng.standard_normal(cand.shape)
            own = rho * base + np.sqrt(1 - rho**2) * rng.standard_normal(cand.shape)
            k = min(DEPTH, len(pool))
            for i, (scale, noise) in enumerate(((sigma, base), (sigma - gain, own))):
                score = grade + scale * noise + 0.35 * self.log_pop[pool]
                top = np.argsort(-score, axis=1, kind="stable")[:, :k]
                out[i, rows, :k] = np.take_along_axis(cand, top, axis=1)
        return out[0], out[1]

    def _grades(self, requests, slates: np.ndarray) -> np.ndarray:
        idx = np.maximum(slates, 0)
        grades = self.world.relevance(
            requests.leaf, requests.colour, requests.material, requests.brand, idx
        )
        return np.where(slates >= 0, grades, 0).astype(np.int8)

    def clicks(self, requests, slates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        grades = self._grades(requests, slates)
        return simulate_clicks(self.world, requests.user, slates, grades, self.day, rng)

    def click_probabilities(self, requests, slates: np.ndarray) -> np.ndarray:
        """P(click) of every slot under the shop's click model (exact, no sampling)."""
        positions = np.arange(1, slates.shape[1] + 1)[None, :]
        attract = self.world.attractiveness(
            self._grades(requests, slates), requests.user, np.maximum(slates, 0), self.day
        )
        return examination(positions) * attract * (slates >= 0)


def interleave(
    shop: Shop, requests, champion: np.ndarray, challenger: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Per session: clicks on the challenger's items minus clicks on the champion's."""
    shown = np.full_like(champion, -1)
    teams = np.zeros(champion.shape, dtype=np.int8)
    for i in range(len(champion)):
        a = [int(p) for p in challenger[i] if p >= 0]
        b = [int(p) for p in champion[i] if p >= 0]
        items, team = team_draft(a, b, rng, DEPTH)
        shown[i, : len(items)] = items
        teams[i, : len(team)] = np.where(np.asarray(team) == 0, 1, -1)
        teams[i, : common_prefix(a, b)] = 0  # shown as both rank them: no preference
    clicks = shop.clicks(requests, shown, rng)
    return (clicks * teams).sum(axis=1)


def first_promotion(
    observations: np.ndarray,
    per_night: np.ndarray,
    alpha: float,
    tau: float,
    variance: float,
    min_units: int,
) -> int | None:
    """Index of the night (0-based) the mSPRT first promotes, reading after each night."""
    if len(observations) == 0:
        return None
    n = np.arange(1, len(observations) + 1)
    means = np.cumsum(observations) / n
    running = np.maximum.accumulate(log_mixture_lr(n, means, variance, tau))
    threshold = np.log(1 / alpha)
    for night, count in enumerate(per_night):
        if count >= min_units and running[count - 1] >= threshold and means[count - 1] > 0:
            return night
    return None


def fixed_horizon(
    shop: Shop,
    rng: np.random.Generator,
    sessions: int,
    sigma: float,
    gain: float,
    rho: float,
    alpha: float,
    power: float,
) -> dict:
    """The true effect of one challenger and the sessions each test needs to detect it."""
    truth = shop.sessions(sessions, seed=1)
    champion, challenger = shop.rank_pair(truth, sigma, gain, rho, rng)
    # exact expectations over the sampled requests: P(any click) and clicks per session
    probs = {
        "champion": shop.click_probabilities(truth, champion),
        "challenger": shop.click_probabilities(truth, challenger),
    }
    ctr = {arm: float((1 - np.prod(1 - p, axis=1)).mean()) for arm, p in probs.items()}
    clicks = {arm: float(p.sum(axis=1).mean()) for arm, p in probs.items()}
    click_sd = {  # the per-session count's sd: within-session Bernoulli + between-session spread
        arm: float(np.sqrt((p * (1 - p)).sum(axis=1).mean() + p.sum(axis=1).var()))
        for arm, p in probs.items()
    }
    credit = interleave(shop, truth, champion, challenger, rng)
    decided = credit != 0
    win_rate = float((credit[decided] > 0).mean())
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    ab_ctr = ab_sample_size(ctr["champion"], ctr["challenger"], alpha, power)
    ab_clicks = (
        2
        * z**2
        * (click_sd["champion"] ** 2 + click_sd["challenger"] ** 2)
        / (clicks["challenger"] - clicks["champion"]) ** 2
    )
    inter = preference_sample_size(win_rate, float(decided.mean()), alpha, power)
    row = {
        "rho": rho,
        "ctr": ctr,
        "clicks_per_session": clicks,
        "win_rate": win_rate,
        "preference_share": float(decided.mean()),
        "ab_ctr_sessions": ab_ctr,
        "ab_clicks_sessions": ab_clicks,
        "interleaving_sessions": inter,
        "ratio_ctr": ab_ctr / inter,
        "ratio_clicks": ab_clicks / inter,
    }
    log.info(
        "rho %.2f: CTR %.4f -> %.4f, clicks/session %.3f -> %.3f; interleaving win rate %.3f on "
        "%.1f%% of sessions. Sessions at alpha %.2f, power %.1f: A/B on CTR %.0f, on clicks %.0f,"
        " interleaving %.0f (%.1fx / %.1fx fewer)",
        rho,
        ctr["champion"],
        ctr["challenger"],
        clicks["champion"],
        clicks["challenger"],
        win_rate,
        100 * decided.mean(),
        alpha,
        power,
        ab_ctr,
        ab_clicks,
        inter,
        row["ratio_ctr"],
        row["ratio_clicks"],
    )
    return row


def online_bench(
    params: Params,
    *,
    sigma: float = 1.0,
    gain: float = 0.3,
    rho: float = 0.8,
    rhos: tuple[float, ...] = (0.0, 0.8, 0.95),
    truth_sessions: int = 40_000,
    sessions_per_night: int = 250,
    nights: int = 28,
    replications: int = 50,
    aa_experiments: int = 200,
    power: float = 0.8,
) -> dict:
    cfg = params.online.decision
    started = time.perf_counter()
    shop = Shop(params)
    rng = np.random.default_rng(params.seed)
    table = [
        fixed_horizon(shop, rng, truth_sessions, sigma, gain, r, cfg.alpha, power) for r in rhos
    ]
    per_night = np.arange(1, nights + 1) * sessions_per_night
    total = sessions_per_night * nights
    inter_nights, ab_nights = [], []
    for rep in range(replications):
        stream = shop.sessions(total, seed=100 + rep)
        a, b = shop.rank_pair(stream, sigma, gain, rho, rng)
        pref = interleave(shop, stream, a, b, rng)
        units = np.cumsum(pref != 0)
        night = first_promotion(
            np.sign(pref[pref != 0]), units[per_night - 1], cfg.alpha, cfg.tau, 1.0, cfg.min_units
        )
        inter_nights.append(night)
        # A/B: half the sessions see each ranker; paired click-through differences
        half = total // 2
        diff = shop.clicks(stream.take(np.arange(half, total)), b[half:], rng).any(axis=1).astype(
            float
        ) - shop.clicks(stream.take(np.arange(half)), a[:half], rng).any(axis=1)
        var = float(np.var(diff))
        ab_nights.append(
            first_promotion(
                diff, per_night // 2, cfg.alpha, cfg.tau * np.sqrt(var), var, cfg.min_units
            )
        )
        log.info(
            "replication %d/%d: interleaving promoted on night %s, A/B on night %s (%.0f s)",
            rep + 1,
            replications,
            night,
            ab_nights[-1],
            time.perf_counter() - started,
        )

    def summary(found: list[int | None]) -> dict:
        hits = [n for n in found if n is not None]
        return {
            "promoted_share": len(hits) / len(found),
            "median_sessions_when_promoted": float(
                np.median([(n + 1) * sessions_per_night for n in hits])
            )
            if hits
            else None,
        }

    sequential = {"interleaving": summary(inter_nights), "ab": summary(ab_nights)}

    # A/A: two rankers of the same quality (the same noise scale, lists correlated like the
    # challenger's), read every night: any promotion is a false one.
    promotions = decisions = 0
    for experiment in range(aa_experiments):
        stream = shop.sessions(total, seed=10_000 + experiment)
        a, b = shop.rank_pair(stream, sigma, 0.0, rho, rng)
        pref = interleave(shop, stream, a, b, rng)
        obs = np.sign(pref[pref != 0])
        counts = np.cumsum(pref != 0)[per_night - 1]
        promoted = first_promotion(obs, counts, cfg.alpha, cfg.tau, 1.0, cfg.min_units)
        stopped = first_promotion(-obs, counts, cfg.alpha, cfg.tau, 1.0, cfg.min_units)
        promotions += promoted is not None
        decisions += promoted is not None or stopped is not None
        if (experiment + 1) % 50 == 0:
            log.info(
                "A/A %d/%d: %d promoted, %d decided (%.0f s)",
                experiment + 1,
                aa_experiments,
                promotions,
                decisions,
                time.perf_counter() - started,
            )
    aa = {
        "experiments": aa_experiments,
        "nights": nights,
        "false_promotions": promotions,
        "false_promotion_rate": promotions / aa_experiments,
        "false_decisions": decisions,  # promoted or stopped
        "false_decision_rate": decisions / aa_experiments,
        "alpha": cfg.alpha,
    }
    result = {
        "setup": {
            "sigma": sigma,
            "gain": gain,
            "rho": rho,
            "sessions_per_night": sessions_per_night,
            "nights": nights,
            "replications": replications,
            "power": power,
            "alpha": cfg.alpha,
            "tau": cfg.tau,
            "min_units": cfg.min_units,
            "truth_sessions": truth_sessions,
            "profile": params.profile,
        },
        "fixed_horizon": table,
        "sequential": sequential,
        "aa": aa,
        "seconds": round(time.perf_counter() - started, 1),
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    log.info(
        "A/A: %d of %d experiments falsely promoted (alpha %.2f); wrote %s",
        promotions,
        aa_experiments,
        cfg.alpha,
        RESULT,
    )
    return result
