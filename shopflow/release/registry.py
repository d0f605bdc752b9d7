"""The model registry: which model is the champion, and the log of how it got there.

One JSON file, `registry.json`, holds the champion pointer and an append-only log of
entries (register, promote, rollback): when, what (model version, BentoML model and Bento
tags), why (the gate's decision), metrics, data and params hashes, git revision.

Why one file: the champion and the log must never disagree. Every change rewrites the file
whole into a temporary file, fsyncs it and renames it over the old one, which POSIX makes
atomic: a process killed at any instant leaves either the old registry or the new one,
never half of each. Changes are serialised by an exclusive `flock` on `registry.lock`, so
two nights (or a night and a rollback) cannot interleave. Each entry carries the hash of the
one before it; a log edited by hand or truncated is detected on read and named.

The first champion is the baselines (BM25F, best recommender) (`kind: baseline`): it is rebuilt from
each night's data, so it has no BentoML model or Bento, and the first trained model must
beat it like any other challenger.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from shopflow.core.errors import ShopflowError, StageInputError
from shopflow.serving.model_store import model_folder

FILE = "registry.json"
LOCK = "registry.lock"
FORMAT = 1
BASELINE_VERSION = "baseline-bm25-popularity"

Action = Literal["register", "promote", "force", "rollback"]  # force: a person overrode the gate


class RegistryError(ShopflowError):
    """The registry cannot do what was asked (or its file is damaged); nothing was changed."""

    exit_code = 2


@dataclass(frozen=True)
class Entry:
    """One line of the promotion log; the champion is always one of these."""

    id: int
    action: Action
    at: str
    kind: Literal["baseline", "model"]
    version: str
    model_tag: str | None = None
    bento_tag: str | None = None
    reason: str = ""
    metrics: dict = field(default_factory=dict)
    data_hash: str | None = None
    params_hash: str | None = None
    git_revision: str | None = None
    previous: int | None = None  # the champion this entry replaced
    decision: dict = field(default_factory=dict)
    prev_hash: str = ""
    hash: str = ""

    def sealed(self, prev_hash: str) -> Entry:
        """This entry chained to the one before it."""
        body = {**asdict(self), "prev_hash": prev_hash, "hash": ""}
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
        return Entry(**{**body, "hash": digest})

    def summary(self) -> str:
        what = (
            self.bento_tag or self.model_tag or "BM25F + best recommend baseline (rebuilt nightly)"
        )
        return f"#{self.id} {self.action:<9} {self.at}  {self.version}  {what}  {self.reason}"


def champion_bundle(entry: Entry | None) -> Path | None:
    """The champion's model folder in the BentoML store (None for the baseline, which is
    rebuilt from each night's data)."""
    if entry is None or entry.kind == "baseline":
        return None
    try:
        return model_folder(str(entry.model_tag))
    except StageInputError as exc:
        raise StageInputError(
            f"the champion #{entry.id}: {exc}: restore the store, or `shopflow rollback --to` "
            "a model that is there"
        ) from None


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class Registry:
    """The registry at `folder` (created on first write)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / FILE

    # -- reading -------------------------------------------------------------------------

    def _read(self) -> tuple[int | None, list[Entry]]:
        if not self.path.exists():
            return None, []
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            entries = [Entry(**e) for e in raw["entries"]]
            champion = raw["champion"]
        except (ValueError, KeyError, TypeError) as exc:
            raise RegistryError(f"{self.path}: not a shopflow registry ({exc})") from None
        prev = ""
        for i, entry in enumerate(entries, start=1):
            if entry.id != i or entry.sealed(prev).hash != entry.hash:
                raise RegistryError(
                    f"{self.path}: entry #{i} was altered or entries were removed (its hash "
                    "does not chain to the entry before); restore the file from a backup"
                )
            prev = entry.hash
        if champion is not None and not 1 <= champion <= len(entries):
            raise RegistryError(f"{self.path}: the champion #{champion} is not in the log")
        return champion, entries

    def history(self) -> list[Entry]:
        return self._read()[1]

    def champion(self) -> Entry | None:
        champion, entries = self._read()
        return entries[champion - 1] if champion else None

    def current(self) -> Entry:
        """The champion, which every registry with an entry has."""
        champion = self.champion()
        if champion is None:
            raise RegistryError(f"{self.path}: no champion yet (nothing was registered)")
        return champion

    def entry(self, ref: str | int) -> Entry:
        """An entry by id (`3`, `#3`) or by model version (the newest with it)."""
        entries = self.history()
        text = str(ref).lstrip("#")
        if text.isdigit() and 1 <= int(text) <= len(entries):
            return entries[int(text) - 1]
        for entry in reversed(entries):
            if entry.version == text or entry.model_tag == text or entry.bento_tag == text:
                return entry
        known = ", ".join(f"#{e.id} {e.version}" for e in entries) or "none"
        raise RegistryError(f"no registry entry {ref!r} (entries: {known})")

    # -- writing -------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[Registry]:
        """Exclusive access for a read-check-write sequence (blocks other writers)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / LOCK).open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield self
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def append(self, entry: Entry, make_champion: bool) -> Entry:
        """Append `entry` (its id and hashes are assigned here); call inside `locked()`."""
        champion, entries = self._read()
        sealed = Entry(**{**asdict(entry), "id": len(entries) + 1, "previous": champion}).sealed(
            entries[-1].hash if entries else ""
        )
        entries.append(sealed)
        self._write(sealed.id if make_champion else champion, entries)
        return sealed

    def replace_champion(self, expected: Entry, entry: Entry) -> Entry:
        """Make `entry` the champion if the champion is still `expected` (compare and swap).

        A promotion decides against one champion and commits minutes later (Bento build,
        smoke test). Two nights racing to promote both pass their gates; the check under the
        lock lets exactly one move the champion, and the other fails naming the winner.
        """
        with self.locked():
            current = self.current()
            if current.id != expected.id:
                raise RegistryError(
                    f"the champion moved to #{current.id} ({current.version}) while this "
                    f"promotion ran against #{expected.id}; re-run evaluate against it"
                )
            return self.append(entry, make_champion=True)

    def _write(self, champion: int | None, entries: list[Entry]) -> None:
        body = json.dumps(
            {"format": FORMAT, "champion": champion, "entries": [asdict(e) for e in entries]},
            indent=2,
        )
        fd, tmp = tempfile.mkstemp(prefix=".registry-", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(body)
                handle.flush()
                os.fsync(handle.fileno())
            Path(tmp).replace(self.path)  # the commit point
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        directory = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power cut
        finally:
            os.close(directory)

    def ensure_baseline(self, metrics: dict, data_hash: str | None = None) -> Entry:
        """The baselines (BM25F, best recommender) as the first champion, when the registry
        is empty."""
        with self.locked():
            champion, entries = self._read()
            if entries:
                return entries[champion - 1] if champion else entries[-1]
            return self.append(
                Entry(
                    id=0,
                    action="register",
                    at=now(),
                    kind="baseline",
                    version=BASELINE_VERSION,
                    reason="first run: the baselines (BM25F, best recommender) are the first "
                    "champion",
                    metrics=metrics,
                    data_hash=data_hash,
                ),
                make_champion=True,
            )

    def rollback_target(self, to: str | int | None = None) -> Entry:
        """The entry a rollback would re-point to (default: the model before the champion)."""
        current = self.champion()
        if current is None:
            raise RegistryError("the registry is empty: there is nothing to roll back")
        target = self._previous_model(current) if to is None else self.entry(to)
        if target.kind != "model":
            raise RegistryError(
                f"entry #{target.id} is the baselines (BM25F, best recommender): it has no Bento "
                "to serve (it is the reference the first model had to beat)"
            )
        if target.version == current.version:
            raise RegistryError(f"{target.version} is already the champion (#{current.id})")
        return target

    def rollback(
        self, to: str | int | None = None, reason: str = "", bento_tag: str | None = None
    ) -> Entry:
        """Re-point the champion to an earlier model entry and log it. `bento_tag` replaces
        the entry's Bento when that had to be rebuilt (the caller checks it exists)."""
        with self.locked():
            target = self.rollback_target(to)
            current = self.current()
            return self.append(
                Entry(
                    id=0,
                    action="rollback",
                    at=now(),
                    kind="model",
                    version=target.version,
                    model_tag=target.model_tag,
                    bento_tag=bento_tag or target.bento_tag,
                    reason=reason
                    or f"rollback from #{current.id} ({current.version}) to #{target.id}",
                    metrics=target.metrics,
                    data_hash=target.data_hash,
                    params_hash=target.params_hash,
                    git_revision=target.git_revision,
                    decision={"rolled_back_to": target.id, "from": current.id},
                ),
                make_champion=True,
            )

    def _previous_model(self, current: Entry) -> Entry:
        """The model that was first promoted just before the current champion's model:
        repeated rollbacks walk back in time (C → B → A), never ping-pong."""
        entries = self.history()
        order: list[str] = []
        for entry in entries:
            if entry.kind == "model" and entry.version not in order:
                order.append(entry.version)
        at = order.index(current.version) if current.version in order else 0
        if at == 0:
            raise RegistryError(
                f"the champion #{current.id} ({current.version}) is the first model ever "
                "promoted: there is no earlier model to roll back to"
            )
        return next(e for e in reversed(entries) if e.version == order[at - 1])
