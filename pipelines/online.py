"""Stage `online`: tonight's reading of the running online experiment, and what follows.

Reads the registry's running experiment (none: writes that and stops), the service's logs
(the files sink's `online.log.folder`, or Postgres with `online.log.sink: postgres`), joins
impressions and events (`shopflow.online.join`), decides (`shopflow.online.decision`: the
always-valid test and the guardrails) and applies the verdict through the registry
(`shopflow.release.experiments`): advance from shadow to interleaving, promote the challenger,
or stop and keep the champion.

Writes `reports/online.json` (the decision and every number behind it, the join's counts)
and `metrics/online.json`. Like promote it writes outside the workspace (the registry), and it
always runs (`always_changed` in dvc.yaml): its input is the live service's logs, which DVC
cannot hash without copying them.
"""

from __future__ import annotations

import datetime as dt
import logging

from shopflow.core import paths
from shopflow.core.artifacts import write_json
from shopflow.core.config import Params
from shopflow.online.decision import decide
from shopflow.online.join import join_logs
from shopflow.online.sinks import log_folder, read_sink
from shopflow.release import experiments
from shopflow.release.pointer import write_champion_pointer
from shopflow.release.registry import Registry

log = logging.getLogger(__name__)


def run(params: Params, now: dt.datetime | None = None) -> dict:
    registry = Registry.of(params)
    found = experiments.running(params, registry)
    if found is None:
        result: dict = {"experiment": None, "decision": "none"}
        log.info("online: no experiment runs")
    else:
        _, spec = found
        cfg = params.online.log
        impressions, events, torn = read_sink(
            cfg.sink, log_folder(cfg.folder), cfg.dsn_env, "online.log.sink"
        )
        joined = join_logs(impressions, events, params.online.attribution_minutes, spec)
        result = decide(joined, spec, params.online.decision, now or dt.datetime.now(dt.UTC))
        result["logs"] = {**joined.counts, "torn_lines": torn}
        applied = experiments.apply(params, registry, result)
        result["registry_entry"] = None if applied is None else applied.id
        if applied is not None:
            write_champion_pointer(registry)  # drift and evaluate see a promotion or a stop
        log.info(
            "online: experiment %s (%s) after %.1f days, %s units: %s%s",
            spec.id,
            spec.mode,
            result["days"],
            result.get("units"),
            result["decision"],
            f" ({'; '.join(result['reasons'])})" if result["reasons"] else "",
        )
    write_json(paths.ONLINE_DECISION, result)
    write_json(
        paths.metrics("online"),
        {
            "decision": result["decision"],
            "units": result.get("units", 0),
            "p_value": result.get("preference", {}).get("p_value"),
        },
    )
    return result
