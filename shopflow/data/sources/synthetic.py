"""The embedded default: the simulated shop over the ingest window."""

from __future__ import annotations

from shopflow.core.config import Params
from shopflow.data.contract import Tables
from shopflow.data.synthetic import generate


def read(params: Params) -> Tables:
    tables = generate(params.synthetic, params.seed, params.ingest.window.dates())
    tables.events = tables.present()["events"].rename(columns={"user_id": "user_key"})
    return tables
