"""The run log: one JSON line per stage execution, so a run report can say what ran, for how
long, and what failed.

DVC records which outputs are current, not when a stage ran or how long it took, and a stage
that fails leaves no DVC record at all. So every stage command (`python -m shopflow <stage>`)
appends one line to `.shopflow/runs/stages.jsonl` when it ends, however it ends.

A *run* is what one `dvc repro` (or one Airflow DAG run) executed. The stages of a run share a
run id: `SHOPFLOW_RUN_ID` when set (`make run` and the nightly DAG set it), else the id of the
process that started the stage (`dvc repro` itself) with that process's start time, since pids
are reused. DVC starts each command through `$SHELL -c` (`/bin/sh` when unset); bash execs the
command, dash does not, so under DVC the shells between the stage and `dvc repro` are skipped.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from shopflow.core import paths
from shopflow.core.errors import ShopflowError

RUN_ID_ENV = "SHOPFLOW_RUN_ID"
ALWAYS_RUN = ("online",)  # `always_changed` stages: every `dvc repro` runs them


SHELLS = frozenset({"sh", "dash", "bash", "zsh", "ksh", "mksh", "fish", "busybox"})
DVC_STAGE_ENV = "DVC_STAGE"  # set by DVC for every stage command it runs


def current_run_id() -> str:
    """This process's run: `SHOPFLOW_RUN_ID`, else the process that started it: the parent,
    or under DVC the nearest ancestor that is not a shell (the `dvc repro`)."""
    if given := os.environ.get(RUN_ID_ENV):
        return given
    import psutil

    from shopflow.core.processes import started_at

    starter = psutil.Process(os.getppid())
    if os.environ.get(DVC_STAGE_ENV):
        with contextlib.suppress(psutil.Error):
            while starter.name() in SHELLS and (above := starter.parent()) is not None:
                starter = above
    since = started_at(starter.pid) or time.time()
    return f"repro-{dt.datetime.fromtimestamp(since, dt.UTC):%Y%m%dT%H%M%SZ}-{starter.pid}"


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@contextlib.contextmanager
def recorded(stage: str, log_path: Path = paths.RUN_LOG) -> Iterator[None]:
    """Run a stage inside this to append its record (status, seconds, error) to the run log,
    whether it succeeds, fails on bad input, crashes or is interrupted."""
    record: dict[str, object] = {
        "run_id": current_run_id(),
        "stage": stage,
        "started_at": now_iso(),
    }
    started = time.perf_counter()
    try:
        yield
        record |= {"status": "success", "exit_code": 0}
    except ShopflowError as exc:
        record |= {"status": "failed", "exit_code": exc.exit_code, "error": str(exc)}
        raise
    except KeyboardInterrupt:
        record |= {"status": "interrupted", "exit_code": 130}
        raise
    except BaseException as exc:
        record |= {"status": "failed", "exit_code": 1, "error": f"{type(exc).__name__}: {exc}"}
        raise
    finally:
        record |= {"finished_at": now_iso(), "seconds": round(time.perf_counter() - started, 1)}
        append(record, log_path)


def append(record: dict, log_path: Path = paths.RUN_LOG) -> None:
    """One line, written with a single `write` in append mode: concurrent stages of a run
    (parallel Airflow tasks) never interleave their records."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=True) + "\n"
    with log_path.open("a", encoding="utf-8") as handle:
        handle.write(line)


def read(log_path: Path = paths.RUN_LOG) -> list[dict]:
    """Every record, oldest first; a torn last line (a killed writer) is skipped."""
    if not log_path.exists():
        return []
    records = []
    for line in log_path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            records.append(json.loads(line))
    return records


def substantive(records: list[dict]) -> list[dict]:
    """The records of runs that did more than re-read the service's logs: `online` runs on
    every `dvc repro` (it is `always_changed`), so a run in which only it ran, and succeeded,
    is no row of its own in the index of runs (an online verdict shows in the registry's
    timeline and in `reports/online.json`)."""
    trivial: dict[str, bool] = {}
    for record in records:
        alone = record["stage"] in ALWAYS_RUN and record.get("status") == "success"
        trivial[record["run_id"]] = trivial.get(record["run_id"], True) and alone
    return [r for r in records if not trivial[r["run_id"]]]


def latest_run_id(records: list[dict]) -> str | None:
    """The run of the newest record, leaving out runs that only re-read the service's logs."""
    records = substantive(records) or records
    return max(records, key=lambda r: r["started_at"])["run_id"] if records else None


def of_run(records: list[dict], run_id: str) -> dict[str, dict]:
    """The run's last record per stage (a retried stage shows its final attempt), with the
    number of attempts."""
    stages: dict[str, dict] = {}
    for record in records:
        if record["run_id"] == run_id:
            attempts = stages.get(record["stage"], {}).get("attempts", 0) + 1
            stages[record["stage"]] = {**record, "attempts": attempts}
    return stages


def last_success(records: list[dict]) -> dict[str, dict]:
    """Each stage's newest successful record in any run: when its current outputs were made."""
    done: dict[str, dict] = {}
    for record in records:
        if record.get("status") == "success":
            done[record["stage"]] = record
    return done
