"""A serving bundle: everything the engine needs to serve exactly as the stages evaluated.

One folder: the retriever with the catalogue's vectors (`retriever/`, `index/` inside), the
reranker (`reranker/`, absent when its stage was skipped or the serving mix chosen on the
valid split left it out: the retriever's order is served),
the catalogue and the user profiles, the recommender (`recommender/`, `engine.recommend`),
plus `shopflow.json` with versions and the serving
settings (`bundle_settings`, and what the serving mix chose: the first stage, dense or hybrid,
and the final stage; BM25 is rebuilt from the catalogue on load), and the feature ranker
(`ranker/`) when the mix serves it. The model store saves bundles as BentoML
models; the service, the A/B evaluation of a promoted champion and the drift probe load
engines from them here.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from shopflow.core.artifacts import read_json, write_json, write_parquet
from shopflow.core.config import Params
from shopflow.core.errors import StageInputError
from shopflow.engine.fusion import DENSE
from shopflow.engine.recommend import Recommender
from shopflow.engine.search import Catalogue, PairScorer, SearchEngine
from shopflow.models.bi_encoder import BiEncoder
from shopflow.models.cross_encoder import CrossEncoder
from shopflow.models.feature_ranker import FeatureRanker
from shopflow.models.lexical import Bm25Settings

log = logging.getLogger(__name__)

INFO = "shopflow.json"
CATALOGUE = "catalogue.parquet"
USERS = "users.parquet"
SERVED_USER_COLUMNS = ["user_key", "recent"]
RANKER = "ranker"  # the feature ranker's folder, in a reranker stage output and in a bundle
RECOMMENDER = "recommender"  # the served recommender (`engine.recommend`), as the stage saved it


def bundle_settings(params: Params) -> dict:
    """What the engine needs to serve exactly as the stages evaluated."""
    return {
        "max_item_len": params.retriever.max_item_len,
        "max_query_len": params.retriever.max_query_len,
        "history_items": params.retriever.history_items,
        "rerank_max_len": params.reranker.max_len,
        "rerank_max_query_len": params.reranker.max_query_len,
        "candidates": params.reranker.candidates,
        "ranker_candidates": params.ranker.candidates,
        "ann_min_items": params.serving.ann_min_items,
        "batch_size": params.serving.batch_size,
    }


def save_bundle(
    out: Path,
    *,
    retriever_dir: Path,
    reranker_dir: Path,
    prepared_dir: Path,
    settings: dict,
    info: dict,
    recommender_dir: Path | None = None,
) -> Path:
    """Copy what serving needs into `out` (a fresh folder): models, catalogue, users, the
    recommender, info."""
    if not (retriever_dir / "index" / "item_vectors.npy").exists():
        raise StageInputError(f"{retriever_dir}: no retriever with an index; run `dvc repro`")
    out.mkdir(parents=True, exist_ok=False)
    shutil.copytree(retriever_dir, out / "retriever", ignore=shutil.ignore_patterns("eval"))
    mix = served_mix(reranker_dir, {})
    if serves(reranker_dir):
        shutil.copytree(
            reranker_dir, out / "reranker", ignore=shutil.ignore_patterns("eval", RANKER)
        )
    if mix["final"] == "ltr":
        shutil.copytree(reranker_dir / RANKER, out / RANKER)
    products = pd.read_parquet(prepared_dir / "products.parquet")
    write_parquet(products, out / CATALOGUE)
    if (prepared_dir / USERS).exists():  # only what search personalises with: no purchases
        write_parquet(
            pd.read_parquet(prepared_dir / USERS, columns=SERVED_USER_COLUMNS), out / USERS
        )
    if recommender_dir is not None and recommender_dir.exists():
        shutil.copytree(recommender_dir, out / RECOMMENDER, ignore=shutil.ignore_patterns("eval"))
    write_json(out / INFO, {**info, "settings": {**settings, **mix}})
    return out


def read_bundle_info(bundle: str | Path) -> dict:
    """A bundle's `shopflow.json` (versions, settings, ONNX choice)."""
    path = Path(bundle) / INFO
    if not path.exists():
        raise StageInputError(f"{bundle}: not a serving bundle (no {INFO})")
    return read_json(path)


def serves(reranker_dir: Path) -> bool:
    """Is there a reranker to serve? Not when its stage was skipped (no search data), nor when
    the serving mix left it out (`reranker.serve`; a folder from before the choice serves)."""
    if not (reranker_dir / "config.json").exists():
        return False
    return served_mix(reranker_dir, {})["final"] == "reranker"


def served_mix(reranker_dir: Path, settings: dict) -> dict:
    """The serving mix's `first_stage` (dense | hybrid), `final` (none | ltr | reranker),
    `rrf_k` and the BM25 settings it was measured with (`bm25`, None before they were
    tuned): a bundle's own, else what the reranker stage chose, else dense (no reranker
    stage, or a model from before these choices)."""
    if "first_stage" in settings:
        meta = settings
    else:
        meta = read_json(reranker_dir / INFO) if (reranker_dir / INFO).exists() else {}
    final = meta.get("final") or ("reranker" if meta.get("serve", True) else "none")
    return {
        "first_stage": meta.get("first_stage", DENSE),
        "final": final,
        "rrf_k": meta.get("rrf_k", 60.0),
        "bm25": meta.get("bm25"),
    }


def load_reranker(folder: Path, settings: dict, device: str) -> CrossEncoder | None:
    """The reranker in `folder`, or None when there is none to serve (see `serves`)."""
    if not serves(folder):
        return None
    return CrossEncoder.load(
        folder,
        device,
        max_len=settings["rerank_max_len"],
        max_query_len=settings["rerank_max_query_len"],
        batch_size=settings["batch_size"],
    )


def assemble_engine(
    retriever_dir: Path,
    reranker_dir: Path,
    products: pd.DataFrame,
    settings: dict,
    device: str = "cpu",
    users: pd.DataFrame | None = None,
    info: dict | None = None,
    item_prior: np.ndarray | None = None,
    ranker_dir: Path | None = None,
    recommender: Recommender | None = None,
) -> SearchEngine:
    """An engine from model folders over `products`. The saved product vectors are used when
    they are of exactly these products; otherwise the catalogue is embedded again (a champion
    evaluated on tonight's catalogue), and the recommendation prior is the fitted weight times
    `item_prior` (tonight's popularity, aligned with `products`). The feature ranker is read
    from `ranker_dir` (default: the reranker stage's) when the mix serves it."""
    catalogue = Catalogue(products)
    retriever = BiEncoder.load(
        retriever_dir,
        device,
        max_len=settings["max_item_len"],
        query_max_len=settings["max_query_len"],
        batch_size=settings["batch_size"],
    )
    if not retriever.load_index(retriever_dir / "index", catalogue.ids.tolist()):
        log.info(
            "%s: product vectors are of another catalogue; embedding %d products",
            retriever_dir,
            len(catalogue),
        )
        retriever.index(catalogue.ids.tolist(), catalogue.texts)
        if item_prior is not None and BiEncoder.has_saved_prior(retriever_dir / "index"):
            retriever.item_prior = item_prior
    stage = served_mix(reranker_dir, settings)
    ranker = None
    if stage["final"] == "ltr":
        ranker = FeatureRanker.load(ranker_dir or reranker_dir / RANKER)
    return SearchEngine(
        retriever,
        load_reranker(reranker_dir, settings, device),
        catalogue,
        candidates=settings.get("ranker_candidates", settings["candidates"])
        if stage["final"] == "ltr"
        else settings["candidates"],
        history_items=settings["history_items"],
        ann_min_items=settings["ann_min_items"],
        users=users,
        info=info,
        first_stage=stage["first_stage"],
        rrf_k=stage["rrf_k"],
        ranker=ranker,
        bm25=Bm25Settings.from_dict(stage["bm25"]) if stage["bm25"] else None,
        recommender=recommender,
    )


def load_engine(
    bundle: str | Path, device: str = "cpu", runtime: str | None = None
) -> SearchEngine:
    """The engine of a bundle; `runtime` torch | fp32 | int8 (ONNX) overrides the one the
    bundle was saved with (`settings.onnx`)."""
    bundle = Path(bundle)
    info = read_bundle_info(bundle)
    settings = info["settings"]
    products = pd.read_parquet(bundle / CATALOGUE)
    users = pd.read_parquet(bundle / USERS) if (bundle / USERS).exists() else None
    recommender = (
        Recommender.load(bundle / RECOMMENDER) if (bundle / RECOMMENDER).exists() else None
    )
    engine = assemble_engine(
        bundle / "retriever",
        bundle / "reranker",
        products,
        settings,
        device,
        users,
        info,
        ranker_dir=bundle / RANKER,
        recommender=recommender,
    )
    runtime = runtime or settings.get("onnx", "none")
    if runtime in ("fp32", "int8"):
        from shopflow.engine.onnx import use_onnx

        use_onnx(engine, bundle / "onnx" / runtime)
    log.info(
        "serving bundle %s: %d products (%s %s search), then %s, %d users, recommending "
        "with %s, %s runtime",
        bundle,
        len(engine.catalogue),
        engine.first_stage,
        engine.index.kind,
        "the cross-encoder"
        if engine.reranker is not None
        else ("the feature ranker" if engine.ranker is not None else "nothing"),
        len(engine.users),
        "nothing" if recommender is None else recommender.settings.serve,
        f"ONNX {runtime}" if runtime in ("fp32", "int8") else "torch",
    )
    return engine


def load_pair_scorer(bundle: str | Path, device: str = "cpu") -> PairScorer:
    """The reranker of a bundle over its catalogue: what the service's batching worker runs."""
    info = read_bundle_info(bundle)
    catalogue = Catalogue(pd.read_parquet(Path(bundle) / CATALOGUE))
    return PairScorer(load_reranker(Path(bundle) / "reranker", info["settings"], device), catalogue)
