"""Past nights' drift decisions, kept outside the workspace like the registry (`drift.history`):
what the cool-down reads, so the same drift retrains once, not every night."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from shopflow.core.artifacts import read_json, write_json
from shopflow.core.errors import StageInputError
from shopflow.monitoring.drift import Verdict


class History:
    """The drift decisions of past nights, one JSON file (written atomically)."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / "history.json"

    def entries(self) -> list[dict]:
        if not self.path.exists():
            return []
        try:
            entries = read_json(self.path)["entries"]
            for entry in entries:
                dt.date.fromisoformat(entry["date"])
                if entry["decision"] not in ("none", "retrain", "alert", "insufficient_data"):
                    raise ValueError(f"unknown decision {entry['decision']!r}")
        except (ValueError, KeyError, TypeError) as exc:
            raise StageInputError(
                f"{self.path}: not a shopflow drift history ({exc}); move it away to start over"
            ) from None
        return entries

    def before(self, day: dt.date) -> list[dict]:
        return [e for e in self.entries() if dt.date.fromisoformat(e["date"]) < day]

    def record(self, day: dt.date, verdict: Verdict) -> None:
        """Tonight's entry, replacing an earlier run of the same night."""
        kept = [e for e in self.entries() if e["date"] != day.isoformat()]
        entry = {"date": day.isoformat(), "decision": verdict.decision, "drifted": verdict.drifted}
        write_json(self.path, {"entries": sorted([*kept, entry], key=lambda e: e["date"])})
