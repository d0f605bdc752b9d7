"""The embedded default: the simulated shop over the ingest window."""

from __future__ import annotations

from pipelines.config import Params
from pipelines.contract import Tables
from pipelines.synthetic import generate


def read(params: Params) -> Tables:
    tables = generate(params.synthetic, params.seed, params.ingest.window.dates())
    tables.events = tables.events.rename(columns={"user_id": "user_key"})
    return tables
