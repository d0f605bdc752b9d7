"""The service's side of online experiments, in one object the BentoML service holds.

It knows the running experiment (`$SHOPFLOW_EXPERIMENT`, optional), pseudonymises session
ids, assigns units, logs impressions and events through the background writer, and remembers
recent impressions and event ids (bounded) to check events and acknowledge retries. Nothing
here raises into a request because of logging: the writer counts what it cannot keep.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable

from shopflow.core.config import Params
from shopflow.online.events import Event, Recent, event_records, problems_with
from shopflow.online.experiment import (
    EXPERIMENT_ENV,
    Assignment,
    ExperimentSpec,
    assign,
    read_experiment,
)
from shopflow.online.router import Impression, pseudonymous_session, unit_of
from shopflow.online.sinks import open_sink
from shopflow.online.writer import LogWriter, Outcome

log = logging.getLogger(__name__)
REMEMBERED = 100_000  # impressions and event ids kept in memory per process


class OnlineRuntime:
    def __init__(
        self,
        params: Params,
        spec: ExperimentSpec | None,
        session_key: bytes | None,
        writer: LogWriter | None,
    ) -> None:
        self.cfg = params.online
        self.spec = spec
        self.session_key = session_key
        self.writer = writer
        self.shown = Recent(REMEMBERED)
        self.event_ids = Recent(REMEMBERED)

    @classmethod
    def start(
        cls, params: Params, session_key: Callable[[], bytes], on_outcome: Outcome | None = None
    ) -> OnlineRuntime:
        """From params and the environment: the sink, the experiment, and the pseudonym key
        for session ids (`session_key`, asked for only when something is logged, so a missing
        key in production stops a logging service at start-up)."""
        cfg = params.online.log
        path = os.environ.get(EXPERIMENT_ENV)
        spec = read_experiment(path) if path else None
        sink = open_sink(cfg.sink, cfg.folder, cfg.rotate_mb, cfg.dsn_env)
        if sink is None:
            return cls(params, spec, None, None)
        key = session_key()  # before the writer's thread starts: a missing key stops here
        writer = LogWriter(
            sink,
            queue_size=cfg.queue_size,
            batch_size=cfg.batch_size,
            flush_interval_s=cfg.flush_interval_s,
            retries=cfg.retries,
            on_outcome=on_outcome,
        )
        runtime = cls(params, spec, key, writer)
        log.info(
            "online: logging to the %s sink; experiment %s",
            cfg.sink,
            f"{spec.id} ({spec.mode}, {spec.share:.0%} of units)" if spec else "none",
        )
        return runtime

    def unit(self, user_key: str | None, session_id: str | None) -> tuple[str | None, str]:
        session = (
            pseudonymous_session(session_id, self.session_key)
            if session_id is not None and self.session_key is not None
            else None
        )
        return unit_of(user_key, session)

    def assign(self, unit: str | None, challenger_serves: bool) -> Assignment:
        """The unit's arm; outside when the challenger cannot answer this surface."""
        found = assign(self.spec, unit)
        if found.in_experiment and not challenger_serves:
            return Assignment(found.experiment, found.bucket, "outside")
        return found

    def record(self, impression: Impression) -> None:
        self.shown.remember(impression.impression_id, [i.product_id for i in impression.items])
        if self.writer is not None:
            self.writer.submit([impression.as_record()])

    def accept(self, events: Iterable[Event]) -> dict[str, int]:
        """Log a batch of events; raises ValueError naming every contradicted event."""
        events = list(events)
        problems = problems_with(events, self.shown)
        if problems:
            raise ValueError("; ".join(problems[:10]))
        records, duplicates = event_records(events, self.shown, self.event_ids)
        dropped = self.writer.submit(records) if self.writer is not None else []
        for record in dropped:  # not kept: a retry of these must not count as a duplicate
            self.event_ids.pop(record["event_id"], None)
        return {
            "accepted": len(records) - len(dropped),
            "duplicates": duplicates,
            "not_logged": len(dropped),
        }

    def counts(self) -> dict[str, int]:
        return self.writer.snapshot() if self.writer is not None else {}

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
