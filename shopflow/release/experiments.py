"""Online experiments in the release flow: offline gate → shadow → interleaving → champion.

With `online.after_gate: shadow` (or `interleave`) a challenger that passed the offline gate
and its smoke test does not replace the champion at once: `start` packs champion and
challenger into one Bento, writes the experiment file the service reads
(`<promote.registry>/experiment.json`) and logs an `experiment` entry in the registry. The
nightly `online` stage reads the service's logs and `apply`s its verdict through the
registry's audited paths:
- `advance_to_interleave`: the same experiment (same units, same salt) moves from shadow to
  team-draft interleaving (a new `experiment` entry);
- `promote`: the challenger becomes the champion (`promote` entry, compare-and-swap against the
  champion the experiment started from), served by its own Bento;
- `stop`: the experiment ends and the champion stays (`stop` entry).
Every change re-deploys (`deploy.deploy_champion` serves the experiment's Bento with the file
while one runs, the champion's Bento otherwise). The registry entry holds the experiment's
spec, so an edited experiment file is refused.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from shopflow.core.artifacts import write_json
from shopflow.core.config import Params
from shopflow.core.errors import StageInputError
from shopflow.online.decision import ADVANCE, PROMOTE, STOP
from shopflow.online.experiment import (
    ExperimentSpec,
    experiment_id_for,
    new_salt,
    read_experiment,
)
from shopflow.release.registry import Entry, Registry, now
from shopflow.serving.bento_build import build_bento, find_bento

log = logging.getLogger(__name__)
FILE = "experiment.json"


def experiment_file(params: Params) -> Path:
    return Path(params.promote.registry) / FILE


def running(params: Params, registry: Registry) -> tuple[Entry, ExperimentSpec] | None:
    """The running experiment's entry and spec; the file must be the one the entry logged."""
    entry = registry.experiment()
    path = experiment_file(params)
    if entry is None:
        if path.exists():
            path.unlink()  # a rollback or forced promotion ended it: stop serving it
        return None
    spec = read_experiment(path)
    if spec.model_dump() != entry.decision.get("spec"):
        raise StageInputError(
            f"{path} is not the experiment registry entry #{entry.id} started: it was edited "
            "or replaced; restore it or stop the experiment (`shopflow rollback`)"
        )
    return entry, spec


def start(
    params: Params,
    registry: Registry,
    champion: Entry,
    challenger: Entry,
    mode: str,
) -> Entry:
    """Start an experiment of `challenger` (an entry not yet appended) against `champion`."""
    if champion.model_tag is None:
        raise StageInputError("an online experiment needs a served champion model")
    started = now()
    spec = ExperimentSpec(
        id=experiment_id_for(str(challenger.model_tag), started),
        salt=new_salt(str(challenger.model_tag), started),
        mode=mode,  # type: ignore[arg-type]  # validated by the params' Literal
        champion=champion.model_tag,
        challenger=str(challenger.model_tag),
        share=params.online.share,
        started_at=started,
    )
    bento = build_bento(champion.model_tag, challenger=str(challenger.model_tag))
    return _log(params, registry, challenger, spec, bento, challenger.reason)


def _log(
    params: Params, registry: Registry, about: Entry, spec: ExperimentSpec, bento: str, why: str
) -> Entry:
    entry = Entry(
        id=0,
        action="experiment",
        at=now(),
        kind="model",
        version=spec.challenger.split(":", 1)[1],
        model_tag=spec.challenger,
        bento_tag=bento,
        reason=why,
        metrics=about.metrics,
        data_hash=about.data_hash,
        params_hash=about.params_hash,
        git_revision=about.git_revision,
        decision={**about.decision, "spec": spec.model_dump()},
    )
    with registry.locked():
        logged = registry.append(entry, make_champion=False)
        write_json(experiment_file(params), spec.model_dump())
    log.info(
        "experiment %s (%s, %.0f%% of units): entry #%d",
        spec.id,
        spec.mode,
        100 * spec.share,
        logged.id,
    )
    return logged


def apply(params: Params, registry: Registry, verdict: dict) -> Entry | None:
    """Act on the online stage's verdict; the registry entry written (None: nothing changed)."""
    found = running(params, registry)
    if found is None or verdict["decision"] not in (ADVANCE, PROMOTE, STOP):
        return None
    entry, spec = found
    summary = {k: verdict[k] for k in ("decision", "reasons", "units", "days") if k in verdict}
    if "preference" in verdict:
        summary["preference"] = verdict["preference"]
    if verdict["decision"] == ADVANCE:
        moved = ExperimentSpec(**{**spec.model_dump(), "mode": "interleave"})
        return _log(
            params,
            registry,
            entry,
            moved,
            str(entry.bento_tag),
            "shadow passed its guardrails: interleaving",
        )
    path = experiment_file(params)
    if verdict["decision"] == STOP:
        with registry.locked():
            stopped = registry.append(
                Entry(
                    id=0,
                    action="stop",
                    at=now(),
                    kind="model",
                    version=entry.version,
                    model_tag=entry.model_tag,
                    bento_tag=entry.bento_tag,
                    reason="; ".join(verdict["reasons"]) or "stopped",
                    decision={"online": summary, "spec": spec.model_dump()},
                ),
                make_champion=False,
            )
            path.unlink(missing_ok=True)
        log.warning("experiment %s stopped: %s; the champion stays", spec.id, stopped.reason)
        return stopped
    champion = registry.current()
    if champion.model_tag != spec.champion:
        raise StageInputError(
            f"the champion moved to #{champion.id} during experiment {spec.id}: its result "
            "compares against a champion that no longer serves; stop it"
        )
    bento = find_bento(spec.challenger) or build_bento(spec.challenger)
    promoted = registry.replace_champion(
        champion,
        Entry(
            id=0,
            action="promote",
            at=now(),
            kind="model",
            version=entry.version,
            model_tag=entry.model_tag,
            bento_tag=bento,
            reason=f"online experiment {spec.id}: the challenger was preferred",
            metrics=entry.metrics,
            data_hash=entry.data_hash,
            params_hash=entry.params_hash,
            git_revision=entry.git_revision,
            decision={**entry.decision, "online": summary},
        ),
    )
    path.unlink(missing_ok=True)
    log.info("experiment %s: promoted %s as champion #%d", spec.id, spec.challenger, promoted.id)
    return promoted


def describe(params: Params, registry: Registry) -> str:
    """One line for `shopflow online status`."""
    found = running(params, registry)
    if found is None:
        return "no online experiment runs"
    entry, spec = found
    return json.dumps({"entry": entry.id, **spec.model_dump()})
