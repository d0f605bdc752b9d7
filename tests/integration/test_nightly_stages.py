"""`nightly.run_stage` on a real DVC project of a few small stages: the night's window goes
into params.yaml (the other values stay as composed), a rerun runs nothing, a stage never
runs on another night's upstream outputs, a failing command's own exit code decides whether
Airflow may retry, and two clones sharing only a DVC remote run one night between them."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from shopflow.orchestration import handover, nightly
from tests.conftest import BIN, ROOT

pytestmark = pytest.mark.integration

DVC_YAML = """
stages:
  window:
    cmd: python -c "import yaml; print(yaml.safe_load(open('params.yaml'))['ingest']['window']['end'])" > night.txt && echo window >> ran.log
    params: [ingest.window]
    outs: [night.txt]
  count:
    cmd: wc -c night.txt > count.txt
    deps: [night.txt]
    outs: [count.txt]
  check:
    cmd: python -c "import sys; sys.exit(3 if open('count.txt').read().startswith('11') else 0)"
    deps: [count.txt]
    params: [validate.max_title_chars]
"""
NIGHT = dt.date(2026, 10, 28)


def make_project(folder: Path, remote: Path | None = None) -> Path:
    """A committed project of the stages above; with `remote`, its DVC remote `store`."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "params.yaml", folder / "params.yaml")
    (folder / "dvc.yaml").write_text(DVC_YAML)
    commands = [["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"]]
    if remote is not None:
        commands.append([str(BIN / "dvc"), "remote", "add", "--local", "-d", "store", str(remote)])
    commands += [
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "project"],
    ]
    for command in commands:
        subprocess.run(command, cwd=folder, check=True, capture_output=True)
    return folder


@pytest.fixture
def project(tmp_path):
    return make_project(tmp_path / "project")


def test_a_night_runs_once_and_never_on_another_nights_inputs(project):
    first = nightly.run_stage(project, "window", NIGHT)
    assert (
        first["ran"] == ["window"] and (project / "night.txt").read_text().strip() == "2026-10-28"
    )
    assert nightly.run_stage(project, "count", NIGHT, ["window"])["ran"] == ["count"]
    assert nightly.run_stage(project, "window", NIGHT)["ran"] == []  # same night: nothing to do

    nightly.run_stage(project, "window", NIGHT + dt.timedelta(days=1))
    # night.txt is the 29th's: for the 28th, window's params differ from its outputs'
    with pytest.raises(nightly.StageRunError, match=r"upstream stage\(s\) window are not") as err:
        nightly.run_stage(project, "count", NIGHT, ["window"])
    assert err.value.final


def test_the_commands_exit_code_decides_retry(project):
    nightly.run_stage(project, "window", NIGHT)
    nightly.run_stage(project, "count", NIGHT, ["window"])
    with pytest.raises(nightly.StageRunError) as err:  # "11 night.txt": the check exits 3
        nightly.run_stage(project, "check", NIGHT, ["count"])
    assert err.value.code == 3 and err.value.final and "exited with 3" in err.value.tail


def test_two_clones_run_one_night_through_a_dvc_remote_alone(tmp_path):
    """Clone A runs window, clone B runs count: B restores window from the remote's run
    cache (DVC checks A's outputs out and writes window's dvc.lock entry; window does not run
    in B); A then restores count the same way. No folder is shared but the remote."""
    remote = tmp_path / "remote"
    a = make_project(tmp_path / "a", remote)
    b = make_project(tmp_path / "b", remote)
    assert nightly.run_stage(a, "window", NIGHT, remote="store")["ran"] == ["window"]

    counted = nightly.run_stage(b, "count", NIGHT, ["window"], remote="store")
    assert counted["ran"] == ["count"] and counted["project"] == str(b)
    assert (b / "night.txt").read_text().strip() == "2026-10-28"  # A's output
    assert not (b / "ran.log").exists()  # restored, not run
    assert handover.read_entries(b)["window"] == handover.read_entries(a)["window"]

    assert nightly.restore(a, ["count"], "store") == ["count"]
    assert (a / "count.txt").read_bytes() == (b / "count.txt").read_bytes()
    assert (a / "ran.log").read_text() == "window\n"  # window ran once, in A
    assert nightly.restore(a, ["count"], "store") == []  # already there: nothing to do
    assert "end: '2026-10-28'" in (b / "params.yaml").read_text()  # each clone's own night
    again = nightly.run_stage(b, "count", NIGHT, ["window"], remote="store")
    assert again["ran"] == []  # a rerun of the task: nothing to do


def test_a_stage_missing_from_the_remote_is_refused_not_run_again(tmp_path):
    """B needs an upstream stage whose run A never pushed: DVC would run it in B, and the
    stage command refuses (a stage's work runs once a night, on the worker of its task)."""
    remote = tmp_path / "remote"
    a = make_project(tmp_path / "a", remote)
    b = make_project(tmp_path / "b", remote)
    pipeline = DVC_YAML + UNPUSHED
    for clone in (a, b):
        (clone / "dvc.yaml").write_text(pipeline)
    nightly.set_night(a, NIGHT)
    with pytest.raises(nightly.StageRunError, match="not run here") as err:
        nightly.run_stage(b, "count_ingested", NIGHT, ["ingest"], remote="store")
    assert err.value.final and "clear its task" in err.value.tail
    assert not (b / "ingested.txt").exists()


def test_a_night_across_workers_needs_every_output_in_the_cache(tmp_path):
    project = make_project(tmp_path / "a", tmp_path / "remote")
    (project / "dvc.yaml").write_text(DVC_YAML + "    metrics: [{m.json: {cache: false}}]\n")
    with pytest.raises(nightly.StageRunError, match=r"cache: false.*check: m.json") as err:
        nightly.run_stage(project, "window", NIGHT, remote="store")
    assert err.value.final


# a real stage command (`python -m shopflow ingest`): refused before it reads anything
UNPUSHED = """
  ingest:
    cmd: python -m shopflow ingest
    params: [ingest.window]
    outs: [ingested.txt]
  count_ingested:
    cmd: wc -c ingested.txt > ingested_count.txt
    deps: [ingested.txt]
    outs: [ingested_count.txt]
"""


SLOW_STAGE = """
  slow:
    cmd: python -c "import os, time; open('stage.pid', 'w').write(str(os.getpid())); time.sleep(300)"
    deps: [night.txt]
    outs: [slow.txt]
"""


def test_a_killed_dvc_leaves_no_stage_process_behind(project):
    """SIGKILL of the task's `dvc repro` (an OOM kill, a lost worker): the stage it ran is
    stopped before the task fails, so no process writes into the workspace while a retry
    starts."""
    (project / "dvc.yaml").write_text((project / "dvc.yaml").read_text() + SLOW_STAGE)
    nightly.run_stage(project, "window", NIGHT)
    outcome: dict = {}

    def task() -> None:
        try:
            nightly.run_stage(project, "slow", NIGHT, ["window"])
        except nightly.StageRunError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=task)
    thread.start()
    pid_file = project / "stage.pid"
    deadline = time.monotonic() + 120
    while not (pid_file.exists() and pid_file.read_text()):
        assert time.monotonic() < deadline, "the slow stage never started"
        time.sleep(0.2)
    stage = psutil.Process(int(pid_file.read_text()))
    dvc = next(
        p
        for p in psutil.Process().children(recursive=True)
        if "repro" in p.cmdline() and p.pid != stage.pid
    )
    os.kill(dvc.pid, signal.SIGKILL)
    thread.join(timeout=60)
    assert not thread.is_alive(), "the task waited for the orphaned stage"
    assert "error" in outcome  # the task failed (and may be retried) ...
    assert not stage.is_running() or stage.status() == psutil.STATUS_ZOMBIE  # ... alone
