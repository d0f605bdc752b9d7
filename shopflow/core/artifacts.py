"""Writing stage outputs so that a killed or failed stage never leaves a half-good output.

Outputs are written into a sibling staging folder and moved into place in one rename, so a
reader sees either the previous complete output or the new complete one. Content hashes are
computed from the data, not the file bytes, so they are stable across parquet writer versions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from shopflow.core import paths


def table_hash(frame: pd.DataFrame) -> str:
    """sha256 of a table's content (values, column names and order), independent of file format."""
    digest = hashlib.sha256()
    digest.update("\x1f".join(map(str, frame.columns)).encode())
    if len(frame):
        digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically, sorted and indented for diffs."""
    write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


# What changes from run to run on the same data, code and params: timings (seconds,
# throughputs, latencies, and `measured`, a timed guardrail's figures), when a run happened
# (`created_at`, `at`) and the commit it ran from (a commit cannot hold the hash of a file
# that names the commit).
TIMING_KEYS = frozenset(
    {
        "seconds",
        "samples_per_s",
        "tokens_per_s",
        "p50_ms",
        "p95_ms",
        "measured",
        "created_at",
        "at",
        "git_revision",
    }
)


def without_timings(payload: Any, prefix: str = "") -> tuple[Any, dict[str, Any]]:
    """`payload` without its per-run figures (keys in `TIMING_KEYS`, at any depth, in lists
    too) and those figures by dotted key (a list item by its index). They change from run to
    run on the same inputs, so what DVC hashes (metrics, reports, model folders) must not
    hold them."""
    timed: dict[str, Any] = {}
    if isinstance(payload, list):
        items = []
        for index, item in enumerate(payload):
            kept_item, inner = without_timings(item, f"{prefix}{index}.")
            items.append(kept_item)
            timed |= inner
        return items, timed
    if not isinstance(payload, dict):
        return payload, {}
    kept: dict[str, Any] = {}
    for key, value in payload.items():
        if key in TIMING_KEYS:
            timed[f"{prefix}{key}"] = value
            continue
        kept[key], inner = without_timings(value, f"{prefix}{key}.")
        timed |= inner
    return kept, timed


def with_timings(payload: dict, timed: dict[str, Any]) -> dict:
    """`payload` with the figures `without_timings` took out put back (for reports); a
    figure whose place no longer exists is left out."""
    merged = json.loads(json.dumps(payload))
    for dotted, value in timed.items():
        *parents, leaf = dotted.split(".")
        node: Any = merged
        for key in parents:
            if isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            elif isinstance(node, dict):
                node = node.setdefault(key, {})
            else:
                break
        else:
            if isinstance(node, dict):
                node[leaf] = value
    return merged


def write_metrics(stage: str, result: dict) -> dict:
    """The stage's metrics file (`metrics/<stage>.json`) without timings, which go to
    `paths.timings(stage)`; what was written."""
    kept, timed = without_timings(result)
    write_json(paths.metrics(stage), kept)
    if timed:
        write_json(paths.timings(stage), timed)
    return kept


def write_text(path: Path, text: str) -> None:
    """Write a file atomically (temp file + rename): a killed writer leaves the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False, engine="pyarrow", compression="zstd")


@contextlib.contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield an empty staging folder that replaces `final` only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.staging-"))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    retired = final.parent / f".{final.name}.retired"
    shutil.rmtree(retired, ignore_errors=True)
    if final.exists():
        final.rename(retired)
    staging.rename(final)
    shutil.rmtree(retired, ignore_errors=True)


def files_hash(folder: Path, pattern: str = "*") -> str:
    """Content hash of the files under `folder` matching `pattern` (relative names and bytes).

    `"**/*"` hashes a whole tree: a serving bundle's version is this hash, so the same models
    give the same version. Training checkpoints are keyed on the hash of what a run starts
    from, so a checkpoint is never resumed on other data or another encoder (mtimes would not
    do: DVC restores files anew).
    """
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).glob(pattern) if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]
