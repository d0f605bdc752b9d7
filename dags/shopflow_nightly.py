"""shopflow_nightly: every night, check the new day's data and retrain when it is worth it.

    ingest → validate → drift ─→ should_retrain → prepare → … → evaluate → should_promote → promote
    online → online_verdict (every night: the running experiment)    (asset shopflow://champion)
    every task → report (after every night, failed ones too)

One task per stage of `dvc.yaml`, wired by DVC's own stage graph; each runs its stage through
`dvc repro`, so a stage whose inputs did not change is skipped and a rerun of a night is a
no-op. The run's logical date is the last day of the data window (`ingest.window.end`).

- validate fails on bad data: the run stops there (no retry: the data will not get better),
  the alert fires, nothing downstream runs and the champion is untouched;
- should_retrain reads the drift stage's verdict: train when it says `retrain`, when the
  champion's data is `max_model_age_days` old, when there is no trained champion yet, or when
  the run's conf says `force_retrain`; a drift `alert` alerts and keeps the champion;
- should_promote reads the A/B gate's verdict; promote emits `shopflow://champion` only when
  the champion really changed, which schedules `shopflow_deploy`. A run triggered with
  `force_promote_reason` (and `force_promote_by`) promotes whatever the gate says, through
  `shopflow promote --force` (still smoke-tested; the registry logs who and why);
- online reads the running online experiment's logs and applies its verdict through the
  registry (promote the challenger, stop it, or move from shadow to interleaving);
  online_verdict emits `shopflow://champion` when that changed what serves, so
  `shopflow_deploy` re-serves (skipped when nothing changed);
- report writes the night's HTML run report (`report.folder`), whatever happened.

With `airflow.dvc_remote` set, workers need no shared project folder: each task restores the
upstream stages it needs from that DVC remote's run cache (`dvc repro --pull`), runs its
stage, and pushes its outputs and run (`dvc push --run-cache`;
`shopflow/orchestration/handover.py`).

Knobs: the `airflow:` section of params.yaml. The decisions live in
`shopflow/orchestration/decisions.py`, how a stage runs in `shopflow/orchestration/nightly.py`.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from airflow.sdk import (
    DAG,
    Asset,
    CronDataIntervalTimetable,
    Param,
    TriggerRule,
    get_current_context,
    task,
)
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from shopflow.core import paths
from shopflow.core.config import load_params
from shopflow.orchestration import alerts, decisions, nightly

if TYPE_CHECKING:
    from shopflow.release.registry import Entry

PROJECT = nightly.project_dir(__file__)
CHAMPION = Asset(nightly.CHAMPION_ASSET)
log = logging.getLogger(__name__)

config = load_params(PROJECT / paths.PARAMS)
settings = config.airflow
graph = nightly.StageGraph.read(PROJECT)
alert = alerts.Alerter(PROJECT, settings.alert_connection)


def night_of(logical_date: dt.datetime | None) -> dt.date:
    """The run's night; Airflow fills `logical_date` into every task that asks for it."""
    if logical_date is None:
        raise AirflowFailException("this task needs the DAG run's logical date")
    return nightly.night_of(logical_date)


def receive(stages: Iterable[str]) -> None:
    """Restore what a decision or the report reads, the outputs of `stages`, into this
    worker's clone from the DVC remote's run cache; nothing on one project folder."""
    if settings.dvc_remote:
        nightly.restore(PROJECT, list(stages), settings.dvc_remote)


def finished_stages() -> list[str]:
    """The stages whose tasks finished tonight (each returns its result through XCom)."""
    ids = [graph.task_id(s) for s in graph.stages]
    returned = get_current_context()["ti"].xcom_pull(task_ids=ids)
    values = returned if isinstance(returned, list) else [returned]
    return [v["stage"] for v in values if isinstance(v, dict) and "stage" in v]


def run_stage(
    stage: str,
    logical_date: dt.datetime | None,
    run_id: str | None,
    command: list[str] | None = None,
) -> dict:
    night, upstream = night_of(logical_date), sorted(graph.upstream(stage))
    if run_id is None:
        raise AirflowFailException("this task needs the DAG run's id")
    try:
        return nightly.run_stage(
            PROJECT,
            stage,
            night,
            upstream,
            run_id,
            command=command,
            remote=settings.dvc_remote,
        )
    except nightly.StageRunError as failed:
        if failed.final:
            raise AirflowFailException(str(failed)) from failed
        raise


def stage_task(stage: str):
    """The Airflow task of one DVC stage."""
    options: dict[str, Any] = {
        "task_id": graph.task_id(stage),
        "execution_timeout": dt.timedelta(minutes=settings.timeout(stage)),
        "doc_md": f"`dvc repro {stage}` for the night's window (see dvc.yaml)",
    }
    if stage in settings.gpu_stages:
        options["pool"], options["queue"] = settings.gpu_pool, settings.gpu_queue
    if stage == nightly.PROMOTE_STAGE:
        return promote_task.override(**options)(stage)

    @task(**options)
    def dvc_stage(
        stage: str, logical_date: dt.datetime | None = None, run_id: str | None = None
    ) -> dict:
        outcome = run_stage(stage, logical_date, run_id)
        if stage == nightly.ONLINE_STAGE:  # read where it ran: DVC keeps no run to restore
            outcome["verdict"] = nightly.read_report(PROJECT, paths.ONLINE_DECISION)
        return outcome

    return dvc_stage(stage)


@task(outlets=[CHAMPION])
def promote_task(
    stage: str,
    logical_date: dt.datetime | None = None,
    run_id: str | None = None,
    params: dict | None = None,
    outlet_events=None,
) -> dict:
    """The promote stage (forced by the run's conf: `shopflow promote --force`); the champion
    asset (which schedules `shopflow_deploy`) is updated only when what serves changes: a new
    champion, or an online experiment started."""
    from shopflow.release.registry import Registry  # imports torch: in the task, not at parse

    registry = Registry.of(config, PROJECT)
    before = len(registry.history())
    forced = decisions.ForcedPromotion.from_conf(params or {})
    outcome = run_stage(stage, logical_date, run_id, forced.command() if forced else None)
    after = registry.history()
    if len(after) == before or after[-1].action == "register":
        raise AirflowSkipException(f"what serves did not change ({outcome})")
    announce(after[-1], outlet_events)
    return outcome | {"registry_entry": after[-1].id}


@task(task_id="online_verdict", outlets=[CHAMPION])
def online_verdict(outlet_events=None) -> dict:
    """After the online stage: when its verdict wrote a registry entry (promote, stop, advance),
    what serves changed, so the champion asset schedules `shopflow_deploy`; else skipped."""
    from shopflow.release.registry import Registry

    online = get_current_context()["ti"].xcom_pull(task_ids=graph.task_id(nightly.ONLINE_STAGE))
    reading = (online or {}).get("verdict") or {}
    if reading.get("registry_entry") is None:
        raise AirflowSkipException(f"the online stage changed nothing ({reading.get('decision')})")
    entry = Registry.of(config, PROJECT).entry(reading["registry_entry"])
    announce(entry, outlet_events)
    return {"decision": reading["decision"], "registry_entry": entry.id}


def announce(entry: Entry, outlet_events: Any) -> None:
    """The champion asset's event: which registry entry changed what serves."""
    outlet_events[CHAMPION].extra = {
        "entry": entry.id,
        "action": entry.action,
        "version": entry.version,
        "bento": entry.bento_tag,
    }


# A short circuit skips only the tasks right after it; the rest follow their trigger rules
# (the training chain is skipped with them, the report still runs).
@task.short_circuit(task_id="should_retrain", ignore_downstream_trigger_rules=False)
def should_retrain(params: dict | None = None, logical_date: dt.datetime | None = None) -> bool:
    """Train tonight? The drift stage's verdict, the champion's age, or a forced run."""
    from shopflow.release.registry import Registry

    receive([nightly.DRIFT_STAGE])
    night = load_params(PROJECT / paths.PARAMS)
    decision = decisions.decide_retrain(
        nightly.read_report(PROJECT, paths.DRIFT_REPORT),
        Registry.of(night, PROJECT).champion(),
        night,
        forced=bool((params or {}).get("force_retrain", False)),
    )
    if decision.alert:
        alert(
            alerts.Alert(
                "drift alert",
                decision.alert,
                "shopflow_nightly",
                "should_retrain",
                logical_date=logical_date.isoformat() if logical_date else None,
            )
        )
    log.info("retrain: %s; why: %s; %s", decision.go, "; ".join(decision.reasons), decision.facts)
    return decision.go


@task.short_circuit(task_id="should_promote", ignore_downstream_trigger_rules=False)
def should_promote(params: dict | None = None) -> bool:
    """Promote on the A/B gate's `promote` verdict, or when the run's conf forces it."""
    from shopflow.evaluation import gate

    receive([nightly.EVALUATE_STAGE])
    decision = decisions.decide_promote(
        gate.read_decision(PROJECT / paths.DECISION),
        decisions.ForcedPromotion.from_conf(params or {}),
    )
    log.info("promote: %s; why: %s", decision.go, "; ".join(decision.reasons))
    return decision.go


@task(task_id="report", trigger_rule=TriggerRule.ALL_DONE)
def write_report(logical_date: dt.datetime | None = None, run_id: str | None = None) -> str:
    """The night's run report (also after a failure: it says where the night stopped)."""
    from shopflow.reporting import pages  # reads the registry (torch): in the task

    try:
        receive(finished_stages())
    except nightly.StageRunError as failed:  # the report says what it has; it is never lost
        log.warning("run report: some stage outputs could not be restored here: %s", failed)
    page = pages.write(
        load_params(PROJECT / paths.PARAMS),
        run_id=run_id,
        project=PROJECT,
        night=night_of(logical_date).isoformat(),
    )
    log.info("run report: %s", page)
    return str(page)


@task(
    task_id="night_failed", trigger_rule=TriggerRule.ONE_FAILED, retries=0, on_failure_callback=None
)
def night_failed() -> None:
    """Keeps a failed night failed: the report runs after every night and would otherwise be
    the run's only leaf, and a successful leaf marks the run a success."""
    raise AirflowFailException("a task of this night failed (it has alerted): see its log")


with DAG(
    dag_id="shopflow_nightly",
    description="ingest → validate → drift → (retrain?) → A/B gate → (promote?)",
    doc_md=__doc__,
    schedule=CronDataIntervalTimetable(settings.schedule, "UTC") if settings.schedule else None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    params={
        "force_retrain": Param(False, type="boolean", description="retrain whatever drift says"),
        "force_promote_reason": Param(
            "",
            type="string",
            description="non-empty: promote tonight's model whatever the gate says (logged)",
        ),
        "force_promote_by": Param("", type="string", description="who forces the promotion"),
    },
    default_args=nightly.task_defaults(
        settings, alerts.FailureNotifier(PROJECT, settings.alert_connection)
    ),
    tags=["shopflow", "dvc"],
) as dag:
    stages = {stage: stage_task(stage) for stage in graph.stages}
    retrain, promote = should_retrain(), should_promote()
    stages[nightly.DRIFT_STAGE] >> retrain >> [stages[s] for s in graph.training_roots()]
    for upstream, downstream in sorted(graph.edges):
        if (upstream, downstream) == (nightly.EVALUATE_STAGE, nightly.PROMOTE_STAGE):
            stages[upstream] >> promote >> stages[downstream]
        else:
            stages[upstream] >> stages[downstream]
    # after every stage (so after the decisions too), not right after a decision: a short
    # circuit skips the tasks right after it
    stages[nightly.ONLINE_STAGE] >> (verdict := online_verdict())
    list(stages.values()) >> write_report()
    [*stages.values(), verdict] >> night_failed()
