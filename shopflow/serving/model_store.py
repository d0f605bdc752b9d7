"""From trained stage outputs to a BentoML model the service loads.

`save_model` copies a serving bundle (`engine.bundle.save_bundle`) into BentoML's model store
as `shopflow:<version>`, where the version is the bundle's content hash: saving the same
models twice gives the same tag and stores nothing new. The model carries the drift reference
of its training days (so later drift checks compare against what it was trained on however
old it gets) and metadata that `/version` reports: the git revision, the data hash, the
models' test metrics and, once promoted, the promotion time.

With `serving.onnx: fp32 | int8` the bundle also holds ONNX graphs, measured on the test
split before the runtime is chosen (`choose_onnx`).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from shopflow.core import paths
from shopflow.core.artifacts import files_hash, read_json, write_json
from shopflow.core.config import Params
from shopflow.core.errors import StageInputError
from shopflow.core.provenance import git_revision
from shopflow.core.secrets import mode_for
from shopflow.engine.bundle import bundle_settings, load_engine, save_bundle
from shopflow.engine.onnx import PRECISIONS
from shopflow.engine.search import SearchEngine
from shopflow.evaluation import ranking
from shopflow.evaluation.offline import test_qrels
from shopflow.monitoring.reference import REFERENCE

log = logging.getLogger(__name__)

MODEL_NAME = "shopflow"


def save_model(
    params: Params,
    models_dir: Path = paths.MODELS,
    prepared_dir: Path = paths.PREPARED,
    labels: dict[str, str] | None = None,
    metadata: dict | None = None,
    drift_reference: Path = paths.DRIFT_REFERENCE,
) -> str:
    """Save the current stage outputs as a BentoML model; returns its tag."""
    import bentoml

    with tempfile.TemporaryDirectory(prefix="shopflow-bundle-") as tmp:
        staging = Path(tmp) / "bundle"
        save_bundle(
            staging,
            retriever_dir=models_dir / "retriever",
            reranker_dir=models_dir / "reranker",
            prepared_dir=prepared_dir,
            settings=bundle_settings(params),
            # the mode decides whether per-customer answers need an API key (bento/service.py)
            info={"model_name": MODEL_NAME, "mode": str(mode_for(params.ingest.source))},
            recommender_dir=models_dir / paths.RECOMMENDER.name,
        )
        if (drift_reference / "window.json").exists():
            shutil.copytree(drift_reference, staging / REFERENCE)
        else:
            log.warning(
                "%s is missing: the model is saved without a drift reference (drift checks "
                "will use each night's training days)",
                drift_reference,
            )
        if params.serving.onnx != "none":
            choose_onnx(staging, params, prepared_dir)
        version = files_hash(staging, "**/*")
        tag = f"{MODEL_NAME}:{version}"
        try:
            existing = bentoml.models.get(tag)
            log.info("model %s is already in the store (%s)", tag, existing.path)
            return tag
        except bentoml.exceptions.NotFound:
            pass
        meta = {
            "model_version": version,
            "git_revision": git_revision(),
            "data_hash": files_hash(prepared_dir, "*.parquet"),
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "metrics": stage_test_metrics(models_dir),
            **(metadata or {}),
        }
        privacy = privacy_record(models_dir)
        if privacy is not None:  # trained with DP (BentoML's metadata holds no None)
            meta["privacy"] = privacy
        model_labels = {
            "source": params.ingest.source,
            "model_version": version,
            "data_hash": meta["data_hash"],
            "git_revision": meta["git_revision"],
            **(labels or {}),
        }
        with bentoml.models.create(
            tag, labels=model_labels, metadata=meta, module="shopflow"
        ) as model:
            for path in staging.iterdir():
                path.rename(Path(model.path) / path.name)
        saved = str(model.tag)
    log.info("saved %s (version %s)", saved, version)
    return saved


def privacy_record(models_dir: Path) -> dict | None:
    """The differential-privacy record (ε spent, δ, noise) of the retriever in `models_dir`
    (the stage outputs, or a saved bundle): None without DP."""
    meta = models_dir / "retriever" / "shopflow.json"
    return read_json(meta).get("privacy") if meta.exists() else None


def current_model(params: Params) -> str:
    """The current run's outputs saved as a BentoML model (no-op when already saved)."""
    if not (paths.RETRIEVER / "config.json").exists():
        raise StageInputError(f"no trained retriever under {paths.MODELS}: run `make run` first")
    return save_model(params)


def model_folder(model_tag: str) -> Path:
    """The folder of a saved model in BentoML's store (`$BENTOML_HOME`, else ~/bentoml)."""
    import bentoml

    try:
        return Path(bentoml.models.get(model_tag).path)
    except bentoml.exceptions.NotFound:
        home = os.environ.get("BENTOML_HOME", "~/bentoml")
        raise StageInputError(
            f"{model_tag} is not in the BentoML model store (BENTOML_HOME={home})"
        ) from None


def choose_onnx(bundle: Path, params: Params, prepared_dir: Path) -> dict:
    """Export the ONNX graphs, measure them on the test split and pick the runtime.

    int8 is used only when its NDCG@10 drop against torch is below
    `serving.max_int8_ndcg_drop`; otherwise fp32 is, and the reason is recorded. Without
    judged test queries nothing can be measured, so int8 is not offered.
    """
    import pandas as pd

    from shopflow.engine.onnx import export

    export(bundle)
    info = read_json(bundle / "shopflow.json")
    wanted = params.serving.onnx
    judged_path = prepared_dir / "judgments.parquet"
    checks: dict = {}
    qrels = test_qrels({"judgments": pd.read_parquet(judged_path)}) if judged_path.exists() else {}
    if qrels:
        checks = measure_runtimes(
            lambda runtime: load_engine(bundle, runtime=runtime),
            list(qrels),
            qrels,
            params.evaluation.relevant_at,
        )
    chosen, reason = decide_onnx(wanted, checks, params.serving.max_int8_ndcg_drop)
    log.info("ONNX runtime: %s (asked %s: %s)", chosen, wanted, reason)
    decision = {"asked": wanted, "chosen": chosen, "reason": reason, "checks": checks}
    info["settings"]["onnx"] = chosen
    info["onnx"] = decision
    write_json(bundle / "shopflow.json", info)
    return decision


def measure_runtimes(
    load: Callable[[str], SearchEngine],
    queries: list[str],
    qrels: dict,
    relevant_at: float,
) -> dict[str, dict]:
    """NDCG@10 and search queries/s on the test queries for torch, fp32 and int8 engines."""
    out = {}
    for runtime in ("torch", *PRECISIONS):
        engine = load(runtime)
        engine.search(queries[:8], k=10)  # warm-up (sessions, caches)
        started = time.perf_counter()
        hits = engine.search(queries, k=engine.candidates)
        seconds = time.perf_counter() - started
        ranked = {q: [h.product_id for h in row] for q, row in zip(queries, hits, strict=True)}
        scores = ranking.per_query(qrels, ranked, relevant_at)
        out[runtime] = {
            "ndcg@10": round(float(scores["ndcg@10"].mean()), 5),
            "queries_per_s": round(len(queries) / seconds, 2),
        }
        log.info("ONNX check, %s: %s", runtime, out[runtime])
    for runtime in PRECISIONS:
        out[runtime]["speedup"] = round(
            out[runtime]["queries_per_s"] / out["torch"]["queries_per_s"], 2
        )
        out[runtime]["ndcg_drop"] = round(out["torch"]["ndcg@10"] - out[runtime]["ndcg@10"], 5)
    return out


def decide_onnx(wanted: str, checks: dict, max_int8_drop: float) -> tuple[str, str]:
    """The runtime to serve with, and why: int8 only with a measured drop below the limit."""
    if wanted != "int8":
        return wanted, "as asked"
    if "int8" not in checks:
        return "fp32", "no judged test queries to measure the int8 NDCG@10 drop on"
    drop = checks["int8"]["ndcg_drop"]
    if drop >= max_int8_drop:
        return "fp32", f"int8 NDCG@10 drop {drop:.4f} is not below {max_int8_drop}"
    return "int8", f"int8 NDCG@10 drop {drop:.4f} is below {max_int8_drop}"


def stage_test_metrics(models_dir: Path) -> dict:
    """The retriever's and reranker's test numbers, as their stages recorded them."""
    out = {}
    for name in ("retriever", "reranker"):
        path = models_dir / name / "shopflow.json"
        if path.exists():
            out[name] = read_json(path).get("metrics", {})
    return out
