"""Stage `prepare`: leakage-free splits and the tables the models learn from.

Reads the tables validate approved (`data/validated`) and writes `data/prepared/`: the
catalogue, the judgments with their split, `pairs`, `histories`, `sequences` and `users`
(`shopflow.data.derived`), `corpus.txt` (pretrain-adapt's only input) and `splits.json`
(where the time splits start).
"""

from __future__ import annotations

import logging
import time

from shopflow.core import paths
from shopflow.core.artifacts import staged_dir, write_json, write_parquet
from shopflow.core.config import Params
from shopflow.data.derived import Prepared, derive_tables
from shopflow.data.tables import read_validated

log = logging.getLogger(__name__)


def run(params: Params) -> Prepared:
    started = time.perf_counter()
    tables, manifest = read_validated()
    result = derive_tables(tables, params)
    with staged_dir(paths.PREPARED) as staging:
        for name, frame in result.tables.items():
            write_parquet(frame, staging / f"{name}.parquet")
        (staging / paths.CORPUS.name).write_text("\n".join(result.corpus) + "\n", encoding="utf-8")
        if result.recommend is not None:
            write_json(staging / paths.RECOMMEND_POLICY.name, result.recommend)
        write_json(
            staging / paths.SPLITS.name,
            {
                "time_boundaries": result.boundaries,
                "source": manifest["source"],
                "window": manifest["window"],
                "judgments_split": "by query hash",
            },
        )
    write_json(paths.metrics("prepare"), result.metrics)
    counts = ", ".join(f"{n}={len(f):,}" for n, f in result.tables.items())
    log.info("prepare: %s in %.1fs", counts, time.perf_counter() - started)
    return result
