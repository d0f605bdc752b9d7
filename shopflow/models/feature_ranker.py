"""The feature ranker: LightGBM's LambdaMART over the `FEATURES` of each candidate.

Learning to rank over a handful of signals (BM25 and dense scores and ranks, title match,
price, popularity) is the standard final stage of e-commerce search: it learns how to weigh
lexical against semantic evidence per query shape, and it scores 50 candidates in well under
a millisecond, where the cross-encoder needs most of a second on a CPU. LightGBM is used as
is (`lambdarank`, NDCG@10); this module only fixes its inputs: integer labels in thirds of a
grade above the scale's bottom (the mean of three raters is a multiple of 1/3) with linear
gains, as the evaluation's NDCG counts them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shopflow.core.artifacts import read_json, write_json
from shopflow.core.config import BoostingConfig
from shopflow.core.errors import StageInputError

log = logging.getLogger(__name__)

# How the query's stems sit in the title (`engine.ranking_features`: one pass computes them all)
PHRASE_FEATURES = (
    "title_stem_share",
    "title_bigram_share",
    "number_share",
    "query_numbers",
    "title_stems",
    "first_match",
)
# What a newly fitted ranker reads, in order (computed by
# `engine.ranking_features.FeatureExtractor`, which computes any of these by name: a ranker
# saved with fewer of them, before the per-field BM25 scores, still loads and scores).
FEATURES = (
    "dense_cosine",
    "dense_rank",
    "bm25",
    "bm25_rank",
    "bm25_title",
    "bm25_brand",
    "bm25_category",
    "bm25_attributes",
    "bm25_description",
    "bm25_ratio",
    "cosine_gap",
    "title_term_share",
    *PHRASE_FEATURES,
    "title_has_all_terms",
    "query_terms",
    "log_price",
    "popularity",
)

MODEL = "model.txt"
INFO = "shopflow.json"
LABEL_STEPS = 3  # labels count thirds of a grade


@dataclass
class RankingData:
    """Candidate lists of queries: one row of features per candidate, an integer label each,
    and how many consecutive rows belong to each query."""

    features: np.ndarray
    labels: np.ndarray
    groups: list[int]


def labels_of(grades: np.ndarray, lowest: float) -> np.ndarray:
    """Integer LambdaMART labels: thirds of a grade above the lowest (unjudged: the lowest)."""
    return np.rint((np.asarray(grades, float) - lowest) * LABEL_STEPS).clip(min=0).astype(int)


class FeatureRanker:
    """Scores candidates from their features; fitted with early stopping, saved as text."""

    def __init__(
        self,
        booster,
        curve: dict[str, list[float]] | None = None,
        features: tuple[str, ...] = FEATURES,
    ) -> None:
        self.booster = booster  # a lightgbm.Booster
        self.features = features  # what it reads, in order
        # NDCG@10 after each tree on the training and the stopping lists (fitted models only)
        self.curve = curve or {}

    @classmethod
    def fit(
        cls,
        train: RankingData,
        stop: RankingData,
        cfg: BoostingConfig,
        seed: int,
        features: tuple[str, ...] = FEATURES,
    ) -> tuple[FeatureRanker, dict]:
        """LambdaMART on `train` (columns named by `features`), stopped when NDCG@10 on `stop`
        (other queries or customers) stops rising."""
        import lightgbm

        top = int(max(train.labels.max(initial=0), stop.labels.max(initial=0)))
        options = {
            "objective": "lambdarank",
            "metric": "ndcg",
            "ndcg_eval_at": [10],
            "label_gain": [i / LABEL_STEPS for i in range(top + 1)],
            "learning_rate": cfg.learning_rate,
            "num_leaves": cfg.leaves,
            "min_data_in_leaf": cfg.min_data_in_leaf,
            "seed": seed,
            "deterministic": True,
            "force_row_wise": True,
            "num_threads": 2,
            "verbose": -1,
        }
        data = lightgbm.Dataset(train.features, train.labels, group=train.groups)
        held = lightgbm.Dataset(stop.features, stop.labels, group=stop.groups, reference=data)
        curve: dict = {}
        booster = lightgbm.train(
            options,
            data,
            num_boost_round=cfg.trees,
            valid_sets=[data, held],  # early stopping watches `stop` only
            valid_names=["train", "stop"],
            callbacks=[
                lightgbm.early_stopping(cfg.early_stopping, verbose=False),
                lightgbm.record_evaluation(curve),
            ],
        )
        ndcg = curve["stop"]["ndcg@10"]
        gain = booster.feature_importance("gain")
        info = {
            "trees": booster.best_iteration,
            "stop_ndcg@10": round(float(ndcg[booster.best_iteration - 1]), 4),
            "first_tree_ndcg@10": round(float(ndcg[0]), 4),
            "train_queries": len(train.groups),
            "stop_queries": len(stop.groups),
            "importance": {
                f: round(float(g / max(gain.sum(), 1e-12)), 4)
                for f, g in sorted(zip(features, gain, strict=True), key=lambda fg: -fg[1])
            },
        }
        log.info("feature ranker: %s", info)
        fitted = {name: [float(v) for v in curve[name]["ndcg@10"]] for name in curve}
        return cls(booster, fitted, features), info

    def score(self, features: np.ndarray) -> np.ndarray:
        if not len(features):
            return np.empty(0, np.float32)
        return self.booster.predict(features, num_threads=1).astype(np.float32)

    def save(self, folder: Path, info: dict) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(folder / MODEL), num_iteration=self.booster.best_iteration)
        write_json(
            folder / INFO, {"kind": "feature_ranker", "features": list(self.features), **info}
        )

    @classmethod
    def load(
        cls, folder: Path, known: tuple[str, ...] = FEATURES, stage: str = "reranker"
    ) -> FeatureRanker:
        """A saved ranker; one reading a feature this code does not compute (`known`) is an
        error naming the `stage` to re-run."""
        import lightgbm

        if not (folder / MODEL).exists():
            raise StageInputError(f"{folder}: no feature ranker ({MODEL}); re-run the {stage}")
        saved = read_json(folder / INFO).get("features")
        if not isinstance(saved, list) or not set(saved) <= set(known):
            raise StageInputError(
                f"{folder}: the feature ranker reads {saved}, this code computes only "
                f"{list(known)}: re-run the {stage} stage"
            )
        return cls(lightgbm.Booster(model_file=str(folder / MODEL)), features=tuple(saved))
