"""Repeated (query, product) judgments from several raters, merged by a declared policy.

Crowd-sourced and in-house relevance files often rate the same pair more than once, with
different grades. The contract holds one judgment per (query, product), so ingest merges the
ratings by `ingest.options.repeated_judgments` before validate sees them:

- `fail` (the default): nothing is merged and validate stops on "one judgment per (query,
  product)", so the label a model learns never depends silently on row order;
- `mean`, `median`, `max`: the grade is that statistic of the pair's ratings;
- `first`: the first rating in file order (the behaviour of quarantine, made explicit).

Whatever the policy, the repeated pairs are counted and their disagreement measured for the
manifest. The merged pair's `relevance_variance` is the spread of its ratings (population
variance; plus the mean of the raters' own variances when the source has that column), so a
graded loss can trust a contested label less.
"""

from __future__ import annotations

import logging
from typing import Literal, cast, get_args

import pandas as pd

from shopflow.core.errors import SourceError

log = logging.getLogger(__name__)

Policy = Literal["fail", "mean", "median", "max", "first"]
POLICIES: tuple[str, ...] = get_args(Policy)
OPTION = "ingest.options.repeated_judgments"
KEY = ["query", "product_id"]


def policy_of(options: dict) -> Policy:
    """The declared policy, `fail` when absent; anything else is an error naming the choices."""
    value = options.get("repeated_judgments", "fail")
    if value not in POLICIES:
        raise SourceError(f"{OPTION}: {value!r} is not one of {', '.join(POLICIES)}")
    return cast(Policy, value)


def repeated_stats(judgments: pd.DataFrame, policy: Policy) -> dict:
    """How many pairs were rated more than once and how much their raters disagreed."""
    grades = judgments.groupby(KEY, sort=False)["relevance"]
    counts = grades.size()
    spread = (grades.max() - grades.min())[counts > 1]
    return {
        "policy": policy,
        "repeated_pairs": int((counts > 1).sum()),
        "extra_rows": int((counts - 1).sum()),
        "max_ratings_per_pair": int(counts.max()) if len(counts) else 0,
        "disagreement_share": float((spread > 0).mean()) if len(spread) else 0.0,
        "disagreement_over_1_share": float((spread > 1).mean()) if len(spread) else 0.0,
        "max_spread": float(spread.max()) if len(spread) else 0.0,
    }


def merge_repeated(judgments: pd.DataFrame, policy: Policy) -> pd.DataFrame:
    """One row per (query, product) by `policy`, pairs in order of first appearance.

    `fail` returns the frame unchanged: validate then reports the repeated pairs."""
    if policy == "fail" or not judgments.duplicated(KEY).any():
        return judgments
    frame = judgments.reset_index(drop=True)
    grouped = frame.groupby(KEY, sort=False)
    merged = grouped.head(1).copy()
    if policy != "first":
        merged["relevance"] = grouped["relevance"].transform(policy)[merged.index]
    merged["relevance_variance"] = rater_variance(frame, grouped)[merged.index]
    return merged.reset_index(drop=True)


def rater_variance(frame: pd.DataFrame, grouped) -> pd.Series:
    """Per row, its pair's rating variance: between raters (ddof 0) plus, where the source
    reports a variance per rating, their mean (the law of total variance)."""
    between = grouped["relevance"].transform("var", ddof=0)
    repeated = grouped["relevance"].transform("size") > 1
    own = frame.get("relevance_variance")
    if own is None or own.isna().all():
        return between.where(repeated)
    within = grouped["relevance_variance"].transform("mean")
    return (between.where(repeated, 0.0) + within).where(repeated | own.notna())


def apply_policy(judgments: pd.DataFrame, options: dict) -> tuple[pd.DataFrame, dict]:
    """Ingest's step: merged judgments and the manifest's record of what was merged."""
    policy = policy_of(options)
    stats = repeated_stats(judgments, policy)
    if stats["repeated_pairs"]:
        log.info(
            "%d (query, product) pair(s) rated more than once (%.1f%% of them disagree by more "
            "than one grade); %s=%s",
            stats["repeated_pairs"],
            100 * stats["disagreement_over_1_share"],
            OPTION,
            policy,
        )
    return merge_repeated(judgments, policy), stats
