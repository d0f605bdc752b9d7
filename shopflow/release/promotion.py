"""Promotion: a challenger the gate passed becomes the champion, if its Bento works.

Steps, each safe to repeat, and the champion moves only at the last one:
1. register the baselines (BM25F, best recommender) as the first champion if the registry is empty
   (so even a rejected first night leaves a registry that says what serves);
2. stop here unless `reports/decision.json` says promote, or if the champion has moved since
   the decision was made (a stale decision must never promote);
3. save the models, product vectors, catalogue and serving settings as a BentoML model
   (content-addressed: the same models give the same tag and nothing new is stored);
4. build its Bento offline, or reuse the Bento already built for that model;
5. smoke-test the built Bento: serve it on a free 127.0.0.1 port, wait for /readyz, send
   canned /search, /recommend, /rank and /version requests; check statuses, that the served
   top 10 matches what was evaluated, and the latency budget;
6. under the registry lock, re-check the champion and append the promotion (one atomic
   rename). A kill before this leaves the old champion in place; a rerun redoes nothing that
   already exists.

A failed smoke test leaves the champion as it was, writes why to `metrics/promote.json` and
fails the stage (exit 4), so the night is marked failed and alerts fire.

A person may overrule the gate (`shopflow promote --force --reason "..."`, or the nightly
DAG's `force_promote` conf): the current outputs are promoted whatever the verdict and
whichever champion the decision was made against, but only through the same smoke test, and
the log entry (`action: force`) says who, why, and what the gate had said.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from shopflow.core import paths
from shopflow.core.artifacts import write_metrics
from shopflow.core.config import Params
from shopflow.core.errors import ShopflowError, StageInputError
from shopflow.core.provenance import git_revision
from shopflow.release import experiments
from shopflow.release.pointer import write_champion_pointer
from shopflow.release.registry import Entry, Registry, now
from shopflow.serving.bento_build import build_bento, find_bento
from shopflow.serving.local import RunningService, free_port
from shopflow.serving.model_store import save_model

log = logging.getLogger(__name__)


class SmokeTestError(ShopflowError):
    """The built Bento did not serve correctly: the champion was not moved."""

    exit_code = 4


@dataclass(frozen=True)
class Override:
    """A person's decision to promote whatever the gate said: who and why, for the log."""

    by: str
    reason: str

    def __post_init__(self) -> None:
        if not self.reason.strip():
            raise StageInputError(
                'a forced promotion needs a reason (`shopflow promote --force --reason "..."`): '
                "it is kept in the registry's log"
            )
        if not self.by.strip():
            raise StageInputError("a forced promotion needs who forced it (--by)")


def promote(params: Params, decision: dict, override: Override | None = None) -> dict:
    """Act on the evaluate stage's decision, or on `override` whatever it says (see the
    module docstring); the outcome. The workspace's champion pointer follows the registry
    whatever happened (a failed smoke test leaves both as they were)."""
    registry = Registry.of(params)
    try:
        return _act(registry, params, decision, override)
    finally:
        if registry.path.exists():
            write_champion_pointer(registry)


def _act(registry: Registry, params: Params, decision: dict, override: Override | None) -> dict:
    baseline_metrics = (
        decision["metrics"].get("champion", {})
        if decision["champion"]["kind"] == "baseline"
        else {}
    )
    registry.ensure_baseline(baseline_metrics, decision.get("data_hash"))
    champion = registry.current()
    outcome = {"verdict": decision["verdict"], "promoted": 0, "at": now()}
    if override is not None:
        outcome["forced"] = {"by": override.by, "reason": override.reason}
        log.warning(
            "promotion forced by %s (%s); the gate said %s: %s",
            override.by,
            override.reason,
            decision["verdict"],
            "; ".join(decision["reasons"]),
        )
    elif decision["verdict"] != "promote":
        log.info(
            "verdict reject: the champion stays #%d %s. Why: %s",
            champion.id,
            champion.version,
            "; ".join(decision["reasons"]),
        )
        return _finish(outcome, champion, reasons=decision["reasons"])

    experimenting = params.online.after_gate != "direct" and override is None
    running = experiments.running(params, registry) if experimenting else None
    if running is not None:
        why = f"experiment {running[1].id} still runs: tonight's challenger waits for it"
        log.info(why)
        return _finish(outcome, champion, reasons=[why])
    tag = save_model(params, metadata={"decision": _decision_summary(decision)})
    version = tag.split(":", 1)[1]
    if champion.version == version:
        log.info("%s is already the champion (#%d): nothing to do", tag, champion.id)
        return _finish(outcome | {"promoted": 1, "already": True}, champion)
    if override is None:
        _check_not_stale(decision, champion)

    bento = find_bento(tag)
    if bento:
        log.info("reusing Bento %s, already built for %s", bento, tag)
    else:
        bento = build_bento(tag)
    smoke = smoke_test(bento, tag, params, paths.EVALUATION)
    outcome["smoke_test"] = smoke
    if not smoke["passed"]:
        _finish(outcome | {"bento": bento}, champion, reasons=smoke["failures"])
        raise SmokeTestError(
            f"the Bento {bento} failed its smoke test; the champion stays #{champion.id} "
            f"({champion.version}): " + "; ".join(smoke["failures"])
        )
    summary = _decision_summary(decision)
    if override is not None:
        summary |= {"forced_by": override.by, "gate_verdict": decision["verdict"]}
    challenger = Entry(
        id=0,
        action="promote" if override is None else "force",
        at=now(),
        kind="model",
        version=version,
        model_tag=tag,
        bento_tag=bento,
        reason="; ".join(decision["reasons"])
        if override is None
        else f"forced by {override.by}: {override.reason}",
        metrics=decision["metrics"].get("challenger", {}),
        data_hash=decision.get("data_hash"),
        params_hash=decision.get("params_hash"),
        git_revision=git_revision(),  # the commit the run is on (not in the hashed decision)
        decision=summary,
    )
    if experimenting and champion.kind == "model":
        mode = params.online.after_gate
        started = experiments.start(params, registry, champion, challenger, mode)
        return _finish(outcome | {"experiment": started.decision["spec"]}, champion)
    if experimenting:
        log.info("the champion is the baselines: no served model to experiment against")
    entry = registry.replace_champion(champion, challenger)
    log.info(
        "promoted %s (Bento %s) as champion #%d, replacing #%d %s",
        tag,
        bento,
        entry.id,
        champion.id,
        champion.version,
    )
    return _finish(outcome | {"promoted": 1, "bento": bento}, entry)


def _check_not_stale(decision: dict, champion: Entry) -> None:
    decided_against = decision["champion"]["entry"]
    implicit_baseline = decided_against is None and champion.kind == "baseline"
    if decided_against != champion.id and not implicit_baseline:
        raise StageInputError(
            f"the decision was made against champion #{decided_against} but the champion is "
            f"now #{champion.id} ({champion.version}); re-run evaluate (`dvc repro -f evaluate`)"
        )


def _decision_summary(decision: dict) -> dict:
    p = decision["primary"]
    out = {
        "metric": p["metric"],
        "difference": p["difference"],
        "ci": [p["ci_low"], p["ci_high"]],
        "p_value": p["p_value"],
        "champion": decision["champion"]["label"],
    }
    if decision.get("interleaving"):
        out["interleaving_win_rate"] = decision["interleaving"]["win_rate"]
    if (decision.get("privacy") or {}).get("challenger"):
        out["privacy_epsilon"] = decision["privacy"]["challenger"]["epsilon_spent"]
    return out


def _finish(outcome: dict, champion: Entry, reasons: list[str] | None = None) -> dict:
    about = {"entry": champion.id, "version": champion.version, "bento": champion.bento_tag}
    outcome = {**outcome, "champion": about, "reasons": reasons or []}
    write_metrics("promote", outcome)  # its time goes with the stage's timings
    return outcome


def smoke_test(bento: str, model_tag: str, params: Params, evaluation_dir: Path) -> dict:
    """Serve `bento` on loopback and check what it answers; never raises for a bad answer."""
    import httpx

    version = model_tag.split(":", 1)[1]
    cfg = params.promote
    failures: list[str] = []
    timings: list[float] = []
    expected = _evaluated_top10(evaluation_dir)
    queries = list(expected)[: cfg.smoke_queries] or ["gift"]
    port = free_port()
    log.info("smoke test: serving %s on 127.0.0.1:%d", bento, port)
    try:
        with RunningService(bento, port) as base, httpx.Client(base_url=base, timeout=60) as client:

            def post(path: str, body: dict) -> httpx.Response:
                started = time.perf_counter()
                response = client.post(path, json=body)
                timings.append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    failures.append(f"{path} {body} → {response.status_code} {response.text[:200]}")
                return response

            served = client.get("/version").json()
            recommends = served.get("recommends") is not None
            if served.get("model_version") != version:
                failures.append(f"/version serves {served.get('model_version')}, not {version}")
            overlaps = []
            first_hits: list[str] = []
            for query in queries:
                response = post("/search", {"query": query, "k": 10})
                if response.status_code == 200:
                    ids = [h["product_id"] for h in response.json()["products"]]
                    first_hits = first_hits or ids
                    if query in expected:
                        overlaps.append(len(set(ids) & set(expected[query])) / 10)
            if first_hits:
                post("/rank", {"query": queries[0], "product_ids": first_hits[::-1][:5]})
                if recommends:  # a shop without purchases: the model recommends nothing
                    post("/recommend", {"recent_product_ids": first_hits[:2], "k": 5})
            overlap = float(np.mean(overlaps)) if overlaps else None
            if overlap is not None and overlap < cfg.smoke_min_overlap:
                failures.append(
                    f"served top 10 overlaps the evaluated top 10 by {overlap:.2f} "
                    f"(< {cfg.smoke_min_overlap}): the Bento does not serve what was evaluated"
                )
    except (StageInputError, httpx.HTTPError) as exc:
        failures.append(f"the Bento did not serve: {str(exc)[-1500:]}")
        overlap = None
    p95 = float(np.percentile(timings, 95)) if timings else None
    if p95 is not None and p95 > cfg.smoke_p95_ms:
        failures.append(f"p95 latency {p95:.0f} ms > smoke_p95_ms {cfg.smoke_p95_ms:g}")
    result = {
        "passed": not failures,
        "failures": failures,
        "requests": len(timings),
        "p95_ms": p95,
        "top10_overlap": overlap,
        "bento": bento,
    }
    log.info("smoke test %s: %s", "passed" if not failures else "FAILED", result)
    return result


def _evaluated_top10(evaluation_dir: Path) -> dict[str, list[str]]:
    path = evaluation_dir / "challenger_search_top10.parquet"
    if not path.exists():
        return {}
    frame = pd.read_parquet(path)
    return {q: list(ids) for q, ids in zip(frame["query"], frame["top10"], strict=True)}
