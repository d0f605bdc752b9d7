"""Held-out purchases, scored as the service would have answered them, and the baselines'
knobs chosen on the valid split.

A split's task (`RecommendTask`) is every distinct product a customer bought in the split,
for customers the shop knew before it. Each customer's list is made once, from what was
known at the split's start (`Recommender.fit(..., as_of=start)`), and holds nothing the
exclusion rule leaves out: the offline number is the number of lists the service serves.
Each row is one purchase; a customer's rows share one list, so significance resamples
customers (`cluster` = the customer) and every row says whether it re-buys (`rebuy`): the
"buy again" and "discover" tasks are the two kinds of rows.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from shopflow.core import paths
from shopflow.core.config import RecommendConfig
from shopflow.core.errors import StageInputError
from shopflow.data.profiles import purchase_targets
from shopflow.engine.recommend import BASELINE_SOURCES, Recommender, RecommendSettings
from shopflow.evaluation import ranking
from shopflow.models.recommenders import ItemIndex

log = logging.getLogger(__name__)

TOP = 10


@dataclass
class RecommendTask:
    """One split's held-out purchases and when the split starts."""

    split: str
    start: pd.Timestamp
    targets: pd.DataFrame  # user_key, product_id, rebuy

    @property
    def users(self) -> list[str]:
        return sorted(self.targets["user_key"].unique())

    def __len__(self) -> int:
        return len(self.targets)


def split_starts(path: Path = paths.SPLITS) -> dict[str, pd.Timestamp]:
    """When the time splits start (prepare's `splits.json`): valid, test, and train when
    earlier days are history."""
    if not path.exists():
        raise StageInputError(f"{path}: missing; re-run the prepare stage")
    bounds = json.loads(path.read_text(encoding="utf-8")).get("time_boundaries") or {}
    return {name: pd.Timestamp(value) for name, value in bounds.items()}


def task_of(
    acts: pd.DataFrame, starts: Mapping[str, pd.Timestamp], split: str
) -> RecommendTask | None:
    """The held-out purchases of `split` (valid or test); None when it has none."""
    if split not in starts:
        return None
    end = starts.get("test") if split == "valid" else None
    targets = purchase_targets(acts, starts[split], end)
    if targets.empty:
        return None
    return RecommendTask(split, starts[split], targets)


def score_lists(
    task: RecommendTask, lists: Mapping[str, Sequence[str]], k: int = TOP
) -> pd.DataFrame:
    """Per held-out purchase: HitRate@k and NDCG@k of its customer's list, the customer
    (`cluster`), the product and whether it re-buys."""
    targets = task.targets
    scored = ranking.next_item(
        targets["product_id"].tolist(), [lists.get(u, []) for u in targets["user_key"]], k
    )
    return scored.assign(
        cluster=targets["user_key"].to_numpy(),
        product_id=targets["product_id"].to_numpy(),
        rebuy=targets["rebuy"].to_numpy(),
    )


def lists_of(recommender: Recommender, task: RecommendTask, k: int = TOP) -> dict[str, list[str]]:
    users = task.users
    return {
        user: [p for p, _ in recs]
        for user, recs in zip(users, recommender.recommend(users, k), strict=True)
    }


def evaluate(recommender: Recommender, task: RecommendTask, k: int = TOP) -> pd.DataFrame:
    return score_lists(task, lists_of(recommender, task, k), k)


def summary(scores: pd.DataFrame) -> dict[str, float]:
    """Means over all rows, the buy-again rows and the discover rows, and the counts."""
    out: dict[str, float] = {
        **ranking.means(scores.drop(columns=["rebuy", "product_id", "cluster"])),
        "n": len(scores),
        "customers": int(scores["cluster"].nunique()),
    }
    for name, part in (
        ("buy_again", scores[scores["rebuy"]]),
        ("discover", scores[~scores["rebuy"]]),
    ):
        if len(part):
            out[f"{name}_hit@10"] = round(float(part["hit@10"].mean()), 4)
            out[f"{name}_n"] = len(part)
    return out


def read_policy(path: Path = paths.RECOMMEND_POLICY) -> dict:
    """The exclusion rule prepare resolved (`recommend.exclude`) and why."""
    if not path.exists():
        raise StageInputError(f"{path}: missing; re-run the prepare stage")
    return json.loads(path.read_text(encoding="utf-8"))


# -- the baselines' knobs -------------------------------------------------------------------

GRIDS = {
    "popularity": "popularity_half_life_days",
    "buy_again": "buy_again_half_life_days",
    "ease": "ease_l2",
    "item_knn": "knn_neighbours",
}


def base_settings(cfg: RecommendConfig, exclude: str, history_items: int) -> RecommendSettings:
    """Every knob at the first value of its grid."""
    return RecommendSettings(
        exclude=exclude,
        serve="popularity",
        popularity_half_life_days=cfg.popularity_half_life_days[0],
        buy_again_half_life_days=cfg.buy_again_half_life_days[0],
        ease_l2=cfg.ease_l2[0],
        ease_max_items=cfg.ease_max_items,
        knn_neighbours=cfg.knn_neighbours[0],
        knn_shrink=cfg.knn_shrink,
        item_neighbours=cfg.item_neighbours,
        candidates=cfg.candidates,
        history_items=history_items,
    )


def tune_baselines(
    acts: pd.DataFrame,
    index: ItemIndex,
    task: RecommendTask,
    cfg: RecommendConfig,
    start: RecommendSettings,
    metric: str = "ndcg@10",
) -> tuple[RecommendSettings, dict]:
    """Each baseline's knob chosen by its valid `metric` (`choice_metric`: the gate's; the
    other of NDCG@10 and HitRate@10 breaks ties, then the grid's order), and the best
    baseline as what the settings serve: the first champion."""
    settings = start
    tried: dict[str, dict] = {}
    best: dict[str, float] = {}
    for source in BASELINE_SOURCES:
        key = GRIDS[source]
        results = []
        for value in getattr(cfg, key):
            started = time.perf_counter()
            candidate = replace(settings, serve=source, **{key: value})
            scores = evaluate(Recommender.fit(acts, index, task.start, candidate), task)
            hit, ndcg = float(scores["hit@10"].mean()), float(scores["ndcg@10"].mean())
            results.append((ndcg, hit, value) if metric == "ndcg@10" else (hit, ndcg, value))
            log.info(
                "recommend baseline %s %s=%s: valid HitRate@10 %.4f, NDCG@10 %.4f (%.1fs)",
                source,
                key,
                value,
                hit,
                ndcg,
                time.perf_counter() - started,
            )
        first, _, value = max(results, key=lambda r: (r[0], r[1]))
        settings = replace(settings, **{key: value})
        tried[source] = {
            "knob": key,
            "chosen": value,
            f"valid_{metric}": {str(v): round(m, 4) for m, _, v in results},
        }
        best[source] = first
    champion = max(BASELINE_SOURCES, key=lambda s: (best[s], -BASELINE_SOURCES.index(s)))
    log.info(
        "recommend baselines on %d valid purchases of %d customers: the best is %s (%s %s)",
        len(task),
        len(task.users),
        champion,
        metric,
        ", ".join(f"{s} {h:.4f}" for s, h in best.items()),
    )
    return replace(settings, serve=champion), {
        "tried": tried,
        "best": champion,
        "metric": metric,
        f"valid_{metric}": {s: round(v, 4) for s, v in best.items()},
    }


def customers_folds(users: Sequence[str], folds: int, seed: int) -> dict[str, int]:
    """A fold per customer, seeded."""
    order = np.random.default_rng(seed).permutation(len(users))
    return {users[i]: int(n % folds) for n, i in enumerate(order)}


@dataclass
class BaselineRecommenders:
    """The tuned baselines: what the first champion serves, how they were chosen, and each
    one's per-purchase test scores."""

    settings: RecommendSettings
    info: dict
    test: dict[str, pd.DataFrame]


def recommend_baselines(
    acts: pd.DataFrame,
    products: pd.DataFrame,
    starts: Mapping[str, pd.Timestamp],
    exclude: str,
    cfg: RecommendConfig,
    history_items: int,
    metric: str = "ndcg@10",
) -> BaselineRecommenders | None:
    """Tune every baseline on the valid split and score each on the test split (fitted on
    what was known when the test split starts); None without valid and test purchases."""
    valid, test = task_of(acts, starts, "valid"), task_of(acts, starts, "test")
    if valid is None or test is None:
        log.warning("recommend baselines: no valid or no test purchases of known customers")
        return None
    index = ItemIndex(products["product_id"])
    settings, info = tune_baselines(
        acts, index, valid, cfg, base_settings(cfg, exclude, history_items), metric
    )
    scores = {
        source: evaluate(
            Recommender.fit(acts, index, test.start, replace(settings, serve=source)), test
        )
        for source in BASELINE_SOURCES
    }
    return BaselineRecommenders(settings, info, scores)


def choice_metric(primary: str) -> str:
    """What the recommendation choices compare (`gate.primary`): the gate's recommendation
    metric when it is one, else NDCG@10."""
    return primary.removeprefix("recommend_") if primary.startswith("recommend_") else "ndcg@10"
