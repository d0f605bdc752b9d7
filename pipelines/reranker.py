"""Stage `reranker`: fine-tune the adapted encoder into a cross-encoder over (query, product).

Two kinds of training groups, each a query and a handful of products scored together with a
listwise softmax cross-entropy (the scores of a group compete for the probability mass):
- graded judgments: the target distribution is proportional to the gain 2^grade - 1, so a
  grade-3 product must outrank a grade-2 one, not merely a grade-0 one;
- clicks: one shown list (session, query); each click is weighted by 1/propensity of its
  position (`pipelines.clicks`, estimated from the training logs by EM), so the model learns
  what shoppers prefer rather than what the old ranking put on top.
`click_share` of each step's groups come from clicks when both kinds exist.

The score is the retriever's similarity (weight learned, starting at 1/temperature) plus the
cross-encoder's output (head starting at zero): see `cross_encoder.CrossEncoder`.

Evaluation reranks the fine-tuned retriever's top `candidates` for every test query and
compares it, query by query, with BM25, the zero-shot encoder and the retriever alone
(paired t-test and Wilcoxon, `pipelines.metrics.paired_test`).

Writes the reranker (`data/models/reranker`, per-query test scores in `eval/`),
`metrics/reranker.json` and the learning curve in `dvclive/reranker`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipelines import metrics as rank_metrics
from pipelines.artifacts import files_hash, staged_dir, write_json, write_parquet
from pipelines.baselines import summarize
from pipelines.clicks import click_weights, estimate_propensities
from pipelines.config import Params
from pipelines.cross_encoder import CrossEncoder, PairTokens, Reranker
from pipelines.encoders import quiet_transformers
from pipelines.encoding import Retriever
from pipelines.engine import Catalogue, SearchEngine
from pipelines.errors import StageInputError
from pipelines.features import product_text
from pipelines.prepare import load_prepared
from pipelines.retriever import require_encoder
from pipelines.training import (
    batch_order,
    fit,
    run_key,
    shard,
    stage_runtime,
    throughput,
    unwrap,
    write_curve,
)

log = logging.getLogger(__name__)

IN_DIR = Path("data/prepared")
ENCODER_DIR = Path("data/models/encoder")
RETRIEVER_DIR = Path("data/models/retriever")
BASELINES_DIR = Path("data/models/baselines")
OUT_DIR = Path("data/models/reranker")
METRICS = Path("metrics/reranker.json")
LIVE_DIR = Path("dvclive/reranker")


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
        sources.append((graded_groups(judged[judged["split"] == "valid"], product_row),
                        counts[0], True))  # fmt: skip
    if propensity is not None:
        valid_pairs = tables["pairs"][tables["pairs"]["split"] == "valid"]
        sources.append((click_groups(valid_pairs, product_row, propensity, cfg.propensity_clip),
                        counts[1], False))  # fmt: skip
    chosen = []
    for groups, per_step, normalize in sources:
        for i in rng.permutation(len(groups))[: VALID_STEPS * per_step]:
            items, targets = sample_group(groups.products[i], groups.targets[i], cfg.group_size,
                                          rng)  # fmt: skip
            chosen.append((groups.queries[i], items, targets, normalize))
    return chosen


def listwise_loss(scores: torch.Tensor, targets: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Softmax cross-entropy of scores against targets (graded: normalised to a distribution;
    clicks: raw inverse-propensity weights, which keeps the estimate unbiased)."""
    weights = targets / targets.sum() if normalize else targets
    return -(weights * torch.log_softmax(scores, dim=0)).sum()


def load_retriever(folder: Path, products: pd.DataFrame, params: Params, device) -> Retriever:
    """The fine-tuned retriever with the catalogue's embeddings (saved ones when current)."""
    if not (folder / "config.json").exists():
        raise StageInputError(f"{folder}: no retriever; run the retriever stage first")
    retriever = Retriever.load(
        folder, str(device), max_len=params.retriever.max_item_len,
        query_max_len=params.retriever.max_query_len,
        batch_size=params.retriever.eval_batch_size,
    )  # fmt: skip
    if not retriever.load_index(folder / "index", products["product_id"].tolist()):
        retriever.index(products["product_id"].tolist(), product_text(products))
    return retriever


def evaluate(
    reranker: Reranker, retriever: Retriever, tables: dict[str, pd.DataFrame], params: Params
) -> pd.DataFrame | None:
    """Per-query test scores of the served path: retriever top-`candidates` → reranker."""
    judged = tables.get("judgments")
    if judged is None or not (judged["split"] == "test").any():
        return None
    engine = SearchEngine(
        retriever, reranker, Catalogue(tables["products"]), candidates=params.reranker.candidates
    )
    qrels = rank_metrics.qrels_from(judged[judged["split"] == "test"])
    queries = list(qrels)
    hits = engine.search(queries, k=params.reranker.candidates)
    ranking = {q: [h.product_id for h in row] for q, row in zip(queries, hits, strict=True)}
    return rank_metrics.per_query(qrels, ranking, params.evaluation.relevant_at)


def compare(
    per_query: pd.DataFrame, others: dict[str, Path], alpha: float, metric: str = "ndcg@10"
) -> dict[str, dict]:
    """Paired tests of the reranker against each other system's per-query scores."""
    result = {}
    for name, path in others.items():
        if not path.exists():
            log.warning("no per-query scores at %s: not compared with %s", path, name)
            continue
        other = pd.read_parquet(path).set_index("query")[metric]
        ours = per_query.set_index("query")[metric]
        common = ours.index.intersection(other.index)
        test = rank_metrics.paired_test(ours[common].to_numpy(), other[common].to_numpy())
        test["significant"] = bool(test["p_ttest"] < alpha and test["mean_diff"] > 0)
        result[f"vs_{name}"] = test
        log.info(
            "reranker vs %s on %s: %+.4f (%.4f vs %.4f, t-test p=%.2g, Wilcoxon p=%.2g, n=%d)",
            name, metric, test["mean_diff"], test["mean_a"], test["mean_b"],
            test["p_ttest"], test["p_wilcoxon"], test["n"],
        )  # fmt: skip
    return result


def skip(reason: str, runtime, out_dir: Path, metrics: Path) -> dict:
    """Leave a marker instead of a model: serving then ranks by the retriever alone."""
    log.warning("reranker skipped: %s", reason)
    result = {"skipped": reason}
    if runtime.is_main:
        with staged_dir(out_dir) as staging:
            write_json(staging / "shopflow.json", {"kind": "reranker", **result})
        write_json(metrics, result)
    return result


def run(
    params: Params, in_dir: Path = IN_DIR, encoder_dir: Path = ENCODER_DIR,
    retriever_dir: Path = RETRIEVER_DIR, baselines_dir: Path = BASELINES_DIR,
    out_dir: Path = OUT_DIR, metrics: Path = METRICS,
) -> dict:  # fmt: skip
    with stage_runtime(params.models.device) as runtime:
        return _run(params, runtime, in_dir, encoder_dir, retriever_dir, baselines_dir,
                    out_dir, metrics)  # fmt: skip


def _run(params, runtime, in_dir, encoder_dir, retriever_dir, baselines_dir, out_dir, metrics):
    from transformers import AutoTokenizer

    quiet_transformers()
    cfg = params.reranker
    require_encoder(encoder_dir)
    tables = load_prepared(in_dir)
    products = tables["products"]
    product_row = {pid: i for i, pid in enumerate(products["product_id"])}

    graded, clicks, propensity = Groups([], [], []), Groups([], [], []), None
    if "judgments" in tables:
        judged = tables["judgments"]
        graded = graded_groups(judged[judged["split"] == "train"], product_row)
    if "pairs" in tables and tables["pairs"]["clicked"].any():
        train_pairs = tables["pairs"][tables["pairs"]["split"] == "train"]
        propensity = estimate_propensities(train_pairs, cfg.max_position)
        clicks = click_groups(train_pairs, product_row, propensity, cfg.propensity_clip)
    if not len(graded) and not len(clicks):
        return skip(
            "no training groups: no graded judgments with a relevant product and no clicked "
            "search lists in the train split (a recommendation-only shop has nothing to rerank)",
            runtime, out_dir, metrics,
        )  # fmt: skip
    n_click = round(cfg.groups_per_step * cfg.click_share) if len(clicks) else 0
    n_graded = cfg.groups_per_step - n_click if len(graded) else 0
    n_click = cfg.groups_per_step - n_graded
    log.info(
        "reranker: %d graded groups, %d click groups; each step %d graded + %d click groups "
        "of up to %d products",
        len(graded), len(clicks), n_graded, n_click, cfg.group_size,
    )  # fmt: skip

    tokenizer = AutoTokenizer.from_pretrained(str(encoder_dir))
    pairs = PairTokens(tokenizer, cfg.max_len, cfg.max_query_len)
    product_tokens = pairs.pieces(product_text(products))
    all_queries = sorted(set(graded.queries) | set(clicks.queries))
    query_tokens = dict(zip(all_queries, pairs.pieces(all_queries), strict=True))
    retriever = load_retriever(retriever_dir, products, params, runtime.device)
    query_vectors = dict(
        zip(all_queries, retriever.encode(all_queries, max_len=params.retriever.max_query_len),
            strict=True)
    )  # fmt: skip
    valid = validation_groups(tables, product_row, propensity, (n_graded, n_click), params)
    unseen = sorted({query for query, *_ in valid} - set(query_tokens))
    if unseen:  # encoded apart: the training queries' tokens and vectors stay as they were
        query_tokens |= dict(zip(unseen, pairs.pieces(unseen), strict=True))
        query_vectors |= dict(zip(
            unseen, retriever.encode(unseen, max_len=params.retriever.max_query_len), strict=True
        ))  # fmt: skip
    torch.manual_seed(params.seed)
    model = CrossEncoder.from_pretrained(encoder_dir, 1.0 / params.retriever.temperature)
    model = model.to(runtime.device)
    key = run_key(
        data=files_hash(in_dir, "*.parquet"), encoder=files_hash(encoder_dir, "*.safetensors"),
        retriever=files_hash(retriever_dir, "*.safetensors"), params=cfg.model_dump(),
        seed=params.seed, world=runtime.world_size,
    )  # fmt: skip
    tokens = 0
    dev = runtime.device

    def step_groups(step: int) -> list[tuple[str, np.ndarray, np.ndarray, bool]]:
        rng = np.random.default_rng([params.seed, step])
        chosen = []
        for source, count, normalize, salt in ((graded, n_graded, True, 0),
                                                (clicks, n_click, False, 1)):  # fmt: skip
            if not count:
                continue
            index = batch_order(len(source), count, params.seed * 2 + salt, step)
            for i in shard(index, runtime).tolist():
                items, targets = sample_group(
                    source.products[i], source.targets[i], cfg.group_size, rng
                )
                chosen.append((source.queries[i], items, targets, normalize))
        return chosen

    def groups_loss(forward, groups, count_tokens: bool = True) -> torch.Tensor:
        nonlocal tokens
        joined = [
            pairs.join(query_tokens[q], product_tokens[p])
            for q, items, _, _ in groups
            for p in items
        ]
        ids, types, mask = pairs.pad(joined)
        prior = torch.as_tensor(
            np.concatenate([retriever.item_vectors[items] @ query_vectors[q]
                            for q, items, _, _ in groups]), device=dev,
        )  # fmt: skip
        tokens += int(mask.sum()) if count_tokens else 0
        with runtime.autocast():
            scores = forward(ids.to(dev), types.to(dev), mask.to(dev), prior)
        losses, at = [], 0
        for _, items, targets, normalize in groups:
            part = scores[at : at + len(items)]
            at += len(items)
            target = torch.as_tensor(targets, dtype=torch.float32, device=dev)
            losses.append(listwise_loss(part, target, normalize))
        return torch.stack(losses).mean()

    def loss_of_step(forward, step: int) -> torch.Tensor:
        return groups_loss(forward, step_groups(step))

    @torch.no_grad()
    def validation_loss(cross_encoder) -> float:
        cross_encoder.eval()
        size = cfg.groups_per_step
        return float(np.mean([groups_loss(cross_encoder, valid[a : a + size], False).item()
                              for a in range(0, len(valid), size)]))  # fmt: skip

    fitted = fit(
        stage="reranker", model=model, runtime=runtime, cfg=cfg, seed=params.seed, key=key,
        loss_of_step=loss_of_step, validate=validation_loss if valid else None,
    )  # fmt: skip
    if not runtime.is_main:
        return {}
    reranker = Reranker(unwrap(model), pairs, runtime.device, cfg.eval_batch_size)
    per_query = evaluate(reranker, retriever, tables, params)
    result: dict = {
        "train": {
            "graded_groups": len(graded), "click_groups": len(clicks), "steps": cfg.steps,
            "resumed_from_step": fitted.resumed_from, "final_loss": fitted.history[-1][1],
            "valid_loss": fitted.valid_history[-1][1] if fitted.valid_history else None,
            "device": str(runtime.device), "world_size": runtime.world_size,
            **throughput(fitted, cfg.groups_per_step * cfg.group_size, tokens,
                         runtime.world_size),
        },
    }  # fmt: skip
    if propensity is not None:
        result["propensity"] = {str(k): round(float(v), 4) for k, v in propensity.items()}
    if per_query is not None:
        result["test"] = summarize({"search": per_query})
        result["compare"] = compare(
            per_query,
            {"bm25": baselines_dir / "eval" / "bm25_search.parquet",
             "zero_shot_encoder": baselines_dir / "eval" / "zero_shot_encoder_search.parquet",
             "retriever": retriever_dir / "eval" / "search.parquet"},
            params.evaluation.significance,
        )  # fmt: skip
    with staged_dir(out_dir) as staging:
        unwrap(model).save(staging, tokenizer)
        write_json(
            staging / "shopflow.json",
            {"kind": "reranker", "max_len": cfg.max_len, "max_query_len": cfg.max_query_len,
             "candidates": cfg.candidates, "base_model": params.models.base,
             "prior_weight": float(unwrap(model).prior_weight.detach()),
             "metrics": result.get("test", {})},
        )  # fmt: skip
        if per_query is not None:
            write_parquet(per_query, staging / "eval" / "search.parquet")
        if propensity is not None:
            write_parquet(propensity.reset_index(), staging / "propensity.parquet")
    write_json(metrics, result)
    flat = {f"search/{m}": v for m, v in result.get("test", {}).get("search", {}).items()}
    write_curve(LIVE_DIR, {"train/listwise_loss": fitted.history,
                           "valid/listwise_loss": fitted.valid_history}, flat)  # fmt: skip
    fitted.done()
    log.info("reranker on the test split: %s", result.get("test"))
    return result
