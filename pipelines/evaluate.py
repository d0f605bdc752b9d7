"""Stage `evaluate`: the A/B evaluation of tonight's challenger against the champion.

The champion is whatever the registry points to: a promoted model (its bundle from the
BentoML store, re-embedding tonight's catalogue so that models, not catalogue snapshots, are
compared) or, before any promotion, the baselines (BM25F, best recommender) rebuilt from tonight's
data. The comparison and the gate are `shopflow.evaluation.ab_test`.

Writes `data/evaluation/` (per-query tables and top-10 lists), `reports/decision.json` (the
verdict, every number, every reason, and what was compared) and `metrics/evaluate.json` (the
headline numbers); the latency figures, the time and the commit go to the stage's timings
(`.shopflow/timings/evaluate.json`), so the same inputs give the same decision file.
"""

from __future__ import annotations

import logging
import time

import pandas as pd

from shopflow.core import paths
from shopflow.core.artifacts import (
    files_hash,
    staged_dir,
    without_timings,
    write_json,
    write_parquet,
)
from shopflow.core.config import Params
from shopflow.core.provenance import git_revision, params_hash
from shopflow.data.tables import read_prepared
from shopflow.evaluation.ab_test import baseline_means, compare_systems, headline
from shopflow.evaluation.guardrails import privacy_guardrail
from shopflow.evaluation.heldout import held_out
from shopflow.evaluation.systems import System, challenger_system, champion_system
from shopflow.release.registry import BASELINE_VERSION, Registry, champion_bundle, now
from shopflow.serving.model_store import privacy_record

log = logging.getLogger(__name__)


def run(params: Params) -> dict:
    started = time.perf_counter()
    tables = read_prepared()
    split = held_out(tables, params, paths.BASELINES)
    entry = Registry.of(params).champion()
    label = (
        f"#{entry.id} {entry.version}"
        if entry
        else "tuned BM25F + the best recommend baseline (empty registry: the first champion)"
    )
    log.info("champion: %s", label)
    bundle = champion_bundle(entry)
    systems: dict[str, System] = {
        "challenger": challenger_system(params, split),
        "champion": champion_system(bundle, split, params),
    }
    privacy = {
        "challenger": privacy_record(paths.MODELS),
        "champion": privacy_record(bundle) if bundle else None,
    }
    rails = privacy_guardrail(params, privacy["challenger"], privacy["champion"])
    comparison = compare_systems(systems, split, tables, params, rails)
    reranker = paths.RERANKER
    result = {
        **comparison.result,
        "created_at": now(),
        "champion": {
            "entry": entry.id if entry else None,
            "version": entry.version if entry else BASELINE_VERSION,
            "kind": systems["champion"].kind,
            "label": label,
        },
        "challenger": {
            "retriever": files_hash(paths.RETRIEVER, "*.safetensors"),
            "reranker": files_hash(reranker, "*.safetensors") if reranker.exists() else None,
        },
        "data_hash": files_hash(paths.PREPARED, "*.parquet"),
        "params_hash": params_hash(params.model_dump(mode="json", by_alias=True)),
        "git_revision": git_revision(),
        "baselines": baseline_means(paths.BASELINES),
        **({"privacy": privacy} if params.privacy.dp.enabled else {}),
        "seconds": round(time.perf_counter() - started, 1),
    }
    with staged_dir(paths.EVALUATION) as staging:
        for name, scored in comparison.scored.items():
            for task in ("search", "recommend"):
                if task in scored:
                    write_parquet(scored[task], staging / f"{name}_{task}.parquet")
            if "search_lists" in scored:
                top10 = pd.DataFrame({"query": split.queries, "top10": scored["search_lists"]})
                write_parquet(top10, staging / f"{name}_search_top10.parquet")
    # the latency figures, the time and the commit change from run to run on the same inputs:
    # they go to the stage's timings, and what DVC hashes is the verdict and its reasons
    decision, timed = without_timings(result)
    write_json(paths.DECISION, decision)
    write_json(paths.timings("evaluate"), timed)
    write_json(paths.metrics("evaluate"), headline(decision))
    return result
