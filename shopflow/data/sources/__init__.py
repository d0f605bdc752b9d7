"""Source adapters: each turns one input format into contract tables (`contract.Tables`).

Adapters only read and rename; they never filter by window, pseudonymize or validate — the
ingest stage does that once for every source. Raw user ids arrive in `user_key` and are
replaced by keyed pseudonyms before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable

from shopflow.core.config import Params
from shopflow.data.contract import Tables
from shopflow.data.sources import (
    esci,
    events,
    judgments,
    online_retail,
    service_logs,
    synthetic,
    wands,
)

Adapter = Callable[[Params], Tables]

ADAPTERS: dict[str, Adapter] = {
    "synthetic": synthetic.read,
    "judgments": judgments.read,
    "events": events.read,
    "esci": esci.read,
    "wands": wands.read,
    "online_retail": online_retail.read,
    "service_logs": service_logs.read,
}


def read_source(params: Params) -> Tables:
    return ADAPTERS[params.ingest.source](params)
