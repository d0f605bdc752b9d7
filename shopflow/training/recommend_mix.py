"""The recommendation mix: a LightGBM ranker over the candidate sources, fitted and chosen on
the valid split's purchases.

The sources are fitted on what was known when the valid split starts; each valid customer's
candidates (every source's top `recommend.candidates`) are labelled by what the customer
then bought. The valid split holds a few hundred customers in a small shop, so the mix is
judged by cross-validation grouped by customer (`recommend.folds`): each fold's lists come
from a ranker that never saw those customers, and the out-of-fold scores are compared with
the best single baseline on the same rows. A cheap option wins on its mean gain (the mix
costs a millisecond or so); the user tower, which embeds every customer's history, must be a
significant gain over the mix without it (customer-level permutation test,
`evaluation.significance`). The chosen mix's final ranker is then fitted on every valid
customer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from shopflow.core.config import Params, RecommendConfig
from shopflow.core.progress import Progress
from shopflow.engine.recommend import (
    MIX,
    Candidates,
    Recommender,
    RecommendSettings,
    Tower,
    feature_names,
)
from shopflow.evaluation import ranking, recommend, significance
from shopflow.evaluation.recommend import RecommendTask
from shopflow.models.feature_ranker import FeatureRanker, RankingData
from shopflow.models.recommenders import ItemIndex

log = logging.getLogger(__name__)

MIN_CUSTOMERS = 10  # fewer informative customers to learn from: no ranker


@dataclass
class MixData:
    """Every valid customer's candidates with the features of all sources, and labels."""

    found: Candidates
    labels: list[np.ndarray]
    fallback: np.ndarray  # popular allowed products per customer (fills short lists)
    sources: tuple[str, ...]

    def columns(self, sources: Sequence[str]) -> list[int]:
        names = feature_names(self.sources)
        return [names.index(n) for n in feature_names(sources)]

    def ranking_data(self, rows: Sequence[int] | np.ndarray, sources: Sequence[str]) -> RankingData:
        """The informative customers among `rows` (at least one bought and one not bought
        candidate) as LightGBM lists."""
        cols = self.columns(sources)
        features, labels, groups = [], [], []
        for row in rows:
            label = self.labels[row]
            if len(label) and 0 < label.sum() < len(label):
                features.append(self.found.features[row][:, cols])
                labels.append(label)
                groups.append(len(label))
        if not groups:
            return RankingData(np.empty((0, len(cols)), np.float32), np.empty(0, int), [])
        return RankingData(np.concatenate(features), np.concatenate(labels), groups)


def mix_data(recommender: Recommender, task: RecommendTask) -> MixData:
    """Candidates of every customer of `task` from a recommender fitted at its start."""
    started = time.perf_counter()
    users = task.users
    bought = task.targets.groupby("user_key")["product_id"].agg(set).to_dict()
    found_parts: list[Candidates] = []
    fallbacks = []
    progress = Progress("recommendation mix: candidates", len(users), unit="customers")
    for start in range(0, len(users), 500):
        part = users[start : start + 500]
        profiles = recommender.profiles(part)
        mask = recommender.exclusion_mask(profiles)
        found_parts.append(recommender.candidates(profiles, mask))
        fallbacks.append(recommender.ranked("popularity", profiles, mask, recommend.TOP)[0])
        progress.update(min(start + 500, len(users)))
    found = Candidates(
        [u for c in found_parts for u in c.users],
        [p for c in found_parts for p in c.products],
        [f for c in found_parts for f in c.features],
    )
    ids = recommender.index.ids
    labels = [
        np.array([ids[p] in bought.get(user, set()) for p in products], int)
        for user, products in zip(found.users, found.products, strict=True)
    ]
    reach = np.mean([lab.any() for lab in labels]) if labels else 0.0
    log.info(
        "recommendation mix: %d customers, %.0f candidates each on average, %.1f%% with a "
        "bought product among them (%.1fs)",
        len(users),
        np.mean([len(p) for p in found.products]) if users else 0,
        100 * reach,
        time.perf_counter() - started,
    )
    return MixData(found, labels, np.concatenate(fallbacks), recommender.settings.mix_sources)


def fit_ranker(
    data: MixData, rows: Sequence[int], sources: Sequence[str], cfg: RecommendConfig, seed: int
) -> tuple[FeatureRanker, dict] | None:
    """A ranker on the customers at `rows`, `ranker.stop_share` of them held out to stop the
    boosting; None when too few customers teach anything."""
    order = np.random.default_rng(seed).permutation(list(rows))
    n_stop = max(1, round(len(order) * cfg.ranker.stop_share))
    train = data.ranking_data(order[n_stop:], sources)
    stop = data.ranking_data(order[:n_stop], sources)
    if len(train.groups) < MIN_CUSTOMERS or not stop.groups:
        return None
    return FeatureRanker.fit(train, stop, cfg.ranker, seed, feature_names(sources))


def ranked_lists(
    ranker: FeatureRanker, data: MixData, rows: Sequence[int], sources: Sequence[str]
) -> dict[str, list[int]]:
    """The top 10 (catalogue positions) of each customer at `rows` by the ranker, filled with
    popular products."""
    cols = data.columns(sources)
    out = {}
    for row in rows:
        products = data.found.products[row]
        scores = ranker.score(data.found.features[row][:, cols]) if len(products) else np.empty(0)
        top = [int(products[i]) for i in np.lexsort((products, -scores))[: recommend.TOP]]
        for p in data.fallback[row]:
            if len(top) >= recommend.TOP:
                break
            if p >= 0 and p not in top:
                top.append(int(p))
        out[data.found.users[row]] = top
    return out


def out_of_fold(
    data: MixData, sources: Sequence[str], ids: np.ndarray, cfg: RecommendConfig, seed: int
) -> dict[str, list[str]] | None:
    """Every customer's list from a ranker fitted on the other folds (None: too little)."""
    folds = recommend.customers_folds(data.found.users, cfg.folds, seed)
    lists: dict[str, list[str]] = {}
    for fold in range(cfg.folds):
        held = [i for i, u in enumerate(data.found.users) if folds[u] == fold]
        rest = [i for i, u in enumerate(data.found.users) if folds[u] != fold]
        fitted = fit_ranker(data, rest, sources, cfg, seed + fold)
        if fitted is None:
            return None
        for user, top in ranked_lists(fitted[0], data, held, sources).items():
            lists[user] = [str(ids[p]) for p in top]
    return lists


def coverage(lists: dict[str, list[str]], n_products: int) -> float:
    """Share of the catalogue in at least one customer's top 10 (the gate's coverage@10)."""
    return ranking.coverage(list(lists.values()), n_products, recommend.TOP)


def choose_mix(
    baseline: Recommender,
    task: RecommendTask,
    cfg: RecommendConfig,
    alpha: float,
    resamples: int,
    seed: int,
    tower_ok: bool,
    metric: str = "ndcg@10",
    coverage_margin: float = 1.0,
) -> tuple[Recommender, dict]:
    """The served recommendation (the best baseline, the mix without or with the user
    tower), chosen on the valid split; the returned recommender is fitted at the valid start
    with the chosen ranker, and the figures say what was compared and why.

    A candidate whose lists cover less of the catalogue than the current choice's by more
    than `coverage_margin` (the gate's `margins.coverage`) is not chosen, whatever its gain:
    the gate would reject the whole challenger for it, search included."""
    settings = baseline.settings
    sources = tuple(s for s in cfg.sources if s != "user_tower" or tower_ok)
    fitted = baseline.with_settings(replace(settings, serve=MIX, mix_sources=sources))
    if not cfg.ranker.enabled:
        return baseline, {"chosen": settings.serve, "reasons": ["recommend.ranker.enabled: false"]}
    data = mix_data(fitted, task)
    ids = baseline.index.ids
    baseline_lists = recommend.lists_of(baseline, task)
    rows_of = {settings.serve: recommend.score_lists(task, baseline_lists)}
    coverage_of = {settings.serve: coverage(baseline_lists, len(ids))}
    variants: list[tuple[str, tuple[str, ...]]] = [
        ("mix", tuple(s for s in sources if s != "user_tower"))
    ]
    if "user_tower" in sources:
        variants.append(("mix+user_tower", sources))
    for name, mix_sources in variants:
        started = time.perf_counter()
        lists = out_of_fold(data, mix_sources, ids, cfg, seed)
        if lists is None:
            log.warning("recommendation mix %s: too few customers to learn from", name)
            continue
        rows_of[name] = recommend.score_lists(task, lists)
        coverage_of[name] = coverage(lists, len(ids))
        log.info(
            "recommendation mix %s: out-of-fold valid NDCG@10 %.4f, HitRate@10 %.4f (%.1fs)",
            name,
            rows_of[name]["ndcg@10"].mean(),
            rows_of[name]["hit@10"].mean(),
            time.perf_counter() - started,
        )
    chosen, reasons = settings.serve, []
    figures: dict[str, dict] = {}
    for name, scores in rows_of.items():
        figures[name] = {
            "valid_hit@10": round(float(scores["hit@10"].mean()), 4),
            "valid_ndcg@10": round(float(scores["ndcg@10"].mean()), 4),
            "valid_coverage@10": round(coverage_of[name], 4),
        }
    for name in [n for n, _ in variants if n in rows_of]:
        current = rows_of[chosen][metric].to_numpy()
        challenger = rows_of[name][metric].to_numpy()
        clusters = rows_of[name]["cluster"].to_numpy()
        gain = float(challenger.mean() - current.mean())
        p = significance.permutation_p(
            challenger, current, clusters=clusters, resamples=resamples, seed=seed
        )
        needs_test = name.endswith("user_tower")
        narrower = coverage_of[chosen] - coverage_of[name]
        covers = narrower <= coverage_margin
        wins = gain > 0 and (p < alpha or not needs_test) and covers
        figures[name].update({f"gain_over_{chosen}": round(gain, 4), "p_value": round(p, 4)})
        rule = (
            f"a significant gain (customer-level p < {alpha:g}): it embeds every history"
            if needs_test
            else "a mean gain (cheap: out-of-fold, customers grouped)"
        )
        reasons.append(
            f"{name}: valid {metric} {gain:+.4f} over {chosen} (p={p:.3g}, "
            f"{rows_of[name]['cluster'].nunique()} customers); needs {rule}; coverage@10 "
            f"{coverage_of[name]:.4f} vs {coverage_of[chosen]:.4f} "
            + ("within" if covers else "narrower than")
            + f" the gate's margin {coverage_margin:g}: "
            + ("chosen" if wins else "not chosen")
        )
        if wins:
            chosen = name
    for reason in reasons:
        log.info("recommendation mix: %s", reason)
    if chosen == settings.serve:
        return baseline, {"chosen": chosen, "candidates": figures, "reasons": reasons}
    mix_sources = dict(variants)[chosen]
    final = fit_ranker(data, range(len(data.found.users)), mix_sources, cfg, seed)
    if final is None:  # cannot happen after out-of-fold fits of the same data; kept safe
        return baseline, {"chosen": settings.serve, "candidates": figures, "reasons": reasons}
    ranker, info = final
    served = fitted.with_settings(replace(settings, serve=MIX, mix_sources=mix_sources))
    served.ranker = ranker
    return served, {
        "chosen": chosen,
        "sources": list(mix_sources),
        "candidates": figures,
        "reasons": reasons,
        "ranker": info,
    }


@dataclass
class FittedRecommender:
    """The recommender stage's outcome: what is served (fitted on every interaction up to
    the end of the data), its per-purchase test scores, and the figures."""

    served: Recommender
    test: dict[str, pd.DataFrame]
    result: dict


def fit_recommender(
    acts: pd.DataFrame,
    products: pd.DataFrame,
    starts: dict[str, pd.Timestamp],
    end: pd.Timestamp,
    baseline: RecommendSettings,
    params: Params,
    tower: Tower | None,
) -> FittedRecommender | None:
    """Choose what to serve on the valid split (`choose_mix`), score it (and the user tower
    alone, when there is one) on the test split, fitted at its start, and fit the choice on
    everything before `end` for serving; None without valid and test purchases."""
    cfg = params.recommend
    valid = recommend.task_of(acts, starts, "valid")
    test = recommend.task_of(acts, starts, "test")
    if valid is None or test is None:
        return None
    index = ItemIndex(products["product_id"])
    sources = tuple(s for s in cfg.sources if s != "user_tower" or tower is not None)
    start = replace(baseline, mix_sources=sources)
    at_valid = Recommender.fit(acts, index, valid.start, start, tower=tower)
    chosen, choice = choose_mix(
        at_valid,
        valid,
        cfg,
        params.evaluation.significance,
        params.evaluation.resamples,
        params.seed,
        tower_ok=tower is not None,
        metric=recommend.choice_metric(params.gate.primary),
        coverage_margin=params.gate.margins.coverage,
    )
    served_settings = chosen.settings
    if served_settings.serve != MIX:  # a baseline alone: fit no other source
        served_settings = replace(served_settings, mix_sources=())
    at_test = Recommender.fit(acts, index, test.start, served_settings, chosen.ranker, tower)
    scores = {"recommend": recommend.evaluate(at_test, test)}
    if tower is not None:
        alone = replace(served_settings, serve="user_tower", mix_sources=())
        scores["user_tower_recommend"] = recommend.evaluate(
            Recommender.fit(acts, index, test.start, alone, tower=tower), test
        )
    served = Recommender.fit(acts, index, end, served_settings, chosen.ranker, tower)
    result = {
        "serving": choice,
        "exclude": served_settings.exclude,
        "test": {name: recommend.summary(frame) for name, frame in scores.items()},
    }
    return FittedRecommender(served, scores, result)
