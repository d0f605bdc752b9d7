"""Putting the champion where it serves: a local `bentoml serve` or a BentoCloud deployment.

The deploy DAG (`shopflow deploy`) runs `deploy_champion` whenever a promotion moved the
champion; `make serve` runs `serve_champion` in the foreground. Both find the champion's Bento
through `ensure_bento`: the recorded one, else one built for its model, else rebuilt from its
model (a deleted Bento never blocks a rollback or a deployment while the model exists).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from shopflow.core.config import Params
from shopflow.core.errors import DeployError, StageInputError
from shopflow.online.experiment import EXPERIMENT_ENV
from shopflow.release import experiments
from shopflow.release.registry import Entry, Registry
from shopflow.serving.bento_build import (
    CHALLENGER_ENV,
    MODEL_ENV,
    ROOT,
    build_bento,
    find_bento,
    packed_model,
)
from shopflow.serving.bentocloud import deploy_to_bentocloud
from shopflow.serving.local import SERVICE, serve_foreground, serve_locally
from shopflow.serving.model_store import current_model

log = logging.getLogger(__name__)


def ensure_bento(entry: Entry) -> str:
    """The Bento of a registry entry: the recorded one if it is in the store, else one that
    packs its model, else built again from its model (which must still be in the store)."""
    import bentoml

    if entry.model_tag is None:
        raise StageInputError(f"entry #{entry.id} is the baseline: it has no model or Bento")
    if entry.bento_tag:
        try:
            return str(bentoml.get(entry.bento_tag).tag)
        except (bentoml.exceptions.NotFound, ValueError):
            pass
    try:
        bentoml.models.get(entry.model_tag)
    except bentoml.exceptions.NotFound:
        raise StageInputError(
            f"entry #{entry.id}: neither its Bento {entry.bento_tag} nor its model "
            f"{entry.model_tag} is in the BentoML store; restore the store or pick another entry"
        ) from None
    found = find_bento(str(entry.model_tag))
    if found:
        return found
    log.info("Bento %s is gone: rebuilding it from %s", entry.bento_tag, entry.model_tag)
    return build_bento(str(entry.model_tag))


def deploy_champion(params: Params) -> dict:
    """Deploy the registry's champion: `bentoml serve` on 127.0.0.1 (target `local`) or
    `bentoml deploy` to BentoCloud (target `bentocloud`). Repeating it changes nothing."""
    registry = Registry.of(params)
    champion = registry.champion()
    if champion is None or champion.kind != "model":
        raise DeployError(
            "the champion is the baselines (BM25F, best recommender): there is no model to "
            "deploy yet (a night must promote one first)"
        )
    bento = ensure_bento(champion)
    about: dict[str, object] = {"entry": champion.id, "promoted_at": champion.at}
    env: dict[str, str] = {}
    found = experiments.running(params, registry)
    if found is not None:  # champion + challenger in one Bento, split by the experiment file
        entry, spec = found
        bento = str(entry.bento_tag)
        about["experiment"] = spec.id + ":" + spec.mode
        env = {CHALLENGER_ENV: spec.challenger, EXPERIMENT_ENV: spec.model_dump_json()}
        log.info(
            "serving experiment %s (%s): %s vs %s",
            spec.id,
            spec.mode,
            spec.champion,
            spec.challenger,
        )
    if params.deploy.target == "bentocloud":
        return deploy_to_bentocloud(bento, params.deploy.name, env)
    return serve_locally(
        bento, champion.version, params.serving.port, Path(params.deploy.state), about, env
    )


CURRENT = "current"  # `--model current`: this workspace's latest outputs, gated or not


def serve_champion(
    params: Params, model: str | None = None, bento: str | None = None, port: int | None = None
) -> int:
    """`make serve`: the champion's Bento; or, when asked explicitly, a built `bento`, a saved
    `model`, or `model="current"` (this workspace's outputs, which no gate may have passed).
    Never an ungated model by default. Runs until stopped; the server's exit code."""
    env = {**os.environ}
    if bento is None and model is None:
        champion = Registry.of(params).champion()
        if champion is None or champion.kind != "model":
            raise DeployError(
                "no promoted model to serve: the champion is "
                + ("nobody (empty registry)" if champion is None else "the baselines")
                + ". Serving an ungated model takes an explicit `shopflow serve --model "
                f"{CURRENT}` (this workspace's latest outputs) or `--model shopflow:<version>`"
            )
        bento = ensure_bento(champion)
        env["SHOPFLOW_PROMOTED_AT"] = champion.at
        log.info("serving the champion #%d %s", champion.id, champion.version)
    elif model == CURRENT:
        model = current_model(params)
        log.warning("serving this workspace's latest outputs (%s), not a promoted model", model)
    env[MODEL_ENV] = packed_model(bento) if bento else str(model)
    target = bento or SERVICE
    return serve_foreground(target, port or params.serving.port, env, None if bento else ROOT)
