"""The champion pointer: which model the registry serves, as a file in the workspace.

The registry lives outside the workspace (shared storage on a cluster), so DVC cannot see it.
`champion.json` at the project root names the champion (its kind and content-hash version,
nothing that changes from run to run), and `drift` and `evaluate` depend on it in dvc.yaml:
a promotion, a rollback or an online verdict rewrites it, and `dvc status` / `dvc repro`
then see those two stages as changed without `-f`. Every write of the champion in a
workspace writes it (promote, rollback, the online stage), and each nightly task refreshes
it from the registry before its stage runs (a worker's clone may have missed a rollback made
elsewhere).

The file is in Git and holds what a fresh clone's `make run` leaves, like dvc.lock: before a
first promotion it names the baseline. A stage never reads it: they read the registry.
"""

from __future__ import annotations

import json
from pathlib import Path

from shopflow.core import paths
from shopflow.core.artifacts import write_text
from shopflow.release.registry import BASELINE_VERSION, Entry, Registry


def describe(entry: Entry | None) -> dict:
    """What the pointer says about `entry` (None: an empty registry, the baselines serve)."""
    if entry is None:
        return {"kind": "baseline", "version": BASELINE_VERSION}
    return {"kind": entry.kind, "version": entry.version}


def write_champion_pointer(registry: Registry, project: Path | None = None) -> bool:
    """Point `project`'s champion.json at the registry's champion; True when it changed (a
    rewrite with the same champion leaves the file, and DVC's view, as they were)."""
    target = (project or Path()) / paths.CHAMPION_POINTER
    text = json.dumps(describe(registry.champion()), indent=2, sort_keys=True) + "\n"
    if target.exists() and target.read_text(encoding="utf-8") == text:
        return False
    write_text(target, text)
    return True
