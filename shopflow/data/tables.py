"""Reading the data stages' outputs, with the checks that keep bad data from flowing on.

A stage reads its input through these, never by globbing another stage's folder itself:
ingested tables must match the hashes in their manifest, validated tables must carry
validate's approval (so nothing downstream runs on data that failed validation, even when a
stage is run by hand), and prepared tables are named by file (products, pairs, ...).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from shopflow.core import paths
from shopflow.core.artifacts import read_json, table_hash
from shopflow.core.errors import StageInputError

Tables = dict[str, pd.DataFrame]


def read_ingested(folder: Path = paths.INGESTED) -> tuple[Tables, dict]:
    """The ingest stage's tables and manifest; a table edited since ingest is refused."""
    manifest_path = folder / "manifest.json"
    if not manifest_path.exists():
        raise StageInputError(f"{manifest_path}: not found; run `python -m shopflow ingest` first")
    manifest = read_json(manifest_path)
    tables = {name: pd.read_parquet(folder / f"{name}.parquet") for name in manifest["tables"]}
    for name, info in manifest["tables"].items():
        if table_hash(tables[name]) != info["sha256"]:
            raise StageInputError(f"{folder / name}.parquet does not match its manifest hash")
    return tables, manifest


def read_validated(folder: Path = paths.VALIDATED) -> tuple[Tables, dict]:
    """The tables validate approved, and their manifest; anything else is refused."""
    manifest_path = folder / "manifest.json"
    if not manifest_path.exists():
        raise StageInputError(
            f"{manifest_path}: not found; validation has not passed "
            "(run `python -m shopflow validate`)"
        )
    manifest = read_json(manifest_path)
    if not manifest.get("validated"):
        raise StageInputError(f"{manifest_path}: data was not approved by validate")
    tables = {}
    for name, expected in manifest["validated_hashes"].items():
        frame = pd.read_parquet(folder / f"{name}.parquet")
        if table_hash(frame) != expected:
            raise StageInputError(f"{folder / name}.parquet was changed after validation")
        tables[name] = frame
    return tables, manifest


def read_prepared(folder: Path = paths.PREPARED) -> Tables:
    """The prepare stage's tables, named by file (products, pairs, judgments, ...)."""
    if not (folder / "products.parquet").exists():
        raise StageInputError(f"{folder}: no prepared data; run the prepare stage first")
    return {p.stem: pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))}


def split_of(tables: Tables, name: str, split: str) -> pd.DataFrame | None:
    """The rows of table `name` in `split` (None when the table is absent or has none)."""
    frame = tables.get(name)
    if frame is None or not (frame["split"] == split).any():
        return None
    return frame[frame["split"] == split]


def lowest_grade(tables: Tables) -> float:
    """The bottom of the judgments' scale as observed: its gain is 0 in training and in the
    judged-only protocol (on a 1..3 scale an "irrelevant" 1 must not earn a third of a 3)."""
    return float(tables["judgments"]["relevance"].min()) if "judgments" in tables else 0.0
