"""Stage `retriever`: fine-tune the adapted encoder into a two-tower retriever.

Both towers share the encoder (`pipelines.encoding.TextEncoder`). The query tower reads the
query, optionally followed by the titles of the user's recent items (`features.query_text`);
with no query it reads the recent items alone, which is how the same model recommends. The
item tower reads the product text.

Training examples (train split only), each a (query text, positive product, hard negative):
- judgments: a query and a product graded relevant; the hard negative is a BM25 hit for the
  query that was not graded relevant (lexically close, yet wrong: what BM25 gets wrong);
- clicks: a query (with the session's history for `history_share` of them) and a clicked
  product; the hard negative is a product shown in the same list and not clicked;
- purchases: the user's recent items alone and the product bought next; in-batch negatives.
The loss is InfoNCE over the batch: every other positive and every hard negative compete with
the true product. A product that is the positive of two rows of a batch is not counted as a
negative for either (it would teach the model to push a right answer away).

Writes the retriever (`data/models/retriever`, with per-query test scores in `eval/`),
`metrics/retriever.json` and the learning curve in `dvclive/retriever`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipelines import metrics as rank_metrics
from pipelines.artifacts import files_hash, staged_dir, write_json, write_parquet
from pipelines.baselines import summarize
from pipelines.config import Params
from pipelines.encoders import quiet_transformers
from pipelines.encoding import Retriever, TextEncoder, pad, tokenize, top_k
from pipelines.errors import StageInputError
from pipelines.features import product_text, query_text
from pipelines.prepare import load_prepared
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
OUT_DIR = Path("data/models/retriever")
METRICS = Path("metrics/retriever.json")
LIVE_DIR = Path("dvclive/retriever")
NO_NEGATIVE = -1


@dataclass
class Examples:
    """Training examples: query texts and product row numbers (NO_NEGATIVE: in-batch only)."""

    queries: list[str]
    positives: np.ndarray
    negatives: np.ndarray
    sources: np.ndarray

    def __len__(self) -> int:
        return len(self.queries)

    def subset(self, index: np.ndarray) -> Examples:
        return Examples([self.queries[i] for i in index], self.positives[index],
                        self.negatives[index], self.sources[index])  # fmt: skip


def judgment_examples(
    judged: pd.DataFrame, bm25_hits: dict[str, list[str]], relevant_at: float,
    rng: np.random.Generator,
) -> pd.DataFrame:  # fmt: skip
    """Relevant (query, product) pairs, each with a BM25 hit not graded relevant as negative."""
    relevant = judged[judged["relevance"] >= relevant_at]
    good = relevant.groupby("query")["product_id"].agg(set).to_dict()
    rows = []
    for query, product in relevant[["query", "product_id"]].itertuples(index=False):
        wrong = [p for p in bm25_hits.get(query, ()) if p not in good[query]]
        negative = wrong[rng.integers(len(wrong))] if wrong else None
        rows.append((query, product, negative, "judgments"))
    return pd.DataFrame(rows, columns=["query_text", "positive", "negative", "source"])


def click_examples(
    pairs: pd.DataFrame, histories: pd.DataFrame, titles: dict[str, str], history_items: int,
    history_share: float, rng: np.random.Generator,
) -> pd.DataFrame:  # fmt: skip
    """Clicked (query, product) pairs; negative: shown in the same list and not clicked."""
    key = ["session_id", "query"]
    skipped = pairs[~pairs["clicked"]].groupby(key)["product_id"].agg(list).to_dict()
    history = dict(zip(histories["session_id"], histories["history"], strict=True))
    clicked = pairs[pairs["clicked"]]
    rows = []
    for session, query, product in clicked[[*key, "product_id"]].itertuples(index=False):
        shown = skipped.get((session, query), ())
        negative = shown[rng.integers(len(shown))] if len(shown) else None
        recent = history.get(session)
        if recent is not None and len(recent) and rng.random() < history_share:
            text = query_text(query, [titles.get(p, "") for p in recent], history_items)
        else:
            text = query
        rows.append((text, product, negative, "clicks"))
    return pd.DataFrame(rows, columns=["query_text", "positive", "negative", "source"])


def history_texts(
    histories: Sequence[Sequence[str]], titles: dict[str, str], history_items: int
) -> list[str]:
    """The query tower's input for recommendation: the titles of each history's latest items."""
    return [query_text(None, [titles.get(p, "") for p in h], history_items) for h in histories]


def purchase_examples(
    sequences: pd.DataFrame, titles: dict[str, str], history_items: int
) -> pd.DataFrame:
    """Recent items alone → the product bought next (the recommendation task)."""
    texts = history_texts(sequences["history"], titles, history_items)
    return pd.DataFrame(
        {"query_text": texts, "positive": sequences["product_id"].to_numpy(),
         "negative": None, "source": "purchases"}
    )  # fmt: skip


def training_examples(
    tables: dict[str, pd.DataFrame],
    params: Params,
    bm25_hits: dict[str, list[str]],
    split: str = "train",
) -> Examples:
    """Every source present in the prepared data, one split (train), capped per source."""
    cfg = params.retriever
    rng = np.random.default_rng(params.seed)
    products = tables["products"]
    titles = dict(zip(products["product_id"], products["title"], strict=True))
    frames = []
    if "judgments" in tables:
        judged = tables["judgments"][tables["judgments"]["split"] == split]
        frames.append(judgment_examples(judged, bm25_hits, params.evaluation.relevant_at, rng))
    if "pairs" in tables:
        pairs = tables["pairs"][tables["pairs"]["split"] == split]
        histories = tables.get("histories", pd.DataFrame(columns=["session_id", "history"]))
        frames.append(
            click_examples(pairs, histories, titles, cfg.history_items, cfg.history_share, rng)
        )
    if "sequences" in tables:
        sequences = tables["sequences"][tables["sequences"]["split"] == split]
        frames.append(purchase_examples(sequences, titles, cfg.history_items))
    frames = [f for f in frames if len(f)]
    if not frames:
        raise StageInputError(
            f"retriever: no examples (no relevant judgments, clicks or purchases in the {split} "
            "split)"
        )
    capped = [
        f.sample(n=cfg.max_examples_per_source, random_state=params.seed)
        if len(f) > cfg.max_examples_per_source
        else f
        for f in frames
    ]
    examples = pd.concat(capped, ignore_index=True)
    row = {pid: i for i, pid in enumerate(products["product_id"])}
    negatives = examples["negative"].map(row).fillna(NO_NEGATIVE).astype(int)
    counts = examples["source"].value_counts().to_dict()
    log.info(
        "retriever: %d %s examples %s, %.0f%% with a hard negative",
        len(examples), split, counts, 100 * (negatives >= 0).mean(),
    )  # fmt: skip
    return Examples(
        queries=examples["query_text"].tolist(),
        positives=examples["positive"].map(row).to_numpy(int),
        negatives=negatives.to_numpy(),
        sources=examples["source"].to_numpy(),
    )


def contrastive_loss(
    queries: torch.Tensor, items: torch.Tensor, positives: torch.Tensor,
    candidates: torch.Tensor, temperature: float,
) -> torch.Tensor:  # fmt: skip
    """InfoNCE: row i's positive is item i; items equal to row i's positive elsewhere are masked.

    `positives` holds the product row of each query's positive, `candidates` the product row
    of every item column (the positives first, then the hard negatives).
    """
    logits = queries @ items.T / temperature
    duplicate = candidates.unsqueeze(0) == positives.unsqueeze(1)
    own = torch.arange(len(positives), device=logits.device)
    duplicate[own, own] = False
    logits = logits.masked_fill(duplicate, float("-inf"))
    return torch.nn.functional.cross_entropy(logits, own)


VALID_BATCHES = 4  # valid-split batches scored at each checkpoint: the validation curve


def validation_examples(tables: dict[str, pd.DataFrame], params: Params) -> Examples | None:
    """A fixed sample of valid-split examples, in-batch negatives only; None when the split
    has none. The same batches at every checkpoint make the curve's points comparable."""
    try:
        examples = training_examples(tables, params, {}, split="valid")
    except StageInputError:
        return None
    size = min(len(examples), VALID_BATCHES * params.retriever.batch_size)
    return examples.subset(np.random.default_rng(params.seed).permutation(len(examples))[:size])


PRIOR_WEIGHTS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0)
MAX_VALID_HISTORIES = 2000


def fit_prior_weight(retriever: Retriever, tables: dict[str, pd.DataFrame], params: Params) -> dict:
    """Weight of the popularity prior in recommendations, chosen on the valid split.

    Bought-next is dominated by best-sellers in many shops (on the synthetic one popularity
    alone has twice the retriever's HitRate@10); the user tower alone cannot know that. The
    grid includes 0, so a shop where popularity does not help keeps the pure retriever.
    """
    from pipelines.baselines import popularity, popularity_prior

    empty_pairs = pd.DataFrame(columns=["split", "label", "product_id"])
    sequences = tables.get("sequences")
    if sequences is None or not (sequences["split"] == "valid").any():
        return {"weight": 0.0, "reason": "no valid purchases to fit it on"}
    popular = popularity(tables.get("pairs", empty_pairs), sequences)
    retriever.item_prior = popularity_prior(popular, retriever.item_ids)
    valid = sequences[sequences["split"] == "valid"]
    if len(valid) > MAX_VALID_HISTORIES:
        valid = valid.sample(MAX_VALID_HISTORIES, random_state=params.seed)
    titles = dict(zip(tables["products"]["product_id"], tables["products"]["title"], strict=True))
    texts = history_texts(valid["history"], titles, params.retriever.history_items)
    vectors = retriever.encode(texts, "embedding valid histories", retriever.query_max_len)
    banned = retriever.banned([list(h) for h in valid["history"]])
    targets = valid["product_id"].tolist()
    hit_rates = {}
    for weight in PRIOR_WEIGHTS:
        bias = weight * retriever.item_prior if weight else None
        hits = top_k(vectors, retriever.item_vectors, retriever.item_ids, 10, banned, bias)
        recs = [[pid for pid, _ in row] for row in hits]
        hit_rates[weight] = float(rank_metrics.next_item(targets, recs)["hit@10"].mean())
    best = max(PRIOR_WEIGHTS, key=lambda w: (hit_rates[w], -w))
    retriever.prior_weight = best
    log.info("popularity prior weight %.2f (valid HitRate@10 %s)", best,
             ", ".join(f"{w:g}: {h:.4f}" for w, h in hit_rates.items()))  # fmt: skip
    return {"weight": best, "valid_hit@10": {str(w): round(h, 4) for w, h in hit_rates.items()},
            "n": len(valid)}  # fmt: skip


def evaluate(retriever: Retriever, tables: dict[str, pd.DataFrame], params: Params) -> dict:
    """Test-split search and recommendation scores, per query/example (for paired tests);
    `retriever` has the catalogue indexed (and its popularity prior fitted)."""
    products = tables["products"]
    out: dict[str, pd.DataFrame] = {}
    judged = tables.get("judgments")
    if judged is not None and (judged["split"] == "test").any():
        qrels = rank_metrics.qrels_from(judged[judged["split"] == "test"])
        queries = list(qrels)
        hits = retriever.search(queries, k=100)
        ranking = {q: [pid for pid, _ in h] for q, h in zip(queries, hits, strict=True)}
        out["search"] = rank_metrics.per_query(qrels, ranking, params.evaluation.relevant_at)
    sequences = tables.get("sequences")
    if sequences is not None and (sequences["split"] == "test").any():
        test = sequences[sequences["split"] == "test"]
        titles = dict(zip(products["product_id"], products["title"], strict=True))
        texts = history_texts(test["history"], titles, params.retriever.history_items)
        exclude = [list(h) for h in test["history"]] if params.evaluation.exclude_history else None
        hits = retriever.search(texts, k=10, exclude=exclude, bias=retriever.recommend_bias)
        out["recommend"] = rank_metrics.next_item(
            test["product_id"].tolist(), [[pid for pid, _ in h] for h in hits]
        )
    return out


def require_encoder(folder: Path) -> None:
    if not (folder / "config.json").exists():
        raise StageInputError(f"{folder}: no encoder; run the pretrain stage first")


def bm25_negatives(tables: dict[str, pd.DataFrame], depth: int) -> dict[str, list[str]]:
    from pipelines.baselines import BM25

    judged = tables.get("judgments")
    if judged is None or not (judged["split"] == "train").any():
        return {}
    products = tables["products"]
    queries = sorted(judged.loc[judged["split"] == "train", "query"].unique())
    bm25 = BM25(products["product_id"], product_text(products))
    hits = bm25.search(queries, k=depth)
    return {q: [pid for pid, _ in h] for q, h in zip(queries, hits, strict=True)}


def run(
    params: Params, in_dir: Path = IN_DIR, encoder_dir: Path = ENCODER_DIR,
    out_dir: Path = OUT_DIR, metrics: Path = METRICS,
) -> dict:  # fmt: skip
    with stage_runtime(params.models.device) as runtime:
        return _run(params, runtime, in_dir, encoder_dir, out_dir, metrics)


def _run(params, runtime, in_dir, encoder_dir, out_dir, metrics) -> dict:
    from transformers import AutoTokenizer

    quiet_transformers()
    cfg = params.retriever
    require_encoder(encoder_dir)
    tables = load_prepared(in_dir)
    products = tables["products"]
    examples = training_examples(tables, params, bm25_negatives(tables, cfg.bm25_negative_depth))

    tokenizer = AutoTokenizer.from_pretrained(str(encoder_dir))
    torch.manual_seed(params.seed)
    model = TextEncoder.from_pretrained(encoder_dir).to(runtime.device)
    item_tokens = tokenize(tokenizer, product_text(products), cfg.max_item_len)
    unique_queries, query_row = np.unique(examples.queries, return_inverse=True)
    query_tokens = tokenize(tokenizer, unique_queries.tolist(), cfg.max_query_len)
    valid = validation_examples(tables, params)
    if valid is not None:
        valid_queries, valid_row = np.unique(valid.queries, return_inverse=True)
        valid_tokens = tokenize(tokenizer, valid_queries.tolist(), cfg.max_query_len)

    key = run_key(
        data=files_hash(in_dir, "*.parquet"), encoder=files_hash(encoder_dir, "*.safetensors"),
        params=cfg.model_dump(), relevant_at=params.evaluation.relevant_at,
        seed=params.seed, world=runtime.world_size,
    )  # fmt: skip
    tokens = 0
    dev = runtime.device

    def batch_loss(forward, batch: Examples, batch_tokens, row, index) -> torch.Tensor:
        nonlocal tokens
        positives = batch.positives[index]
        negatives = batch.negatives[index]
        negatives = negatives[negatives != NO_NEGATIVE]
        batches = [
            pad([batch_tokens[row[i]] for i in index], tokenizer.pad_token_id),
            pad([item_tokens[p] for p in positives], tokenizer.pad_token_id),
        ]
        if len(negatives):
            batches.append(pad([item_tokens[n] for n in negatives], tokenizer.pad_token_id))
        tokens += sum(int(mask.sum()) for _, mask in batches) if batch is examples else 0
        with runtime.autocast():
            vectors = forward(*[(ids.to(dev), mask.to(dev)) for ids, mask in batches])
        candidates = torch.as_tensor(np.concatenate([positives, negatives]), device=dev)
        return contrastive_loss(
            vectors[0], torch.cat(vectors[1:]), torch.as_tensor(positives, device=dev),
            candidates, cfg.temperature,
        )  # fmt: skip

    def loss_of_step(forward, step: int) -> torch.Tensor:
        index = shard(batch_order(len(examples), cfg.batch_size, params.seed, step), runtime)
        return batch_loss(forward, examples, query_tokens, query_row, index.numpy())

    @torch.no_grad()
    def validation_loss(encoder) -> float:
        encoder.eval()
        starts = range(0, len(valid), cfg.batch_size)
        return float(np.mean([batch_loss(encoder, valid, valid_tokens, valid_row,
                                         np.arange(a, min(a + cfg.batch_size, len(valid)))).item()
                              for a in starts]))  # fmt: skip

    fitted = fit(
        stage="retriever", model=model, runtime=runtime, cfg=cfg, seed=params.seed, key=key,
        loss_of_step=loss_of_step, validate=validation_loss if valid is not None else None,
    )  # fmt: skip
    if not runtime.is_main:
        return {}
    retriever = Retriever(
        unwrap(model), tokenizer, runtime.device, cfg.max_item_len, cfg.max_query_len,
        cfg.eval_batch_size,
    )  # fmt: skip
    retriever.index(products["product_id"].tolist(), product_text(products))
    prior = fit_prior_weight(retriever, tables, params)
    per_query = evaluate(retriever, tables, params)
    result = {
        "test": summarize(per_query),
        "popularity_prior": prior,
        "train": {
            "examples": pd.Series(examples.sources).value_counts().to_dict(),
            "steps": cfg.steps, "resumed_from_step": fitted.resumed_from,
            "final_loss": fitted.history[-1][1],
            "valid_loss": fitted.valid_history[-1][1] if fitted.valid_history else None,
            "device": str(runtime.device), "world_size": runtime.world_size,
            **throughput(fitted, cfg.batch_size, tokens, runtime.world_size),
        },
    }  # fmt: skip
    with staged_dir(out_dir) as staging:
        unwrap(model).save(staging, tokenizer)
        write_json(
            staging / "shopflow.json",
            {"kind": "retriever", "max_item_len": cfg.max_item_len,
             "max_query_len": cfg.max_query_len, "history_items": cfg.history_items,
             "base_model": params.models.base, "metrics": result["test"]},
        )  # fmt: skip
        retriever.save_index(staging / "index")
        for task, frame in per_query.items():
            write_parquet(frame, staging / "eval" / f"{task}.parquet")
    write_json(metrics, result)
    flat = {f"{task}/{m}": v for task, values in result["test"].items() for m, v in values.items()}
    write_curve(LIVE_DIR, {"train/contrastive_loss": fitted.history,
                           "valid/contrastive_loss": fitted.valid_history}, flat)  # fmt: skip
    fitted.done()
    log.info("retriever on the test split: %s", result["test"])
    return result
