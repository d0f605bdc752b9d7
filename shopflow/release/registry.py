"""The model registry: which model is the champion, and the log of how it got there.

One JSON file, `registry.json`, holds the champion pointer and an append-only log of
entries (register, promote, rollback): when, what (model version, BentoML model and Bento
tags), why (the gate's decision), metrics, data and params hashes, git revision.

Why one file: the champion and the log must never disagree. Every change rewrites the file
whole into a temporary file, fsyncs it and renames it over the old one, which POSIX makes
atomic: a process killed at any instant leaves either the old registry or the new one,
never half of each. Changes are serialised by an exclusive lock on `registry.lock` (`filelock`:
`flock` on POSIX, which NFSv4 honours), so two nights (or a night and a rollback) cannot
interleave.

Why a keyed seal: whoever can write the file must not be able to choose what is served. The
whole file (champion pointer, every entry, their count) is sealed with HMAC-SHA256 under
`SHOPFLOW_REGISTRY_KEY`, which lives outside the registry (environment or a mounted secret).
A moved pointer, an edited, removed, reordered or added entry, or a file resealed without the
key fails the check on read, which names what is wrong; so does every malformed file. Each
entry also carries the SHA-256 of the one before it, so the log reads as a chain. A missing
registry is an error in production (a new shop creates it with `shopflow registry init`):
otherwise deleting the file would silently make the baselines the champion again. What a
seal cannot show is a whole older file put back; docs/security.md says how to guard that.

The first champion is the baselines (BM25F, best recommender) (`kind: baseline`): it is rebuilt from
each night's data, so it has no BentoML model or Bento, and the first trained model must
beat it like any other challenger.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock

from shopflow.core.errors import StageInputError
from shopflow.core.secrets import Mode, mode_for
from shopflow.release.registry_file import (
    DEV_KEY,
    FILE,
    KEY_ENV,
    Entry,
    RegistryError,
    SealedFile,
    registry_key,
)
from shopflow.serving.model_store import model_folder

if TYPE_CHECKING:
    from shopflow.core.config import Params

LOCK = "registry.lock"
BASELINE_VERSION = "baseline-bm25-popularity"
__all__ = [  # the file's names are the registry's API too
    "BASELINE_VERSION",
    "DEV_KEY",
    "FILE",
    "KEY_ENV",
    "Entry",
    "Registry",
    "RegistryError",
    "champion_bundle",
    "now",
    "registry_key",
]


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


SERVED = ("register", "promote", "force", "rollback")  # actions whose model became the champion


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class Registry(SealedFile):
    """The registry at `folder`, sealed with `key`. `missing_ok`: a missing file reads as an
    empty registry (the demo's first run); otherwise it is an error."""

    def __init__(self, folder: str | Path, key: bytes, *, missing_ok: bool = False) -> None:
        self.folder = Path(folder)
        self.path = self.folder / FILE
        self.key = key
        self.missing_ok = missing_ok

    @classmethod
    def of(cls, params: Params, project: Path | None = None) -> Registry:
        """The registry `params` name (relative to `project` when given), with the key and
        strictness of their mode."""
        mode = mode_for(params.ingest.source)
        folder = Path(params.promote.registry)
        return cls(
            project / folder if project else folder,
            registry_key(mode),
            missing_ok=mode == Mode.DEMO,
        )

    # -- reading -------------------------------------------------------------------------

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

    def experiment(self) -> Entry | None:
        """The running online experiment: the newest `experiment` entry, unless an entry of
        another action (its promotion, a stop, a rollback, a forced promotion) came after."""
        for entry in reversed(self.history()):
            if entry.action == "experiment":
                return entry
            if entry.action != "register":
                return None
        return None

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
        with FileLock(self.folder / LOCK):
            yield self

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

    def init(self) -> None:
        """Create an empty sealed registry (a new shop, once); an existing one is kept."""
        with self.locked():
            if self.path.exists() or self.path.is_symlink():
                raise RegistryError(f"{self.path}: a registry is already here; it was kept")
            self._write(None, [])

    def rekey(self, new_key: bytes) -> int:
        """Check the registry under this key, then seal it under `new_key` (key rotation);
        its entry count. Afterwards only `new_key` reads it."""
        if not new_key:
            raise RegistryError(f"the new key is empty: set {KEY_ENV}_NEW")
        with self.locked():
            champion, entries = self._read()
            self.key = new_key
            self._write(champion, entries)
            return len(entries)

    def upgrade(self) -> int:
        """Seal a format-1 registry under this key, after checking its old unkeyed chain (a
        person has read it: the old format could be rewritten by anyone); its entry count."""
        with self.locked():
            champion, entries = self._format_1()
            self._write(champion, entries)
            return len(entries)

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
        if target.action not in SERVED:
            raise RegistryError(
                f"entry #{target.id} ({target.action}) was never the champion: roll back to an "
                "entry that served (promote, force or rollback)"
            )
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
            if entry.kind == "model" and entry.action in SERVED and entry.version not in order:
                order.append(entry.version)
        at = order.index(current.version) if current.version in order else 0
        if at == 0:
            raise RegistryError(
                f"the champion #{current.id} ({current.version}) is the first model ever "
                "promoted: there is no earlier model to roll back to"
            )
        return next(
            e for e in reversed(entries) if e.version == order[at - 1] and e.action in SERVED
        )
