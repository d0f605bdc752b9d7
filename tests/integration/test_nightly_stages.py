"""`nightly.run_stage` on a real DVC project of three small stages: the night's window goes
into params.yaml, a rerun runs nothing, a stage never runs on another night's upstream
outputs, and a failing command's own exit code decides whether Airflow may retry."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess

import pytest

from shopflow.orchestration import nightly
from tests.conftest import BIN, ROOT

pytestmark = pytest.mark.integration

DVC_YAML = """
stages:
  window:
    cmd: python -c "import yaml; print(yaml.safe_load(open('params.yaml'))['ingest']['window']['end'])" > night.txt
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


@pytest.fixture
def project(tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    for command in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"]):
        subprocess.run(command, cwd=tmp_path, check=True, capture_output=True)
    return tmp_path


def test_a_night_runs_once_and_never_on_another_nights_inputs(project):
    night = dt.date(2026, 10, 28)
    first = nightly.run_stage(project, "window", night)
    assert (
        first["ran"] == ["window"] and (project / "night.txt").read_text().strip() == "2026-10-28"
    )
    assert nightly.run_stage(project, "count", night, ["window"])["ran"] == ["count"]
    assert nightly.run_stage(project, "window", night)["ran"] == []  # the same night again

    nightly.run_stage(project, "window", night + dt.timedelta(days=1))
    with pytest.raises(nightly.StageRunError, match=r"upstream stage\(s\) window are not") as err:
        nightly.run_stage(project, "count", night, ["window"])  # night.txt is the 29th's
    assert err.value.final


def test_the_commands_exit_code_decides_retry(project):
    night = dt.date(2026, 10, 28)
    nightly.run_stage(project, "window", night)
    nightly.run_stage(project, "count", night, ["window"])
    with pytest.raises(nightly.StageRunError) as err:  # "11 night.txt": the check exits 3
        nightly.run_stage(project, "check", night, ["count"])
    assert err.value.code == 3 and err.value.final and "exited with 3" in err.value.tail
