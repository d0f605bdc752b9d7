"""The reranker's listwise training groups: graded judgments and debiased clicks, sampled to
a group size, a fixed validation sample, and the retriever prior's fitted weight.

Kept apart from the training task (`training.cross_encoder`) because they are pure functions
of the prepared tables: the unit tests build them from small frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from shopflow.core.config import Params
from shopflow.core.errors import StageInputError
from shopflow.data.tables import Tables, lowest_grade
from shopflow.models.propensity import click_weights, estimate_propensities

Group = tuple[str, np.ndarray, np.ndarray]  # query, product rows, targets


@dataclass
class Groups:
    """Listwise training groups: a query, its products (row numbers) and their targets."""

    queries: list[str]
    products: list[np.ndarray]
    targets: list[np.ndarray]  # graded: gains; clicks: inverse-propensity click weights

    def __len__(self) -> int:
        return len(self.queries)


def graded_groups(judged: pd.DataFrame, product_row: dict[str, int], lowest: float) -> Groups:
    """One group per query whose judged products carry a positive gain 2^(grade - lowest) - 1.

    Vectorised: mapping ids group by group rebuilt the id lookup each time (150 s for the
    7,400 queries of Home Depot, under a second this way)."""
    ordered = judged.sort_values("query", kind="stable")  # a query's rows keep their order
    queries = ordered["query"].to_numpy()
    rows = ordered["product_id"].map(product_row).to_numpy(int)
    gains = np.power(2.0, ordered["relevance"].to_numpy(float) - lowest) - 1.0
    starts = np.flatnonzero(np.r_[True, queries[1:] != queries[:-1]])  # [0] when empty
    ends = np.r_[starts[1:], len(queries)]
    groups = Groups([], [], [])
    for start, end in zip(starts, ends, strict=True):
        if end - start < 2 or gains[start:end].max() <= 0:
            continue
        groups.queries.append(queries[start])
        groups.products.append(rows[start:end])
        groups.targets.append(gains[start:end])
    return groups


def click_groups(
    pairs: pd.DataFrame, product_row: dict[str, int], propensity: pd.Series, clip: float
) -> Groups:
    """One group per shown list with clicked and unclicked items; targets: 1/propensity per
    click. (A list clicked everywhere or nowhere says nothing about preference.)"""
    shown = pairs.sort_values(["session_id", "query", "position"], kind="stable")
    list_id = pd.factorize(shown["session_id"].astype(str) + "\x1f" + shown["query"])[0]
    clicked = shown["clicked"].to_numpy(bool)
    weights = click_weights(shown["position"].to_numpy(int), propensity, clip) * clicked
    products = shown["product_id"].map(product_row).to_numpy(int)
    queries = shown["query"].to_numpy()
    clicks = np.bincount(list_id, clicked)
    sizes = np.bincount(list_id)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    groups = Groups([], [], [])
    for group in np.flatnonzero((clicks > 0) & (clicks < sizes)):
        rows = slice(starts[group], starts[group] + sizes[group])
        groups.queries.append(queries[starts[group]])
        groups.products.append(products[rows])
        groups.targets.append(weights[rows])
    return groups


def batch_order(n: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Indices of the groups of `step`, from an epoch permutation seeded by (seed, epoch)."""
    per_epoch = max(n // batch_size, 1)
    epoch, offset = divmod(step, per_epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=generator)
    chunk = perm[offset * batch_size : (offset + 1) * batch_size]
    return chunk if len(chunk) else perm[:batch_size]


def sample_group(
    products: np.ndarray, targets: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Up to `size` items: one with the highest target, the rest at random."""
    if len(products) <= size:
        return products, targets
    best = int(rng.choice(np.flatnonzero(targets == targets.max())))
    others = np.delete(np.arange(len(products)), best)
    chosen = np.concatenate([[best], rng.choice(others, size - 1, replace=False)])
    return products[chosen], targets[chosen]


PRIOR_FIT_GROUPS = 4000  # training groups the prior's weight is fitted on
PRIOR_WEIGHTS = np.geomspace(0.1, 200.0, 121)  # the weights tried


def prior_losses(
    priors: list[np.ndarray], targets: list[np.ndarray], weights: np.ndarray
) -> np.ndarray:
    """The mean listwise loss over the groups of w·cos alone, for each weight w."""
    losses = np.zeros(len(weights))
    for cos, target in zip(priors, targets, strict=True):
        logits = weights[:, None] * cos[None, :]
        logits -= logits.max(axis=1, keepdims=True)
        log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        losses -= log_softmax @ (target / target.sum())
    return losses / max(len(priors), 1)


def fit_prior_weight(priors: list[np.ndarray], targets: list[np.ndarray]) -> float:
    """The weight w of the retriever's cosine that minimises the listwise loss of w·cos alone.

    The retriever's 1/temperature is tuned for in-batch negatives over the whole catalogue; in
    a list of similar candidates it makes the prior overconfident (its loss can sit above the
    uniform one), and a weight learned by Adam moves only ~lr per step: from 20 it barely
    moves in a night. Fitting it on cosines alone costs no transformer pass, and lets the head
    start against a prior of the right strength."""
    return float(PRIOR_WEIGHTS[int(np.argmin(prior_losses(priors, targets, PRIOR_WEIGHTS)))])


VALID_STEPS = 4  # steps' worth of valid-split groups scored at each checkpoint


def validation_groups(
    tables: Tables,
    product_row: dict[str, int],
    propensity: pd.Series | None,
    counts: tuple[int, int],
    params: Params,
) -> list[Group]:
    """A fixed sample of valid-split groups, graded and click ones in the training mix
    (`counts` per step), scored by the validation curve at every checkpoint."""
    cfg = params.reranker
    rng = np.random.default_rng(params.seed)
    sources = []
    if "judgments" in tables:
        judged = tables["judgments"]
        valid = judged[judged["split"] == "valid"]
        sources.append((graded_groups(valid, product_row, lowest_grade(tables)), counts[0]))
    if propensity is not None:
        valid_pairs = tables["pairs"][tables["pairs"]["split"] == "valid"]
        sources.append(
            (
                click_groups(valid_pairs, product_row, propensity, cfg.propensity_clip),
                counts[1],
            )
        )
    chosen = []
    for groups, per_step in sources:
        for i in rng.permutation(len(groups))[: VALID_STEPS * per_step]:
            items, targets = sample_group(
                groups.products[i], groups.targets[i], cfg.group_size, rng
            )
            chosen.append((groups.queries[i], items, targets))
    return chosen


def propensities_of(pairs: pd.DataFrame, max_position: int) -> pd.Series | None:
    """Examination propensity per position (None without clicks): measured where the service
    logged it (its randomised swaps, `ingest.source: service_logs`), the EM estimate from the
    training clicks at the other positions."""
    if not pairs["clicked"].any():
        return None
    train = pairs[pairs["split"] == "train"]
    measured = logged_propensities(train, max_position)
    if measured is not None and measured.notna().all():
        return measured
    if measured is None:
        return estimate_propensities(train, max_position)
    try:
        return measured.fillna(estimate_propensities(train, max_position))
    except StageInputError:  # the logs cannot identify EM: carry the measured curve down
        return measured.interpolate().ffill()


def logged_propensities(pairs: pd.DataFrame, max_position: int) -> pd.Series | None:
    """θ_k / θ_1 per position 1..max_position as logged (NaN where none was), or None."""
    if "propensity" not in pairs or pairs["propensity"].isna().all():
        return None
    positions = pairs["position"].clip(upper=max_position)
    logged = pairs["propensity"].groupby(positions).median()
    return logged.reindex(range(1, max_position + 1)).rename_axis("position")
