"""Fine-tuning the cross-encoder reranker: its listwise groups, loss and validation (the
reranker stage's task).

Two kinds of training groups, each a query and a handful of products scored together with a
listwise softmax cross-entropy (`losses.listwise_loss`: the scores of a group compete for
the probability mass):
- graded judgments: the target distribution is proportional to the gain 2^grade - 1, so a
  grade-3 product must outrank a grade-2 one, not merely a grade-0 one;
- clicks: one shown list (session, query); each click is weighted by 1/propensity of its
  position (`shopflow.models.propensity`, estimated from the training logs by EM), so the
  model learns what shoppers prefer rather than what the old ranking put on top.
`click_share` of each step's groups come from clicks when both kinds exist.

The score is the retriever's similarity (weight learned, starting at 1/temperature) plus the
cross-encoder's output (head starting at zero): see `models.cross_encoder.CrossEncoderModule`.
Evaluation reranks the fine-tuned retriever's top `candidates` for every test query through
`engine.search.SearchEngine` (the code the service runs) and compares it, query by query,
with BM25, the zero-shot encoder and the retriever alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from shopflow.core import paths
from shopflow.core.artifacts import files_hash, write_json, write_parquet
from shopflow.core.config import Params, RerankerConfig
from shopflow.data.features import product_text
from shopflow.data.tables import Tables, read_prepared
from shopflow.engine.search import Catalogue, SearchEngine
from shopflow.evaluation.offline import compare_with, search_scores, summarize, test_qrels
from shopflow.models.base import quiet_transformers, require_model
from shopflow.models.bi_encoder import BiEncoder
from shopflow.models.cross_encoder import CrossEncoder, CrossEncoderModule, PairTokens
from shopflow.models.propensity import click_weights, estimate_propensities
from shopflow.training.loop import Fitted, Runtime, batch_order, shard
from shopflow.training.losses import listwise_loss
from shopflow.training.trainer import NothingToTrainError, TrainingTask, training_figures

log = logging.getLogger(__name__)

Group = tuple[str, np.ndarray, np.ndarray, bool]  # query, product rows, targets, normalise


@dataclass
class Groups:
    """Listwise training groups: a query, its products (row numbers) and their targets."""

    queries: list[str]
    products: list[np.ndarray]
    targets: list[np.ndarray]  # graded: gains; clicks: inverse-propensity click weights

    def __len__(self) -> int:
        return len(self.queries)


def graded_groups(judged: pd.DataFrame, product_row: dict[str, int]) -> Groups:
    """One group per training query whose judged products carry a positive gain."""
    groups = Groups([], [], [])
    for query, frame in judged.groupby("query", sort=True):
        gains = np.power(2.0, frame["relevance"].to_numpy(float)) - 1.0
        if gains.max() <= 0 or len(frame) < 2:
            continue
        groups.queries.append(query)
        groups.products.append(frame["product_id"].map(product_row).to_numpy(int))
        groups.targets.append(gains)
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


VALID_STEPS = 4  # steps' worth of valid-split groups scored at each checkpoint


def validation_groups(
    tables: dict[str, pd.DataFrame],
    product_row: dict[str, int],
    propensity: pd.Series | None,
    counts: tuple[int, int],
    params: Params,
) -> list[tuple[str, np.ndarray, np.ndarray, bool]]:
    """A fixed sample of valid-split groups, graded and click ones in the training mix
    (`counts` per step), scored by the validation curve at every checkpoint."""
    cfg = params.reranker
    rng = np.random.default_rng(params.seed)
    sources = []
    if "judgments" in tables:
        judged = tables["judgments"]
        sources.append(
            (graded_groups(judged[judged["split"] == "valid"], product_row), counts[0], True)
        )
    if propensity is not None:
        valid_pairs = tables["pairs"][tables["pairs"]["split"] == "valid"]
        sources.append(
            (
                click_groups(valid_pairs, product_row, propensity, cfg.propensity_clip),
                counts[1],
                False,
            )
        )
    chosen = []
    for groups, per_step, normalize in sources:
        for i in rng.permutation(len(groups))[: VALID_STEPS * per_step]:
            items, targets = sample_group(
                groups.products[i], groups.targets[i], cfg.group_size, rng
            )
            chosen.append((groups.queries[i], items, targets, normalize))
    return chosen


def propensities_of(pairs: pd.DataFrame, max_position: int) -> pd.Series | None:
    """Examination propensity per position from the training clicks (None without clicks)."""
    if not pairs["clicked"].any():
        return None
    return estimate_propensities(pairs[pairs["split"] == "train"], max_position)


class CrossEncoderTask(TrainingTask[CrossEncoderModule]):
    """The reranker stage: listwise groups from grades and debiased clicks, evaluated as the
    second step of the served search."""

    stage = "reranker"
    curve = "listwise_loss"
    output = paths.RERANKER

    @property
    def knobs(self) -> RerankerConfig:
        return self.params.reranker

    @property
    def samples_per_step(self) -> int:
        return self.knobs.groups_per_step * self.knobs.group_size

    def setup(self, runtime: Runtime) -> CrossEncoderModule:
        from transformers import AutoTokenizer

        quiet_transformers()
        cfg, params = self.knobs, self.params
        require_model(paths.ENCODER, "pretrain")
        self.tables = tables = read_prepared()
        products = tables["products"]
        product_row = {pid: i for i, pid in enumerate(products["product_id"])}
        self.graded, self.clicks, self.propensity = Groups([], [], []), Groups([], [], []), None
        if "judgments" in tables:
            judged = tables["judgments"]
            self.graded = graded_groups(judged[judged["split"] == "train"], product_row)
        if "pairs" in tables:
            self.propensity = propensities_of(tables["pairs"], cfg.max_position)
        if self.propensity is not None:
            train_pairs = tables["pairs"][tables["pairs"]["split"] == "train"]
            self.clicks = click_groups(
                train_pairs, product_row, self.propensity, cfg.propensity_clip
            )
        if not len(self.graded) and not len(self.clicks):
            raise NothingToTrainError(
                "no training groups: no graded judgments with a relevant product and no clicked "
                "search lists in the train split (a recommendation-only shop has nothing to "
                "rerank)"
            )
        n_click = round(cfg.groups_per_step * cfg.click_share) if len(self.clicks) else 0
        self.n_graded = cfg.groups_per_step - n_click if len(self.graded) else 0
        self.n_click = cfg.groups_per_step - self.n_graded
        log.info(
            "reranker: %d graded groups, %d click groups; each step %d graded + %d click groups "
            "of up to %d products",
            len(self.graded),
            len(self.clicks),
            self.n_graded,
            self.n_click,
            cfg.group_size,
        )
        self.tokenizer = AutoTokenizer.from_pretrained(str(paths.ENCODER))
        self.pairs = PairTokens(self.tokenizer, cfg.max_len, cfg.max_query_len)
        texts = product_text(products)
        self.product_tokens = self.pairs.pieces(texts)
        queries = sorted(set(self.graded.queries) | set(self.clicks.queries))
        self.query_tokens = dict(zip(queries, self.pairs.pieces(queries), strict=True))
        self.retriever = BiEncoder.load_indexed(
            paths.RETRIEVER,
            products["product_id"].tolist(),
            texts,
            runtime.device,
            max_len=params.retriever.max_item_len,
            query_max_len=params.retriever.max_query_len,
            batch_size=params.retriever.eval_batch_size,
        )
        self.query_vectors = dict(zip(queries, self.embed(queries), strict=True))
        counts = (self.n_graded, self.n_click)
        self.valid = validation_groups(tables, product_row, self.propensity, counts, params)
        unseen = sorted({query for query, *_ in self.valid} - set(self.query_tokens))
        if unseen:  # encoded apart: the training queries' tokens and vectors stay as they were
            self.query_tokens |= dict(zip(unseen, self.pairs.pieces(unseen), strict=True))
            self.query_vectors |= dict(zip(unseen, self.embed(unseen), strict=True))
        torch.manual_seed(params.seed)
        prior_weight = 1.0 / params.retriever.temperature
        model = CrossEncoderModule.from_pretrained(paths.ENCODER, prior_weight)
        self.runtime = runtime
        return model.to(runtime.device)

    def embed(self, queries: list[str]) -> np.ndarray:
        return self.retriever.encode(queries, max_len=self.params.retriever.max_query_len)

    def key(self, runtime: Runtime) -> dict[str, object]:
        return {
            "data": files_hash(paths.PREPARED, "*.parquet"),
            "encoder": files_hash(paths.ENCODER, "*.safetensors"),
            "retriever": files_hash(paths.RETRIEVER, "*.safetensors"),
            "params": self.knobs.model_dump(),
            "seed": self.params.seed,
            "world": runtime.world_size,
        }

    def step_groups(self, step: int) -> list[Group]:
        """This rank's groups of global step `step`, each sampled down to `group_size`."""
        seed, size = self.params.seed, self.knobs.group_size
        rng = np.random.default_rng([seed, step])
        chosen = []
        sources = ((self.graded, self.n_graded, True, 0), (self.clicks, self.n_click, False, 1))
        for source, count, normalize, salt in sources:
            if not count:
                continue
            index = batch_order(len(source), count, seed * 2 + salt, step)
            for i in shard(index, self.runtime).tolist():
                items, targets = sample_group(source.products[i], source.targets[i], size, rng)
                chosen.append((source.queries[i], items, targets, normalize))
        return chosen

    def groups_loss(
        self, forward: torch.nn.Module, groups: list[Group], count_tokens: bool = True
    ) -> torch.Tensor:
        """The mean listwise loss of `groups`, all pairs scored in one forward pass."""
        dev = self.runtime.device
        joined = [
            self.pairs.join(self.query_tokens[q], self.product_tokens[p])
            for q, items, _, _ in groups
            for p in items
        ]
        ids, types, mask = self.pairs.pad(joined)
        vectors = self.retriever.item_vectors
        prior = torch.as_tensor(
            np.concatenate([vectors[items] @ self.query_vectors[q] for q, items, _, _ in groups]),
            device=dev,
        )
        if count_tokens:
            self.tokens += int(mask.sum())
        with self.runtime.autocast():
            scores = forward(ids.to(dev), types.to(dev), mask.to(dev), prior)
        losses, at = [], 0
        for _, items, targets, normalize in groups:
            part = scores[at : at + len(items)]
            at += len(items)
            target = torch.as_tensor(targets, dtype=torch.float32, device=dev)
            losses.append(listwise_loss(part, target, normalize))
        return torch.stack(losses).mean()

    def loss(self, forward: torch.nn.Module, step: int) -> torch.Tensor:
        return self.groups_loss(forward, self.step_groups(step))

    def validator(self) -> Callable[[torch.nn.Module], float] | None:
        if not self.valid:
            return None
        size = self.knobs.groups_per_step

        @torch.no_grad()
        def validation_loss(cross_encoder: torch.nn.Module) -> float:
            cross_encoder.eval()
            losses = [
                self.groups_loss(cross_encoder, self.valid[a : a + size], False).item()
                for a in range(0, len(self.valid), size)
            ]
            return float(np.mean(losses))

        return validation_loss

    def evaluate(self, model: CrossEncoderModule, fitted: Fitted, runtime: Runtime) -> dict:
        cfg = self.knobs
        reranker = CrossEncoder(model, self.pairs, runtime.device, cfg.eval_batch_size)
        self.per_query = search_test_scores(reranker, self.retriever, self.tables, self.params)
        result: dict = {
            "train": {
                "graded_groups": len(self.graded),
                "click_groups": len(self.clicks),
                **training_figures(self, fitted, runtime),
            },
        }
        if self.propensity is not None:
            result["propensity"] = {str(k): round(float(v), 4) for k, v in self.propensity.items()}
        if self.per_query is not None:
            result["test"] = summarize({"search": self.per_query})
            result["compare"] = compare_with(
                self.per_query,
                {
                    "bm25": paths.evaluation_of(paths.BASELINES) / "bm25_search.parquet",
                    "zero_shot_encoder": paths.evaluation_of(paths.BASELINES)
                    / "zero_shot_encoder_search.parquet",
                    "retriever": paths.evaluation_of(paths.RETRIEVER) / "search.parquet",
                },
                self.params.evaluation.significance,
            )
        log.info("reranker on the test split: %s", result.get("test"))
        return result

    def save(self, model: CrossEncoderModule, folder: Path, result: dict) -> None:
        cfg = self.knobs
        model.save(folder, self.tokenizer)
        meta = {
            "kind": "reranker",
            "max_len": cfg.max_len,
            "max_query_len": cfg.max_query_len,
            "candidates": cfg.candidates,
            "base_model": self.params.models.base,
            "prior_weight": float(model.prior_weight.detach()),
            "metrics": result.get("test", {}),
        }
        write_json(folder / "shopflow.json", meta)
        if self.per_query is not None:
            write_parquet(self.per_query, paths.evaluation_of(folder) / "search.parquet")
        if self.propensity is not None:
            write_parquet(self.propensity.reset_index(), folder / "propensity.parquet")

    def summary(self, result: dict) -> dict[str, float]:
        return {f"search/{m}": v for m, v in result.get("test", {}).get("search", {}).items()}


def search_test_scores(
    reranker: CrossEncoder, retriever: BiEncoder, tables: Tables, params: Params
) -> pd.DataFrame | None:
    """Per-query test scores of the served path: retriever top-`candidates` → reranker."""
    qrels = test_qrels(tables)
    if not qrels:
        return None
    candidates = params.reranker.candidates
    engine = SearchEngine(retriever, reranker, Catalogue(tables["products"]), candidates=candidates)
    queries = list(qrels)
    hits = engine.search(queries, k=candidates)
    ranked = [[(h.product_id, h.score) for h in row] for row in hits]
    return search_scores(qrels, queries, ranked, params)
