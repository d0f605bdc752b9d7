"""What differential privacy costs (`make bench-privacy`): the served system's test NDCG@10
with the retriever trained without DP and at each ε, the paired difference to the
non-private system over the test queries, the training time, and the membership-inference
audit's attack AUC. Writes `metrics/bench_privacy.json`.

It runs in a project folder where the pipeline has run up to `baselines` and `pretrain`
(a fresh clone after `make run`, or `dvc repro pretrain baselines` with another profile or
source): each setting trains the retriever and the reranker again there, through the stage
commands, then scores the system they serve on the held-out test queries as the A/B gate
does. Every setting holds out the same customers (`privacy.dp.audit_share`) for the audit.
The private settings train the reranker on graded judgments only (`reranker.click_share=0`:
it has no DP training), so the table also has the non-private system with that reranker
(unless the shop has no click log, e.g. Home Depot's judgments: that row would repeat the
first).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from shopflow.core import paths
from shopflow.core.artifacts import read_json, write_json
from shopflow.core.config import load_params

log = logging.getLogger(__name__)

RESULT = paths.metrics("bench_privacy")
AUDIT = "privacy.dp.audit_share=0.1"
JUDGMENTS_ONLY = "reranker.click_share=0"


def settings(epsilons: tuple[float, ...], clicks: bool = True) -> dict[str, tuple[str, ...]]:
    """Each setting's overrides: no DP as the pipeline trains (the reference), DP at each ε,
    then, for a shop whose reranker learns from `clicks`, no DP with the judgments-only
    reranker the private settings need."""
    found: dict[str, tuple[str, ...]] = {"no DP": (AUDIT,)}
    for epsilon in epsilons:
        found[f"DP ε={epsilon:g}"] = (
            AUDIT,
            JUDGMENTS_ONLY,
            "privacy.dp.enabled=true",
            f"privacy.dp.epsilon={epsilon:g}",
        )
    if clicks:
        found["no DP, judgments-only reranker"] = (AUDIT, JUDGMENTS_ONLY)
    return found


def stage(project: Path, overrides: tuple[str, ...], name: str) -> float:
    """Run one stage command in `project` with `overrides`; its wall time in seconds."""
    command = [sys.executable, "-m", "shopflow", *(a for o in overrides for a in ("-S", o)), name]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=project, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def served_ndcg(project: Path, overrides: tuple[str, ...]) -> pd.Series:
    """Per test query NDCG@10 of the system the trained models serve (as the gate scores the
    challenger)."""
    import os

    from shopflow.data.tables import read_prepared
    from shopflow.evaluation.ab_test import score_system
    from shopflow.evaluation.heldout import held_out
    from shopflow.evaluation.systems import challenger_system

    here = Path.cwd()
    os.chdir(project)
    try:
        params = load_params(paths.PARAMS, list(overrides))
        split = held_out(read_prepared(), params, paths.BASELINES)
        scored = score_system(challenger_system(params, split), split, params)
    finally:
        os.chdir(here)
    return scored["search"].set_index("query")["ndcg@10"]


def privacy_cost(project: Path, epsilons: tuple[float, ...] = (8.0, 1.0, 3.0)) -> dict:
    """The table above for the project in `project` (its own profile and source)."""
    from shopflow.evaluation import significance

    project = Path(project).resolve()
    base = load_params(project / paths.PARAMS)
    clicks = (project / paths.PREPARED / "pairs.parquet").exists()  # the reranker's click groups
    if not clicks:
        log.info("privacy bench: no click log, so no judgments-only row (it would repeat no DP)")
    rows: dict[str, dict] = {}
    per_query: dict[str, pd.Series] = {}
    for label, overrides in settings(epsilons, clicks).items():
        log.info("privacy bench: %s (%s)", label, ", ".join(overrides))
        seconds = {name: stage(project, overrides, name) for name in ("retriever", "reranker")}
        metrics = read_json(project / paths.metrics("retriever"))
        timed = read_json(project / paths.timings("retriever"))
        per_query[label] = served_ndcg(project, overrides)
        rows[label] = {
            "served_ndcg@10": float(per_query[label].mean()),
            "retriever_ndcg@10": metrics["test"]["search"]["ndcg@10"],
            "epsilon_spent": (metrics.get("privacy") or {}).get("epsilon_spent"),
            "noise_multiplier": (metrics.get("privacy") or {}).get("noise_multiplier"),
            "membership_auc": (metrics.get("membership") or {}).get("auc"),
            "retriever_train_seconds": timed.get("train.seconds"),
            "stage_seconds": {k: round(v, 1) for k, v in seconds.items()},
        }
        log.info("privacy bench: %s → %s", label, rows[label])
        reference = per_query["no DP"]  # the first setting
        if label != "no DP":
            paired = significance.compare(
                per_query[label].loc[reference.index],
                reference,
                confidence=base.evaluation.confidence,
                resamples=base.evaluation.resamples,
                seed=base.seed,
            )
            rows[label]["vs_no_dp"] = {
                k: paired[k] for k in ("difference", "ci_low", "ci_high", "p_value")
            }
        result = {
            "profile": base.profile,
            "source": base.ingest.source,
            "queries": len(reference),
            "settings": rows,
        }
        write_json(RESULT, result)  # each setting as it finishes
    return result
