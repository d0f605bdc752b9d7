"""Stage `prepare`: leakage-free splits and the training examples later stages learn from.

- Events split by time: the last `test_days` are test, the `valid_days` before are valid,
  the rest train. Every example takes its split from its own timestamp, and its labels only
  from events of the same split, so no later timestamp crosses into an earlier split.
- Judgments split by query: a hash of the normalized query picks the split, so a query (and
  every product judged for it) sits in exactly one split, stable across runs and data growth.
- `pairs.parquet`: one row per (session, query, shown product): position kept for
  position-bias correction; label 0 shown-not-clicked, 1 click, 2 add to cart, 3 purchase.
- `corpus.txt`: the shop's own text (products + training queries) for pretrain-adapt.
- `histories.parquet`: per session, the products of the user's earlier sessions (most recent
  `history_length`): what the query tower may append to a query.
- `sequences.parquet`: one row per purchase: that history and the purchased product, for
  next-item recommendation.
- `users.parquet`: per user, the latest `history_length` products interacted with and every
  product bought, over all splits: what the service personalises and filters with.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.artifacts import read_json, staged_dir, table_hash, write_json, write_parquet
from pipelines.config import Params
from pipelines.contract import normalize_text
from pipelines.errors import ConfigError, StageInputError
from pipelines.features import attribute_text

log = logging.getLogger(__name__)

IN_DIR = Path("data/validated")
OUT_DIR = Path("data/prepared")
METRICS = Path("metrics/prepare.json")
SPLITS = ("train", "valid", "test")
LABELS = {"click": 1, "add_to_cart": 2, "purchase": 3}


@dataclass
class Prepared:
    tables: dict[str, pd.DataFrame]
    boundaries: dict[str, str]
    metrics: dict[str, object]
    corpus: list[str]


def time_boundaries(params: Params) -> dict[str, pd.Timestamp]:
    """Start of valid and of test (UTC midnights); train is everything before valid."""
    window = params.ingest.window
    cfg = params.prepare
    if cfg.test_days + cfg.valid_days >= window.days:
        raise ConfigError(
            f"prepare.test_days ({cfg.test_days}) + prepare.valid_days ({cfg.valid_days}) must "
            f"leave training days in the {window.days}-day window"
        )
    _, end = window.bounds()
    test_start = pd.Timestamp(end) - pd.Timedelta(days=cfg.test_days)
    return {"valid": test_start - pd.Timedelta(days=cfg.valid_days), "test": test_start}


def split_by_time(ts: pd.Series, bounds: dict[str, pd.Timestamp]) -> pd.Series:
    split = np.where(
        ts >= bounds["test"], "test", np.where(ts >= bounds["valid"], "valid", "train")
    )
    return pd.Series(split, index=ts.index, dtype="object")


def query_bucket(query: str) -> float:
    """A uniform number in [0, 1) from the normalized query: the same query, the same split."""
    digest = hashlib.sha1(normalize_text(query).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_judgments(judgments: pd.DataFrame, params: Params) -> pd.DataFrame:
    cfg = params.prepare
    buckets = judgments["query"].map(query_bucket)
    split = np.where(
        buckets < cfg.judgments_test_share,
        "test",
        np.where(buckets < cfg.judgments_test_share + cfg.judgments_valid_share, "valid", "train"),
    )
    return judgments.assign(split=split)


def click_pairs(events: pd.DataFrame) -> pd.DataFrame:
    """Shown products with their best outcome, per (split, session, query, product)."""
    searched = events[events["query"].notna()]
    key = ["split", "session_id", "query", "product_id"]
    shown = searched[searched["event_type"] == "impression"]
    shown = shown.sort_values("ts", kind="stable").drop_duplicates(key, keep="first")
    outcomes = searched[searched["event_type"].isin(list(LABELS))]
    best = (
        outcomes.assign(label=outcomes["event_type"].map(LABELS))
        .groupby(key, sort=False)["label"]
        .max()
        .rename("label")
    )
    pairs = shown.join(best, on=key).fillna({"label": 0})
    pairs["label"] = pairs["label"].astype("int8")
    pairs["clicked"] = pairs["label"] > 0
    columns = ["split", "ts", "session_id", "user_key", "query", "product_id", "position"]
    return pairs[[*columns, "clicked", "label"]].reset_index(drop=True)


def session_histories(events: pd.DataFrame, history_length: int) -> pd.DataFrame:
    """For each session: the products the user interacted with in *earlier* sessions.

    The session's own interactions are left out: the clicks and add-to-cart of the product
    bought would hand the answer to the model. One row per session with a non-empty history,
    the most recent product last.
    """
    acts = events[events["event_type"].isin(list(LABELS))].sort_values(
        ["user_key", "ts"], kind="stable"
    )
    rows = []
    for user, group in acts.groupby("user_key", sort=True):
        history: dict[str, None] = {}  # products of finished sessions, in recency order
        session, current = None, []
        for sess, product in group[["session_id", "product_id"]].itertuples(index=False):
            if sess != session:
                for item in current:
                    history.pop(item, None)
                    history[item] = None
                session, current = sess, []
                if history:
                    rows.append((sess, user, list(history)[-history_length:]))
            current.append(product)
    return pd.DataFrame(rows, columns=["session_id", "user_key", "history"])


def user_profiles(events: pd.DataFrame, history_length: int) -> pd.DataFrame:
    """Per user: the most recent distinct products interacted with (latest last) and the
    products bought (what recommendations leave out)."""
    acts = events[events["event_type"].isin(list(LABELS))].sort_values(
        ["user_key", "ts"], kind="stable"
    )
    rows = []
    for user, group in acts.groupby("user_key", sort=True):
        recent = list(dict.fromkeys(reversed(group["product_id"].tolist())))[:history_length]
        bought = group.loc[group["event_type"] == "purchase", "product_id"]
        rows.append((user, recent[::-1], sorted(set(bought))))
    return pd.DataFrame(rows, columns=["user_key", "recent", "purchased"])


def purchase_sequences(events: pd.DataFrame, histories: pd.DataFrame) -> pd.DataFrame:
    """One row per purchase made with a known history: (history, purchased product)."""
    purchases = events.loc[
        events["event_type"] == "purchase", ["split", "ts", "session_id", "product_id"]
    ]
    joined = purchases.merge(histories, on="session_id", how="inner", sort=False)
    joined = joined.sort_values(["user_key", "ts"], kind="stable").reset_index(drop=True)
    return joined[["split", "ts", "user_key", "history", "product_id"]]


def domain_corpus(
    products: pd.DataFrame, pairs: pd.DataFrame | None, judgments: pd.DataFrame | None
) -> list[str]:
    """The shop's own language for masked-LM adaptation: product text and *training* queries.

    Queries of the valid and test splits are left out, so pretraining never sees them. Lines
    are de-duplicated and sorted, so the corpus file (pretrain's only data dependency) is the
    same whenever the catalogue and the training query log are the same.
    """
    lines: set[str] = set()
    for row in products.itertuples(index=False):
        parts = [row.title, row.brand, row.category, attribute_text(row.attributes)]
        lines.add(" | ".join(str(p) for p in parts if isinstance(p, str) and p))
        if isinstance(row.description, str) and row.description.strip():
            lines.add(row.description.strip())
    for frame in (pairs, judgments):
        if frame is not None and len(frame):
            lines.update(frame.loc[frame["split"] == "train", "query"].dropna().unique())
    return sorted(line.replace("\n", " ").strip() for line in lines if line and line.strip())


def prepare(tables: dict[str, pd.DataFrame], params: Params) -> Prepared:
    """The pure core: validated tables in, splits and examples out."""
    out: dict[str, pd.DataFrame] = {"products": tables["products"]}
    metrics: dict[str, object] = {}
    boundaries: dict[str, str] = {}
    if "events" in tables:
        bounds = time_boundaries(params)
        boundaries = {k: v.isoformat() for k, v in bounds.items()}
        events = tables["events"].assign(split=lambda f: split_by_time(f["ts"], bounds))
        pairs = click_pairs(events)
        histories = session_histories(events, params.prepare.history_length)
        sequences = purchase_sequences(events, histories)
        out["pairs"], out["sequences"], out["histories"] = pairs, sequences, histories
        out["users"] = user_profiles(events, params.prepare.history_length)
        metrics["events"] = events["split"].value_counts().reindex(SPLITS, fill_value=0).to_dict()
        metrics["pairs"] = {
            s: {
                "rows": int((pairs["split"] == s).sum()),
                "queries": int(pairs.loc[pairs["split"] == s, "query"].nunique()),
                "click_rate": round(float(pairs.loc[pairs["split"] == s, "clicked"].mean()), 4)
                if (pairs["split"] == s).any()
                else 0.0,
            }
            for s in SPLITS
        }
        metrics["sequences"] = (
            sequences["split"].value_counts().reindex(SPLITS, fill_value=0).to_dict()
        )
    if "judgments" in tables:
        judged = split_judgments(tables["judgments"], params)
        out["judgments"] = judged
        metrics["judgments"] = {
            s: {
                "rows": int((judged["split"] == s).sum()),
                "queries": int(judged.loc[judged["split"] == s, "query"].nunique()),
                "mean_relevance": round(
                    float(judged.loc[judged["split"] == s, "relevance"].mean()), 4
                )
                if (judged["split"] == s).any()
                else 0.0,
            }
            for s in SPLITS
        }
    corpus = domain_corpus(tables["products"], out.get("pairs"), out.get("judgments"))
    metrics["corpus_lines"] = len(corpus)
    return Prepared(out, boundaries, metrics, corpus)


def load_validated(in_dir: Path) -> tuple[dict[str, pd.DataFrame], dict]:
    """Read validate's output, refusing anything it did not approve."""
    manifest_path = in_dir / "manifest.json"
    if not manifest_path.exists():
        raise StageInputError(
            f"{manifest_path}: not found; validation has not passed "
            "(run `python -m pipelines validate`)"
        )
    manifest = read_json(manifest_path)
    if not manifest.get("validated"):
        raise StageInputError(f"{manifest_path}: data was not approved by validate")
    tables = {}
    for name, expected in manifest["validated_hashes"].items():
        frame = pd.read_parquet(in_dir / f"{name}.parquet")
        if table_hash(frame) != expected:
            raise StageInputError(f"{in_dir / name}.parquet was changed after validation")
        tables[name] = frame
    return tables, manifest


def load_prepared(folder: Path = OUT_DIR) -> dict[str, pd.DataFrame]:
    """This stage's output, for the model stages (named by file: products, pairs, ...)."""
    if not (folder / "products.parquet").exists():
        raise StageInputError(f"{folder}: no prepared data; run the prepare stage first")
    return {p.stem: pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))}


def run(
    params: Params, in_dir: Path = IN_DIR, out_dir: Path = OUT_DIR, metrics: Path = METRICS
) -> Prepared:
    started = time.perf_counter()
    tables, manifest = load_validated(in_dir)
    result = prepare(tables, params)
    with staged_dir(out_dir) as staging:
        for name, frame in result.tables.items():
            write_parquet(frame, staging / f"{name}.parquet")
        (staging / "corpus.txt").write_text("\n".join(result.corpus) + "\n", encoding="utf-8")
        write_json(
            staging / "splits.json",
            {"time_boundaries": result.boundaries, "source": manifest["source"],
             "window": manifest["window"], "judgments_split": "by query hash"},
        )  # fmt: skip
    write_json(metrics, result.metrics)
    counts = ", ".join(f"{n}={len(f):,}" for n, f in result.tables.items())
    log.info("prepare: %s in %.1fs", counts, time.perf_counter() - started)
    return result
