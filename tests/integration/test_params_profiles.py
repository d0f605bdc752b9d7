"""`dvc exp run -S` under each profile, for real: DVC composes conf/ with Hydra (the profile,
then each override), and the stage runs with the value given last, whatever the profile says."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml

from tests.conftest import BIN

pytestmark = pytest.mark.integration

# each profile sets its own window and shop size; these come last and must win
SMALL_SHOP = (
    "ingest.window.days=2",
    "synthetic.n_products=150",
    "synthetic.n_users=100",
    "synthetic.sessions_per_day=40",
)


@pytest.mark.parametrize("profile", ["default", "tiny", "gpu"])
def test_dvc_exp_run_overrides_take_effect_under_every_profile(project, profile):
    overrides = [arg for o in (f"profile={profile}", *SMALL_SHOP) for arg in ("-S", o)]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        [str(BIN / "dvc"), "exp", "run", *overrides, "ingest"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    tracked = yaml.safe_load((project / "params.yaml").read_text())  # what DVC composed
    assert tracked["profile"] == profile and tracked["ingest"]["window"]["days"] == 2
    manifest = json.loads((project / "data/ingested/manifest.json").read_text())
    assert manifest["window"]["days"] == 2  # the stage ran with it, not the profile's 10/28/56
    assert "synthetic shop: 150 products" in done.stderr + done.stdout
