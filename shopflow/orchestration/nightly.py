"""How a night runs: the DVC stage graph as tasks, one stage run for the night's data window.

Airflow-free on purpose, so that the DAG file (`dags/shopflow_nightly.py`) only says what
runs after what, and everything that decides something is testable without a scheduler.

- `StageGraph.read` takes the stages and their edges from `dvc.yaml`, drawn as DVC draws
  them (a test compares it with DVC's own graph): the pipeline is defined once, Airflow never
  restates it, and parsing the DAG file needs no DVC `Repo`.
- `run_stage` runs one stage through `dvc repro --single-item <stage>`, after writing the
  night's date as `ingest.window.end` into params.yaml. Every stage depends on that param
  (directly or through its inputs), so DVC re-runs what a new night changes, skips what a
  rerun of the same night already has, and can never hand back the outputs of another
  window: they hash differently. It refuses to run on upstream outputs of another night.
- The branches between stages (retrain tonight? promote?) are `orchestration.decisions`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from shopflow.core import paths
from shopflow.core.config import AirflowConfig, load_params, set_params
from shopflow.core.errors import ConfigError, DataValidationError, ShopflowError, StageInputError
from shopflow.core.processes import die_with_parent, stop_process_group, stop_process_tree
from shopflow.orchestration import handover
from shopflow.orchestration.runlog import RUN_ID_ENV

log = logging.getLogger(__name__)

CHAMPION_ASSET = "shopflow://champion"  # promote emits it; shopflow_deploy is scheduled on it
DRIFT_STAGE = "drift"
EVALUATE_STAGE = "evaluate"
PROMOTE_STAGE = "promote"
ONLINE_STAGE = "online"  # reads the live experiment every night, retrain or not
ALWAYS_CHANGED = "always changed"  # how `dvc status` reports an `always_changed: true` stage
# Exit codes of `python -m shopflow` (shopflow/core/errors.py) that no retry can fix: bad input
# or params (2) and failed data validation (3). Anything else (a crash, a kill, a timeout, a
# smoke test on a busy machine) is worth a retry.
FINAL_EXIT_CODES = {ShopflowError.exit_code, DataValidationError.exit_code}


def project_dir(dag_file: str) -> Path:
    """The project the DAGs run: $SHOPFLOW_PROJECT, else the checkout the DAG file sits in."""
    return Path(os.environ.get("SHOPFLOW_PROJECT") or Path(dag_file).resolve().parents[1])


def task_defaults(settings: AirflowConfig, on_failure: Callable[[Any], None]) -> dict:
    """Every task's retries (exponential back-off) and failure notifier, from params.yaml."""
    return {
        "retries": settings.retries,
        "retry_delay": dt.timedelta(minutes=settings.retry_delay_minutes),
        "retry_exponential_backoff": True,
        "max_retry_delay": dt.timedelta(minutes=settings.max_retry_delay_minutes),
        "on_failure_callback": on_failure,
    }


@dataclass(frozen=True)
class StageGraph:
    """The pipeline's stages in dvc.yaml order and its edges (upstream, downstream)."""

    stages: tuple[str, ...]
    edges: frozenset[tuple[str, str]]
    always_changed: frozenset[str] = frozenset()  # `always_changed: true`: DVC keeps no run

    @classmethod
    def read(cls, project: Path) -> StageGraph:
        """The stage graph of the project's `dvc.yaml`, drawn as DVC draws it: a stage is
        downstream of another when one of its deps (a file, a folder or a params file) is,
        holds or lies inside one of the other's outs (metrics and plots included). Read with
        YAML alone because Airflow parses the DAG file every 30 s and a DVC `Repo` index costs
        seconds; the DAG tests check the result against `dvc dag`."""
        tree = yaml.safe_load((project / "dvc.yaml").read_text(encoding="utf-8")) or {}
        declared: dict = tree.get("stages") or {}
        stages = tuple(declared)
        outs = {
            name: _paths(stage, ("outs", "metrics", "plots")) for name, stage in declared.items()
        }
        deps = {name: _paths(stage, ("deps", "params")) for name, stage in declared.items()}
        edges = frozenset(
            (upstream, downstream)
            for downstream in stages
            for upstream in stages
            if upstream != downstream
            and any(_overlap(d, o) for d in deps[downstream] for o in outs[upstream])
        )
        always = frozenset(name for name, stage in declared.items() if stage.get("always_changed"))
        return cls(stages, edges, always)

    @staticmethod
    def task_id(stage: str) -> str:
        """An Airflow task id for a stage (`foreach` stages are named `name@key`)."""
        return re.sub(r"[^\w.-]", "-", stage)

    def upstream(self, stage: str) -> set[str]:
        return {a for a, b in self.edges if b == stage}

    def ancestors(self, stage: str) -> set[str]:
        found: set[str] = set()
        todo = [stage]
        while todo:
            for parent in self.upstream(todo.pop()) - found:
                found.add(parent)
                todo.append(parent)
        return found

    def in_order(self, stages: set[str]) -> list[str]:
        """`stages` in an order where every stage comes after its ancestors (an ancestor has
        strictly fewer ancestors), ties in dvc.yaml order."""
        return sorted(stages, key=lambda s: (len(self.ancestors(s)), self.stages.index(s)))

    def checks(self) -> set[str]:
        """The stages every night runs: the drift check and what it needs (ingest, validate),
        and the online experiment's reading."""
        nightly = {DRIFT_STAGE, ONLINE_STAGE} & set(self.stages)
        return nightly.union(*(self.ancestors(s) for s in nightly))

    def training_roots(self) -> list[str]:
        """Where the training part starts: stages outside the checks that only need checks.
        The retrain decision sits before these; everything after them follows them."""
        checks = self.checks()
        return [
            s
            for s in self.stages
            if s not in checks and self.upstream(s) and self.upstream(s) <= checks
        ]


def _paths(stage: dict, sections: Sequence[str]) -> list[str]:
    """The file paths a dvc.yaml stage lists under `sections`: plain entries, `{path: opts}`
    entries, and params entries' files (`{file: [keys]}`; plain keys are in params.yaml,
    which no stage writes). Templated (`${...}`) paths point outside the pipeline's outs."""
    found: list[str] = []
    for section in sections:
        for entry in stage.get(section) or []:
            if isinstance(entry, dict):
                found.extend(str(key) for key in entry)
            elif section != "params":
                found.append(str(entry))
    return [p.strip("/") for p in found if "${" not in p]


def _overlap(dep: str, out: str) -> bool:
    return dep == out or dep.startswith(f"{out}/") or out.startswith(f"{dep}/")


# -- one stage ------------------------------------------------------------------------------


class StageRunError(ShopflowError):
    """A stage run failed; `final` when no retry can help (bad data or params)."""

    def __init__(self, stage: str, exit_code: int, tail: str) -> None:
        self.stage, self.code, self.tail = stage, exit_code, tail
        self.final = exit_code in FINAL_EXIT_CODES
        kind = "bad input (no retry)" if self.final else "retryable"
        super().__init__(f"stage {stage!r} failed with exit code {exit_code} [{kind}]:\n{tail}")


def set_night(project: Path, night: dt.date) -> bool:
    """Write the night's date as `ingest.window.end` into the project's params.yaml (the
    values every stage reads and DVC tracks); True when it changed. The other values stay as
    composed (`dvc exp run -S` / `shopflow params --write`)."""
    changed = set_params(project / paths.PARAMS, {"ingest.window.end": night.isoformat()})
    effective = load_params(project / paths.PARAMS).ingest.window.end
    if effective != night:
        raise ConfigError(f"{project}: ingest.window.end is {effective}, not the night {night}")
    return changed


def refresh_champion_pointer(project: Path) -> bool:
    """Point the project's champion.json at the registry's champion (a rollback made from
    another machine, a promotion by another worker); True when it changed, and so `drift`
    and `evaluate` with it. Imported here, not at the top: the DAG file imports this module
    and must parse without the registry's imports."""
    from shopflow.release.pointer import write_champion_pointer
    from shopflow.release.registry import Registry

    registry = Registry.of(load_params(project / paths.PARAMS), project)
    return registry.path.exists() and write_champion_pointer(registry, project)


def dvc_status(project: Path, stages: Sequence[str]) -> dict[str, list]:
    """`dvc status --json` of `stages`: each changed stage → what changed."""
    if not stages:
        return {}
    try:
        answer = handover.dvc(project, "status", "--json", *stages)
    except handover.DvcCommandError as exc:
        raise StageRunError(f"dvc status {' '.join(stages)}", 1, exc.output) from None
    return json.loads(answer or "{}")


def stale_upstream(project: Path, upstream: Sequence[str]) -> list[str]:
    """The upstream stages whose outputs are not those of the current params and inputs:
    running a stage on them would mix two nights. An `always_changed` stage (online) is
    stale only when something besides that flag changed."""
    return stale_of(dvc_status(project, upstream))


def stale_of(changed: Mapping[str, list], but: str | None = None) -> list[str]:
    """The stages of a `dvc_status` answer (other than `but`) changed by more than their
    `always_changed` flag."""
    return sorted(s for s, what in changed.items() if s != but and what != [ALWAYS_CHANGED])


def run_stage(
    project: Path,
    stage: str,
    night: dt.date,
    upstream: Sequence[str] = (),
    run_id: str | None = None,
    tail_lines: int = 40,
    command: Sequence[str] | None = None,
    remote: str | None = None,
) -> dict:
    """`dvc repro --single-item <stage>` in `project` for the window ending `night` (or
    `command` instead, e.g. a forced `shopflow promote --force`); its output goes to the log
    line by line. Returns whether the stage ran (`ran`: its dvc.lock entry changed, the stage
    is `always_changed`, or the override command ran; none on a rerun) and the time.

    One stage, not its upstream: tasks of independent stages run at the same time in one
    workspace, and `dvc repro <stage>` would lock every upstream stage's outputs and collide
    with them. Instead the upstream stages must already be at this night (they are, when
    their tasks ran first); a task cleared alone for another night fails and says so.

    `run_id` (the DAG run's) goes to the stage as SHOPFLOW_RUN_ID: the run log groups the
    night's stages under it for the run report.

    With a DVC `remote` (a night across machines, `orchestration.handover`), the upstream
    stages are first restored from the remote's run cache, and the stage's outputs and run are
    pushed after."""
    if set_night(project, night):
        log.info("%s: ingest.window.end = %s (the night's date)", paths.PARAMS, night)
    if (project / paths.CHAMPION_POINTER).exists() and refresh_champion_pointer(project):
        log.info(
            "%s: the registry's champion changed since this checkout saw it", paths.CHAMPION_POINTER
        )
    if remote:
        uncached = handover.uncached_outputs(project)
        if uncached:
            raise StageRunError(
                stage,
                ShopflowError.exit_code,
                f"dvc.yaml: outputs with `cache: false` cannot cross workers (DVC pushes no run "
                f"objects of them): {', '.join(uncached)}",
            )
        restore(project, upstream, remote)
    stale = stale_upstream(project, upstream)
    if stale:
        raise StageRunError(
            stage,
            ShopflowError.exit_code,
            f"upstream stage(s) {', '.join(stale)} are not at the night {night}: run them "
            "first (in Airflow: clear this task with its upstream tasks)",
        )
    before = handover.read_entries(project).get(stage)
    env = handover.environment({RUN_ID_ENV: run_id} if run_id else {})
    forced = command is not None
    command = list(command or [handover.dvc_binary(), "repro", "--single-item", stage])
    log.info("running `%s` in %s", " ".join(command), project)
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    tail: deque[str] = deque(maxlen=tail_lines)
    stdout = process.stdout
    assert stdout is not None  # stdout=PIPE

    def pump() -> None:  # in a thread: a stage orphaned by a killed DVC keeps the pipe open
        for line in stdout:
            line = line.rstrip()
            log.info("%s", line)
            tail.append(line)

    reader = threading.Thread(target=pump, name=f"{stage}-output", daemon=True)
    reader.start()
    try:
        code = process.wait()
    finally:  # a timeout or a kill of this task must not leave DVC running
        if process.poll() is None:
            stop_process_tree(process.pid)
            process.wait()
        # DVC gone (done, failed or killed): nothing of its group may go on writing
        left = stop_process_group(process.pid, grace_s=10)
        if left:
            log.warning("%s: stopped %d process(es) DVC left running", stage, left)
        reader.join(timeout=10)
    seconds = round(time.perf_counter() - started, 1)
    if code != 0:
        raise StageRunError(stage, stage_exit_code(code, "\n".join(tail)), "\n".join(tail))
    always = stage in StageGraph.read(project).always_changed
    changed = handover.read_entries(project).get(stage) != before
    ran = [stage] if forced or always or changed else []
    log.info("%s: %s in %.1f s", stage, f"ran {', '.join(ran)}" if ran else "up to date", seconds)
    result = {
        "stage": stage,
        "night": night.isoformat(),
        "ran": ran,
        "seconds": seconds,
        "project": str(project),
    }
    if remote:
        try:
            handover.push(project, stage, remote)
        except handover.DvcCommandError as exc:  # as for a pull: retryable
            raise StageRunError(f"dvc push {stage}", 1, exc.output) from exc
    return result


def stage_exit_code(dvc_code: int, output: str) -> int:
    """The stage command's own exit code (DVC exits 255 and names it), else DVC's."""
    found = re.findall(r"exited with (\d+)", output)
    return int(found[-1]) if found else dvc_code


def night_of(logical_date: dt.datetime | dt.date) -> dt.date:
    """The last day of a run's data window: its logical date's day (UTC). With the DAG's cron
    data intervals that is the day that has just ended when the run starts."""
    if isinstance(logical_date, dt.datetime):
        return logical_date.astimezone(dt.UTC).date()
    return logical_date


def read_report(project: Path, path: Path) -> dict:
    """A stage's JSON verdict; a clear error when the stage has not written it."""
    target = project / path
    try:
        return json.loads(target.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StageInputError(
            f"{target} is missing: its stage has not run for this night"
        ) from None
    except ValueError as exc:
        raise StageInputError(f"{target}: not valid JSON ({exc})") from None


def restore(project: Path, stages: Sequence[str], remote: str) -> list[str]:
    """Bring `stages` and their ancestors to tonight in this worker's clone from `remote`'s
    run cache (`handover.restore`), the ones already there skipped; those restored. A stage
    DVC keeps no run of (`always_changed`) is left as it is: its outputs stay on the worker
    that ran it. A missing run or an unreachable remote is a task failure: retryable, unless
    DVC refused to run a stage whose run is missing (then its task must run again first)."""
    graph = StageGraph.read(project)
    wanted = set(stages).union(*(graph.ancestors(s) for s in stages))
    kept = sorted(wanted & graph.always_changed)
    if kept:
        log.info("%s: always run, no run kept by DVC: not restored here", ", ".join(kept))
    ordered = graph.in_order(wanted - graph.always_changed)
    stale = stale_of(dvc_status(project, ordered))
    todo = [s for s in ordered if s in stale]
    try:
        handover.restore(project, todo, remote)
    except handover.DvcCommandError as exc:
        code = stage_exit_code(exc.code, exc.output)
        why = exc.output
        if code in FINAL_EXIT_CODES:
            why += "\n(an upstream stage's run for tonight is not in the remote: clear its task)"
        raise StageRunError(f"restore {' '.join(todo)}", code, why) from exc
    return todo
