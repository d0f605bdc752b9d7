"""A night on several machines: DVC's run cache carries each stage's result to the next worker.

Workers share no project folder: each has its own clone of the project, the DVC remote (any
DVC remote: a folder by default, S3 or SSH by config) and the shared state (registry, BentoML
store). A task of the nightly DAG, in its worker's clone,

1. restores the upstream stages its own needs (`restore`): `dvc repro --pull --single-item`
   of the ancestors that DVC's status says are not at tonight, in pipeline order. DVC pulls
   the remote's run cache, finds each one's run for tonight's inputs (pushed by the worker
   that ran it), checks its outputs out and writes its dvc.lock entry; the stage does not run
   again here. A stage with no such run in the remote (its task has not pushed it) is refused,
   not run: `python -m shopflow <stage>` exits with a clear error under RESTORE_ONLY_ENV;
2. runs its stage (`dvc repro --single-item <stage>`, `orchestration.nightly`);
3. pushes the stage's outputs and its run (`push`: `dvc push --run-cache <stage>`).

Only DVC's command line touches dvc.lock, the cache and the remote; nothing but the night's
date passes between tasks. Two limits come from DVC: a stage that is `always_changed`
(`online`) keeps no run, so its outputs stay on the worker that ran it; and DVC pushes no run
objects of `cache: false` outputs, so the pipeline may have none (`uncached_outputs`).

On one machine (`airflow.dvc_remote: null`) none of this happens: every task works in the one
project folder, as `dvc repro` does.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

PIPELINE = "dvc.yaml"
LOCK_FILE = "dvc.lock"
RESTORE_ONLY_ENV = "SHOPFLOW_RESTORE_ONLY"  # set: a stage command refuses to run (see above)


class DvcCommandError(RuntimeError):
    """A `dvc` command failed: its exit code and the tail of its output."""

    def __init__(self, command: Sequence[str], code: int, output: str) -> None:
        self.command, self.code, self.output = list(command), code, output
        super().__init__(f"`{' '.join(command)}` exited with {code}:\n{output}")


def dvc_binary() -> str:
    """The `dvc` beside this interpreter (the project's environment), else the PATH's."""
    found = Path(sys.executable).with_name("dvc")
    return str(found) if found.exists() else "dvc"


def environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a `dvc` command: this interpreter's bin first on PATH, so stage
    commands (`python -m shopflow …`) run in the same environment."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "DVC_NO_ANALYTICS": "1", **(extra or {})}


def dvc(project: Path, *args: str, extra_env: Mapping[str, str] | None = None) -> str:
    """Run `dvc <args>` in `project`; its standard output. DvcCommandError when it fails."""
    command = [dvc_binary(), *args]
    done = subprocess.run(
        command, cwd=project, env=environment(extra_env), capture_output=True, text=True
    )
    if done.returncode != 0:
        tail = "\n".join(f"{done.stdout}\n{done.stderr}".strip().splitlines()[-40:])
        raise DvcCommandError(command[1:], done.returncode, tail)
    return done.stdout


def read_entries(project: Path) -> dict[str, dict]:
    """Each stage's entry in the project's dvc.lock (none before its first run), as DVC wrote
    it: what ran is told by an entry that changed."""
    path = Path(project) / LOCK_FILE
    tree = (yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else None) or {}
    return dict(tree.get("stages") or {})


def restore(project: Path, stages: Sequence[str], remote: str) -> None:
    """Bring `stages` (in pipeline order, each one's own inputs already at tonight or earlier
    in the list) to tonight from the remote's run cache, without running any of them."""
    if not stages:
        return
    check_default_remote(project, remote)
    dvc(project, "repro", "--pull", "--single-item", *stages, extra_env={RESTORE_ONLY_ENV: "1"})
    log.info("restored %s from remote %r's run cache (none ran here)", ", ".join(stages), remote)


def check_default_remote(project: Path, remote: str) -> None:
    """`dvc repro --pull` pulls from the default remote only: it must be `remote`."""
    default = dvc(project, "remote", "default").strip()
    if default != remote:
        raise DvcCommandError(
            ["remote", "default"],
            2,
            f"{project}: the DVC default remote is {default or 'not set'}, not airflow.dvc_remote "
            f"{remote!r} (`dvc remote default --local {remote}`)",
        )


def push(project: Path, stage: str, remote: str) -> None:
    """`dvc push --run-cache -r <remote> <stage>`: the stage's outputs and its run, which the
    next worker restores."""
    dvc(project, "push", "--run-cache", "-r", remote, stage)
    log.info("pushed %s's outputs and run to remote %r", stage, remote)


def uncached_outputs(project: Path) -> list[str]:
    """The outputs dvc.yaml declares with `cache: false` (a night across workers needs none:
    DVC pushes no run objects of them)."""
    tree = yaml.safe_load((Path(project) / PIPELINE).read_text(encoding="utf-8")) or {}
    found = []
    for name, stage in (tree.get("stages") or {}).items():
        for section in ("outs", "metrics", "plots"):
            for out in stage.get(section) or []:
                if isinstance(out, dict):
                    found += [
                        f"{name}: {p}" for p, o in out.items() if (o or {}).get("cache") is False
                    ]
    return found
