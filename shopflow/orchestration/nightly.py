"""How a night runs: the DVC stage graph as tasks, one stage run for the night's data window.

Airflow-free on purpose, so that the DAG file (`dags/shopflow_nightly.py`) only says what
runs after what, and everything that decides something is testable without a scheduler.

- `StageGraph.read` takes the stages and their edges from DVC's own graph (`dvc.yaml`): the
  pipeline is defined once, and Airflow never restates it.
- `run_stage` runs one stage through `dvc repro --single-item <stage>`, after writing the
  night's date into `ingest.window.end` in params.yaml. Every stage depends on that param
  (directly or through its inputs), so DVC re-runs what a new night changes, skips what a
  rerun of the same night already has, and can never hand back the outputs of another
  window: they hash differently. It refuses to run on upstream outputs of another night.
- The branches between stages (retrain tonight? promote?) are `orchestration.decisions`.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from shopflow.core import paths
from shopflow.core.config import AirflowConfig, load_params
from shopflow.core.errors import ConfigError, DataValidationError, ShopflowError, StageInputError
from shopflow.core.processes import die_with_parent, stop_process_tree
from shopflow.orchestration.runlog import RUN_ID_ENV

log = logging.getLogger(__name__)

CHAMPION_ASSET = "shopflow://champion"  # promote emits it; shopflow_deploy is scheduled on it
DRIFT_STAGE = "drift"
EVALUATE_STAGE = "evaluate"
PROMOTE_STAGE = "promote"
# Exit codes of `python -m shopflow` (shopflow/core/errors.py) that no retry can fix: bad input
# or params (2) and failed data validation (3). Anything else (a crash, a kill, a timeout, a
# smoke test on a busy machine) is worth a retry.
FINAL_EXIT_CODES = {ShopflowError.exit_code, DataValidationError.exit_code}


def project_dir(dag_file: str) -> Path:
    """The project the DAGs run: $SHOPFLOW_PROJECT, else the checkout the DAG file sits in."""
    return Path(os.environ.get("SHOPFLOW_PROJECT") or Path(dag_file).resolve().parents[1])


def task_defaults(settings: AirflowConfig, on_failure: Callable[[dict], None]) -> dict:
    """Every task's retries (exponential back-off) and failure alert, from params.yaml."""
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

    @classmethod
    def read(cls, project: Path) -> StageGraph:
        """DVC's stage graph of the project (its `dvc.yaml`)."""
        from dvc.repo import Repo

        with Repo(str(project)) as repo:
            index = repo.index
            stages = tuple(stage.name for stage in index.stages)
            edges = frozenset(
                (upstream.name, downstream.name)
                for downstream, upstream in index.graph.edges()  # DVC's edges point upstream
            )
        return cls(stages, edges)

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

    def checks(self) -> set[str]:
        """The stages every night runs: the drift check and what it needs (ingest, validate)."""
        return {DRIFT_STAGE, *self.ancestors(DRIFT_STAGE)}

    def training_roots(self) -> list[str]:
        """Where the training part starts: stages outside the checks that only need checks.
        The retrain decision sits before these; everything after them follows them."""
        checks = self.checks()
        return [
            s
            for s in self.stages
            if s not in checks and self.upstream(s) and self.upstream(s) <= checks
        ]


# -- one stage ------------------------------------------------------------------------------


class StageRunError(ShopflowError):
    """A stage run failed; `final` when no retry can help (bad data or params)."""

    def __init__(self, stage: str, exit_code: int, tail: str) -> None:
        self.stage, self.code, self.tail = stage, exit_code, tail
        self.final = exit_code in FINAL_EXIT_CODES
        kind = "bad input (no retry)" if self.final else "retryable"
        super().__init__(f"stage {stage!r} failed with exit code {exit_code} [{kind}]:\n{tail}")


def set_window_end(params_path: Path, end: dt.date) -> bool:
    """Write `ingest.window.end` into params.yaml as a one-value text edit (comments and
    layout stay as the user wrote them); True when it changed. Refuses a file where the edit
    would change anything else, and a profile that overrides the end (the night's date would
    not apply)."""
    text = params_path.read_text(encoding="utf-8")
    tree = yaml.safe_load(text) or {}
    try:
        current = tree["ingest"]["window"]["end"]
    except (KeyError, TypeError):
        raise ConfigError(
            f"{params_path}: no ingest.window.end to set the night's date in"
        ) from None
    changed = str(current) != end.isoformat()
    if changed:
        section = re.search(r"^ingest:.*?(?=^\S|\Z)", text, flags=re.M | re.S)
        new_text = None
        if section is not None:
            edited = re.sub(
                r"(\bend:\s*)([\"']?)\d{4}-\d{2}-\d{2}\2",
                rf'\g<1>"{end.isoformat()}"',
                section.group(0),
                count=1,
            )
            new_text = text[: section.start()] + edited + text[section.end() :]
        expected = copy.deepcopy(tree)
        expected["ingest"]["window"]["end"] = end.isoformat()
        if not new_text or _normal(yaml.safe_load(new_text)) != _normal(expected):
            raise ConfigError(
                f"{params_path}: could not set ingest.window.end by editing its line; write it "
                'as `end: "YYYY-MM-DD"` under ingest.window'
            )
        tmp = params_path.with_name(params_path.name + ".tmp")
        tmp.write_text(new_text, encoding="utf-8")
        tmp.replace(params_path)
    effective = load_params(params_path).ingest.window.end
    if effective != end:
        raise ConfigError(
            f"{params_path}: the active profile overrides ingest.window.end ({effective}); "
            f"remove that override so the scheduler's date ({end}) applies"
        )
    return changed


def _normal(tree: dict) -> str:
    return json.dumps(tree, sort_keys=True, default=str)


def _dvc() -> str:
    found = Path(sys.executable).with_name("dvc")
    return str(found) if found.exists() else "dvc"


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def stale_upstream(project: Path, upstream: Sequence[str]) -> list[str]:
    """The upstream stages whose outputs are not those of the current params and inputs
    (DVC's status, asked in-process: a `dvc status` subprocess per task costs seconds of
    start-up, every task of every night): running a stage on them would mix two nights."""
    if not upstream:
        return []
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    pipeline = Path(project).resolve() / "dvc.yaml"  # targets resolve against it, not the cwd
    try:
        with Repo(str(pipeline.parent)) as repo:
            changed = repo.status(targets=[f"{pipeline}:{stage}" for stage in upstream])
    except DvcException as exc:
        raise StageRunError(f"dvc status {' '.join(upstream)}", 1, str(exc)) from None
    return sorted(key.rsplit(":", 1)[-1] for key in changed)  # "<path>/dvc.yaml:<stage>"


def run_stage(
    project: Path,
    stage: str,
    night: dt.date,
    upstream: Sequence[str] = (),
    run_id: str | None = None,
    tail_lines: int = 40,
    command: Sequence[str] | None = None,
) -> dict:
    """`dvc repro --single-item <stage>` in `project` for the window ending `night` (or
    `command` instead, e.g. a forced `shopflow promote --force`); its output goes to the log
    line by line. Returns which stages DVC actually ran (none on a
    rerun) and the time.

    One stage, not its upstream: tasks of independent stages run at the same time in one
    workspace, and `dvc repro <stage>` would lock every upstream stage's outputs and collide
    with them. Instead the upstream stages must already be at this night (they are, when
    their tasks ran first); a task cleared alone for another night fails and says so.

    `run_id` (the DAG run's) goes to the stage as SHOPFLOW_RUN_ID: the run log groups the
    night's stages under it for the run report."""
    if set_window_end(project / paths.PARAMS, night):
        log.info("params.yaml: ingest.window.end = %s (the night's date)", night)
    stale = stale_upstream(project, list(upstream))
    if stale:
        raise StageRunError(
            stage,
            ShopflowError.exit_code,
            f"upstream stage(s) {', '.join(stale)} are not at the night {night}: run them "
            "first (in Airflow: clear this task with its upstream tasks)",
        )
    env = _env() | ({RUN_ID_ENV: run_id} if run_id else {})
    command = list(command or [_dvc(), "repro", "--single-item", stage])
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
    ran: list[str] = []
    tail: deque[str] = deque(maxlen=tail_lines)
    assert process.stdout is not None  # stdout=PIPE
    try:
        for line in process.stdout:
            line = line.rstrip()
            log.info("%s", line)
            tail.append(line)
            if match := re.match(r"Running stage '([\w-]+)'", line):
                ran.append(match.group(1))
        code = process.wait()
    finally:  # a timeout or a kill of this task must not leave DVC running
        if process.poll() is None:
            stop_process_tree(process.pid)
            process.wait()
    seconds = round(time.perf_counter() - started, 1)
    if code != 0:
        raise StageRunError(stage, stage_exit_code(code, "\n".join(tail)), "\n".join(tail))
    log.info("%s: %s in %.1f s", stage, f"ran {', '.join(ran)}" if ran else "up to date", seconds)
    return {"stage": stage, "night": night.isoformat(), "ran": ran, "seconds": seconds}


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
