"""Periodic progress lines with rate and ETA for long loops (training steps, texts embedded,
pairs scored). Lines rather than a bar: a bar is garbled in Airflow and DVC logs."""

from __future__ import annotations

import logging
import math
import time

log = logging.getLogger("shopflow.core.progress")


class Progress:
    """`update(done)` logs at most every `every_s` seconds, and always at the end."""

    def __init__(
        self, name: str, total: int, every_s: float = 10.0, start: int = 0, unit: str = "steps"
    ) -> None:
        self.name, self.total, self.every_s, self.unit = name, total, every_s, unit
        self.started = time.perf_counter()
        self.start = start
        self.last = self.started if unit != "steps" else 0.0  # steps: log the first one

    def update(self, done: int, **values: float) -> None:
        now = time.perf_counter()
        if now - self.last < self.every_s and done < self.total:
            return
        if self.unit != "steps" and done >= self.total and now - self.started < self.every_s:
            return  # a short job: no line at all
        self.last = now
        rate = max(done - self.start, 1) / max(now - self.started, 1e-9)
        eta = (self.total - done) / rate if rate else math.inf
        shown = "".join(f" {k}={v:.4g}" for k, v in values.items())
        log.info(
            "%s: %s %d/%d%s | %.2f %s/s, ETA %.0fs",
            self.name,
            self.unit.rstrip("s") if self.unit == "steps" else self.unit,
            done,
            self.total,
            shown,
            rate,
            self.unit,
            eta,
        )
