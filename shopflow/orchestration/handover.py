"""A night on several machines: stage inputs come from a DVC remote, outputs go back to it.

Workers share no project folder: each has its own clone of the project, the DVC remote (any
DVC remote: a folder by default, S3 or SSH by config), and the shared state (registry,
BentoML store). A task of the nightly DAG

1. merges the `dvc.lock` entries of the night's stages so far into its clone's `dvc.lock`:
   they come from the upstream tasks through Airflow (XCom), a few kB per stage;
2. pulls from the remote exactly the upstream outputs its stage depends on (`dvc pull <out>`),
   which are the outputs those entries name, so they are tonight's and no other night's;
3. runs its stage (`dvc repro --single-item`, `orchestration.nightly`);
4. pushes the stage's outputs (`dvc push <stage>`) and hands on the entries, its own added.

On one machine (`airflow.dvc_remote: null`) none of this happens: every task works in the one
project folder, as `dvc repro` does.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import yaml
from filelock import FileLock

log = logging.getLogger(__name__)

LOCK_FILE = "dvc.lock"
PIPELINE = "dvc.yaml"
Entries = dict[str, dict]  # stage name → its dvc.lock entry


def _read_lock(path: Path) -> dict:
    """The whole `dvc.lock` (empty before the clone's first run)."""
    return (yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else None) or {}


def read_entries(project: Path) -> Entries:
    """The stages' entries in the clone's `dvc.lock` (none before its first run)."""
    return dict(_read_lock(Path(project) / LOCK_FILE).get("stages") or {})


@contextlib.contextmanager
def _clone_lock(project: Path) -> Iterator[None]:
    """Serialises dvc.lock edits of tasks running side by side in one clone."""
    folder = Path(project) / ".dvc" / "tmp"
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(folder / "shopflow-handover.lock"):
        yield


def merge_entries(project: Path, entries: Mapping[str, dict]) -> list[str]:
    """Write `entries` into the clone's `dvc.lock` (atomically; other stages' entries stay);
    the stages whose entry changed."""
    path = Path(project) / LOCK_FILE
    with _clone_lock(project):
        tree = _read_lock(path)
        stages = dict(tree.get("stages") or {})
        changed = sorted(name for name, entry in entries.items() if stages.get(name) != entry)
        if changed:
            stages.update({name: entries[name] for name in changed})
            tree = {"schema": tree.get("schema", "2.0"), "stages": stages}
            tmp = path.with_name(f"{LOCK_FILE}.{os.getpid()}.tmp")
            tmp.write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
            tmp.replace(path)
    return changed


def outputs(entries: Mapping[str, dict]) -> dict[str, str]:
    """Each output path the entries name → the stage that wrote it."""
    return {out["path"]: stage for stage, entry in entries.items() for out in entry.get("outs", [])}


def covers(out: str, dep: str) -> bool:
    """Does output `out` hold (part of) dependency `dep`? Paths as dvc.yaml writes them."""
    out, dep = out.rstrip("/"), dep.rstrip("/")
    return out == dep or dep.startswith(f"{out}/") or out.startswith(f"{dep}/")


def inputs_of(project: Path, stage: str, entries: Mapping[str, dict]) -> list[str]:
    """The outputs of other stages in `entries` that `stage` depends on (as dvc.yaml
    declares its deps, params files included)."""
    with _repo(project) as repo:
        found = [s for s in repo.index.stages if s.name == stage]
        if not found:
            raise KeyError(f"{stage!r} is not a stage of {Path(project) / PIPELINE}")
        needed = [str(dep.def_path) for dep in found[0].deps]
    return sorted(
        out
        for out, writer in outputs(entries).items()
        if writer != stage and any(covers(out, dep) for dep in needed)
    )


def _repo(project: Path):
    from dvc.repo import Repo

    return Repo(str(Path(project).resolve()))


def pull(project: Path, targets: Sequence[str], remote: str) -> int:
    """`dvc pull <targets>` from `remote` into the clone; how many files were fetched."""
    if not targets:
        return 0
    root = Path(project).resolve()  # DVC resolves relative targets against the cwd
    with _repo(project) as repo:
        result = repo.pull(targets=[str(root / target) for target in targets], remote=remote)
    fetched = int(result.get("fetched", 0)) if isinstance(result, dict) else 0
    log.info("pulled %s from remote %r (%d file(s) fetched)", ", ".join(targets), remote, fetched)
    return fetched


def push(project: Path, stage: str, remote: str) -> int:
    """`dvc push <stage>`: the stage's outputs to `remote`; how many files were uploaded."""
    pipeline = Path(project).resolve() / PIPELINE
    with _repo(project) as repo:
        pushed = repo.push(targets=[f"{pipeline}:{stage}"], remote=remote)
    log.info("pushed %s's outputs to remote %r (%d file(s) uploaded)", stage, remote, pushed)
    return int(pushed or 0)


def receive(
    project: Path, entries: Mapping[str, dict], targets: Sequence[str], remote: str
) -> None:
    """Step 1 and 2 for `targets` (output paths): merge the night's entries, pull them."""
    changed = merge_entries(project, entries)
    if changed:
        log.info("dvc.lock: tonight's entries of %s handed over", ", ".join(changed))
    pull(project, targets, remote)
