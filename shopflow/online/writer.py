"""The background log writer: serving hands records over and never waits for the sink.

`submit` puts records on a bounded queue without blocking; a daemon thread takes batches
(`batch_size`, or whatever arrived within `flush_interval_s`) and writes them, retrying a
failed batch with a doubling back-off `retries` times. What cannot be kept is counted, never
raised: `dropped` when the queue is full (the sink is slower than traffic), `lost` when a batch
failed every attempt. The counts feed /metrics (`shopflow_log_records_total`), and the first
loss in any minute is an ERROR line naming the sink's error (the alert rule in
docs/online.md fires on the counter).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable

from shopflow.online.sinks import Sink

log = logging.getLogger(__name__)
Outcome = Callable[[str, str, int], None]  # (kind, outcome, count)
ALERT_EVERY_S = 60.0


class LogWriter:
    def __init__(
        self,
        sink: Sink,
        *,
        queue_size: int = 20_000,
        batch_size: int = 500,
        flush_interval_s: float = 1.0,
        retries: int = 3,
        on_outcome: Outcome | None = None,
    ) -> None:
        self.sink = sink
        self.queue: queue.Queue[dict] = queue.Queue(maxsize=queue_size)
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.retries = retries
        self.on_outcome = on_outcome
        self.counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._last_alert = 0.0
        self._accepted = 0
        self._thread = threading.Thread(target=self._run, name="shopflow-log-writer", daemon=True)
        self._thread.start()

    def _count(self, records: list[dict], outcome: str) -> None:
        per_kind = Counter(r["kind"] for r in records)
        with self._lock:
            for kind, n in per_kind.items():
                self.counts[(kind, outcome)] += n
        if self.on_outcome is not None:
            for kind, n in per_kind.items():
                try:
                    self.on_outcome(kind, outcome, n)
                except Exception:  # a metrics hiccup must not stop the writer
                    log.debug("outcome callback failed", exc_info=True)

    def submit(self, records: list[dict]) -> list[dict]:
        """Queue records for writing; those that did not fit (counted as dropped)."""
        dropped = []
        for record in records:
            try:
                self.queue.put_nowait(record)
            except queue.Full:
                dropped.append(record)
        with self._lock:
            self._accepted += len(records) - len(dropped)
        if dropped:
            self._count(dropped, "dropped")
            self._alert(f"the log queue is full: {len(dropped)} records dropped")
        return dropped

    def _alert(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_alert >= ALERT_EVERY_S:
            self._last_alert = now
            log.error("service log: %s (counted in shopflow_log_records_total)", message)

    def _batch(self) -> list[dict]:
        try:
            first = self.queue.get(timeout=self.flush_interval_s)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.flush_interval_s
        while len(batch) < self.batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(self.queue.get(timeout=remaining))
            except queue.Empty:
                break
        return batch

    def _write(self, batch: list[dict]) -> None:
        delay = 0.2
        for attempt in range(self.retries + 1):
            try:
                self.sink.write(batch)
            except Exception as exc:  # any sink failure: retry, then count the loss
                if attempt == self.retries or self._stop.is_set():
                    self._count(batch, "lost")
                    self._alert(f"{len(batch)} records lost: {type(exc).__name__}: {exc}"[:500])
                    return
                time.sleep(delay)
                delay *= 2
            else:
                self._count(batch, "written")
                return

    def _run(self) -> None:
        while not (self._stop.is_set() and self.queue.empty()):
            batch = self._batch()
            if batch:
                self._write(batch)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything queued so far is written or counted; whether it was."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                settled = sum(n for (_, outcome), n in self.counts.items() if outcome != "dropped")
                if settled >= self._accepted:
                    return True
            time.sleep(0.02)
        return False

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (up to `timeout_s`), then stop the thread and the sink."""
        self._stop.set()
        self._thread.join(timeout_s)
        self.sink.close()

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {f"{kind}.{outcome}": n for (kind, outcome), n in sorted(self.counts.items())}
